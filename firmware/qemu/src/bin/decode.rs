//! Decodes every latent vector of `latents.f32` with the int8 model `model.q8` (both read from
//! the host's current directory) and writes the digits to `digits.gray` and each rendered
//! 128x64 screen to `frame_NNN.pbm`.
#![no_std]
#![no_main]

use core::fmt::Write as _;

use cortex_m::singleton;
use defmt::{error, info};
use firmware_core::decoder::{self, IMAGE_PIXELS, Scratch};
use firmware_core::q8::{self, Model};
use firmware_core::render::{self, Framebuffer, PBM_LEN};
use firmware_qemu::{exit, exit_failure, hostfs};

/// Input model file, in the host's current directory.
const MODEL_FILE: &str = "model.q8";
/// Input latents: little-endian f32, `latent_dim` per latent.
const LATENTS_FILE: &str = "latents.f32";
/// Output: every digit's 28x28 grayscale pixels, one after the other.
const DIGITS_FILE: &str = "digits.gray";

/// Largest model accepted, in bytes.
const MODEL_CAPACITY: usize = 32 * 1024;
/// Most latents decoded in one run.
const MAX_LATENTS: usize = 64;
/// Largest latents file: `MAX_LATENTS` latents of the largest latent size q8 allows.
const LATENTS_CAPACITY: usize = MAX_LATENTS * q8::MAX_LATENT * 4;

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
    /// Static buffers were already taken (cannot happen: `run` is called once).
    Buffers,
}

#[cortex_m_rt::entry]
fn main() -> ! {
    match run() {
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

fn run() -> Result<usize, Error> {
    // Statically allocated (in .bss), so the memory use shows at link time.
    let model_buf =
        singleton!(: [u8; MODEL_CAPACITY] = [0; MODEL_CAPACITY]).ok_or(Error::Buffers)?;
    let latents_buf =
        singleton!(: [u8; LATENTS_CAPACITY] = [0; LATENTS_CAPACITY]).ok_or(Error::Buffers)?;
    let scratch = singleton!(: Scratch = Scratch::new()).ok_or(Error::Buffers)?;

    let file = |name| move |cause| Error::File { name, cause };
    let model_len = hostfs::read(MODEL_FILE, model_buf).map_err(file(MODEL_FILE))?;
    let model = Model::parse(&model_buf[..model_len]).map_err(Error::Model)?;
    let dim = model.latent_dim();
    info!(
        "model: {} bytes, {} layers, latent size {}, {} MACs per digit",
        model_len,
        model.layer_count(),
        dim,
        model.macs()
    );

    let latents_len = hostfs::read(LATENTS_FILE, latents_buf).map_err(file(LATENTS_FILE))?;
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
    let mut z = [0f32; q8::MAX_LATENT];
    let mut z_q = [0i8; q8::MAX_LATENT];
    let mut pixels = [0u8; IMAGE_PIXELS];
    let mut fb = Framebuffer::new();
    let mut pbm = [0u8; PBM_LEN];
    let (z, z_q) = (&mut z[..dim], &mut z_q[..dim]);
    for (index, latent) in latents_buf[..latents_len].chunks_exact(stride).enumerate() {
        let (floats, _) = latent.as_chunks::<4>();
        for (v, bytes) in z.iter_mut().zip(floats) {
            *v = f32::from_le_bytes(*bytes);
        }
        model
            .quantize_latent(z, z_q)
            .map_err(|cause| Error::Latent { index, cause })?;
        decoder::decode(&model, z_q, scratch, &mut pixels).map_err(Error::Decode)?;
        render::render_frame(&mut fb, &pixels, index, z);

        digits.write_all(&pixels).map_err(file(DIGITS_FILE))?;
        let name = frame_name(index);
        hostfs::write(&name, fb.pbm(&mut pbm)).map_err(|cause| Error::Frame { index, cause })?;
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
    Ok(count)
}

/// `frame_NNN.pbm`, the index zero-padded to three digits.
fn frame_name(index: usize) -> heapless::String<32> {
    let mut name = heapless::String::new();
    // At most 6 + 20 + 4 bytes: always fits.
    let _ = write!(name, "frame_{index:03}.pbm");
    name
}
