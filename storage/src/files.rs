//! The data folder is private to the server's user: created 0700, and
//! every file the server writes there created 0600, whatever the umask.
//! Conversations are in that folder, so any other local user who could
//! read it could read every conversation.
//!
//! Two halves: whatever the server creates there is created private
//! ([`create_dir_private`], [`create_file_private`]: the mode is given at
//! creation, so there is no window where it is readable), and at start
//! [`secure_data_dir`] tightens what an older version or an operator left
//! looser, and says what it changed so the server can log it. It touches
//! only the folder itself and the files the server owns there
//! ([`KNOWN_FILES`] and the token secret's temporary files), and from
//! those it only clears the group and other bits: the owner's bits (and
//! setuid/setgid/sticky) are kept. Known files are opened with
//! `O_NOFOLLOW` and changed through the open handle, so a symbolic link is
//! never followed and nothing can be swapped in between the check and the
//! change. Anything else in the folder is the operator's: it is left as it
//! is, and reported when group or others can reach it.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The mode the data folder is created with.
pub const DIR_MODE: u32 = 0o700;
/// The mode every file the server writes in the data folder is created with.
pub const FILE_MODE: u32 = 0o600;
/// The permission bits that grant something to group or others.
pub const GROUP_OTHER: u32 = 0o077;

/// The lock file's name inside the data folder.
pub const LOCK_FILE_NAME: &str = "switchboard.lock";

/// The files the server writes in the data folder, whose modes
/// [`secure_data_dir`] tightens.
pub const KNOWN_FILES: [&str; 4] = [
    crate::embedded::DB_FILE_NAME,
    crate::wal::WAL_FILE_NAME,
    LOCK_FILE_NAME,
    crate::token::SECRET_FILE_NAME,
];

/// How the token secret's temporary files are named (`.token_secret.tmp.`
/// then the process id and a random suffix); left behind only by a crash
/// between writing and linking.
pub const SECRET_TMP_PREFIX: &str = ".token_secret.tmp.";

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

/// Something in the data folder that group or others can reach and that
/// [`secure_data_dir`] left as it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exposed {
    /// The file or folder.
    pub path: PathBuf,
    /// Its permission bits.
    pub mode: u32,
    /// Why it was not changed: `None` for an entry that is not the
    /// server's, or the error met changing one that is.
    pub error: Option<String>,
}

/// What [`secure_data_dir`] did and found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Secured {
    /// The modes it tightened.
    pub tightened: Vec<Tightened>,
    /// What it left reachable by group or others.
    pub exposed: Vec<Exposed>,
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

/// The folder of per-user traces inside the data folder.
pub const TRACES_DIR_NAME: &str = "traces";

/// Opens a per-user trace file at `path` for writing, emptied: created
/// with mode 0600, or an existing one cut to nothing and its group and
/// other bits cleared through the open handle. Never follows a symbolic
/// link (`O_NOFOLLOW`: a link there is an error, so a trace cannot be
/// made to overwrite another file) and never blocks on a FIFO
/// (`O_NONBLOCK`); anything but a regular file is refused.
pub fn create_trace_file(path: &Path) -> io::Result<fs::File> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    tighten(&file, path)?;
    Ok(file)
}

/// Opens the per-user trace file at `path` for reading, never following a
/// symbolic link nor blocking on a FIFO; anything but a regular file is
/// refused.
pub fn open_trace_file(path: &Path) -> io::Result<fs::File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    Ok(file)
}

/// Makes `DATA_DIR/traces` (and the data folder, if absent) with mode
/// 0700, and checks it is a folder of its own, not a symbolic link; a
/// folder left open to group or others is tightened. Returns its path.
pub fn create_traces_dir(data_dir: &Path) -> io::Result<PathBuf> {
    let dir = data_dir.join(TRACES_DIR_NAME);
    create_dir_private(&dir)?;
    let meta = fs::symlink_metadata(&dir)?;
    if !meta.is_dir() {
        return Err(io::Error::other(format!(
            "{} is not a folder (a symbolic link?)",
            dir.display()
        )));
    }
    if meta.permissions().mode() & GROUP_OTHER != 0 {
        let folder = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(&dir)?;
        tighten(&folder, &dir)?;
    }
    Ok(dir)
}

/// Whether `name` is one of the files the server writes in the data folder.
pub fn is_known_file(name: &str) -> bool {
    KNOWN_FILES.contains(&name) || name.starts_with(SECRET_TMP_PREFIX)
}

/// Makes `dir` private: creates it 0700 if absent; clears the group and
/// other bits of the folder (following it if it is a symbolic link: the
/// operator named it) and of the server's own files in it (never following
/// a link); reports anything else in it that group or others can reach.
/// An error on the folder itself is returned; an error on one of its files
/// is reported in [`Secured::exposed`].
pub fn secure_data_dir(dir: &Path) -> io::Result<Secured> {
    create_dir_private(dir)?;
    let mut secured = Secured::default();
    // The folder, through an open handle: what is checked is what is changed.
    let folder = fs::File::open(dir)?;
    if let Some(t) = tighten(&folder, dir)? {
        secured.tightened.push(t);
    }
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let known = entry.file_name().to_str().is_some_and(is_known_file);
        if known {
            match tighten_file(&path) {
                Ok(Some(t)) => secured.tightened.push(t),
                Ok(None) => {}
                Err((mode, e)) => secured.exposed.push(Exposed {
                    path,
                    mode,
                    error: Some(e.to_string()),
                }),
            }
            continue;
        }
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue; // gone meanwhile
        };
        let mode = meta.permissions().mode() & 0o7777;
        if !meta.file_type().is_symlink() && mode & GROUP_OTHER != 0 {
            secured.exposed.push(Exposed {
                path,
                mode,
                error: None,
            });
        }
    }
    Ok(secured)
}

/// Clears the group and other bits of the server's file at `path`, opened
/// without following a symbolic link (and without blocking on a FIFO).
/// Only a regular file is changed. On error, returns the mode it had (0 if
/// unknown) with the error.
fn tighten_file(path: &Path) -> Result<Option<Tightened>, (u32, io::Error)> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| {
            let mode = fs::symlink_metadata(path).map_or(0, |m| m.permissions().mode() & 0o7777);
            (mode, e)
        })?;
    let meta = file.metadata().map_err(|e| (0, e))?;
    let mode = meta.permissions().mode() & 0o7777;
    if !meta.is_file() {
        if mode & GROUP_OTHER == 0 {
            return Ok(None);
        }
        return Err((mode, io::Error::other("not a regular file")));
    }
    tighten(&file, path).map_err(|e| (mode, e))
}

/// Clears the group and other bits of the open `file` (at `path`) if any
/// are set.
fn tighten(file: &fs::File, path: &Path) -> io::Result<Option<Tightened>> {
    let from = file.metadata()?.permissions().mode() & 0o7777;
    let to = from & !GROUP_OTHER;
    if from == to {
        return Ok(None);
    }
    file.set_permissions(fs::Permissions::from_mode(to))?;
    Ok(Some(Tightened {
        path: path.to_path_buf(),
        from,
        to,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
    }

    fn set_mode(path: &Path, m: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(m)).unwrap();
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "switchboard-storage-files-{name}-{}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn rel(dir: &Path, path: &Path) -> String {
        path.strip_prefix(dir).unwrap().display().to_string()
    }

    #[test]
    fn a_new_data_folder_is_private() {
        let dir = temp_dir("new").join("nested");
        assert_eq!(secure_data_dir(&dir).unwrap(), Secured::default());
        assert_eq!(mode(&dir), DIR_MODE);
        let file = dir.join("f");
        create_file_private(&file).unwrap();
        assert_eq!(mode(&file), FILE_MODE);
        fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }

    #[test]
    fn known_files_lose_group_and_other_bits_and_the_rest_is_reported() {
        let dir = temp_dir("loose");
        fs::create_dir_all(dir.join("cache")).unwrap();
        set_mode(&dir, 0o755);
        set_mode(&dir.join("cache"), 0o777);
        let tmp = format!("{SECRET_TMP_PREFIX}1.2");
        for (name, m) in [
            ("switchboard.redb", 0o644),
            ("token_secret", 0o600),
            ("switchboard.lock", 0o4766),
            (tmp.as_str(), 0o640),
            ("notes.txt", 0o644),
            ("script.sh", 0o755),
            ("private", 0o600),
        ] {
            fs::write(dir.join(name), b"x").unwrap();
            set_mode(&dir.join(name), m);
        }
        let outside = temp_dir("loose-outside");
        fs::write(&outside, b"x").unwrap();
        set_mode(&outside, 0o644);
        // A link in a known file's place is not followed, nor is any other.
        fs::rename(dir.join("token_secret"), dir.join("secret-moved")).unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("token_secret")).unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("link")).unwrap();

        let mut secured = secure_data_dir(&dir).unwrap();
        secured.tightened.sort_by(|a, b| a.path.cmp(&b.path));
        secured.exposed.sort_by(|a, b| a.path.cmp(&b.path));
        let tightened: Vec<(String, u32, u32)> = secured
            .tightened
            .iter()
            .map(|t| (rel(&dir, &t.path), t.from, t.to))
            .collect();
        assert_eq!(
            tightened,
            vec![
                ("".to_string(), 0o755, 0o700),
                (tmp.clone(), 0o640, 0o600),
                ("switchboard.lock".into(), 0o4766, 0o4700),
                ("switchboard.redb".into(), 0o644, 0o600),
            ]
        );
        let exposed: Vec<(String, u32, bool)> = secured
            .exposed
            .iter()
            .map(|e| (rel(&dir, &e.path), e.mode, e.error.is_some()))
            .collect();
        assert_eq!(
            exposed,
            vec![
                ("cache".to_string(), 0o777, false),
                ("notes.txt".into(), 0o644, false),
                ("script.sh".into(), 0o755, false),
                // The link's own mode, with the O_NOFOLLOW error.
                ("token_secret".into(), 0o777, true),
            ]
        );
        // Not the server's: left as they were; the link's target untouched.
        assert_eq!(mode(&dir.join("cache")), 0o777);
        assert_eq!(mode(&dir.join("script.sh")), 0o755);
        assert_eq!(mode(&outside), 0o644);
        // Nothing left to change the second time.
        assert!(secure_data_dir(&dir).unwrap().tightened.is_empty());
        fs::remove_dir_all(&dir).unwrap();
        fs::remove_file(&outside).unwrap();
    }

    #[test]
    fn a_linked_data_folder_is_followed_without_complaint() {
        let real = temp_dir("real");
        fs::create_dir_all(&real).unwrap();
        set_mode(&real, 0o750);
        let link = temp_dir("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let secured = secure_data_dir(&link).unwrap();
        assert_eq!(
            secured.tightened,
            vec![Tightened {
                path: link.clone(),
                from: 0o750,
                to: 0o700
            }]
        );
        assert_eq!(mode(&real), 0o700);
        assert_eq!(secure_data_dir(&link).unwrap(), Secured::default());
        fs::remove_file(&link).unwrap();
        fs::remove_dir_all(&real).unwrap();
    }

    #[test]
    fn trace_files_are_private_emptied_and_never_through_a_link() {
        let data = temp_dir("traces");
        let dir = create_traces_dir(&data).unwrap();
        assert_eq!(dir, data.join(TRACES_DIR_NAME));
        assert_eq!(mode(&dir), 0o700);
        let path = dir.join("user-42.log");
        fs::write(&path, "old lines\n").unwrap();
        set_mode(&path, 0o644);
        let file = create_trace_file(&path).unwrap();
        drop(file);
        assert_eq!(mode(&path), 0o600);
        assert_eq!(fs::read_to_string(&path).unwrap(), "", "emptied");
        assert!(open_trace_file(&path).is_ok());
        // A link where a trace goes is refused, and its target untouched.
        let target = data.join("elsewhere.txt");
        fs::write(&target, "keep me").unwrap();
        let link = dir.join("user-7.log");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(create_trace_file(&link).is_err());
        assert!(open_trace_file(&link).is_err());
        assert_eq!(fs::read_to_string(&target).unwrap(), "keep me");
        // So is a traces folder that is a link, and one left open is
        // tightened.
        let other = temp_dir("traces-other");
        fs::create_dir_all(&other).unwrap();
        let data2 = temp_dir("traces-linked");
        fs::create_dir_all(&data2).unwrap();
        std::os::unix::fs::symlink(&other, data2.join(TRACES_DIR_NAME)).unwrap();
        assert!(create_traces_dir(&data2).is_err());
        set_mode(&dir, 0o755);
        create_traces_dir(&data).unwrap();
        assert_eq!(mode(&dir), 0o700);
        for d in [&data, &other, &data2] {
            fs::remove_dir_all(d).unwrap();
        }
    }
}
