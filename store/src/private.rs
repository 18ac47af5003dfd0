//! Files and directories that hold the log's secrets (subject keys, the key that
//! signs customer tokens, password hashes) are made readable by their owner only.

use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// Create `dir` as `rwx------` if it does not exist (its parents as the umask
/// says); an existing directory keeps its mode.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    if let Some(parent) = dir.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        other => other,
    }
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
}
