//! Decodes every latent vector of `latents.f32` with the int8 model `model.q8` (both read from
//! the host's current directory) and writes the digits to `digits.gray` and each rendered
//! 128x64 screen to `frame_NNN.pbm`.
//!
//! With `--measure` on the semihosting command line (`qemu-system-arm ... -append --measure`),
//! it also counts the instructions of each decode and render with SysTick, and logs the stack
//! high-water mark at the end; run it under `-icount shift=0` for the counts to be instructions
//! (see `firmware_qemu::measure` and `measure.sh`).
#![no_std]
#![no_main]

use core::fmt::Write as _;

use defmt::{error, info, warn};
use firmware_core::decoder::{self, IMAGE_PIXELS, Scratch};
use firmware_core::q8::{self, Model};
use firmware_core::render::{self, Framebuffer, PBM_LEN};
use firmware_qemu::measure::{self, Counter};
use firmware_qemu::{board, exit, exit_failure, hostfs};

/// Input model file, in the host's current directory.
const MODEL_FILE: &str = "model.q8";
/// Input latents: little-endian f32, `latent_dim` per latent.
const LATENTS_FILE: &str = "latents.f32";
/// Output: every digit's 28x28 grayscale pixels, one after the other.
const DIGITS_FILE: &str = "digits.gray";

/// Most latents decoded in one run.
const MAX_LATENTS: usize = 64;
/// The command-line word that turns on the measurements.
const MEASURE_FLAG: &str = "--measure";
/// Iterations of the calibration loop (two instructions each).
const CALIBRATION_ITERATIONS: u32 = 1_000_000;

/// Why a run failed.
#[derive(defmt::Format)]
enum Error {
    /// A host file could not be read or written.
    File {
        /// Which file.
        name: &'static str,
        /// What went wrong.
        cause: hostfs::Error,
    },
    /// A frame's PBM could not be written.
    Frame {
        /// Index of the latent.
        index: usize,
        /// What went wrong.
        cause: hostfs::Error,
    },
    /// The model blob was rejected.
    Model(q8::Error),
    /// No model was built into flash (build with `DECODE_MODEL=/path/to/model.q8`).
    #[cfg(board = "microbit")]
    NoModelInFlash,
    /// `model.q8` is not the model built into flash (rebuild with `DECODE_MODEL` set to it).
    #[cfg(board = "microbit")]
    ModelDiffersFromFlash,
    /// The latents file is empty, not a whole number of latents, or holds too many.
    Latents {
        /// Length of the file, in bytes.
        bytes: usize,
        /// Floats per latent.
        latent_dim: usize,
    },
    /// A latent could not be quantized (NaN or infinite component).
    Latent {
        /// Index of the latent.
        index: usize,
        /// What went wrong.
        cause: q8::Error,
    },
    /// Decoding failed (the model does not draw a 28x28 digit, or needs more scratch).
    Decode(decoder::Error),
    /// The core peripherals were already taken (cannot happen: `run` is called once).
    Peripherals,
    /// `--measure` outside `-icount shift=0`: the calibration loop's instruction count came out
    /// wrong, so every count would be meaningless.
    Calibration {
        /// Instructions the loop has.
        expected: u64,
        /// Instructions SysTick measured.
        measured: u64,
    },
}

/// The large buffers, in `.bss` so that their size shows at link time and never touches the stack.
struct Buffers {
    /// The model file's bytes, 4-byte aligned for the DSP kernels (the microbit has its model
    /// in flash).
    #[cfg(board = "mps2_an386")]
    model: q8::Aligned<[u8; board::MODEL_CAPACITY]>,
    /// The decoder's working memory.
    scratch: Scratch,
    /// The decoded digit.
    pixels: [u8; IMAGE_PIXELS],
    /// The screen.
    fb: Framebuffer,
    /// The screen as a PBM file.
    pbm: [u8; PBM_LEN],
}

#[cortex_m_rt::entry]
fn main() -> ! {
    // cortex-m-rt turns a `static mut` declared here into a `&'static mut` (the entry runs once).
    static mut BUFFERS: Buffers = Buffers {
        #[cfg(board = "mps2_an386")]
        model: q8::Aligned([0; board::MODEL_CAPACITY]),
        scratch: Scratch::new(),
        pixels: [0; IMAGE_PIXELS],
        fb: Framebuffer::new(),
        pbm: [0; PBM_LEN],
    };
    let mut line = [0u8; 256];
    let measuring = match hostfs::command_line(&mut line) {
        Ok(line) => line.split_ascii_whitespace().any(|w| w == MEASURE_FLAG),
        Err(e) => {
            // Said, so that a `--measure` lost with it (a line over 255 bytes: the ELF's path
            // is on it) does not vanish without a word.
            warn!("semihosting command line unreadable ({}): not measuring", e);
            false
        }
    };
    match run(BUFFERS, measuring) {
        Ok(n) => {
            info!("decoded {} latents", n);
            exit()
        }
        Err(e) => {
            error!("decode failed: {}", e);
            exit_failure()
        }
    }
}

fn run(buffers: &mut Buffers, measuring: bool) -> Result<usize, Error> {
    #[cfg(board = "mps2_an386")]
    let blob = read_model(&mut buffers.model.0)?;
    #[cfg(board = "microbit")]
    let blob = check_flash_model()?;
    let Buffers {
        scratch,
        pixels,
        fb,
        pbm,
        ..
    } = buffers;

    let counter = if measuring {
        let peripherals = cortex_m::Peripherals::take().ok_or(Error::Peripherals)?;
        let counter = Counter::start(peripherals.SYST);
        let ticks = measure::calibrate(&counter, CALIBRATION_ITERATIONS);
        info!(
            "calibration on {}: a loop of {} instructions took {} SysTick ticks at {} Hz = {} instructions",
            board::MACHINE,
            2 * CALIBRATION_ITERATIONS,
            ticks,
            board::CPU_HZ,
            measure::instructions(ticks)
        );
        // Within one tick of the loop's length (compared in ticks: a microbit tick is 62.5
        // instructions), or QEMU is not counting instructions.
        let expected = 2 * u64::from(CALIBRATION_ITERATIONS);
        let expected_ticks = expected * u64::from(board::CPU_HZ) / 1_000_000_000;
        if ticks.abs_diff(expected_ticks) > 1 {
            error!("SysTick does not count instructions: run QEMU with -icount shift=0 to measure");
            return Err(Error::Calibration {
                expected,
                measured: measure::instructions(ticks),
            });
        }
        Some(counter)
    } else {
        None
    };

    let file = |name| move |cause| Error::File { name, cause };
    let model = Model::parse(blob).map_err(Error::Model)?;
    let dim = model.latent_dim();
    let macs = model.macs();
    info!(
        "model: {} bytes, {} layers, latent size {}, {} MACs per digit ({} with folded weights)",
        blob.len(),
        model.layer_count(),
        dim,
        macs,
        model.folded_macs()
    );

    // Latents are read one at a time, straight from the file.
    let mut latents = hostfs::File::open(LATENTS_FILE).map_err(file(LATENTS_FILE))?;
    let latents_len = latents.len().map_err(file(LATENTS_FILE))?;
    let stride = dim * 4;
    let bad_latents = Error::Latents {
        bytes: latents_len,
        latent_dim: dim,
    };
    if stride == 0 || latents_len == 0 || latents_len % stride != 0 {
        return Err(bad_latents);
    }
    let count = latents_len / stride;
    if count > MAX_LATENTS {
        return Err(bad_latents);
    }
    info!("{} latents in {}", count, LATENTS_FILE);

    let mut digits = hostfs::File::create(DIGITS_FILE).map_err(file(DIGITS_FILE))?;
    let mut raw = [0u8; q8::MAX_LATENT * 4];
    let mut z = [0f32; q8::MAX_LATENT];
    let mut z_q = [0i8; q8::MAX_LATENT];
    let (raw, z, z_q) = (&mut raw[..stride], &mut z[..dim], &mut z_q[..dim]);
    let ticks = || counter.as_ref().map_or(0, Counter::ticks);
    for index in 0..count {
        latents.read_exact(raw).map_err(file(LATENTS_FILE))?;
        let (floats, _) = raw.as_chunks::<4>();
        for (v, bytes) in z.iter_mut().zip(floats) {
            *v = f32::from_le_bytes(*bytes);
        }
        model
            .quantize_latent(z, z_q)
            .map_err(|cause| Error::Latent { index, cause })?;
        let t0 = ticks();
        decoder::decode(&model, z_q, scratch, pixels).map_err(Error::Decode)?;
        let t1 = ticks();
        render::render_frame(fb, pixels, index, z);
        let t2 = ticks();
        if counter.is_some() {
            info!(
                "decode {}: {} instructions for {} MACs; render: {} instructions",
                index,
                measure::instructions(t1 - t0),
                macs,
                measure::instructions(t2 - t1)
            );
        }

        digits.write_all(&pixels[..]).map_err(file(DIGITS_FILE))?;
        let name = frame_name(index);
        hostfs::write(&name, fb.pbm(pbm)).map_err(|cause| Error::Frame { index, cause })?;
        let lit = pixels
            .iter()
            .filter(|&&p| p >= render::DEFAULT_THRESHOLD)
            .count();
        info!(
            "#{}: z = {}, {} pixels lit -> {}",
            index,
            &*z,
            lit,
            name.as_str()
        );
    }
    if counter.is_some() {
        let (used, size) = measure::stack_high_water();
        info!("stack high-water: {} of {} bytes", used, size);
    }
    Ok(count)
}

/// Reads `model.q8` into RAM.
#[cfg(board = "mps2_an386")]
fn read_model(buf: &mut [u8]) -> Result<&[u8], Error> {
    let len = hostfs::read(MODEL_FILE, buf).map_err(|cause| Error::File {
        name: MODEL_FILE,
        cause,
    })?;
    Ok(&buf[..len])
}

/// Returns the model built into flash, after checking that `model.q8` holds the same bytes.
#[cfg(board = "microbit")]
fn check_flash_model() -> Result<&'static [u8], Error> {
    let file = |cause| Error::File {
        name: MODEL_FILE,
        cause,
    };
    if board::MODEL.is_empty() {
        return Err(Error::NoModelInFlash);
    }
    let mut host = hostfs::File::open(MODEL_FILE).map_err(file)?;
    if host.len().map_err(file)? != board::MODEL.len() {
        return Err(Error::ModelDiffersFromFlash);
    }
    let mut chunk = [0u8; 64];
    for flash in board::MODEL.chunks(chunk.len()) {
        let chunk = &mut chunk[..flash.len()];
        host.read_exact(chunk).map_err(file)?;
        if chunk != flash {
            return Err(Error::ModelDiffersFromFlash);
        }
    }
    Ok(board::MODEL)
}

/// `frame_NNN.pbm`, the index zero-padded to three digits.
fn frame_name(index: usize) -> heapless::String<32> {
    let mut name = heapless::String::new();
    // At most 6 + 20 + 4 bytes: always fits.
    let _ = write!(name, "frame_{index:03}.pbm");
    name
}
