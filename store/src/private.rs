//! Files and directories that hold the log's secrets (subject keys, the key that
//! signs customer tokens, password hashes) are made readable by their owner only.

use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Where a file or directory is written before it takes `path`'s name: the
/// hidden sibling `.<name>.<what>-<pid>` (by which a run finds what a killed
/// one left).
pub fn beside(path: &Path, what: &str) -> PathBuf {
    let name = path.file_name().map_or_else(|| "data".into(), |name| name.to_string_lossy().into_owned());
    path.with_file_name(format!(".{name}.{what}-{}", std::process::id()))
}

/// Give the whole, synced file `partial` the name `path`, durably: a link, which
/// fails (`AlreadyExists`) if `path` was made meanwhile where a rename would
/// replace it; then `partial` goes and the directory is synced.
///
/// A filesystem without hard links (FAT or exFAT, such as a USB stick) refuses
/// the link (`EPERM` or unsupported): there the file is renamed, once `path` is
/// seen not to exist (a file made in the moment between would be replaced).
pub fn link_into_place(partial: &Path, path: &Path) -> std::io::Result<()> {
    link_or_rename(partial, path, |from, to| std::fs::hard_link(from, to))
}

fn link_or_rename(
    partial: &Path,
    path: &Path,
    link: impl FnOnce(&Path, &Path) -> std::io::Result<()>,
) -> std::io::Result<()> {
    match link(partial, path) {
        Ok(()) => std::fs::remove_file(partial)?,
        Err(error) if matches!(error.kind(), ErrorKind::PermissionDenied | ErrorKind::Unsupported) => {
            if std::fs::symlink_metadata(path).is_ok() {
                return Err(std::io::Error::new(ErrorKind::AlreadyExists, format!("{} exists", path.display())));
            }
            std::fs::rename(partial, path)?;
        }
        Err(error) => return Err(error),
    }
    sync_parent(path)
}

/// `fsync` the directory that holds `path`, so an entry made in it is durable.
pub fn sync_parent(path: &Path) -> std::io::Result<()> {
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    File::open(parent)?.sync_all()
}

/// Create `dir` as `rwx------` if it does not exist (its parents as the umask
/// says), its entry in its parent made durable; an existing directory keeps its
/// mode.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    if let Some(parent) = dir.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => sync_parent(dir),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(error) => Err(error),
    }
}

/// Make the log's files in `dir` (see [`crate::is_log_file`]) readable by their
/// owner only, files `rw-------` and directories `rwx------`, where they are
/// not already: they hold the log's secrets, and sled creates its files with
/// the process's umask. The dir itself keeps its mode: one that existed before
/// (made by `mkdir` under a umask of 022, a systemd state directory, a volume)
/// may be listed by others, but none of the log's files read.
pub fn own_log_files(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if !entry.file_name().to_str().is_some_and(crate::is_log_file) {
            continue;
        }
        let kind = entry.file_type()?;
        let mode = if kind.is_dir() {
            0o700
        } else if kind.is_file() {
            0o600
        } else {
            continue;
        };
        if entry.metadata()?.permissions().mode() & 0o077 != 0 {
            match std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(mode)) {
                // Another user's file, which this one may write (a group's):
                // said, and left to its owner.
                Err(error) if error.kind() == std::io::ErrorKind::PermissionDenied => {
                    tracing::warn!(path = %entry.path().display(), "open to others, and not this user's to close");
                }
                result => result?,
            }
        }
    }
    Ok(())
}

/// Create the new file `path` as `rw-------` for writing; fails if it exists.
pub fn create_private_file(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn what_is_created_is_the_owners_only_and_an_existing_dir_keeps_its_mode() {
        let root = tempfile::tempdir().expect("temp dir");
        let dir = root.path().join("a/b/data");
        create_private_dir(&dir).expect("creates");
        let mode = |path: &Path| std::fs::metadata(path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        create_private_dir(&dir).expect("an existing dir is fine");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750)).expect("chmod");
        create_private_dir(&dir).expect("an existing dir is fine");
        assert_eq!(mode(&dir), 0o750, "an existing dir keeps its mode");

        let file = dir.join("shop.backup");
        drop(create_private_file(&file).expect("creates"));
        assert_eq!(mode(&file), 0o600);
        assert!(create_private_file(&file).is_err(), "an existing file is never overwritten");
        std::fs::write(root.path().join("plain"), b"x").expect("writes");
        assert!(create_private_dir(&root.path().join("plain")).is_err(), "a file is not a directory");
    }

    /// Where the filesystem has no hard links (FAT: `EPERM`), the whole file is
    /// renamed into place instead, still never over a file that is there.
    #[test]
    fn without_hard_links_a_file_is_renamed_into_place_but_never_over_another() {
        let root = tempfile::tempdir().expect("temp dir");
        let no_links = |_: &Path, _: &Path| Err(std::io::Error::from_raw_os_error(1)); // EPERM
        let (partial, path) = (root.path().join(".shop.backup.partial"), root.path().join("shop.backup"));
        std::fs::write(&partial, b"backup").expect("writes");
        link_or_rename(&partial, &path, no_links).expect("renamed into place");
        assert_eq!(std::fs::read(&path).expect("reads"), b"backup");
        assert!(!partial.exists(), "the partial name is gone");

        std::fs::write(&partial, b"another").expect("writes");
        let refused = link_or_rename(&partial, &path, no_links).expect_err("a file is there");
        assert_eq!(refused.kind(), ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).expect("reads"), b"backup", "the file there is kept");
        let refused = link_into_place(&partial, &path).expect_err("a file is there");
        assert_eq!(refused.kind(), ErrorKind::AlreadyExists, "with links too");
        let other = std::io::Error::from_raw_os_error(28); // ENOSPC: not about links
        let failed = link_or_rename(&partial, &root.path().join("x"), |_, _| Err(other)).expect_err("fails");
        assert_eq!(failed.raw_os_error(), Some(28));
        assert!(partial.exists() && !root.path().join("x").exists(), "nothing renamed on another error");
    }
}
