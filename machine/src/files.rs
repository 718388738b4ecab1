//! Files written so that an interrupted run never leaves half a file: [`write_file`] and
//! [`write_files`], and what they are made of.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Where the bytes for a file at a path should go ([`destination`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// A regular file, or nothing yet: replaced atomically (a temporary file renamed over it) at
    /// this path, which is the file a symbolic link names, so that the link stays a link.
    Replace(PathBuf),
    /// A device, a pipe or a socket (`/dev/null`, a FIFO a reader waits on): written into as
    /// it is. A file renamed over it would put a plain file in its place.
    WriteInto,
}

/// What writing a file at `path` should do: see [`Destination`]. A folder, or a path that cannot
/// be looked at, is left to the writer's own error.
pub fn destination(path: &Path) -> Destination {
    let linked = fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    match fs::metadata(path) {
        Ok(m) if !m.is_file() && !m.is_dir() => Destination::WriteInto,
        // A link to a file or a folder: its target (a rename over a folder then fails, as it
        // should, instead of replacing the link).
        Ok(_) if linked => {
            Destination::Replace(fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()))
        }
        // A link to nothing yet: the file it names, made.
        Err(_) if linked => match fs::read_link(path) {
            Ok(target) => Destination::Replace(path.parent().unwrap_or(path).join(target)),
            Err(_) => Destination::Replace(path.to_path_buf()),
        },
        _ => Destination::Replace(path.to_path_buf()),
    }
}

/// A name for the temporary file a write of `path` goes to before it is renamed over it:
/// `.<name>.tmp-<pid>-<n>` beside it, hidden, `n` counting this process's calls (two threads
/// writing one file get a temporary file each). [`remove_stale_temporaries`] knows the pattern.
pub fn temporary_path(path: &Path) -> PathBuf {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let n = CALLS.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.tmp-{}-{n}", std::process::id()))
}

/// The folder a file at `path` is in (`.` for a bare name).
pub fn parent_folder(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// Removes the temporary files ([`temporary_path`]) in `dir` that writes killed before their
/// rename left behind (`kill -9`, a power cut): this user's files of processes that no longer
/// run. Those of a live process (this one's included) are its writes in progress and are left
/// alone, and so is everything on a system without `/proc` to tell, and every other user's file
/// (under `hidepid=2` their processes cannot be seen). A process of another PID namespace (a
/// container) writing into the same folder as the same user is not told apart. Best effort:
/// nothing here is an error.
pub fn remove_stale_temporaries(dir: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(me) = fs::metadata("/proc/self").map(|m| m.uid()) else {
        return;
    };
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(pid) = file.to_str().and_then(temporary_pid) else {
            continue;
        };
        let mine = entry.metadata().is_ok_and(|m| m.is_file() && m.uid() == me);
        if mine && !running(pid) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// The process id in a temporary file's name (`.<name>.tmp-<pid>-<n>`, or `.<name>.tmp-<pid>`
/// as builds before the counter named them), if it is one.
fn temporary_pid(file: &str) -> Option<u32> {
    let (name, tail) = file.strip_prefix('.')?.rsplit_once(".tmp-")?;
    let (pid, n) = tail.split_once('-').unwrap_or((tail, "0"));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (!name.is_empty() && digits(n)).then_some(())?;
    pid.parse().ok().filter(|_| digits(pid))
}

/// [`remove_stale_temporaries`] in the folder of `path`, the first time this process writes
/// there: a folder of ten thousand images is read once, not once per image (a killed process's
/// files are there before this one starts, and no later write of this one leaves any).
fn remove_stale_temporaries_once(path: &Path) {
    static DONE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    let dir = parent_folder(path);
    let mut done = DONE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if !done.iter().any(|d| d == dir) {
        done.push(dir.to_path_buf());
        drop(done);
        remove_stale_temporaries(dir);
    }
}

/// Whether process `pid` may be running: unless its `/proc/<pid>/stat` is missing or says it is
/// a zombie (killed, its parent not having collected it yet). A `stat` that cannot be read for
/// another reason (`/proc` mounted with `hidepid`) counts as running.
fn running(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // `pid (command) state ...`; the command may hold spaces and parentheses.
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(e) => e.kind() != io::ErrorKind::NotFound,
    }
}

/// Checks, before a command does its work, that `dir` can be the folder it writes its files
/// into: a folder, or nothing yet (made when the files are written).
///
/// # Errors
/// [`WriteError`] naming `dir` when a file (or anything but a folder) is there.
pub fn check_output_folder(dir: &Path) -> Result<(), WriteError> {
    match fs::metadata(dir) {
        Ok(m) if !m.is_dir() => Err(WriteError {
            path: dir.to_path_buf(),
            source: io::Error::new(
                io::ErrorKind::NotADirectory,
                "it is a file, not a folder to write into",
            ),
        }),
        _ => Ok(()),
    }
}

/// A file [`write_files`] could not write, and why.
#[derive(Debug)]
pub struct WriteError {
    /// The file, as the caller named it.
    pub path: PathBuf,
    /// What went wrong.
    pub source: io::Error,
}

impl fmt::Display for WriteError {
    /// `cannot write <path>`; the cause is the error's [`source`](std::error::Error::source)
    /// (anyhow prints it below, `{:#}` after a colon).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot write {}", self.path.display())
    }
}

impl std::error::Error for WriteError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Writes `bytes` to `path` atomically: readers see the old file or the whole new one, never a
/// part. See [`write_files`].
///
/// # Errors
/// [`WriteError`] naming `path`.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    write_files(&[(path.to_path_buf(), bytes)])
}

/// Writes every file or, as far as the file system allows, none: each into a temporary file
/// beside it ([`temporary_path`]), synced, and once all are written each renamed into place and
/// its folder synced. A failure while writing (a full disk, a folder in a file's place) removes
/// the temporary files and leaves the files already there as they were; a failed rename removes
/// the temporary files not yet renamed. Each folder is synced once, after its renames: a set of
/// a thousand images in one folder costs a thousand file syncs and one folder sync. A link is
/// followed (the file it names is replaced; the link stays), and a device or a pipe
/// (`/dev/null`, a FIFO) is written into as it is, after the others ([`destination`]). The first write into a folder removes the temporary files that
/// killed processes left there ([`remove_stale_temporaries`]).
///
/// # Errors
/// [`WriteError`] naming the first file that failed.
pub fn write_files<B: AsRef<[u8]>>(files: &[(PathBuf, B)]) -> Result<(), WriteError> {
    // (temporary file, file it becomes, file as named, bytes)
    let mut staged: Vec<(PathBuf, PathBuf, &Path, &[u8])> = Vec::with_capacity(files.len());
    let mut into: Vec<(&PathBuf, &[u8])> = Vec::new();
    for (path, bytes) in files {
        let bytes = bytes.as_ref();
        let failed = |source| WriteError {
            path: path.clone(),
            source,
        };
        match destination(path) {
            // Checked before anything is read or written (`/`, `..`, an empty path).
            Destination::Replace(target) if target.file_name().is_none() => {
                let no_name = io::Error::new(io::ErrorKind::InvalidInput, "no file name");
                return Err(failed(no_name));
            }
            Destination::Replace(target) => {
                remove_stale_temporaries_once(&target);
                staged.push((temporary_path(&target), target, path, bytes));
            }
            Destination::WriteInto => into.push((path, bytes)),
        }
    }
    let failed = |path: &Path, source| WriteError {
        path: path.to_path_buf(),
        source,
    };
    let write = |temporary: &Path, path: &Path, bytes: &[u8]| -> io::Result<()> {
        // A folder in a file's place would stop its rename half-way through the set.
        if path.is_dir() {
            return Err(io::Error::other("a folder is in the way"));
        }
        let mut f = fs::File::create(temporary)?;
        f.write_all(bytes)?;
        f.sync_all()
    };
    for (i, (temporary, path, named, bytes)) in staged.iter().enumerate() {
        if let Err(e) = write(temporary, path, bytes) {
            for (written, ..) in &staged[..=i] {
                fs::remove_file(written).ok();
            }
            return Err(failed(named, e));
        }
    }
    // The folders the renames change, each synced once when they are done.
    let mut folders: Vec<&Path> = Vec::new();
    for (i, (temporary, path, named, _)) in staged.iter().enumerate() {
        if let Err(e) = fs::rename(temporary, path) {
            // The files renamed so far stay (new); the rest keep their old contents, and none
            // of their temporary files is left behind.
            for (waiting, ..) in &staged[i..] {
                fs::remove_file(waiting).ok();
            }
            sync_folders(&folders);
            return Err(failed(named, e));
        }
        let folder = parent_folder(path);
        if !folders.contains(&folder) {
            folders.push(folder);
        }
    }
    sync_folders(&folders);
    for (path, bytes) in into {
        fs::OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|mut f| f.write_all(bytes))
            .map_err(|e| failed(path, e))?;
    }
    Ok(())
}

/// Puts the renames into `folders` on disk too (a crash right after a rename could otherwise
/// undo it). A file system that cannot sync a folder has still renamed the files: not an error.
fn sync_folders(folders: &[&Path]) {
    for folder in folders {
        let _ = fs::File::open(folder).and_then(|d| d.sync_all());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_devices_and_files_have_their_destinations() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("a.png");
        assert_eq!(destination(&file), Destination::Replace(file.clone()));
        fs::write(&file, b"x").unwrap();
        assert_eq!(destination(&file), Destination::Replace(file.clone()));
        let link = dir.path().join("link.png");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let target = fs::canonicalize(&file).unwrap();
        assert_eq!(destination(&link), Destination::Replace(target));
        assert_eq!(destination(Path::new("/dev/null")), Destination::WriteInto);
        // A link to a folder: the folder (the writer's rename then fails); a dangling link: the
        // file it names.
        let folder = dir.path().join("folder");
        fs::create_dir(&folder).unwrap();
        let to_folder = dir.path().join("to-folder.png");
        std::os::unix::fs::symlink("folder", &to_folder).unwrap();
        let folder = fs::canonicalize(&folder).unwrap();
        assert_eq!(destination(&to_folder), Destination::Replace(folder));
        let dangling = dir.path().join("dangling.png");
        std::os::unix::fs::symlink("new.png", &dangling).unwrap();
        assert_eq!(
            destination(&dangling),
            Destination::Replace(dir.path().join("new.png"))
        );
        assert_eq!(
            destination(dir.path()),
            Destination::Replace(dir.path().to_path_buf())
        );
    }

    #[test]
    fn only_the_temporary_files_of_processes_gone_are_removed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = dir.path().join("out.y8");
        let mine = temporary_path(&out);
        // No process has this id (the kernel's limit is at most 2^22).
        // Also the name before the counter (`.<name>.tmp-<pid>`).
        let gone = [
            ".out.y8.tmp-4294967-0",
            ".other.png.tmp-4294967-12",
            ".out.y8.tmp-4294967",
        ];
        let others = [
            ".out.y8.tmp-x-0",
            ".out.y8.tmp-4294967-",
            ".tmp-4294967-0",
            "out.y8.tmp-4294967-0",
            "out.y8",
        ];
        fs::write(&mine, b"partial").unwrap();
        for file in gone.iter().chain(&others) {
            fs::write(dir.path().join(file), b"partial").unwrap();
        }
        remove_stale_temporaries(dir.path());
        assert!(mine.exists(), "a write in progress was removed");
        for file in gone {
            assert!(!dir.path().join(file).exists(), "{file} was kept");
        }
        for file in others {
            assert!(dir.path().join(file).exists(), "{file} was removed");
        }
    }

    #[test]
    fn an_output_folder_may_be_a_folder_or_nothing_yet() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert!(check_output_folder(dir.path()).is_ok());
        assert!(check_output_folder(&dir.path().join("not-yet")).is_ok());
        let file = dir.path().join("a-file");
        fs::write(&file, b"x").unwrap();
        let err = check_output_folder(&file).unwrap_err();
        assert_eq!(err.path, file);
        assert_eq!(err.source.kind(), io::ErrorKind::NotADirectory);
    }

    #[test]
    fn a_set_of_files_is_written_whole_or_not_at_all() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (a, b) = (dir.path().join("a.json"), dir.path().join("b.csv"));
        fs::write(&a, b"old a").unwrap();
        // A folder where the second file should go: nothing is written, a is as it was.
        fs::create_dir(&b).unwrap();
        let err = write_files(&[(a.clone(), b"new a"), (b.clone(), b"new b")]).unwrap_err();
        assert_eq!(err.path, b);
        assert_eq!(err.to_string(), format!("cannot write {}", b.display()));
        assert_eq!(fs::read(&a).unwrap(), b"old a");
        fs::remove_dir(&b).unwrap();
        write_files(&[(a.clone(), b"new a"), (b.clone(), b"new b")]).unwrap();
        assert_eq!(fs::read(&a).unwrap(), b"new a");
        assert_eq!(fs::read(&b).unwrap(), b"new b");
        // A link stays a link, its file replaced; a device is written into, not replaced.
        let link = dir.path().join("link.csv");
        std::os::unix::fs::symlink("b.csv", &link).unwrap();
        write_file(&link, b"through the link").unwrap();
        assert!(fs::symlink_metadata(&link).unwrap().is_symlink());
        assert_eq!(fs::read(&b).unwrap(), b"through the link");
        write_file(Path::new("/dev/null"), b"gone").unwrap();
        assert!(!fs::metadata("/dev/null").unwrap().is_file());
        // A path without a file name is refused before anything is read or written.
        for nameless in ["/", "", ".."] {
            let err = write_file(Path::new(nameless), b"x").unwrap_err();
            assert_eq!(
                err.source.kind(),
                io::ErrorKind::InvalidInput,
                "{nameless:?}"
            );
        }
        // Nothing is left behind but the files.
        let mut names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["a.json", "b.csv", "link.csv"]);
    }
}
