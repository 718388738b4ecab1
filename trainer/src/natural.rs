//! The natural photographs the camera-frame denoiser learns from (`data/natural`, checked against
//! `SHA256SUMS`), as grayscale images the way a camera's Y plane sees them (BT.601 luma, 8 bits).
//!
//! Three images are held out of training and only used to measure the denoiser: [`HELD_OUT`].
//! Training draws random square patches, flipped and transposed at random (the eight symmetries
//! of a square: sensor noise has no preferred direction), each with its own noise level.

use std::path::{Path, PathBuf};

use crate::{
    data::{DataError, read, verify_checksum},
    rng::SplitMix64,
};

/// The images kept out of training (a photograph, coins, a cat): PSNR is measured on them.
pub const HELD_OUT: [&str; 3] = ["camera.png", "coins.png", "chelsea.png"];
/// The training images. The bundle's JPEGs are left out: their block artefacts are structure a
/// denoiser should not learn to keep.
pub const TRAINING: [&str; 8] = [
    "astronaut.png",
    "brick.png",
    "grass.png",
    "gravel.png",
    "text.png",
    "cell.png",
    "coffee.png",
    "microaneurysms.png",
];

/// The photographs bundled with the repository.
pub fn bundled_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/natural")
}

/// A grayscale image, pixels in `[0, 1]` (8-bit values / 255), row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct GrayImage {
    /// File name it came from.
    pub name: String,
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `width * height` values.
    pub pixels: Vec<f32>,
}

/// The longest side a photograph may have (the bundled ones are 512 pixels).
pub const MAX_PHOTO_SIDE: usize = 4096;

/// The shortest side a photograph may have: SSIM's 11-pixel window must fit, and a few pixels
/// are no photograph to measure a denoiser on (one pixel could even match exactly: PSNR inf).
pub const MIN_PHOTO_SIDE: usize = 16;

/// Decodes an 8-bit PNG (gray, gray+alpha, RGB or RGBA) to BT.601 luma rounded to 8 bits.
pub fn decode_png(path: &Path, bytes: &[u8]) -> Result<GrayImage, DataError> {
    let format = |reason: String| DataError::Format {
        path: path.to_owned(),
        reason,
    };
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder
        .read_info()
        .map_err(|e| format(format!("not a PNG: {e}")))?;
    // A photograph larger than any this trains or evaluates on: its buffers, and a model's
    // activations over it, would take gigabytes (deflate lets a small file announce that).
    let (w, h) = (reader.info().width, reader.info().height);
    if w as usize > MAX_PHOTO_SIDE || h as usize > MAX_PHOTO_SIDE {
        return Err(format(format!(
            "a {w}x{h} photograph: each side must be at most {MAX_PHOTO_SIDE} pixels (scale it down)"
        )));
    }
    if (w as usize) < MIN_PHOTO_SIDE || (h as usize) < MIN_PHOTO_SIDE {
        return Err(format(format!(
            "a {w}x{h} photograph: each side must be at least {MIN_PHOTO_SIDE} pixels"
        )));
    }
    // Deflate packs at most 1,032 bytes into one: pixel data the file cannot hold is a corrupt
    // header, refused before its buffer is allocated (a few bytes can announce gigabytes).
    let raw = u64::from(reader.info().height) * reader.info().raw_row_length() as u64;
    if raw / 1032 > bytes.len() as u64 {
        return Err(format(format!(
            "corrupt PNG: {}x{} pixels ({raw} bytes) cannot be in {} bytes",
            reader.info().width,
            reader.info().height,
            bytes.len()
        )));
    }
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| format("image too large".into()))?;
    let mut buf = vec![0; size];
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| format(format!("corrupt PNG: {e}")))?;
    let channels = info.color_type.samples();
    let (width, height) = (info.width as usize, info.height as usize);
    let luma = |p: &[u8]| -> f32 {
        let y = match channels {
            1 | 2 => p[0] as f32,
            _ => 0.299 * p[0] as f32 + 0.587 * p[1] as f32 + 0.114 * p[2] as f32,
        };
        y.round().clamp(0.0, 255.0) / 255.0
    };
    let pixels: Vec<f32> = buf[..info.buffer_size()]
        .chunks_exact(channels)
        .map(luma)
        .collect();
    if pixels.len() != width * height || width == 0 {
        return Err(format(format!(
            "{} pixels decoded for {width}x{height}",
            pixels.len()
        )));
    }
    Ok(GrayImage {
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        width,
        height,
        pixels,
    })
}

/// Loads the named images from `dir`, each checked against `dir/SHA256SUMS`.
pub fn load(dir: &Path, names: &[&str]) -> Result<Vec<GrayImage>, DataError> {
    names
        .iter()
        .map(|name| {
            let path = dir.join(name);
            let bytes = read(&path)?;
            verify_checksum(dir, name, &bytes)?;
            decode_png(&path, &bytes)
        })
        .collect()
}

/// `count` random `side x side` patches of `images` (image chosen in proportion to its area,
/// flipped horizontally and/or vertically at random, and with `transposes` also transposed at
/// random: any of the square's eight symmetries), concatenated.
///
/// # Errors
/// An image smaller than the patch.
pub fn patches(
    images: &[GrayImage],
    count: usize,
    side: usize,
    transposes: bool,
    rng: &mut SplitMix64,
) -> Result<Vec<f32>, String> {
    if let Some(small) = images.iter().find(|i| i.width < side || i.height < side) {
        return Err(format!(
            "{} ({}x{}) is smaller than a {side}x{side} patch",
            small.name, small.width, small.height
        ));
    }
    let total: u64 = images.iter().map(|i| (i.width * i.height) as u64).sum();
    if total == 0 {
        return Err("no images to draw patches from".into());
    }
    let mut out = Vec::with_capacity(count * side * side);
    for _ in 0..count {
        let mut at = rng.next_u64() % total;
        let image = images
            .iter()
            .find(|i| {
                let area = (i.width * i.height) as u64;
                if at < area {
                    true
                } else {
                    at -= area;
                    false
                }
            })
            .unwrap_or(&images[0]);
        let x0 = (rng.next_u64() % (image.width - side + 1) as u64) as usize;
        let y0 = (rng.next_u64() % (image.height - side + 1) as u64) as usize;
        let bits = rng.next_u64();
        let (flip_x, flip_y) = (bits & 1 == 1, bits & 2 == 2);
        let transpose = transposes && bits & 4 == 4;
        for y in 0..side {
            let sy = if flip_y { side - 1 - y } else { y };
            for x in 0..side {
                let sx = if flip_x { side - 1 - x } else { x };
                let (sx, sy) = if transpose { (sy, sx) } else { (sx, sy) };
                out.push(image.pixels[(y0 + sy) * image.width + x0 + sx]);
            }
        }
    }
    Ok(out)
}

/// `clean` (pixels in `[0, 1]`) with Gaussian noise of standard deviation `sigma` (in 8-bit
/// units), rounded and clipped to 8 bits as a camera frame would be.
pub fn add_noise(clean: &[f32], sigma: f32, rng: &mut SplitMix64) -> Vec<f32> {
    clean
        .iter()
        .zip(rng.normals(clean.len()))
        .map(|(&p, n)| (p * 255.0 + sigma * n).round().clamp(0.0, 255.0) / 255.0)
        .collect()
}

/// Index `i`, which may lie outside `0..n`, mirrored into `0..n` about the edge pixels (`-1` to
/// `1`, `n` to `n - 2`: NumPy's and ONNX `Pad`'s `reflect`), folding again for offsets past the
/// far side. Every index of a 1-pixel side is 0.
pub fn mirror(i: isize, n: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    let period = 2 * (n as isize - 1);
    let j = i.rem_euclid(period);
    (if j < n as isize { j } else { period - j }) as usize
}

/// `pixels` (`width x height`, row-major) with `border` pixels mirrored onto every side: a
/// `(width + 2 border) x (height + 2 border)` image.
pub fn reflect_pad(pixels: &[f32], width: usize, height: usize, border: usize) -> Vec<f32> {
    let (w, h) = (width + 2 * border, height + 2 * border);
    let mut out = Vec::with_capacity(w * h);
    for y in 0..h {
        let row = mirror(y as isize - border as isize, height) * width;
        out.extend((0..w).map(|x| pixels[row + mirror(x as isize - border as isize, width)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_photographs_load_as_gray() {
        let images = load(&bundled_dir(), &HELD_OUT).expect("bundled photographs");
        let camera = &images[0];
        assert_eq!((camera.width, camera.height), (512, 512));
        let chelsea = &images[2];
        assert_eq!((chelsea.width, chelsea.height), (451, 300));
        let mean = chelsea.pixels.iter().sum::<f32>() / chelsea.pixels.len() as f32;
        assert!((0.2..0.8).contains(&mean), "{mean}");
        assert!(load(&bundled_dir(), &TRAINING).is_ok());
    }

    /// A `w x h` 8-bit gray PNG of `pixels`, or with `None` its header, an empty IDAT and the end.
    fn gray_png(w: u32, h: u32, pixels: Option<&[u8]>) -> Vec<u8> {
        let mut png = Vec::new();
        let mut encoder = png::Encoder::new(&mut png, w, h);
        encoder.set_color(png::ColorType::Grayscale);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().expect("header");
        match pixels {
            Some(pixels) => writer.write_image_data(pixels).expect("pixels"),
            None => writer
                .write_chunk(png::chunk::IDAT, &[0x78, 0x9c, 0, 0, 0])
                .expect("chunk"),
        }
        drop(writer);
        png
    }

    #[test]
    fn a_png_header_announcing_more_pixels_than_its_file_holds_is_refused() {
        let header_only = |w: u32, h: u32| gray_png(w, h, None);
        let err = decode_png(Path::new("big.png"), &header_only(4096, 4096)).expect_err("corrupt");
        let message = err.to_string();
        assert!(message.contains("4096x4096 pixels"), "{message}");
        assert!(message.contains("cannot be in 62 bytes"), "{message}");
        // Past the largest photograph (10 GB), refused by its size alone.
        let err = decode_png(Path::new("huge.png"), &header_only(100_000, 100_000))
            .expect_err("too large");
        let message = err.to_string();
        assert!(
            message.contains("100000x100000 photograph: each side must be at most 4096"),
            "{message}"
        );
    }

    #[test]
    fn a_photograph_of_a_few_pixels_is_refused() {
        for (w, h) in [(1, 1), (15, 512), (512, 15)] {
            let png = gray_png(w, h, Some(&vec![128; (w * h) as usize]));
            let message = decode_png(Path::new("tiny.png"), &png)
                .expect_err("too small")
                .to_string();
            assert!(
                message.contains(&format!(
                    "a {w}x{h} photograph: each side must be at least 16 pixels"
                )),
                "{message}"
            );
        }
    }

    #[test]
    fn mirrored_borders() {
        assert_eq!(
            (-3..8).map(|i| mirror(i, 4)).collect::<Vec<_>>(),
            [3, 2, 1, 0, 1, 2, 3, 2, 1, 0, 1]
        );
        assert_eq!(mirror(-5, 1), 0);
        // 3x2 -> 5x4: the rows and columns about the edge pixels, not repeating them.
        let padded = reflect_pad(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 3, 2, 1);
        #[rustfmt::skip]
        let expected = [
            5.0, 4.0, 5.0, 6.0, 5.0,
            2.0, 1.0, 2.0, 3.0, 2.0,
            5.0, 4.0, 5.0, 6.0, 5.0,
            2.0, 1.0, 2.0, 3.0, 2.0,
        ];
        assert_eq!(padded, expected);
        assert_eq!(reflect_pad(&[7.0], 1, 1, 2), vec![7.0; 25]);
    }

    #[test]
    fn patches_and_noise() {
        let image = GrayImage {
            name: "ramp".into(),
            width: 4,
            height: 3,
            pixels: (0..12).map(|v| v as f32).collect(),
        };
        let mut rng = SplitMix64(1);
        let p = patches(std::slice::from_ref(&image), 50, 3, true, &mut rng).expect("fits");
        assert_eq!(p.len(), 50 * 9);
        // Every patch is a (possibly flipped) 3x3 window: its corners differ by 2 across and 8
        // (two rows of 4) down, or the other way round when it is transposed. All eight
        // symmetries turn up in 50 draws.
        let mut seen = std::collections::BTreeSet::new();
        for patch in p.chunks(9) {
            let (across, down) = (patch[2] - patch[0], patch[6] - patch[0]);
            let (a, d) = (across.abs(), down.abs());
            assert!((a, d) == (2.0, 8.0) || (a, d) == (8.0, 2.0), "{patch:?}");
            seen.insert((across as i32, down as i32));
        }
        assert_eq!(seen.len(), 8, "{seen:?}");
        // Without transposes (runs from before the option), only the four flips.
        let p = patches(std::slice::from_ref(&image), 50, 3, false, &mut rng).expect("fits");
        for patch in p.chunks(9) {
            assert_eq!((patch[2] - patch[0]).abs(), 2.0, "{patch:?}");
        }
        assert!(
            patches(&[image], 1, 4, true, &mut rng).is_err(),
            "too small"
        );
        let clean = vec![0.5; 10_000];
        let noisy = add_noise(&clean, 25.0, &mut rng);
        let rms = (noisy.iter().map(|v| (v - 0.5).powi(2)).sum::<f32>() / 1e4).sqrt() * 255.0;
        assert!((rms - 25.0).abs() < 1.0, "{rms}");
        assert!(noisy.iter().all(|v| (v * 255.0).fract() == 0.0), "8-bit");
    }
}
