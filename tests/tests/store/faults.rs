//! A failing fsync, injected for real with strace into the child's `fdatasync`:
//! every waiting appender gets an error, nothing more is acknowledged, and the log
//! is consistent when reopened.

use std::process::Command;

use store::{EventLog, ExpectedVersion};
use tests::{append, event};

use super::crash::assert_acks_survived;

const CHILD: &str = env!("CARGO_BIN_EXE_crash_appender");

/// The 12th `fdatasync` and every one after it fail with EIO.
const INJECT: &str = "inject=fdatasync:error=EIO:when=12+";

/// What the child printed, run under strace with [`INJECT`] (`wal_kib`: the
/// cap of its WAL's files).
struct FaultRun {
    stdout: String,
    lines: Vec<String>,
}

impl FaultRun {
    fn new(dir: &std::path::Path, wal_kib: Option<&str>) -> FaultRun {
        let output = Command::new(tests::strace())
            .args(["-f", "-qq", "-o", "/dev/null", "-e", "trace=fdatasync", "-e", INJECT])
            .arg(CHILD)
            .arg(dir)
            .arg("fault")
            .args(wal_kib)
            .output()
            .expect("strace runs the child");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(output.status.success(), "child failed: {}\n{stdout}", String::from_utf8_lossy(&output.stderr));
        let lines = stdout.lines().map(str::to_owned).collect();
        FaultRun { stdout, lines }
    }

    /// The numbers of the line that starts with `prefix`.
    fn numbers(&self, prefix: &str) -> Vec<u64> {
        let line = self
            .lines
            .iter()
            .find_map(|line| line.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line in:\n{}", self.stdout));
        line.split(' ').map(|number| number.parse().expect("a number")).collect()
    }

    /// What holds however the failure fell: every appender was answered, with
    /// an acknowledgement or a durability error, the acknowledged appends are
    /// exactly those the writer committed, appends stay refused, and after a
    /// reopen every acknowledged event is there and the log appends again.
    /// Returns the acknowledgements and the errors.
    async fn assert_consistent(&self, dir: &std::path::Path) -> (Vec<(u64, uuid::Uuid)>, Vec<&String>) {
        let stdout = &self.stdout;
        let acked = super::crash::acks_of(&self.lines);
        let errors: Vec<&String> = self.lines.iter().filter(|line| line.starts_with("err ")).collect();
        assert!(!acked.is_empty(), "the first batches were acknowledged:\n{stdout}");
        assert!(
            errors.iter().all(|line| line.starts_with("err durability ") || line.starts_with("err unavailable ")),
            "every error is about durability:\n{stdout}"
        );
        // Each appender's refused append (an expected version no stream has)
        // beside its others: refused as such, also in the batch whose fsync
        // failed (it wrote nothing), or refused as the log is, after it.
        let refused: Vec<&String> = self.lines.iter().filter(|line| line.starts_with("conflict ")).collect();
        assert!(!refused.is_empty(), "{stdout}");
        assert!(
            refused.iter().all(|line| *line == "conflict conflict" || *line == "conflict unavailable"),
            "an append refused at staging keeps its own answer:\n{stdout}"
        );
        let (answered, stats) = (self.numbers("answered "), self.numbers("stats "));
        assert_eq!(answered[0] + answered[1], 8 * 50, "every appender got an answer");
        assert_eq!(answered[0], stats[1], "acknowledged appends are exactly those of the durable batches");
        assert!(
            self.lines.iter().any(|line| line == "after err unavailable"),
            "appends stay refused after the failure:\n{stdout}"
        );

        // When the failing sync was sled's own file's (a checkpoint's), the
        // log is refused until copied: the copy its refusal names is checked.
        let scratch = tests::temp_dir();
        let dir = &match EventLog::open(dir) {
            Ok(log) => {
                drop(log);
                dir.to_path_buf()
            }
            Err(store::StoreError::SyncFailed { .. }) => {
                assert!(stdout.contains("sled's file"), "only a failed sync of sled's file asks for a copy:\n{stdout}");
                salvaged(dir, scratch.path())
            }
            Err(other) => panic!("the log reopens after the fault, or asks for a copy: {other:?}"),
        };
        let (head, _) = assert_acks_survived(dir, &acked);
        let log = EventLog::open(dir).expect("reopens");
        let after = log
            .append(append("after-fault", ExpectedVersion::Any, vec![event("E", b"")]))
            .await
            .expect("a reopened log appends again");
        assert_eq!(after.first_position, head + 1);
        log.verify().expect("verifies");
        (acked, errors)
    }
}

/// The copy of the log in `dir` that `shoplog backup` (in a process of its
/// own: a salvage leaves sled's lock held) and a restore make, in `scratch`.
fn salvaged(dir: &std::path::Path, scratch: &std::path::Path) -> std::path::PathBuf {
    let copy = scratch.join("copy.bak");
    let backup = Command::new(crate::cli::SHOPLOG)
        .args(["backup", "--data", dir.to_str().expect("utf-8"), "--out", copy.to_str().expect("utf-8")])
        .env_remove("RUST_LOG")
        .output()
        .expect("runs shoplog");
    assert!(backup.status.success(), "{backup:?}");
    let target = scratch.join("data");
    let file = std::fs::File::open(&copy).expect("opens the backup");
    store::restore_backup(file, &target, store::RestoreTo::End, &mut |_| {}).expect("restores");
    target
}

#[tokio::test]
async fn a_failed_fsync_acknowledges_nothing_more_and_the_log_stays_consistent() {
    let dir = tests::temp_dir();
    let run = FaultRun::new(dir.path(), None);
    let stdout = &run.stdout;
    assert!(
        run.lines.iter().any(|line| line.starts_with("err durability ")),
        "the failing batch's appenders heard of it:\n{stdout}"
    );
    assert_eq!(run.numbers("stats ")[0], 11, "exactly the batches whose fdatasync succeeded were committed");
    assert!(
        run.lines.iter().any(|line| line.starts_with("failure ") && line.contains("fdatasync")),
        "the failure names fdatasync:\n{stdout}"
    );
    run.assert_consistent(dir.path()).await;
}

/// The same with the WAL's files capped at 1 KiB: checkpoints run all the time,
/// beside the appends (and here and now for a batch too long for an empty
/// file), so the failing `fdatasync`s fall on sled's file as well as the WAL's.
/// Nothing acknowledged is lost either way.
#[tokio::test]
async fn a_failed_fsync_amid_checkpoints_loses_no_acknowledged_append() {
    let dir = tests::temp_dir();
    let run = FaultRun::new(dir.path(), Some("1"));
    assert!(
        run.lines.iter().any(|line| line.starts_with("failure ") && line.contains("fdatasync")),
        "the failure names fdatasync:\n{}",
        run.stdout
    );
    run.assert_consistent(dir.path()).await;
}

/// The syncs the store adds to sled's own, seen by strace (`-y` names each call's
/// file): sled's `flush` alone does not reach stable storage (DESIGN §3.1), so a
/// checkpoint `fdatasync`s sled's `db` file itself, and the data dir is fsynced
/// when files are made in it, as is its parent once the data dir is made. WAL
/// files of 1 KiB make checkpoints frequent. A WAL
/// file emptied (after a forget, and at close) is synced too: the frame of the
/// batch that made a forgotten subject's key holds the key, and a power cut must
/// not bring it back.
#[test]
fn the_store_syncs_sleds_file_at_checkpoints_and_the_data_dir_itself() {
    let (parent, traces) = (tests::temp_dir(), tests::temp_dir());
    let dir = parent.path().join("data");
    let trace = traces.path().join("strace.txt");
    let output = Command::new(tests::strace())
        .args(["-f", "-qq", "-y", "-e", "trace=fsync,fdatasync,ftruncate", "-o"])
        .arg(&trace)
        .arg(CHILD)
        .arg(&dir)
        .args(["fault", "1"])
        .output()
        .expect("strace runs the child");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "child failed: {}\n{stdout}", String::from_utf8_lossy(&output.stderr));
    let committed = stdout
        .lines()
        .find_map(|line| line.strip_prefix("stats "))
        .and_then(|stats| stats.split(' ').nth(1))
        .and_then(|appends| appends.parse::<u64>().ok());
    assert_eq!(committed, Some(8 * 50 + 1), "every append went through:\n{stdout}");
    let text = std::fs::read_to_string(&trace).expect("strace wrote its trace");
    // A successful call on the file: `fdatasync(7</dir/db>) = 0`.
    let synced = |call: &str, path: &std::path::Path| {
        let needle = format!("{call}(");
        let file = format!("<{}>)", path.display());
        text.lines().filter(|line| line.contains(&needle) && line.contains(&file) && line.ends_with("= 0")).count()
    };
    let db = synced("fdatasync", &dir.join("db")) + synced("fsync", &dir.join("db"));
    let wal = synced("fdatasync", &dir.join("wal")) + synced("fdatasync", &dir.join("wal.1"));
    let data_dir = synced("fsync", &dir) + synced("fdatasync", &dir);
    assert!(wal >= 10, "the appends' batches are synced in the WAL: {wal} syncs\n{text}");
    assert!(db >= 3, "sled's file is synced at each checkpoint: {db} syncs\n{text}");
    assert!(data_dir >= 1, "the data dir is synced: {data_dir} syncs\n{text}");
    let parent_dir = synced("fsync", parent.path());
    assert!(parent_dir >= 1, "the new data dir's entry is synced in its parent: {parent_dir} syncs\n{text}");
    assert!(stdout.lines().any(|line| line == "forget ok"), "the forget went through:\n{stdout}");
    // Every emptying of a WAL file (`ftruncate(7</dir/wal>, 0) = 0`) is followed by
    // a sync of that file.
    let lines: Vec<&str> = text.lines().collect();
    let mut emptied = 0;
    for file in [dir.join("wal"), dir.join("wal.1")] {
        let named = format!("<{}>", file.display());
        for (at, line) in lines.iter().enumerate() {
            if line.contains("ftruncate(") && line.contains(&named) && line.ends_with("= 0") {
                emptied += 1;
                let synced_after = lines[at + 1..]
                    .iter()
                    .any(|later| (later.contains("fdatasync(") || later.contains("fsync(")) && later.contains(&named));
                assert!(synced_after, "{} emptied and never synced after:\n{text}", file.display());
            }
        }
    }
    assert!(emptied >= 2, "the forget and the close empty the WAL files: {emptied} truncations\n{text}");
}

/// An open that a full disk cut short leaves sled's snapshot of its page table
/// unfinished (`snap.<lsn>.generating`, empty), which sled 0.34.7 then reads as
/// its latest and calls its whole file damaged: a whole log was refused, its
/// message saying to restore a backup. Such a file is never needed (sled
/// renames a snapshot once it is synced), and the open removes it.
#[tokio::test]
async fn an_unfinished_snapshot_of_sleds_is_not_taken_for_damage() {
    let dir = tests::temp_dir();
    {
        let log = EventLog::open(dir.path()).expect("opens");
        log.append(append("snapped", ExpectedVersion::NoStream, vec![event("E", b"1")])).await.expect("appends");
    }
    let unfinished = dir.path().join("snap.FFFFFFFFFFFFFFFF.generating");
    std::fs::write(&unfinished, b"").expect("writes the file");
    let log = EventLog::open(dir.path()).expect("an unfinished snapshot is no damage");
    assert_eq!(log.head(), 1);
    assert!(!unfinished.exists(), "the unfinished snapshot was removed");
    log.verify().expect("verifies");
}

/// After a failed `fdatasync` of sled's file, the kernel may have dropped the
/// pages it could not write while sled's file still reads back whole from the
/// page cache, and the next sync (the next process's too) reports success. The
/// open after it trusted that sync and emptied the write-ahead log, the only
/// sound copy of the batches acknowledged since the last checkpoint. Now the
/// failure is recorded in the checkpoint mark: the next open is refused, naming
/// the salvage, and leaves the WAL as it is; an open to salvage reads every
/// acknowledged event, takes no append and changes nothing; its backup restores
/// them all into a new data dir.
///
/// Here sled's file fails its first `fdatasync` in the child (`-P` limits the
/// injection to it): the forget's checkpoint, after 400 appends acknowledged
/// from the WAL alone. The log is made first, so that the child's open has no
/// new format mark to sync.
#[tokio::test]
async fn after_a_failed_sync_of_sleds_file_the_log_is_salvaged_not_trusted() {
    a_failed_call_on_sleds_file_makes_the_log_salvaged("fdatasync").await;
}

/// The same when sled's own write of its file fails (`sync_file_range`, by
/// which it waits for its writes, where a write-back error shows first): the
/// forget's flush.
#[tokio::test]
async fn after_a_failed_write_of_sleds_file_the_log_is_salvaged_not_trusted() {
    a_failed_call_on_sleds_file_makes_the_log_salvaged("sync_file_range").await;
}

async fn a_failed_call_on_sleds_file_makes_the_log_salvaged(call: &str) {
    let dir = tests::temp_dir();
    drop(EventLog::open(dir.path()).expect("opens"));
    let output = Command::new(tests::strace())
        .args(["-f", "-qq", "-o", "/dev/null", "-P"])
        .arg(dir.path().join("db"))
        .arg("-e")
        .arg(format!("trace={call}"))
        .arg("-e")
        .arg(format!("inject={call}:error=EIO:when=1+"))
        .arg(CHILD)
        .arg(dir.path())
        .arg("fault")
        .output()
        .expect("strace runs the child");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "child failed: {}\n{stdout}", String::from_utf8_lossy(&output.stderr));
    let lines: Vec<String> = stdout.lines().map(str::to_owned).collect();
    let acked = super::crash::acks_of(&lines);
    assert!(acked.len() >= 400, "the appends were acknowledged from the WAL:\n{stdout}");
    assert!(lines.iter().any(|line| line == "forget err durability"), "the forget's sync failed:\n{stdout}");
    let wal_files = || -> Vec<Vec<u8>> {
        ["wal", "wal.1"].iter().map(|name| std::fs::read(dir.path().join(name)).expect("reads")).collect()
    };
    let wal = wal_files();
    assert!(wal.iter().any(|bytes| bytes.iter().any(|byte| *byte != 0)), "the WAL holds the batches");

    for _ in 0..2 {
        match EventLog::open(dir.path()) {
            Err(error @ store::StoreError::SyncFailed { .. }) => {
                let said = error.to_string();
                assert!(said.contains("a sync of sled's file failed"), "{said}");
                assert!(said.contains("shoplog backup --data") && said.contains("shoplog restore"), "{said}");
            }
            other => panic!("a log whose sync failed must not be trusted, got {other:?}"),
        }
        assert_eq!(wal_files(), wal, "the refused open left the WAL as it was");
    }

    let restored = tests::temp_dir();
    let target = salvaged(dir.path(), restored.path());
    assert_eq!(wal_files(), wal, "the salvage left the WAL as it was");
    match EventLog::open(dir.path()) {
        Err(store::StoreError::SyncFailed { .. }) => {}
        other => panic!("the salvage left the mark as it was, got {other:?}"),
    }
    assert_acks_survived(&target, &acked);

    // Opened to salvage, the log takes no append.
    let salvage = store::Options { salvage: true, ..store::Options::default() };
    let salvaged = EventLog::open_with(dir.path(), salvage).expect("opens to salvage");
    assert!(salvaged.head() >= acked.iter().map(|(position, _)| *position).max().unwrap_or(0));
    assert!(salvaged.append(append("after", ExpectedVersion::Any, vec![event("E", b"")])).await.is_err());
}
