//! Grayscale images as a decoder produces them, and their PNG / PGM writers.

use std::fs;
use std::io;
use std::path::Path;

use crate::Error;

/// A single-channel image of `f32` values, row-major, as the model produced them.
///
/// Decoders trained with a sigmoid output give values in `[0, 1]`; nothing here clamps them
/// except [`Image::to_gray8`], so [`Image::pixels`] can be compared bit for bit across machines.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    width: usize,
    height: usize,
    pixels: Vec<f32>,
    depth: Depth,
}

/// Bits per gray level in an image file: what [`Image::load`] found, and what [`Image::save`]
/// writes, so that a 16-bit photograph comes out of `edge denoise` with its 16 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Depth {
    /// 0..=255.
    #[default]
    Eight,
    /// 0..=65535 (a PNG of bit depth 16, a PGM with a maxval above 255).
    Sixteen,
}

impl Image {
    /// Wraps `pixels` (row-major, `height` rows of `width` values).
    ///
    /// # Errors
    /// [`Error::PixelCount`] when `pixels.len() != width * height`.
    pub fn new(width: usize, height: usize, pixels: Vec<f32>) -> Result<Self, Error> {
        if width.checked_mul(height) != Some(pixels.len()) {
            return Err(Error::PixelCount {
                width,
                height,
                actual: pixels.len(),
            });
        }
        Ok(Self {
            width,
            height,
            pixels,
            depth: Depth::Eight,
        })
    }

    /// The bits per gray level its file is written with (8 unless set, or read from a 16-bit
    /// file).
    pub fn depth(&self) -> Depth {
        self.depth
    }

    /// The same image, written with `depth` bits per gray level.
    #[must_use]
    pub fn with_depth(self, depth: Depth) -> Self {
        Self { depth, ..self }
    }

    /// Number of columns.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Number of rows.
    pub fn height(&self) -> usize {
        self.height
    }

    /// The values, row-major: pixel `(x, y)` is `pixels()[y * width() + x]`.
    pub fn pixels(&self) -> &[f32] {
        &self.pixels
    }

    /// Gives back the pixel values (row-major).
    pub fn into_pixels(self) -> Vec<f32> {
        self.pixels
    }

    /// A contact sheet: `images` left to right, top to bottom, `columns` per row, with `gap`
    /// pixels of mid gray (0.5) between them and around them; cells of a last, short row stay
    /// black.
    ///
    /// # Errors
    /// [`Error::MixedSizes`] when the images differ in size; [`Error::PixelCount`] when there is
    /// no image, `columns` is 0 or the sheet would be too large to address.
    pub fn tile(images: &[Image], columns: usize, gap: usize) -> Result<Image, Error> {
        let (Some(first), true) = (images.first(), columns > 0) else {
            return Err(Error::PixelCount {
                width: 0,
                height: 0,
                actual: images.len(),
            });
        };
        let (w, h) = (first.width, first.height);
        if let Some(other) = images.iter().find(|i| (i.width, i.height) != (w, h)) {
            return Err(Error::MixedSizes {
                first: format!("{w}x{h}"),
                other: format!("{}x{}", other.width, other.height),
            });
        }
        let columns = columns.min(images.len());
        let rows = images.len().div_ceil(columns);
        let side = |n: usize, cell: usize| n.checked_mul(cell.checked_add(gap)?)?.checked_add(gap);
        let (Some(sheet_w), Some(sheet_h)) = (side(columns, w), side(rows, h)) else {
            return Err(Error::PixelCount {
                width: usize::MAX,
                height: usize::MAX,
                actual: images.len(),
            });
        };
        let area = sheet_w.checked_mul(sheet_h).ok_or(Error::PixelCount {
            width: sheet_w,
            height: sheet_h,
            actual: images.len(),
        })?;
        let mut pixels = vec![0.5f32; area];
        for row in 0..rows {
            for col in 0..columns {
                let (x0, y0) = (gap + col * (w + gap), gap + row * (h + gap));
                let image = images.get(row * columns + col);
                for y in 0..h {
                    let line = &mut pixels[(y0 + y) * sheet_w + x0..][..w];
                    match image {
                        Some(image) => line.copy_from_slice(&image.pixels[y * w..][..w]),
                        None => line.fill(0.0),
                    }
                }
            }
        }
        Image::new(sheet_w, sheet_h, pixels)
    }

    /// Reads a PNG (gray, gray + alpha, RGB or RGBA, 1 to 16 bits; color becomes BT.601 luma) or
    /// a binary PGM (`P5`, maxval up to 65535), chosen by the extension, as values in `[0, 1]`.
    /// A 16-bit file gives an image of [`Depth::Sixteen`].
    ///
    /// # Errors
    /// [`Error::ReadImage`] when the file cannot be read or is not a valid image of its format,
    /// [`Error::UnknownImageFormat`] for another extension.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let format = ImageFormat::from_path(path)?;
        let bad = |reason: String| Error::ReadImage {
            path: path.into(),
            reason,
        };
        let bytes = fs::read(path).map_err(|e| bad(e.to_string()))?;
        let (width, height, pixels, depth) = match format {
            ImageFormat::Png => decode_png(&bytes).map_err(bad)?,
            ImageFormat::Pgm => decode_pgm(&bytes).map_err(bad)?,
        };
        Ok(Self::new(width, height, pixels)?.with_depth(depth))
    }

    /// 8-bit gray levels: `round(clamp(v, 0, 1) * 255)` per pixel (NaN becomes 0).
    pub fn to_gray8(&self) -> Vec<u8> {
        // `as u8` saturates and maps NaN to 0, so this never panics.
        self.pixels
            .iter()
            .map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
            .collect()
    }

    /// 16-bit gray levels: `round(clamp(v, 0, 1) * 65535)` per pixel (NaN becomes 0), each as
    /// two bytes, most significant first (as PNG and PGM store them).
    fn to_gray16_be(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(2 * self.pixels.len());
        for v in &self.pixels {
            bytes.extend(((v.clamp(0.0, 1.0) * 65535.0).round() as u16).to_be_bytes());
        }
        bytes
    }

    /// The image as a grayscale PNG file of its [`Depth`].
    ///
    /// # Errors
    /// [`io::Error`] when the PNG encoder refuses the image (a side of 0 or beyond `u32`).
    pub fn encode_png(&self) -> io::Result<Vec<u8>> {
        let side = |n: usize| {
            u32::try_from(n)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "image too large"))
        };
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, side(self.width)?, side(self.height)?);
        encoder.set_color(png::ColorType::Grayscale);
        let data = match self.depth {
            Depth::Eight => {
                encoder.set_depth(png::BitDepth::Eight);
                self.to_gray8()
            }
            Depth::Sixteen => {
                encoder.set_depth(png::BitDepth::Sixteen);
                self.to_gray16_be()
            }
        };
        let mut writer = encoder.write_header().map_err(io::Error::other)?;
        writer.write_image_data(&data).map_err(io::Error::other)?;
        writer.finish().map_err(io::Error::other)?;
        Ok(out)
    }

    /// The image as a binary PGM (`P5`) file: maxval 255, or 65535 for [`Depth::Sixteen`].
    pub fn encode_pgm(&self) -> Vec<u8> {
        let (maxval, data) = match self.depth {
            Depth::Eight => (255, self.to_gray8()),
            Depth::Sixteen => (65535, self.to_gray16_be()),
        };
        let mut out = format!("P5\n{} {}\n{maxval}\n", self.width, self.height).into_bytes();
        out.extend(data);
        out
    }

    /// Writes a grayscale PNG of the image's [`Depth`], atomically (see [`write_atomically`]).
    ///
    /// # Errors
    /// [`Error::Write`] when the file cannot be encoded or written.
    pub fn write_png(&self, path: impl AsRef<Path>) -> Result<(), Error> {
        let path = path.as_ref();
        let bytes = self.encode_png().map_err(|source| Error::Write {
            path: path.into(),
            source,
        })?;
        write_atomically(path, &bytes)
    }

    /// Writes a binary PGM (`P5`), atomically (see [`write_atomically`]).
    ///
    /// # Errors
    /// [`Error::Write`] when the file cannot be written.
    pub fn write_pgm(&self, path: impl AsRef<Path>) -> Result<(), Error> {
        write_atomically(path.as_ref(), &self.encode_pgm())
    }

    /// Writes a PNG or a PGM, chosen by the extension of `path` (see [`ImageFormat::from_path`]).
    ///
    /// # Errors
    /// [`Error::UnknownImageFormat`] for any other extension, [`Error::Write`] when writing fails.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), Error> {
        let path = path.as_ref();
        match ImageFormat::from_path(path)? {
            ImageFormat::Png => self.write_png(path),
            ImageFormat::Pgm => self.write_pgm(path),
        }
    }

    /// The bytes [`Image::save`] would write to `path`: a PNG or a PGM, chosen by its extension.
    /// For writing several files as one set ([`machine::write_files`]).
    ///
    /// # Errors
    /// [`Error::UnknownImageFormat`] for any other extension, [`Error::Write`] when the PNG
    /// encoder refuses the image.
    pub fn encode_for(&self, path: impl AsRef<Path>) -> Result<Vec<u8>, Error> {
        let path = path.as_ref();
        match ImageFormat::from_path(path)? {
            ImageFormat::Png => self.encode_png().map_err(|source| Error::Write {
                path: path.into(),
                source,
            }),
            ImageFormat::Pgm => Ok(self.encode_pgm()),
        }
    }
}

/// Deflate's largest compression ratio (a 258-byte match in one code of at least 2 bits).
const MAX_DEFLATE_RATIO: usize = 1032;

/// The png crate's message for `e`, each chunk type in it (which it prints in Debug form,
/// `ChunkType { type: IDAT, critical: true, .. }`) given by its name alone.
fn png_message(e: &png::DecodingError) -> String {
    const DEBUG_FORM: &str = "ChunkType { type: ";
    let text = e.to_string();
    let (mut plain, mut rest) = (String::with_capacity(text.len()), text.as_str());
    while let Some(at) = rest.find(DEBUG_FORM) {
        plain.push_str(&rest[..at]);
        let inside = &rest[at + DEBUG_FORM.len()..];
        match (inside.find(", "), inside.find('}')) {
            (Some(name_end), Some(end)) if name_end < end => {
                plain.push_str(&inside[..name_end]);
                rest = &inside[end + 1..];
            }
            _ => {
                plain.push_str(&rest[at..]);
                rest = "";
            }
        }
    }
    plain.push_str(rest);
    plain
}

/// Width, height, luma in `[0, 1]` and depth of a PNG.
fn decode_png(bytes: &[u8]) -> Result<(usize, usize, Vec<f32>, Depth), String> {
    let mut decoder = png::Decoder::new(io::Cursor::new(bytes));
    // Palettes and depths under 8 bits become 8-bit samples; 16-bit samples stay 16-bit.
    decoder.set_transformations(png::Transformations::EXPAND);
    let mut reader = decoder
        .read_info()
        .map_err(|e| format!("not a PNG: {}", png_message(&e)))?;
    // The header's size, checked before the pixel buffer is allocated: a few bytes of PNG can
    // announce gigabytes.
    let (width, height) = (reader.info().width, reader.info().height);
    check_sides(width as usize, height as usize)?;
    // Deflate packs at most 1,032 bytes into one, so pixel data this file cannot hold is a
    // corrupt PNG, found before the buffer is allocated and zeroed (up to 1 GiB at 16384^2 RGBA).
    let raw = reader.info().raw_bytes();
    if raw / MAX_DEFLATE_RATIO > bytes.len() {
        return Err(format!(
            "corrupt PNG: {width}x{height} pixels ({raw} bytes) cannot be in {} bytes",
            bytes.len()
        ));
    }
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| "image too large".to_string())?;
    check_memory(width as usize, height as usize, size)?;
    let mut buf = Vec::new();
    buf.try_reserve_exact(size)
        .map_err(|_| format!("a {width}x{height} image does not fit in memory"))?;
    buf.resize(size, 0);
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| format!("corrupt PNG: {}", png_message(&e)))?;
    let channels = info.color_type.samples();
    let sixteen = info.bit_depth == png::BitDepth::Sixteen;
    let (bytes_per_sample, top, depth) = if sixteen {
        (2, 65535.0, Depth::Sixteen)
    } else {
        (1, 255.0, Depth::Eight)
    };
    // Each pixel's gray level at the file's own depth (rounded, for color), scaled to [0, 1].
    let gray = buf[..info.buffer_size()]
        .chunks_exact(channels * bytes_per_sample)
        .map(|p| {
            let sample = |i: usize| match sixteen {
                true => f32::from(u16::from_be_bytes([p[2 * i], p[2 * i + 1]])),
                false => f32::from(p[i]),
            };
            let level = match channels {
                1 | 2 => sample(0),
                _ => (0.299 * sample(0) + 0.587 * sample(1) + 0.114 * sample(2)).round(),
            };
            level / top
        })
        .collect();
    Ok((info.width as usize, info.height as usize, gray, depth))
}

/// Refuses an image with a side longer than [`crate::MAX_FRAME_SIDE`].
fn check_sides(width: usize, height: usize) -> Result<(), String> {
    let max = crate::MAX_FRAME_SIDE;
    if width > max || height > max {
        return Err(format!(
            "a {width}x{height} image: each side must be at most {max} pixels"
        ));
    }
    Ok(())
}

/// Refuses an image whose reading takes more memory than the process can get: `buffer` bytes to
/// decode it into, then the f32 gray levels [`Image::load`] makes of them (4 bytes a pixel).
/// Said here, not found by the kernel's OOM killer later.
fn check_memory(width: usize, height: usize, buffer: usize) -> Result<(), String> {
    let pixels = (width as u64).saturating_mul(height as u64);
    let needed = (buffer as u64).saturating_add(pixels.saturating_mul(4));
    if let Some(available) = crate::available_bytes().filter(|&available| needed > available) {
        return Err(format!(
            "a {width}x{height} image needs {} to read, more than the {} this process can get",
            crate::memory::human(needed),
            crate::memory::human(available)
        ));
    }
    Ok(())
}

/// Width, height, pixels in `[0, 1]` and depth of a binary PGM: one byte a pixel for a maxval up
/// to 255, two (most significant first) up to 65535.
fn decode_pgm(bytes: &[u8]) -> Result<(usize, usize, Vec<f32>, Depth), String> {
    // Header: "P5", width, height, maxval, separated by whitespace (and `#` comments), then
    // exactly one whitespace byte before the pixels.
    if !bytes.starts_with(b"P5") {
        let start = &bytes[..bytes.len().min(2)];
        return Err(format!(
            "not a binary PGM: it starts with \"{}\", a binary PGM with \"P5\"",
            start.escape_ascii()
        ));
    }
    let mut fields = Vec::new();
    let mut i = 0;
    while fields.len() < 4 {
        while i < bytes.len() && (bytes[i].is_ascii_whitespace() || bytes[i] == b'#') {
            if bytes[i] == b'#' {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            } else {
                i += 1;
            }
        }
        let start = i;
        while i < bytes.len() && !bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if start == i {
            return Err("truncated PGM header".into());
        }
        fields.push(String::from_utf8_lossy(&bytes[start..i]).into_owned());
    }
    // A field of a broken file can be megabytes long: the errors quote its start.
    let quoted = |f: &str| crate::error::excerpt(f);
    if fields[0] != "P5" {
        return Err(format!(
            "not a binary PGM (magic {:?}, expected P5)",
            quoted(&fields[0])
        ));
    }
    let number = |f: &str, what: &str| {
        f.parse::<usize>()
            .map_err(|_| format!("bad PGM {what} {:?}", quoted(f)))
    };
    let (width, height, maxval) = (
        number(&fields[1], "width")?,
        number(&fields[2], "height")?,
        number(&fields[3], "maxval")?,
    );
    if !(1..=65535).contains(&maxval) {
        return Err(format!("PGM maxval {maxval} is not 1..=65535"));
    }
    if width == 0 || height == 0 {
        return Err(format!("PGM is {width}x{height}: no pixels"));
    }
    check_sides(width, height)?;
    let pixels = width * height;
    let wide = maxval > 255;
    let sample_bytes = if wide { 2 } else { 1 };
    let body = bytes.get(i + 1..).unwrap_or_default();
    if body.len() / sample_bytes < pixels {
        return Err(format!(
            "PGM has {} of its {width}x{height} = {pixels} pixels",
            body.len() / sample_bytes
        ));
    }
    // The file is read already; its pixels are scaled to the full range of their depth
    // (0..=255 or 0..=65535, rounded, as the 8-bit PGMs always were), then made f32.
    check_memory(width, height, 0)?;
    let (top, depth) = if wide {
        (65535, Depth::Sixteen)
    } else {
        (255, Depth::Eight)
    };
    let scale = |p: usize| ((p.min(maxval) * top + maxval / 2) / maxval) as f32 / top as f32;
    let gray = if wide {
        body[..2 * pixels]
            .chunks_exact(2)
            .map(|b| scale(usize::from(u16::from_be_bytes([b[0], b[1]]))))
            .collect()
    } else {
        body[..pixels]
            .iter()
            .map(|&p| scale(usize::from(p)))
            .collect()
    };
    Ok((width, height, gray, depth))
}

/// The image file formats this crate writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// Grayscale PNG, 8 or 16 bits per pixel.
    Png,
    /// Binary PGM (`P5`), 8 or 16 bits per pixel.
    Pgm,
}

impl ImageFormat {
    /// The format named by the extension of `path`: `.png` or `.pgm`, in any letter case.
    ///
    /// # Errors
    /// [`Error::UnknownImageFormat`] for any other extension or none.
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let extension = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match extension.as_deref() {
            Some("png") => Ok(Self::Png),
            Some("pgm") => Ok(Self::Pgm),
            _ => Err(Error::UnknownImageFormat { path: path.into() }),
        }
    }

    /// The usual file extension, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Png => "png",
            Self::Pgm => "pgm",
        }
    }
}

/// Replaces `path` with `contents` so that readers see either the old file or the complete new
/// one, never a partial write ([`machine::write_file`]).
///
/// The bytes go to a hidden temporary file in the same directory, are synced, and the temporary
/// file is renamed over `path` (a rename within one file system is atomic on POSIX); the
/// temporary file is removed if anything fails, and the first write into a folder removes those
/// that killed processes left there. The parent directory must exist. A link is followed (the
/// file it names is replaced; the link stays), and a device or a pipe (`/dev/null`, a FIFO) is
/// written into, not replaced ([`machine::destination`]).
///
/// # Errors
/// [`Error::Write`] when `path` has no file name or any step fails.
pub fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), Error> {
    machine::write_file(path, contents).map_err(|e| Error::Write {
        path: e.path,
        source: e.source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 3x2 gradient covering the clamping and rounding cases of `to_gray8`.
    fn sample() -> Image {
        Image::new(3, 2, vec![-0.5, 0.0, 0.5, 1.0 / 255.0 * 0.49, 1.0, 7.0]).expect("3x2 image")
    }

    #[test]
    fn gray8_clamps_and_rounds() {
        assert_eq!(sample().to_gray8(), vec![0, 0, 128, 0, 255, 255]);
        let nan = Image::new(1, 1, vec![f32::NAN]).expect("1x1 image");
        assert_eq!(nan.to_gray8(), vec![0]);
    }

    /// A damaged chunk is named by its type, not by the png crate's Debug dump of it.
    #[test]
    fn damaged_png_chunks_are_named_plainly() {
        let png = sample().encode_png().expect("encodes");
        let idat = png
            .windows(4)
            .position(|w| w == b"IDAT")
            .expect("an IDAT chunk");
        let mut bad_type = png.clone();
        bad_type[idat + 3] = b'x'; // "IDAx": unknown, and critical (upper-case first letter)
        let length = u32::from_be_bytes(png[idat - 4..idat].try_into().unwrap()) as usize;
        let mut bad_crc = png.clone();
        bad_crc[idat + 4 + length] ^= 0xff; // the chunk's checksum
        for (bytes, expected) in [
            (bad_type, "not a PNG: Unrecognized critical chunk: IDAx"),
            (bad_crc, "while decoding IDAT chunk"),
        ] {
            let message = decode_png(&bytes).expect_err("damaged");
            assert!(message.contains(expected), "{message}");
            assert!(!message.contains("ChunkType"), "{message}");
        }
    }

    #[test]
    fn new_rejects_wrong_pixel_count() {
        let err = Image::new(28, 28, vec![0.0; 10]).expect_err("10 pixels for 28x28");
        assert!(
            matches!(
                err,
                Error::PixelCount {
                    width: 28,
                    height: 28,
                    actual: 10
                }
            ),
            "{err}"
        );
        assert!(
            Image::new(usize::MAX, 2, vec![]).is_err(),
            "overflowing size must not panic"
        );
    }

    #[test]
    fn format_from_extension() {
        assert_eq!(
            ImageFormat::from_path("a/b.png").ok(),
            Some(ImageFormat::Png)
        );
        assert_eq!(ImageFormat::from_path("B.PGM").ok(), Some(ImageFormat::Pgm));
        for bad in ["digit.jpg", "digit", "digit.png.txt", ""] {
            let err = ImageFormat::from_path(bad).expect_err(bad);
            assert!(
                matches!(err, Error::UnknownImageFormat { .. }),
                "{bad}: {err}"
            );
            assert!(err.to_string().contains(".png or .pgm"), "{err}");
        }
    }

    #[test]
    fn save_rejects_unknown_extension_without_writing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("digit.jpg");
        let err = sample().save(&path).expect_err("jpg is not supported");
        assert!(matches!(err, Error::UnknownImageFormat { .. }), "{err}");
        assert_eq!(fs::read_dir(dir.path()).expect("list").count(), 0);
    }

    #[test]
    fn png_round_trip() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("digit.png");
        let image = sample();
        image.save(&path).expect("write png");

        let decoder = png::Decoder::new(io::BufReader::new(fs::File::open(&path).expect("open")));
        let mut reader = decoder.read_info().expect("png header");
        let mut buf = vec![0; reader.output_buffer_size().expect("buffer size")];
        let info = reader.next_frame(&mut buf).expect("png frame");
        assert_eq!((info.width, info.height), (3, 2));
        assert_eq!(info.color_type, png::ColorType::Grayscale);
        assert_eq!(info.bit_depth, png::BitDepth::Eight);
        assert_eq!(&buf[..info.buffer_size()], image.to_gray8().as_slice());
        assert_only_file(dir.path(), "digit.png");
    }

    #[test]
    fn pgm_round_trip() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("digit.pgm");
        let image = sample();
        image.save(&path).expect("write pgm");

        let bytes = fs::read(&path).expect("read back");
        let header = b"P5\n3 2\n255\n";
        assert_eq!(&bytes[..header.len()], header);
        assert_eq!(&bytes[header.len()..], image.to_gray8().as_slice());
        assert_only_file(dir.path(), "digit.pgm");
    }

    #[test]
    fn a_file_that_is_not_a_pgm_is_named_by_its_first_bytes() {
        let mut garbage = vec![0xff, b'\n'];
        garbage.extend(std::iter::repeat_n(b'x', 200));
        let err = decode_pgm(&garbage).expect_err("not a PGM");
        assert_eq!(
            err,
            "not a binary PGM: it starts with \"\\xff\\n\", a binary PGM with \"P5\""
        );
        let err = decode_pgm(b"P").expect_err("one byte");
        assert!(err.contains("starts with \"P\""), "{err}");
    }

    #[test]
    fn a_long_pgm_field_is_quoted_short() {
        let bytes = format!("P5 {} 1 255\n", "9".repeat(100_000));
        let err = decode_pgm(bytes.as_bytes()).expect_err("bad width");
        assert!(err.starts_with("bad PGM width") && err.len() < 100, "{err}");
        // Only the message is shortened: a long but valid field (zero-padded) still reads.
        let padded = format!("P5 {}2 1 255\n\x07\x09", "0".repeat(60));
        let (width, height, _, _) = decode_pgm(padded.as_bytes()).expect("a 2x1 PGM");
        assert_eq!((width, height), (2, 1));
    }

    #[test]
    fn pgm_without_pixels_is_an_error() {
        let huge = format!("P5 {} 0 255\n", usize::MAX);
        for bytes in [&b"P5\n0 5\n255\n"[..], huge.as_bytes()] {
            let err = decode_pgm(bytes).expect_err("no pixels");
            assert!(err.contains("no pixels"), "{err}");
        }
    }

    #[test]
    fn a_pgm_is_held_to_the_sides_a_png_is() {
        // Before: read whole (a side of 100,000 and its 10^10 pixels would have been asked of
        // the file), then to be refused by the denoiser.
        let side = crate::MAX_FRAME_SIDE + 1;
        let mut bytes = format!("P5\n{side} 1\n255\n").into_bytes();
        bytes.resize(bytes.len() + side, 7);
        let err = decode_pgm(&bytes).expect_err("too wide");
        assert!(
            err.contains(&format!("a {side}x1 image: each side must be at most")),
            "{err}"
        );
        let huge = format!("P5 {} {} 255\n", usize::MAX, usize::MAX);
        let err = decode_pgm(huge.as_bytes()).expect_err("too large");
        assert!(err.contains("each side must be at most"), "{err}");
        let mut fits = b"P5\n4 2\n255\n".to_vec();
        fits.extend([0, 255, 1, 2, 3, 4, 5, 6]);
        let levels = [0, 255, 1, 2, 3, 4, 5, 6].map(|p: u8| f32::from(p) / 255.0);
        assert_eq!(decode_pgm(&fits), Ok((4, 2, levels.to_vec(), Depth::Eight)));
    }

    /// A 16-bit image: levels 8-bit files cannot hold.
    fn sample16() -> Image {
        let levels = [0u16, 1, 257, 32768, 65534, 65535];
        Image::new(3, 2, levels.map(|l| f32::from(l) / 65535.0).to_vec())
            .expect("3x2")
            .with_depth(Depth::Sixteen)
    }

    #[test]
    fn sixteen_bit_images_keep_their_sixteen_bits() {
        let dir = tempfile::tempdir().expect("temp dir");
        for name in ["deep.png", "deep.pgm"] {
            let path = dir.path().join(name);
            sample16().save(&path).expect("write");
            let back = Image::load(&path).expect("read back");
            assert_eq!(back.depth(), Depth::Sixteen, "{name}");
            assert_eq!(back.to_gray16_be(), sample16().to_gray16_be(), "{name}");
        }
        let pgm = fs::read(dir.path().join("deep.pgm")).expect("pgm");
        assert!(pgm.starts_with(b"P5\n3 2\n65535\n\x00\x00\x00\x01\x01\x01"));
        // A PGM of another wide maxval is scaled to the full 16 bits; one byte short is an error.
        let mut odd = b"P5\n2 1\n1000\n".to_vec();
        odd.extend([0x03, 0xe8, 0x01, 0xf4]);
        let (.., gray, depth) = decode_pgm(&odd).expect("maxval 1000");
        assert_eq!(
            (gray, depth),
            (vec![1.0, 32768.0 / 65535.0], Depth::Sixteen)
        );
        let err = decode_pgm(&odd[..odd.len() - 1]).expect_err("short");
        assert!(err.contains("PGM has 1 of its 2x1 = 2 pixels"), "{err}");
        // 16-bit color: its luma, at 16 bits.
        let mut rgb = Vec::new();
        let mut encoder = png::Encoder::new(&mut rgb, 2, 1);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Sixteen);
        let mut writer = encoder.write_header().expect("header");
        let white_red: Vec<u8> = [65535u16, 65535, 65535, 1000, 0, 0]
            .iter()
            .flat_map(|v| v.to_be_bytes())
            .collect();
        writer.write_image_data(&white_red).expect("pixels");
        writer.finish().expect("finish");
        let (.., gray, depth) = decode_png(&rgb).expect("rgb16");
        assert_eq!(depth, Depth::Sixteen);
        assert_eq!(gray, vec![1.0, 299.0 / 65535.0]);
        // 16-bit gray with alpha: the gray sample; 2-bit gray: 8-bit levels.
        let png_of = |color, depth, width, data: &[u8]| {
            let mut file = Vec::new();
            let mut encoder = png::Encoder::new(&mut file, width, 1);
            encoder.set_color(color);
            encoder.set_depth(depth);
            let mut writer = encoder.write_header().expect("header");
            writer.write_image_data(data).expect("pixels");
            writer.finish().expect("finish");
            file
        };
        let alpha = png_of(
            png::ColorType::GrayscaleAlpha,
            png::BitDepth::Sixteen,
            1,
            &[1, 2, 0, 0],
        );
        let (.., gray, depth) = decode_png(&alpha).expect("gray + alpha 16");
        assert_eq!((gray, depth), (vec![258.0 / 65535.0], Depth::Sixteen));
        let two_bits = png_of(
            png::ColorType::Grayscale,
            png::BitDepth::Two,
            4,
            &[0b0001_1011],
        );
        let (.., gray, depth) = decode_png(&two_bits).expect("2-bit gray");
        assert_eq!(depth, Depth::Eight);
        assert_eq!(gray, [0, 85, 170, 255].map(|l| l as f32 / 255.0).to_vec());
    }

    #[test]
    fn atomic_write_through_a_link_replaces_its_file_and_keeps_the_link() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (file, link) = (dir.path().join("real.f32"), dir.path().join("link.f32"));
        fs::write(&file, b"old").expect("seed file");
        std::os::unix::fs::symlink("real.f32", &link).expect("link");
        write_atomically(&link, b"new").expect("write");
        assert!(fs::symlink_metadata(&link).expect("link").is_symlink());
        assert_eq!(fs::read(&file).expect("read back"), b"new");
        // No temporary file left beside either.
        let mut names: Vec<_> = fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["link.f32", "real.f32"]);
    }

    #[test]
    fn atomic_write_replaces_existing_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("out.bin");
        fs::write(&path, b"old contents, longer than the new ones").expect("seed file");
        write_atomically(&path, b"new").expect("replace");
        assert_eq!(fs::read(&path).expect("read back"), b"new");
        assert_only_file(dir.path(), "out.bin");
    }

    #[test]
    fn atomic_write_into_missing_directory_fails_cleanly() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("missing").join("digit.pgm");
        let err = sample().save(&path).expect_err("parent does not exist");
        match &err {
            Error::Write { path: p, source } => {
                assert_eq!(p, &path);
                assert_eq!(source.kind(), io::ErrorKind::NotFound);
            }
            other => panic!("unexpected error: {other}"),
        }
        assert!(err.to_string().contains("digit.pgm"), "{err}");
    }

    #[test]
    fn atomic_write_rejects_directory_like_path() {
        let err = write_atomically(Path::new("/"), b"x").expect_err("no file name");
        assert!(matches!(err, Error::Write { .. }), "{err}");
    }

    /// The directory holds `name` and nothing else (no temporary file left behind).
    fn assert_only_file(dir: &Path, name: &str) {
        let names: Vec<_> = fs::read_dir(dir)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, [name]);
    }

    #[test]
    fn tiles_a_contact_sheet() {
        let cell = |v: f32| Image::new(2, 1, vec![v, v]).expect("2x1");
        let sheet = Image::tile(&[cell(1.0), cell(0.2), cell(0.7)], 2, 1).expect("tiles");
        // 2 columns, 2 rows of 2x1 cells with 1-pixel gaps: 7 x 5.
        assert_eq!((sheet.width(), sheet.height()), (7, 5));
        let g = 0.5;
        #[rustfmt::skip]
        let expected = vec![
            g, g,   g,   g, g,   g,   g,
            g, 1.0, 1.0, g, 0.2, 0.2, g,
            g, g,   g,   g, g,   g,   g,
            g, 0.7, 0.7, g, 0.0, 0.0, g,
            g, g,   g,   g, g,   g,   g,
        ];
        assert_eq!(sheet.pixels(), &expected[..]);
        // More columns than images: one row.
        let row = Image::tile(&[cell(1.0), cell(1.0)], 5, 0).expect("tiles");
        assert_eq!((row.width(), row.height()), (4, 1));
    }

    #[test]
    fn tile_rejects_mixed_sizes_and_nothing() {
        let a = Image::new(2, 1, vec![0.0; 2]).expect("2x1");
        let b = Image::new(1, 2, vec![0.0; 2]).expect("1x2");
        assert!(matches!(
            Image::tile(&[a.clone(), b], 2, 0),
            Err(Error::MixedSizes { .. })
        ));
        assert!(Image::tile(&[], 2, 0).is_err());
        assert!(Image::tile(&[a], 0, 0).is_err());
    }
}
