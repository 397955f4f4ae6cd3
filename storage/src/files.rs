//! The data folder is private to the server's user: the folder 0700 and
//! everything in it 0600 (the redb file, the token secret, the lock file,
//! anything else found there), whatever the umask. Conversations are in
//! that folder, so any other local user who could read it could read
//! every conversation.
//!
//! Two halves: whatever the server creates there is created private
//! ([`create_dir_private`], [`create_file_private`]: the mode is given at
//! creation, so there is no window where it is readable), and at start
//! [`secure_data_dir`] tightens what an older version or an operator left
//! looser, and says what it changed so the server can log it. Only
//! permission bits that grant something to group or others are removed;
//! the owner's bits are set to `rw` (files) or `rwx` (folders). Symbolic
//! links are left alone and not followed (their own mode means nothing on
//! Linux; what they point to is the operator's choice).

use std::fs::{self, DirBuilder, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::limits::DATA_DIR_DEPTH_MAX;

/// The mode of the data folder and of every folder in it.
pub const DIR_MODE: u32 = 0o700;
/// The mode of every file in the data folder.
pub const FILE_MODE: u32 = 0o600;

/// One mode [`secure_data_dir`] changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tightened {
    /// The file or folder.
    pub path: PathBuf,
    /// Its permission bits before.
    pub from: u32,
    /// Its permission bits now.
    pub to: u32,
}

/// Creates `dir` (and its missing parents) with mode 0700 if absent. An
/// existing folder is left as it is (see [`secure_data_dir`]).
pub fn create_dir_private(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)
}

/// Opens `path` for reading and writing, creating it with mode 0600 if
/// absent (not truncated).
pub fn create_file_private(path: &Path) -> io::Result<fs::File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .open(path)
}

/// Makes `dir` private: creates it 0700 if absent, then sets it and every
/// folder in it (to [`DATA_DIR_DEPTH_MAX`] levels) to 0700 and every file
/// to 0600 where they were anything else. Returns what changed.
pub fn secure_data_dir(dir: &Path) -> io::Result<Vec<Tightened>> {
    create_dir_private(dir)?;
    let mut changed = Vec::new();
    tighten(dir, DIR_MODE, &mut changed)?;
    walk(dir, 0, &mut changed)?;
    Ok(changed)
}

/// Tightens what is inside `dir`, `depth` levels below the data folder.
fn walk(dir: &Path, depth: usize, changed: &mut Vec<Tightened>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let path = entry.path();
        if kind.is_symlink() {
            continue;
        }
        if kind.is_dir() {
            tighten(&path, DIR_MODE, changed)?;
            if depth < DATA_DIR_DEPTH_MAX {
                walk(&path, depth + 1, changed)?;
            }
        } else {
            tighten(&path, FILE_MODE, changed)?;
        }
    }
    Ok(())
}

/// Sets `path`'s permission bits to `mode` if they differ.
fn tighten(path: &Path, mode: u32, changed: &mut Vec<Tightened>) -> io::Result<()> {
    let from = fs::symlink_metadata(path)?.permissions().mode() & 0o7777;
    if from != mode {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
        changed.push(Tightened {
            path: path.to_path_buf(),
            from,
            to: mode,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "switchboard-storage-files-{name}-{}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_new_data_folder_is_private() {
        let dir = temp_dir("new").join("nested");
        assert_eq!(secure_data_dir(&dir).unwrap(), vec![]);
        assert_eq!(mode(&dir), DIR_MODE);
        let file = dir.join("f");
        create_file_private(&file).unwrap();
        assert_eq!(mode(&file), FILE_MODE);
        fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }

    #[test]
    fn looser_modes_are_tightened_and_reported() {
        let dir = temp_dir("loose");
        fs::create_dir_all(dir.join("cache/deeper")).unwrap();
        for (path, m) in [
            (dir.clone(), 0o755),
            (dir.join("cache"), 0o777),
            (dir.join("cache/deeper"), 0o700),
        ] {
            fs::set_permissions(&path, fs::Permissions::from_mode(m)).unwrap();
        }
        for (name, m) in [
            ("switchboard.redb", 0o644),
            ("token_secret", 0o600),
            ("switchboard.lock", 0o666),
            ("cache/deeper/x", 0o640),
            ("setuid", 0o4755),
        ] {
            fs::write(dir.join(name), b"x").unwrap();
            fs::set_permissions(dir.join(name), fs::Permissions::from_mode(m)).unwrap();
        }
        std::os::unix::fs::symlink("/etc/hostname", dir.join("link")).unwrap();
        let mut changed = secure_data_dir(&dir).unwrap();
        changed.sort_by(|a, b| a.path.cmp(&b.path));
        let got: Vec<(String, u32, u32)> = changed
            .iter()
            .map(|t| {
                let rel = t.path.strip_prefix(&dir).unwrap();
                (rel.display().to_string(), t.from, t.to)
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("".to_string(), 0o755, 0o700),
                ("cache".into(), 0o777, 0o700),
                ("cache/deeper/x".into(), 0o640, 0o600),
                ("setuid".into(), 0o4755, 0o600),
                ("switchboard.lock".into(), 0o666, 0o600),
                ("switchboard.redb".into(), 0o644, 0o600),
            ]
        );
        for name in ["switchboard.redb", "token_secret", "cache/deeper/x"] {
            assert_eq!(mode(&dir.join(name)), FILE_MODE, "{name}");
        }
        assert_eq!(mode(&dir.join("cache/deeper")), DIR_MODE);
        // Nothing left to change the second time.
        assert_eq!(secure_data_dir(&dir).unwrap(), vec![]);
        fs::remove_dir_all(&dir).unwrap();
    }
}
