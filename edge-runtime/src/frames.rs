//! Raw frame streams, as camera tools write them (`rpicam-vid --codec yuv420 -o -`), denoised
//! frame by frame on worker threads, in order, with a bounded number of frames in memory.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use crate::{Denoiser, Error};

/// Layout of one raw frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameFormat {
    /// 8-bit luma only, `width * height` bytes.
    Gray8,
    /// Planar YUV 4:2:0 (I420): the luma plane, then U and V at half width and height (rounded
    /// up), rows tightly packed. Only the luma is denoised; the chroma passes through.
    Yuv420,
}

impl FromStr for FrameFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "gray8" | "gray" | "y8" => Ok(Self::Gray8),
            "yuv420" | "i420" => Ok(Self::Yuv420),
            _ => Err(format!("unknown frame format {s:?}: use gray8 or yuv420")),
        }
    }
}

impl FrameFormat {
    /// Bytes of one `width x height` frame; `usize::MAX` for a frame too large to address (no
    /// buffer of that size can be allocated, so using it fails as out of memory, never wraps).
    pub fn frame_bytes(self, width: usize, height: usize) -> usize {
        let luma = width.saturating_mul(height);
        match self {
            Self::Gray8 => luma,
            Self::Yuv420 => width
                .div_ceil(2)
                .saturating_mul(height.div_ceil(2))
                .saturating_mul(2)
                .saturating_add(luma),
        }
    }
}

/// What [`denoise_stream`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamSummary {
    /// Frames read, denoised and written.
    pub frames: usize,
    /// The stream was stopped (by the `stop` flag of [`denoise_stream_until`]) before its input
    /// ended.
    pub stopped: bool,
}

/// Reads as many bytes as `buf` holds, short only at the end of the stream or when `stop` is
/// found set after a read (one a signal interrupted, too); returns the count.
fn read_frame(reader: &mut impl Read, buf: &mut [u8], stop: &AtomicBool) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match reader.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        if stop.load(Ordering::Relaxed) {
            break;
        }
    }
    Ok(got)
}

/// Most worker threads [`denoise_stream`] starts.
pub const MAX_THREADS: usize = 256;

/// Denoises every frame of `reader` (frames of `format` at the denoiser's size, back to back)
/// and writes them to `writer` in the same order and format, with `threads` workers (at least
/// one, at most [`MAX_THREADS`]) each holding at most one frame, and at most `2 * threads + 1`
/// frames in memory in all. The frame buffers and the model's input tensors are reused: the
/// stream allocates nothing per frame of its own (tract allocates the intermediate tensors of
/// each run; the `edge` binary keeps glibc from returning that memory between frames).
///
/// # Errors
/// [`Error::ShortFrame`] when the stream ends inside a frame (every complete frame before it
/// has been written), [`Error::Frame`] when denoising a frame fails and [`Error::ReadFrame`]
/// when reading one does (likewise), [`Error::Stream`] for a write failure, or [`Error::Memory`]
/// before anything is read when the workers' tensors and the frame buffers need more memory
/// than the process can get.
pub fn denoise_stream(
    denoiser: &Denoiser,
    format: FrameFormat,
    reader: impl Read + Send,
    writer: impl Write,
    threads: usize,
) -> Result<StreamSummary, Error> {
    let never = AtomicBool::new(false);
    denoise_stream_until(denoiser, format, reader, writer, threads, &never)
}

/// [`denoise_stream`] that also ends, cleanly, once `stop` is set (by a signal handler, say):
/// the frame being read when it is set is dropped unless it is already complete (not an error),
/// and every frame read before is denoised and written. A reader blocked in `read` sees the
/// flag when that read returns (a signal interrupted it, or more input arrived).
///
/// # Errors
/// As [`denoise_stream`].
pub fn denoise_stream_until(
    denoiser: &Denoiser,
    format: FrameFormat,
    mut reader: impl Read + Send,
    mut writer: impl Write,
    threads: usize,
    stop: &AtomicBool,
) -> Result<StreamSummary, Error> {
    let (width, height) = denoiser.frame_size();
    let (frame_bytes, luma) = (
        format.frame_bytes(width, height),
        width.saturating_mul(height),
    );
    let threads = threads.clamp(1, MAX_THREADS);
    let in_flight = 2 * threads + 1;
    // Every worker runs the plan at once, next to the frame buffers going around.
    let needed = denoiser
        .tensor_bytes()
        .saturating_mul(threads as u64)
        .saturating_add((in_flight as u64).saturating_mul(frame_bytes as u64));
    crate::memory::ensure_fits(needed, || {
        format!(
            "denoising {width}x{height} frames on {threads} worker(s) with {in_flight} frame \
             buffers"
        )
    })?;
    let workers: Vec<Denoiser> = (0..threads)
        .map(|_| denoiser.worker())
        .collect::<Result<_, _>>()?;

    // Free buffers go around: reader -> workers -> writer -> reader.
    let (free_tx, free_rx) = sync_channel::<Vec<u8>>(in_flight);
    for _ in 0..in_flight {
        // A frame size the machine has no memory for is an error, not an abort.
        let mut buffer = Vec::new();
        buffer
            .try_reserve_exact(frame_bytes)
            .map_err(|e| Error::Stream {
                what: format!("buffers: {in_flight} frames of {frame_bytes} bytes"),
                source: io::Error::new(io::ErrorKind::OutOfMemory, e),
            })?;
        buffer.resize(frame_bytes, 0);
        free_tx
            .send(buffer)
            .map_err(|_| stream_closed("preparing buffers"))?;
    }
    let (job_tx, job_rx) = sync_channel::<(usize, Vec<u8>)>(in_flight);
    let job_rx = std::sync::Mutex::new(job_rx);
    let (done_tx, done_rx) = sync_channel::<(usize, Result<Vec<u8>, Error>)>(in_flight);
    let writer_stopped = AtomicBool::new(false);

    std::thread::scope(|scope| {
        let writer_stopped = &writer_stopped;
        let reading = scope.spawn(move || {
            read_frames(
                &mut reader,
                &free_rx,
                &job_tx,
                frame_bytes,
                writer_stopped,
                stop,
            )
        });
        for worker in &workers {
            let (job_rx, done_tx) = (&job_rx, done_tx.clone());
            scope.spawn(move || {
                let mut denoised = vec![0u8; luma];
                loop {
                    // Hold the lock only to take a job.
                    let job = job_rx.lock().map(|rx| rx.recv());
                    let Ok(Ok((index, mut frame))) = job else {
                        break;
                    };
                    // The denoiser turns a panic in its inference into an error; any other panic
                    // here must not leave the writer waiting for this frame either.
                    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        worker.denoise_gray8(&frame[..luma], &mut denoised)
                    }));
                    let result = match outcome {
                        Ok(Ok(())) => {
                            frame[..luma].copy_from_slice(&denoised);
                            Ok(frame)
                        }
                        Ok(Err(e)) => Err(e),
                        Err(_) => Err(Error::Inference {
                            source: format!("the worker denoising frame {index} panicked").into(),
                        }),
                    };
                    if done_tx.send((index, result)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(done_tx);
        let written = write_in_order(&mut writer, &done_rx, &free_tx);
        // Stop the reader if the writer stopped early: it reads no further frame, and it leaves
        // `recv` once the free buffers run out. (A reader blocked inside `read` on an input that
        // sends nothing more stays there until the input ends or closes.)
        writer_stopped.store(true, Ordering::Relaxed);
        drop(free_tx);
        drop(done_rx);
        let read = reading
            .join()
            .unwrap_or_else(|_| Err(stream_closed("reading (the reader panicked)")));
        let frames = written?;
        let ended = read?;
        Ok(StreamSummary {
            frames,
            stopped: ended == Ended::Stopped,
        })
    })
}

fn stream_closed(what: &str) -> Error {
    Error::Stream {
        what: what.into(),
        source: io::Error::new(io::ErrorKind::BrokenPipe, "pipeline stopped"),
    }
}

/// Why the reader thread finished without an error.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// The input ended, or the writer stopped.
    Input,
    /// The caller's `stop` flag.
    Stopped,
}

/// The reader thread: fills free buffers with frames and hands them to the workers.
fn read_frames(
    reader: &mut impl Read,
    free: &Receiver<Vec<u8>>,
    jobs: &SyncSender<(usize, Vec<u8>)>,
    frame_bytes: usize,
    writer_stopped: &AtomicBool,
    stop: &AtomicBool,
) -> Result<Ended, Error> {
    for index in 0.. {
        if stop.load(Ordering::Relaxed) {
            return Ok(Ended::Stopped);
        }
        if writer_stopped.load(Ordering::Relaxed) {
            return Ok(Ended::Input);
        }
        // No free buffer: the writer has stopped (an error), nothing more to do.
        let Ok(mut buf) = free.recv() else {
            return Ok(Ended::Input);
        };
        let got = read_frame(reader, &mut buf, stop)
            .map_err(|source| Error::ReadFrame { index, source })?;
        if got < frame_bytes && stop.load(Ordering::Relaxed) {
            // Cut short by the stop, not by the input: dropped.
            return Ok(Ended::Stopped);
        }
        if got == 0 {
            return Ok(Ended::Input);
        }
        if got < frame_bytes {
            return Err(Error::ShortFrame {
                index,
                expected: frame_bytes,
                got,
            });
        }
        if jobs.send((index, buf)).is_err() {
            return Ok(Ended::Input);
        }
    }
    Ok(Ended::Input)
}

/// The writer (the calling thread): writes denoised frames in their input order and recycles
/// their buffers. Returns the number of frames written.
fn write_in_order(
    writer: &mut impl Write,
    done: &Receiver<(usize, Result<Vec<u8>, Error>)>,
    free: &SyncSender<Vec<u8>>,
) -> Result<usize, Error> {
    let mut pending = BTreeMap::new();
    let mut next = 0;
    for (index, result) in done.iter() {
        // A failed frame waits its turn like the others: the frames before it still in flight
        // are written first.
        pending.insert(index, result);
        while let Some(result) = pending.remove(&next) {
            let frame = result.map_err(|e| Error::Frame {
                index: next,
                source: Box::new(e),
            })?;
            writer
                .write_all(&frame)
                .and_then(|()| writer.flush())
                .map_err(|source| Error::Stream {
                    what: format!("writing frame {next}"),
                    source,
                })?;
            next += 1;
            // The reader may have finished and dropped its end: then the buffer is not needed.
            free.send(frame).ok();
        }
    }
    if let Some(&missing) = pending.keys().next() {
        // Every worker is gone with frames still owed: never report a partial stream as done.
        return Err(Error::Inference {
            source: format!("frame {next} was never denoised (frames up to {missing} were)").into(),
        });
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_sizes() {
        assert_eq!(FrameFormat::Gray8.frame_bytes(640, 480), 307_200);
        assert_eq!(FrameFormat::Yuv420.frame_bytes(640, 480), 460_800);
        assert_eq!(FrameFormat::Yuv420.frame_bytes(5, 3), 15 + 2 * 3 * 2);
        assert_eq!(FrameFormat::Gray8.frame_bytes(usize::MAX, 2), usize::MAX);
        assert_eq!(
            FrameFormat::Yuv420.frame_bytes(usize::MAX / 4, 8),
            usize::MAX
        );
        assert_eq!("yuv420".parse(), Ok(FrameFormat::Yuv420));
        assert!("rgb".parse::<FrameFormat>().is_err());
    }
}
