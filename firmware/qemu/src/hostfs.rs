//! Files in the host's current directory, through Arm semihosting.
//!
//! Uses the semihosting operations `SYS_OPEN`, `SYS_FLEN`, `SYS_READ`, `SYS_WRITE` and
//! `SYS_CLOSE` (issued with `cortex_m_semihosting::syscall!`), and `SYS_GET_CMDLINE` for the
//! command line QEMU was given. QEMU serves them when started with `-semihosting-config
//! enable=on,target=native`; on a board without a debugger attached the `bkpt` instruction behind
//! them faults instead.

use cortex_m_semihosting::{nr, syscall, syscall1};

/// Longest path accepted, in bytes (a NUL is appended on the way to the host).
pub const MAX_PATH: usize = 63;

/// Why a host file operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, defmt::Format)]
pub enum Error {
    /// The path is longer than [`MAX_PATH`] or contains a NUL byte.
    BadPath,
    /// The host could not open the file (missing, or no permission).
    Open,
    /// The host could not tell the file's length.
    Length,
    /// The file does not fit the buffer given to [`read`].
    TooLarge {
        /// Length of the file, in bytes.
        len: usize,
        /// Size of the buffer, in bytes.
        capacity: usize,
    },
    /// Reading failed, or the file ended early.
    Read,
    /// Writing failed.
    Write,
    /// The host could not hand over the command line (or it is longer than the buffer).
    CommandLine,
}

/// An open host file, closed when dropped.
#[derive(Debug)]
pub struct File {
    handle: usize,
}

impl File {
    /// Opens an existing file for reading, in binary mode (`"rb"`).
    pub fn open(path: &str) -> Result<Self, Error> {
        Self::open_mode(path, nr::open::R_BINARY)
    }

    /// Creates or truncates a file for writing, in binary mode (`"wb"`).
    pub fn create(path: &str) -> Result<Self, Error> {
        Self::open_mode(path, nr::open::W_TRUNC_BINARY)
    }

    fn open_mode(path: &str, mode: usize) -> Result<Self, Error> {
        let bytes = path.as_bytes();
        if bytes.len() > MAX_PATH || bytes.contains(&0) {
            return Err(Error::BadPath);
        }
        let mut name = [0u8; MAX_PATH + 1];
        name[..bytes.len()].copy_from_slice(bytes);
        // SAFETY: `name` is NUL-terminated, lives across the call, and the length given
        // excludes the NUL, as SYS_OPEN requires.
        let handle = unsafe { syscall!(OPEN, name.as_ptr(), mode, bytes.len()) };
        if handle as isize == -1 {
            return Err(Error::Open);
        }
        Ok(File { handle })
    }

    /// The file's length in bytes.
    pub fn len(&self) -> Result<usize, Error> {
        // SAFETY: SYS_FLEN only reads the handle, which we own.
        let len = unsafe { syscall!(FLEN, self.handle) };
        if len as isize == -1 {
            return Err(Error::Length);
        }
        Ok(len)
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> Result<bool, Error> {
        self.len().map(|len| len == 0)
    }

    /// Fills `buf` from the current position; fails if the file ends first.
    pub fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), Error> {
        let mut done = 0;
        while done < buf.len() {
            let rest = &mut buf[done..];
            // SAFETY: the host writes at most `rest.len()` bytes into `rest`, which we borrow
            // mutably for the call.
            let not_read = unsafe { syscall!(READ, self.handle, rest.as_mut_ptr(), rest.len()) };
            // SYS_READ returns how many bytes were *not* read: all of them means end of file,
            // more than asked means an error (-1).
            if not_read >= rest.len() {
                return Err(Error::Read);
            }
            done += rest.len() - not_read;
        }
        Ok(())
    }

    /// Writes all of `data` at the current position.
    pub fn write_all(&mut self, data: &[u8]) -> Result<(), Error> {
        let mut done = 0;
        while done < data.len() {
            let rest = &data[done..];
            // SAFETY: the host only reads `rest`, which we borrow for the call.
            let not_written = unsafe { syscall!(WRITE, self.handle, rest.as_ptr(), rest.len()) };
            // SYS_WRITE returns how many bytes were *not* written.
            if not_written >= rest.len() {
                return Err(Error::Write);
            }
            done += rest.len() - not_written;
        }
        Ok(())
    }
}

impl Drop for File {
    fn drop(&mut self) {
        // SAFETY: the handle is ours and is not used after this. A failed close is not
        // reported: the data was already handed to the host by `write_all`.
        unsafe {
            syscall!(CLOSE, self.handle);
        }
    }
}

/// Reads the whole file at `path` into the start of `buf`, returning its length.
///
/// Fails with [`Error::TooLarge`] (reading nothing) if the file is longer than `buf`.
pub fn read(path: &str, buf: &mut [u8]) -> Result<usize, Error> {
    let mut file = File::open(path)?;
    let len = file.len()?;
    if len > buf.len() {
        return Err(Error::TooLarge {
            len,
            capacity: buf.len(),
        });
    }
    file.read_exact(&mut buf[..len])?;
    Ok(len)
}

/// Creates (or truncates) the file at `path` and writes `data` into it.
pub fn write(path: &str, data: &[u8]) -> Result<(), Error> {
    File::create(path)?.write_all(data)
}

/// The command line QEMU passes to the program, read into `buf`: the words given with
/// `-semihosting-config ...,arg=WORD,arg=WORD`, or else the `-kernel` path followed by the
/// `-append` string.
pub fn command_line(buf: &mut [u8]) -> Result<&str, Error> {
    // SYS_GET_CMDLINE takes a {buffer, length} block and writes the line's length back into it.
    let mut block = [buf.as_mut_ptr() as usize, buf.len()];
    // SAFETY: the host writes at most `buf.len()` bytes into `buf` and one word into `block`,
    // both of which we borrow mutably for the call.
    let status = unsafe { syscall1(nr::GET_CMDLINE, block.as_mut_ptr() as usize) };
    if status != 0 || block[1] > buf.len() {
        return Err(Error::CommandLine);
    }
    core::str::from_utf8(&buf[..block[1]]).map_err(|_| Error::CommandLine)
}
