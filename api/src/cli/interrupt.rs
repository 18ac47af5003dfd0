//! What long operator work writes before it is whole (a restore's or an import's
//! staging directory, a backup's or an export's partial file) holds the shop's
//! data and keys, and is hidden (its name starts with a dot). Nothing may leave
//! it behind:
//!
//! - Ctrl-C or SIGTERM removes it before the process exits with 130 ([`watch`],
//!   [`Writing`]);
//! - a SIGKILL or a power cut cannot be caught: the next run on the same target
//!   removes what an interrupted run left there ([`remove_left_behind`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

/// The paths being written now.
static WRITING: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Set once Ctrl-C or SIGTERM came: the run ends with 130, whatever the work
/// still running meets meanwhile (the partial file it was about to rename,
/// removed under it).
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Whether Ctrl-C or SIGTERM came.
pub(super) fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// The work failed after an interruption, which is what made it fail: let the
/// watcher end the run (it removes what was being written and exits 130),
/// instead of a second error line and exit code 2. Should it not, exit 130 here.
pub(super) fn end_interrupted() -> ! {
    std::thread::sleep(std::time::Duration::from_secs(5));
    eprintln!("shoplog: interrupted");
    std::process::exit(130)
}

/// From now on, Ctrl-C and SIGTERM remove what is being written and exit 130.
/// For the operator commands only: `serve` shuts down on them instead. Returns
/// once the watcher listens (or could not), so no signal sent after it finds
/// the default disposition still in place.
pub(super) fn watch() {
    use tokio::signal::unix::{SignalKind, signal};
    let (listening, listens) = std::sync::mpsc::sync_channel(1);
    let started = std::thread::Builder::new().name("shoplog-interrupt".to_owned()).spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
        runtime.block_on(async {
            let signals =
                signal(SignalKind::interrupt()).and_then(|interrupt| Ok((interrupt, signal(SignalKind::terminate())?)));
            let _ = listening.send(());
            let Ok((mut interrupt, mut terminate)) = signals else { return };
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            INTERRUPTED.store(true, Ordering::SeqCst);
            let writing = std::mem::take(&mut *WRITING.lock().unwrap_or_else(PoisonError::into_inner));
            // One line: what was removed, if anything.
            let removed: Vec<String> =
                writing.iter().filter(|path| remove(path)).map(|path| path.display().to_string()).collect();
            // The work goes on until the exit: a thread that was just then
            // opening a log in the staging dir makes it again (sled creates its
            // directory). It does so once, and then fails; watch a little
            // while and remove it again.
            for _ in 0..25 {
                std::thread::sleep(std::time::Duration::from_millis(2));
                for path in &writing {
                    remove(path);
                }
            }
            match removed.is_empty() {
                true => eprintln!("shoplog: interrupted"),
                false => eprintln!("shoplog: interrupted; removed {}", removed.join(", ")),
            }
            std::process::exit(130);
        });
    });
    match started {
        // A watcher that ended before it listened drops its sender: no wait then.
        Ok(_) => {
            let _ = listens.recv_timeout(std::time::Duration::from_secs(5));
        }
        Err(error) => {
            tracing::warn!(%error, "no thread to watch for Ctrl-C: an interrupted run leaves its staging behind")
        }
    }
}

/// A path being written: removed on Ctrl-C or SIGTERM until this is dropped.
#[derive(Debug)]
pub(super) struct Writing(PathBuf);

impl Writing {
    pub(super) fn new(path: &Path) -> Writing {
        WRITING.lock().unwrap_or_else(PoisonError::into_inner).push(path.to_path_buf());
        Writing(path.to_path_buf())
    }
}

impl Drop for Writing {
    fn drop(&mut self) {
        WRITING.lock().unwrap_or_else(PoisonError::into_inner).retain(|path| *path != self.0);
    }
}

/// Remove what runs no longer alive left beside `target` ([`store::beside`]:
/// `.<name>.<what>-<pid>`, `what` being `incoming` for a staging dir and
/// `partial` for a file), saying so on stderr.
pub(super) fn remove_left_behind(target: &Path, what: &str) {
    let Some(name) = target.file_name() else { return };
    let prefix = format!(".{}.{what}-", name.to_string_lossy());
    let parent = match target.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    for entry in entries.flatten() {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = file_name.strip_prefix(&prefix).and_then(|pid| pid.parse::<u32>().ok()) else { continue };
        let alive = pid != std::process::id() && Path::new(&format!("/proc/{pid}")).exists();
        if !alive && remove(&entry.path()) {
            eprintln!("shoplog: removed {}, left by an interrupted run", entry.path().display());
        }
    }
}

/// Remove a file or a whole directory; whether something was there.
fn remove(path: &Path) -> bool {
    match std::fs::symlink_metadata(path) {
        Ok(metadata) if metadata.is_dir() => std::fs::remove_dir_all(path).is_ok(),
        Ok(_) => std::fs::remove_file(path).is_ok(),
        Err(_) => false,
    }
}
