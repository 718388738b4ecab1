//! Frames from a V4L2 capture device (a USB webcam; the Raspberry Pi camera through a V4L2
//! driver), turned into the raw frame stream that [`crate::frames::denoise_stream`] reads.
//!
//! [`convert`] copies one captured frame, in the layout the driver hands out (`GREY`, `YU12` or
//! `YUYV`, rows `bytes_per_line` apart), into a tightly packed [`FrameFormat`] frame; it is plain
//! Rust and always built. `Camera` (cargo feature `v4l2`, 64-bit Linux: see `build.rs`) opens the
//! device with the pure-Rust `linuxvideo` crate (no C headers or bindgen, so it cross-builds for
//! the 64-bit Pi), asks for
//! the model's frame size in the first of those pixel formats the device offers, and reads
//! frames from its memory-mapped buffers, as a [`std::io::Read`] of back-to-back frames.

use crate::frames::FrameFormat;

/// Pixel layouts a capture device may deliver that [`convert`] reads, in order of preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapturePixels {
    /// `GREY`: 8-bit luma.
    Grey,
    /// `YU12` (I420): the luma plane, then U and V planes at half width and height, their rows
    /// `bytes_per_line / 2` apart.
    Yu12,
    /// `YUYV` (4:2:2 packed): `Y0 U Y1 V` for every two pixels.
    Yuyv,
}

impl CapturePixels {
    /// Every layout, best first (the ones that need the least work).
    pub const ALL: [CapturePixels; 3] = [Self::Grey, Self::Yu12, Self::Yuyv];

    /// The V4L2 four-character code.
    pub fn fourcc(self) -> [u8; 4] {
        match self {
            Self::Grey => *b"GREY",
            Self::Yu12 => *b"YU12",
            Self::Yuyv => *b"YUYV",
        }
    }

    /// Bytes a row of luma needs at least (`width` pixels; `YU12`'s chroma rows, half as long,
    /// must hold `width / 2` rounded up).
    fn min_bytes_per_line(self, width: usize) -> usize {
        match self {
            Self::Grey => width,
            Self::Yu12 => width.div_ceil(2).saturating_mul(2),
            Self::Yuyv => width.saturating_mul(2),
        }
    }

    /// Bytes of one captured frame with rows `bytes_per_line` apart (saturating).
    pub fn frame_bytes(self, height: usize, bytes_per_line: usize) -> usize {
        let luma = height.saturating_mul(bytes_per_line);
        match self {
            Self::Grey | Self::Yuyv => luma,
            Self::Yu12 => {
                let chroma = height.div_ceil(2).saturating_mul(bytes_per_line / 2);
                luma.saturating_add(chroma.saturating_mul(2))
            }
        }
    }
}

/// Why a captured frame could not be converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConvertError {
    /// Rows are closer than a row of pixels needs.
    #[error(
        "{pixels:?} rows of {width} pixels need {needed} bytes, the device spaces them {bytes_per_line} apart"
    )]
    RowTooShort {
        /// The captured layout.
        pixels: CapturePixels,
        /// Frame width.
        width: usize,
        /// Bytes a row needs.
        needed: usize,
        /// Bytes between rows.
        bytes_per_line: usize,
    },
    /// The captured frame is shorter than its layout.
    #[error("the device gave {got} bytes, a {pixels:?} frame needs {needed}")]
    Short {
        /// The captured layout.
        pixels: CapturePixels,
        /// Bytes needed.
        needed: usize,
        /// Bytes given.
        got: usize,
    },
    /// The output buffer does not hold one frame of the output format.
    #[error("output buffer has {got} bytes, a frame needs {needed}")]
    Output {
        /// Bytes of one output frame.
        needed: usize,
        /// Bytes given.
        got: usize,
    },
}

/// Copies the captured frame `src` (`pixels` layout, `width x height`, luma rows
/// `bytes_per_line` apart) into `dst` as one tightly packed `out` frame
/// ([`FrameFormat::frame_bytes`]). Gray8 keeps the luma; yuv420 also gets the chroma at half
/// width and height (`YUYV`'s averaged over each pair of rows; `GREY` gets neutral 128).
///
/// # Errors
/// [`ConvertError`] if `src` is shorter than its layout, its rows are too close, or `dst` is not
/// one output frame long. `dst` is left as it was.
pub fn convert(
    src: &[u8],
    pixels: CapturePixels,
    (width, height): (usize, usize),
    bytes_per_line: usize,
    out: FrameFormat,
    dst: &mut [u8],
) -> Result<(), ConvertError> {
    let needed_row = pixels.min_bytes_per_line(width);
    if bytes_per_line < needed_row {
        return Err(ConvertError::RowTooShort {
            pixels,
            width,
            needed: needed_row,
            bytes_per_line,
        });
    }
    let needed = pixels.frame_bytes(height, bytes_per_line);
    if src.len() < needed {
        return Err(ConvertError::Short {
            pixels,
            needed,
            got: src.len(),
        });
    }
    if dst.len() != out.frame_bytes(width, height) {
        return Err(ConvertError::Output {
            needed: out.frame_bytes(width, height),
            got: dst.len(),
        });
    }
    if width == 0 || height == 0 {
        return Ok(());
    }
    let (luma, chroma) = dst.split_at_mut(width * height);
    let rows = src.chunks(bytes_per_line).take(height);
    for (row, dst) in rows.zip(luma.chunks_exact_mut(width.max(1))) {
        match pixels {
            CapturePixels::Grey | CapturePixels::Yu12 => dst.copy_from_slice(&row[..width]),
            CapturePixels::Yuyv => {
                for (d, pair) in dst.iter_mut().zip(row.chunks_exact(2)) {
                    *d = pair[0];
                }
            }
        }
    }
    if out == FrameFormat::Gray8 {
        return Ok(());
    }
    let (cw, ch) = (width.div_ceil(2), height.div_ceil(2));
    let (u_out, v_out) = chroma.split_at_mut(cw * ch);
    match pixels {
        CapturePixels::Grey => chroma.fill(128),
        CapturePixels::Yu12 => {
            let stride = bytes_per_line / 2;
            let planes = &src[height * bytes_per_line..];
            let (u_in, v_in) = planes.split_at(ch * stride);
            for (plane, dst) in [(u_in, u_out), (v_in, v_out)] {
                for (row, dst) in plane
                    .chunks(stride.max(1))
                    .zip(dst.chunks_exact_mut(cw.max(1)))
                {
                    dst.copy_from_slice(&row[..cw]);
                }
            }
        }
        CapturePixels::Yuyv => {
            // Each `Y0 U Y1 V` quad holds one U and one V for two pixels; rows 2y and 2y + 1
            // (the last alone when the height is odd) are averaged, rounding half up.
            for y in 0..ch {
                let top = &src[2 * y * bytes_per_line..][..2 * width];
                let bottom = if 2 * y + 1 < height {
                    &src[(2 * y + 1) * bytes_per_line..][..2 * width]
                } else {
                    top
                };
                for x in 0..cw {
                    // The quad of pixel pair x: U at +1, V at +3. An odd width's last pixel has
                    // a U but no V of its own: it takes the V before it (the U for a 1-wide row).
                    let u = 4 * x + 1;
                    let v = if u + 2 < 2 * width {
                        u + 2
                    } else {
                        u.saturating_sub(2).max(1)
                    };
                    let mean = |at: usize| (top[at] as u16 + bottom[at] as u16).div_ceil(2) as u8;
                    u_out[y * cw + x] = mean(u);
                    v_out[y * cw + x] = mean(v);
                }
            }
        }
    }
    Ok(())
}

#[cfg(v4l2_camera)]
pub use device::Camera;

#[cfg(v4l2_camera)]
mod device {
    use std::io::{self, Read};
    use std::path::{Path, PathBuf};

    use linuxvideo::format::{PixFormat, PixelFormat};
    use linuxvideo::stream::ReadStream;
    use linuxvideo::{BufType, CapabilityFlags, Device};

    use super::{CapturePixels, convert};
    use crate::Error;
    use crate::frames::FrameFormat;

    /// A V4L2 capture device streaming `width x height` frames, read as back-to-back frames of
    /// the output [`FrameFormat`] (see the module docs).
    pub struct Camera {
        stream: ReadStream,
        path: PathBuf,
        pixels: CapturePixels,
        size: (usize, usize),
        bytes_per_line: usize,
        out: FrameFormat,
        /// The current converted frame and how much of it has been read.
        frame: Vec<u8>,
        read: usize,
        /// Frames still to capture (`None`: until interrupted).
        left: Option<usize>,
    }

    fn camera_error(path: &Path, what: impl Into<String>, source: io::Error) -> Error {
        Error::Camera {
            path: path.to_path_buf(),
            what: what.into(),
            source,
        }
    }

    impl Camera {
        /// Opens `path` (e.g. `/dev/video0`) for `width x height` frames, converted to `out`;
        /// `frames` frames, or without end.
        ///
        /// # Errors
        /// [`Error::Camera`] if the device cannot be opened, is not a streaming capture device,
        /// offers none of the [`CapturePixels`] layouts, or will not deliver that frame size.
        pub fn open(
            path: &Path,
            (width, height): (usize, usize),
            out: FrameFormat,
            frames: Option<usize>,
        ) -> Result<Camera, Error> {
            let device = Device::open(path).map_err(|e| {
                // Opening asks the driver what it is: a file that is no device says ENOTTY
                // (ENOSYS under qemu-user, which does not forward V4L2's requests).
                let what = if matches!(e.raw_os_error(), Some(libc::ENOTTY | libc::ENOSYS)) {
                    "is not a V4L2 device"
                } else {
                    "cannot open"
                };
                camera_error(path, what, e)
            })?;
            let caps = device
                .capabilities()
                .map_err(|e| camera_error(path, "is not a V4L2 device", e))?
                .device_capabilities();
            if !caps.contains(CapabilityFlags::VIDEO_CAPTURE | CapabilityFlags::STREAMING) {
                return Err(camera_error(
                    path,
                    format!("is not a streaming video capture device ({caps:?})"),
                    io::Error::from(io::ErrorKind::Unsupported),
                ));
            }
            let offered: Vec<PixelFormat> = device
                .formats(BufType::VIDEO_CAPTURE)
                .filter_map(Result::ok)
                .map(|f| f.pixel_format())
                .collect();
            let Some(pixels) = CapturePixels::ALL
                .into_iter()
                .find(|p| offered.contains(&PixelFormat::from_fourcc(p.fourcc())))
            else {
                return Err(camera_error(
                    path,
                    format!("offers none of GREY, YU12, YUYV (it offers {offered:?})"),
                    io::Error::from(io::ErrorKind::Unsupported),
                ));
            };
            let too_big = |_| {
                camera_error(
                    path,
                    "frame size",
                    io::Error::from(io::ErrorKind::InvalidInput),
                )
            };
            let (w, h) = (
                u32::try_from(width).map_err(too_big)?,
                u32::try_from(height).map_err(too_big)?,
            );
            let format = PixFormat::new(w, h, PixelFormat::from_fourcc(pixels.fourcc()));
            let capture = device.video_capture(format).map_err(|e| {
                camera_error(path, format!("refuses {width}x{height} {pixels:?}"), e)
            })?;
            let got = capture.format();
            if (got.width(), got.height()) != (w, h)
                || got.pixel_format() != PixelFormat::from_fourcc(pixels.fourcc())
            {
                return Err(camera_error(
                    path,
                    format!(
                        "delivers {}x{} {:?} instead of the model's {width}x{height} {pixels:?}: \
                         pass a --size the camera supports and a denoiser that takes it",
                        got.width(),
                        got.height(),
                        got.pixel_format()
                    ),
                    io::Error::from(io::ErrorKind::Unsupported),
                ));
            }
            let bytes_per_line = got.bytes_per_line() as usize;
            if bytes_per_line < pixels.min_bytes_per_line(width) {
                return Err(camera_error(
                    path,
                    format!("spaces {width}-pixel {pixels:?} rows {bytes_per_line} bytes apart"),
                    io::Error::from(io::ErrorKind::InvalidData),
                ));
            }
            let stream = capture
                .into_stream()
                .map_err(|e| camera_error(path, "cannot start streaming", e))?;
            Ok(Camera {
                stream,
                path: path.to_path_buf(),
                pixels,
                size: (width, height),
                bytes_per_line,
                out,
                frame: vec![0; out.frame_bytes(width, height)],
                read: out.frame_bytes(width, height),
                left: frames,
            })
        }

        /// The layout the device delivers.
        pub fn pixels(&self) -> CapturePixels {
            self.pixels
        }
    }

    /// Consecutive buffers the driver may flag as corrupt before reading fails (about 3 s at
    /// 30 frames/s).
    const MAX_CORRUPT_IN_A_ROW: u32 = 100;

    impl Read for Camera {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.read == self.frame.len() {
                if self.left == Some(0) {
                    return Ok(0);
                }
                let Camera {
                    stream,
                    pixels,
                    size,
                    bytes_per_line,
                    out,
                    frame,
                    ..
                } = self;
                // A buffer the driver flags as corrupt is skipped; a camera that flags every one
                // is an error, not a loop that only a second Ctrl-C ends.
                let mut corrupt = 0;
                while !stream.dequeue(|view| {
                    if view.is_error() {
                        return Ok(false);
                    }
                    convert(&view, *pixels, *size, *bytes_per_line, *out, frame)
                        .map(|()| true)
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
                })? {
                    corrupt += 1;
                    if corrupt == MAX_CORRUPT_IN_A_ROW {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!(
                                "the camera flagged {MAX_CORRUPT_IN_A_ROW} frames in a row as \
                                 corrupt"
                            ),
                        ));
                    }
                }
                self.read = 0;
                self.left = self.left.map(|n| n - 1);
            }
            let n = buf.len().min(self.frame.len() - self.read);
            buf[..n].copy_from_slice(&self.frame[self.read..self.read + n]);
            self.read += n;
            Ok(n)
        }
    }

    impl std::fmt::Debug for Camera {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Camera")
                .field("path", &self.path)
                .field("pixels", &self.pixels)
                .field("size", &self.size)
                .field("bytes_per_line", &self.bytes_per_line)
                .field("out", &self.out)
                .finish_non_exhaustive()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 5x3 frame in `pixels` layout with rows `bpl` apart: luma `10 * y + x`, U `100 + ...`,
    /// V `200 + ...`, padding bytes 0xEE.
    fn captured(pixels: CapturePixels, bpl: usize) -> Vec<u8> {
        let (w, h) = (5usize, 3usize);
        let mut src = vec![0xEEu8; pixels.frame_bytes(h, bpl)];
        for y in 0..h {
            for x in 0..w {
                let luma = (10 * y + x) as u8;
                match pixels {
                    CapturePixels::Grey | CapturePixels::Yu12 => src[y * bpl + x] = luma,
                    CapturePixels::Yuyv => {
                        src[y * bpl + 2 * x] = luma;
                        // U at odd bytes of even pixels, V at odd bytes of odd pixels.
                        src[y * bpl + 2 * x + 1] = if x % 2 == 0 {
                            100 + (10 * y + x) as u8
                        } else {
                            200 + (10 * y + x - 1) as u8
                        };
                    }
                }
            }
        }
        if pixels == CapturePixels::Yu12 {
            let (cw, ch, stride) = (3, 2, bpl / 2);
            let u_at = h * bpl;
            let v_at = u_at + ch * stride;
            for y in 0..ch {
                for x in 0..cw {
                    src[u_at + y * stride + x] = 100 + (10 * y + x) as u8;
                    src[v_at + y * stride + x] = 200 + (10 * y + x) as u8;
                }
            }
        }
        src
    }

    fn luma() -> Vec<u8> {
        (0..3)
            .flat_map(|y| (0..5).map(move |x| (10 * y + x) as u8))
            .collect()
    }

    #[test]
    fn every_layout_gives_the_luma_without_row_padding() {
        for (pixels, bpl) in [
            (CapturePixels::Grey, 5),
            (CapturePixels::Grey, 8),
            (CapturePixels::Yu12, 8),
            (CapturePixels::Yuyv, 10),
            (CapturePixels::Yuyv, 16),
        ] {
            let src = captured(pixels, bpl);
            let mut dst = vec![0u8; 15];
            convert(&src, pixels, (5, 3), bpl, FrameFormat::Gray8, &mut dst).expect("converts");
            assert_eq!(dst, luma(), "{pixels:?} with rows {bpl} apart");
        }
    }

    #[test]
    fn yuv420_output_carries_the_chroma() {
        let mut dst = vec![0u8; FrameFormat::Yuv420.frame_bytes(5, 3)];
        let src = captured(CapturePixels::Yu12, 8);
        convert(
            &src,
            CapturePixels::Yu12,
            (5, 3),
            8,
            FrameFormat::Yuv420,
            &mut dst,
        )
        .expect("I420");
        assert_eq!(&dst[..15], &luma()[..]);
        assert_eq!(&dst[15..21], &[100, 101, 102, 110, 111, 112]);
        assert_eq!(&dst[21..], &[200, 201, 202, 210, 211, 212]);

        let src = captured(CapturePixels::Grey, 5);
        convert(
            &src,
            CapturePixels::Grey,
            (5, 3),
            5,
            FrameFormat::Yuv420,
            &mut dst,
        )
        .expect("GREY");
        assert!(dst[15..].iter().all(|&c| c == 128));

        // YUYV: rows 0 and 1 averaged (U 100 and 110 -> 105), row 2 alone; the odd last pixel
        // has a U of its own and reuses the pair's V position before it.
        let src = captured(CapturePixels::Yuyv, 10);
        convert(
            &src,
            CapturePixels::Yuyv,
            (5, 3),
            10,
            FrameFormat::Yuv420,
            &mut dst,
        )
        .expect("YUYV");
        assert_eq!(&dst[..15], &luma()[..]);
        assert_eq!(&dst[15..18], &[105, 107, 109]);
        assert_eq!(&dst[18..21], &[120, 122, 124]);
        assert_eq!(&dst[21..24], &[205, 207, 207]);
        assert_eq!(&dst[24..27], &[220, 222, 222]);
    }

    #[test]
    fn odd_widths_and_empty_frames_do_not_panic() {
        // YU12 5 pixels wide with rows 5 apart would give chroma rows of 2 for 3 values.
        let src = vec![0u8; 100];
        let mut dst = vec![0u8; FrameFormat::Yuv420.frame_bytes(5, 3)];
        assert!(matches!(
            convert(
                &src,
                CapturePixels::Yu12,
                (5, 3),
                5,
                FrameFormat::Yuv420,
                &mut dst
            ),
            Err(ConvertError::RowTooShort { needed: 6, .. })
        ));
        for pixels in CapturePixels::ALL {
            assert_eq!(
                convert(&[], pixels, (0, 3), 0, FrameFormat::Gray8, &mut []),
                Ok(())
            );
            assert_eq!(
                convert(&[], pixels, (4, 0), 8, FrameFormat::Yuv420, &mut []),
                Ok(())
            );
        }
    }

    #[test]
    fn bad_frames_are_errors_and_leave_the_output_alone() {
        let mut dst = vec![7u8; 15];
        let src = captured(CapturePixels::Yuyv, 10);
        assert!(matches!(
            convert(
                &src[..29],
                CapturePixels::Yuyv,
                (5, 3),
                10,
                FrameFormat::Gray8,
                &mut dst
            ),
            Err(ConvertError::Short {
                needed: 30,
                got: 29,
                ..
            })
        ));
        assert!(matches!(
            convert(
                &src,
                CapturePixels::Yuyv,
                (5, 3),
                9,
                FrameFormat::Gray8,
                &mut dst
            ),
            Err(ConvertError::RowTooShort { needed: 10, .. })
        ));
        assert!(matches!(
            convert(
                &src,
                CapturePixels::Yuyv,
                (5, 3),
                10,
                FrameFormat::Gray8,
                &mut dst[..14]
            ),
            Err(ConvertError::Output {
                needed: 15,
                got: 14
            })
        ));
        assert!(dst.iter().all(|&v| v == 7));
    }
}
