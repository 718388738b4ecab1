//! Ctrl-C on a frame stream: the first SIGINT or SIGTERM ends it cleanly (every frame read is
//! written, a file `--out` kept), a second quits at once, deleting the stream's temporary file.

use std::path::Path;
use std::sync::atomic::AtomicBool;

/// Set by the first SIGINT or SIGTERM once [`stop_on_interrupt`] has run.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// The temporary file a stream is writing, as a C string (leaked), which a second signal deletes
/// before it exits: quitting at once keeps nothing, not a file cut inside a frame.
static TEMPORARY_OUTPUT: std::sync::atomic::AtomicPtr<libc::c_char> =
    std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());

/// A stream's input that stops waiting for data once the stream is interrupted: the signal may
/// be taken by any thread, so the reader cannot count on its blocking `read` returning `EINTR`.
/// It waits in `poll` for at most a tenth of a second at a time and looks at the flag between.
#[cfg(unix)]
struct Interruptible<R> {
    inner: R,
    fd: std::os::fd::RawFd,
    stop: &'static AtomicBool,
}

#[cfg(unix)]
impl<R: std::io::Read> std::io::Read for Interruptible<R> {
    #[allow(unsafe_code)]
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if self.stop.load(std::sync::atomic::Ordering::Relaxed) {
                // The input ends here: the frame being read, if any, is dropped as cut short.
                return Ok(0);
            }
            let mut fd = libc::pollfd {
                fd: self.fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid `pollfd`, for the duration of the call.
            match unsafe { libc::poll(&mut fd, 1, 100) } {
                0 => continue,
                n if n < 0 => {
                    let error = std::io::Error::last_os_error();
                    if error.kind() != std::io::ErrorKind::Interrupted {
                        return Err(error);
                    }
                }
                // Data, the end of the input or an error: `read` says which.
                _ => return self.inner.read(buf),
            }
        }
    }
}

/// Makes the first Ctrl-C (SIGINT, or a SIGTERM) end a frame stream cleanly instead of killing
/// the process: the stream takes no further frame, writes every frame it read, and keeps a file
/// `--out` (a camera pipeline is normally stopped this way). A second signal exits at once.
/// Returns the flag the stream watches.
#[cfg(unix)]
#[allow(unsafe_code)]
pub(crate) fn stop_on_interrupt() -> &'static AtomicBool {
    extern "C" fn on_signal(_: libc::c_int) {
        const NOTE: &[u8] = b"interrupted: finishing the frames read so far (again to quit now)\n";
        if INTERRUPTED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            let temporary = TEMPORARY_OUTPUT.load(std::sync::atomic::Ordering::Relaxed);
            // SAFETY: `unlink` and `_exit` are async-signal-safe; a non-null TEMPORARY_OUTPUT
            // is a leaked, never freed C string.
            unsafe {
                if !temporary.is_null() {
                    libc::unlink(temporary);
                }
                libc::_exit(130)
            };
        }
        // SAFETY: `write` is async-signal-safe; NOTE outlives the call. A failed write is moot.
        unsafe { libc::write(2, NOTE.as_ptr().cast(), NOTE.len()) };
    }
    // SAFETY: the handler only touches atomics and calls `write`, `unlink` and `_exit`, all
    // async-signal-safe.
    // Whichever thread takes the signal, the stream's reader sees the flag within a tenth of a
    // second, even on an input that sends nothing more ([`Interruptible`]).
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::sigemptyset(&mut action.sa_mask);
        for signal in [libc::SIGINT, libc::SIGTERM] {
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
    &INTERRUPTED
}

#[cfg(not(unix))]
pub(crate) fn stop_on_interrupt() -> &'static AtomicBool {
    &INTERRUPTED
}

/// Has a second signal delete `path` (the stream's temporary output) before the process exits.
#[cfg(unix)]
pub(crate) fn delete_on_second_interrupt(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    if let Ok(path) = std::ffi::CString::new(path.as_os_str().as_bytes()) {
        TEMPORARY_OUTPUT.store(path.into_raw(), std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(not(unix))]
pub(crate) fn delete_on_second_interrupt(_: &Path) {}

/// `input`, made to stop waiting once `stop` is set ([`Interruptible`]).
#[cfg(unix)]
pub(crate) fn interruptible<R>(input: R, stop: &'static AtomicBool) -> Box<dyn std::io::Read + Send>
where
    R: std::io::Read + std::os::fd::AsRawFd + Send + 'static,
{
    let fd = input.as_raw_fd();
    Box::new(Interruptible {
        inner: input,
        fd,
        stop,
    })
}

#[cfg(not(unix))]
pub(crate) fn interruptible<R>(input: R, _: &'static AtomicBool) -> Box<dyn std::io::Read + Send>
where
    R: std::io::Read + Send + 'static,
{
    Box::new(input)
}
