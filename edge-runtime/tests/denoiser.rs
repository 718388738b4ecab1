//! The denoiser path: loading for a frame size, 8-bit frames, streams of frames in order on
//! worker threads, short final frames, chroma passing through, and image files.

mod common;

use common::{box_blur_mirrored_reference, box_blur_model, box_blur_reference, write_model};
use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use edge_runtime::frames::{FrameFormat, denoise_stream, denoise_stream_until};
use edge_runtime::{Denoiser, Error, Image};

fn blur(width: usize, height: usize) -> (tempfile::TempDir, Denoiser) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("denoiser.onnx");
    write_model(&path, &box_blur_model());
    let denoiser = Denoiser::load(&path, width, height).expect("loads");
    (dir, denoiser)
}

/// The memory a frame's run needs is counted from the plan: the bundled camera denoiser's
/// hidden layers have 8 channels, so at least two 8-channel feature maps of the mirrored frame
/// (64 bytes a pixel) must be held at once, and the count grows with the frame's area (on frames of
/// a few hundred pixels a side; tiny ones are planned differently). It is what
/// `Denoiser::load` checks against the memory the process can get.
#[test]
fn the_tensors_a_frame_needs_are_counted_from_the_plan() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/camera_denoiser.onnx");
    let per_pixel = |w: usize, h: usize| {
        let denoiser = Denoiser::load(&model, w, h).expect("loads");
        let border = denoiser.reflect_padding();
        denoiser.tensor_bytes() as f64 / ((w + 2 * border) * (h + 2 * border)) as f64
    };
    let (small, large) = (per_pixel(320, 240), per_pixel(640, 480));
    assert!(small >= 64.0, "{small} bytes a pixel");
    assert!((small - large).abs() < 0.02 * large, "{small} vs {large}");
    // This crate's direct convolution reads the feature maps in place (68 bytes a pixel); on
    // armv7 tract's convolutions also hold each one's im2col matrix (~330).
    if cfg!(any(target_arch = "x86_64", target_arch = "aarch64")) {
        assert!(small <= 104.0, "{small} bytes a pixel");
    }
}

/// A frame denoised in strips of rows comes out as it does whole: each strip carries the model's
/// context (its `reflect_padding`) above and below, and the last one ends at the frame's last
/// row. The bundled camera denoiser (10 rows of context) on a 100x75 frame in strips of 16 (the
/// last overlapping the one before), 1 and 200 (the whole frame).
#[test]
fn a_frame_denoised_in_strips_comes_out_as_it_does_whole() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/camera_denoiser.onnx");
    let (w, h) = (100, 75);
    let input = frame(3, w * h);
    let pixels = input.iter().map(|&p| p as f32 / 255.0).collect();
    let image = Image::new(w, h, pixels).expect("image");
    let whole = Denoiser::load(&model, w, h).expect("loads");
    assert_eq!(whole.strip_rows(), h);
    let expected = whole.denoise(&image).expect("denoises");
    for (rows, strip_rows) in [(16, 16), (1, 1), (200, h)] {
        let rows = NonZeroUsize::new(rows).expect("rows");
        let strips = Denoiser::load_in_strips(&model, w, h, rows).expect("loads");
        assert_eq!(strips.strip_rows(), strip_rows);
        assert!(strips.tensor_bytes() <= whole.tensor_bytes());
        let clean = strips.denoise(&image).expect("denoises");
        let worst = clean
            .pixels()
            .iter()
            .zip(expected.pixels())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst <= 1e-5, "strips of {rows}: off by {worst}");
        let mut out = vec![0; w * h];
        strips.denoise_gray8(&input, &mut out).expect("denoises");
        let worst = out
            .iter()
            .zip(expected.to_gray8())
            .map(|(a, b)| a.abs_diff(b))
            .max();
        assert!(worst <= Some(1), "strips of {rows}: off by {worst:?}");
    }
}

/// Frame `i` of a test stream: different in every frame, so order mistakes show.
fn frame(i: usize, bytes: usize) -> Vec<u8> {
    (0..bytes)
        .map(|j| ((j * 31 + i * 97) % 251) as u8)
        .collect()
}

#[test]
fn gray8_frames_are_denoised_like_the_reference() {
    let (w, h) = (7, 5);
    let (_dir, denoiser) = blur(w, h);
    assert_eq!(denoiser.frame_size(), (7, 5));
    let input = frame(0, w * h);
    let mut out = vec![0; w * h];
    denoiser.denoise_gray8(&input, &mut out).expect("denoises");
    let expected = box_blur_reference(&input, w, h);
    let worst = out.iter().zip(&expected).map(|(a, b)| a.abs_diff(*b)).max();
    assert!(worst <= Some(1), "off by {worst:?}");
    // The reused buffers give the same answer the second time.
    let mut again = vec![0; w * h];
    denoiser
        .denoise_gray8(&input, &mut again)
        .expect("denoises");
    assert_eq!(out, again);
    let err = denoiser
        .denoise_gray8(&input[1..], &mut again)
        .expect_err("short");
    assert!(matches!(err, Error::PixelCount { actual: 34, .. }), "{err}");
}

#[test]
fn a_stream_keeps_its_order_on_many_threads_and_reports_a_short_last_frame() {
    let (w, h) = (16, 12);
    let (_dir, denoiser) = blur(w, h);
    let format = FrameFormat::Yuv420;
    let size = format.frame_bytes(w, h);
    let frames: Vec<Vec<u8>> = (0..9).map(|i| frame(i, size)).collect();
    let mut stream = frames.concat();
    // Then a frame cut short.
    stream.extend(frame(9, size / 3));
    let mut out = Vec::new();
    let err = denoise_stream(&denoiser, format, stream.as_slice(), &mut out, 4)
        .expect_err("the last frame is short");
    assert!(
        matches!(err, Error::ShortFrame { index: 9, got, expected } if got == size / 3 && expected == size),
        "{err}"
    );
    assert_eq!(out.len(), 9 * size, "every complete frame is written");
    for (i, (got, sent)) in out.chunks(size).zip(&frames).enumerate() {
        let luma = w * h;
        assert_eq!(
            got[..luma],
            box_blur_reference(&sent[..luma], w, h)[..],
            "frame {i}: luma denoised, in order"
        );
        assert_eq!(
            got[luma..],
            sent[luma..],
            "frame {i}: chroma passed through"
        );
    }
    // A whole stream: all frames, one thread, same bytes.
    let mut single = Vec::new();
    let summary = denoise_stream(
        &denoiser,
        format,
        frames.concat().as_slice(),
        &mut single,
        1,
    )
    .expect("complete stream");
    assert_eq!(summary.frames, 9);
    assert_eq!(single, out);
    // An empty stream is zero frames, not an error.
    let summary = denoise_stream(&denoiser, format, &[][..], &mut Vec::new(), 2).expect("empty");
    assert_eq!(summary.frames, 0);
}

/// A stream source that raises `stop` (as a Ctrl-C would) once it has handed out `before`
/// bytes, then delivers what is left in pieces, like a camera still sending.
struct StopsPartWay<'a> {
    bytes: &'a [u8],
    before: usize,
    stop: &'a AtomicBool,
}

impl std::io::Read for StopsPartWay<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.before == 0 {
            self.stop.store(true, Ordering::Relaxed);
        }
        let limit = if self.before > 0 { self.before } else { 5 };
        let n = buf.len().min(limit).min(self.bytes.len());
        buf[..n].copy_from_slice(&self.bytes[..n]);
        self.bytes = &self.bytes[n..];
        self.before = self.before.saturating_sub(n);
        Ok(n)
    }
}

#[test]
fn a_stopped_stream_writes_the_frames_read_before_the_stop_and_drops_the_cut_one() {
    let (w, h) = (16, 12);
    let (_dir, denoiser) = blur(w, h);
    let format = FrameFormat::Gray8;
    let size = format.frame_bytes(w, h);
    let frames: Vec<Vec<u8>> = (0..6).map(|i| frame(i, size)).collect();
    let stream = frames.concat();
    // The stop comes 3.5 frames in: frame 3 is being read and is cut short by it.
    for threads in [1, 3] {
        let stop = AtomicBool::new(false);
        let reader = StopsPartWay {
            bytes: &stream,
            before: 3 * size + size / 2,
            stop: &stop,
        };
        let mut out = Vec::new();
        let summary = denoise_stream_until(&denoiser, format, reader, &mut out, threads, &stop)
            .expect("a stop is not an error");
        assert!(summary.stopped);
        assert_eq!(summary.frames, 3, "{threads} threads");
        let expected: Vec<u8> = frames[..3]
            .iter()
            .flat_map(|f| box_blur_reference(f, w, h))
            .collect();
        assert_eq!(out, expected, "{threads} threads");
    }
    // Without a stop the same stream runs to its end.
    let summary =
        denoise_stream(&denoiser, format, stream.as_slice(), &mut Vec::new(), 2).expect("whole");
    assert_eq!((summary.frames, summary.stopped), (6, false));
}

/// The box blur with `reflect_padding` in its metadata, as the exporter marks the camera
/// denoiser.
fn mirroring(border: &str) -> tract_onnx::pb::ModelProto {
    let mut model = box_blur_model();
    model
        .metadata_props
        .push(tract_onnx::pb::StringStringEntryProto {
            key: "reflect_padding".into(),
            value: border.into(),
        });
    model
}

#[test]
fn frames_are_mirrored_outwards_by_the_metadata_reflect_padding() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("denoiser.onnx");
    let (w, h) = (7, 5);
    let input = frame(4, w * h);
    // The blur reads one pixel past the edge: any border of 1 or more gives the mirrored sums.
    for border in ["1", "3"] {
        write_model(&path, &mirroring(border));
        let denoiser = Denoiser::load(&path, w, h).expect("loads");
        assert_eq!(denoiser.reflect_padding().to_string(), border);
        assert_eq!(denoiser.frame_size(), (w, h));
        let mut out = vec![0; w * h];
        denoiser.denoise_gray8(&input, &mut out).expect("denoises");
        let expected = box_blur_mirrored_reference(&input, w, h);
        let worst = out.iter().zip(&expected).map(|(a, b)| a.abs_diff(*b)).max();
        assert!(worst <= Some(1), "border {border}: off by {worst:?}");
        assert_ne!(
            expected,
            box_blur_reference(&input, w, h),
            "the edges differ"
        );
        // In strips of 2 rows (the last overlapping), the same pixels.
        let two = NonZeroUsize::new(2).expect("rows");
        let strips = Denoiser::load_in_strips(&path, w, h, two).expect("loads");
        let mut in_strips = vec![0; w * h];
        strips
            .denoise_gray8(&input, &mut in_strips)
            .expect("denoises");
        assert_eq!(in_strips, out, "border {border}");
        // Images go the same way.
        let pixels = input.iter().map(|&p| p as f32 / 255.0).collect();
        let image = Image::new(w, h, pixels).expect("image");
        let clean = denoiser.denoise(&image).expect("denoises");
        assert_eq!(clean.to_gray8(), out, "border {border}");
        // The model's input, as `edge bench` hands it to ONNX Runtime: the frame mirrored
        // about its edge pixels (-1 -> 1, w -> w - 2).
        let b: usize = border.parse().expect("count");
        let model_input = denoiser.model_input_gray8(&input).expect("input");
        let (iw, ih) = denoiser.model_input_size();
        assert_eq!((iw, ih), (w + 2 * b, h + 2 * b));
        assert_eq!(model_input.len(), iw * ih);
        let at = |x: isize, y: isize| {
            model_input[(y + b as isize) as usize * iw + (x + b as isize) as usize]
        };
        let pixel = |x: usize, y: usize| input[y * w + x] as f32 * (1.0 / 255.0);
        assert_eq!(at(2, 3), pixel(2, 3));
        assert_eq!(at(-1, 0), pixel(1, 0));
        assert_eq!(at(w as isize, 4), pixel(w - 2, 4));
        assert_eq!(at(0, -1), pixel(0, 1));
        assert_eq!(at(-1, h as isize), pixel(1, h - 2));
        let err = denoiser.model_input_gray8(&input[1..]).expect_err("short");
        assert!(matches!(err, Error::PixelCount { actual: 34, .. }), "{err}");
    }
    // A 1-pixel-high frame mirrors onto itself.
    write_model(&path, &mirroring("2"));
    let denoiser = Denoiser::load(&path, 4, 1).expect("loads");
    let mut out = vec![0; 4];
    denoiser
        .denoise_gray8(&[90; 4], &mut out)
        .expect("denoises");
    assert_eq!(out, [90; 4]);
    for bad in ["-1", "ten", "100000"] {
        write_model(&path, &mirroring(bad));
        let err = Denoiser::load(&path, w, h).expect_err(bad);
        assert!(
            matches!(err, Error::NotADecoder { .. }) && err.to_string().contains("reflect_padding"),
            "{bad}: {err}"
        );
    }
}

#[test]
fn images_are_denoised_and_bad_files_are_errors() {
    let (dir, denoiser) = blur(6, 4);
    let pixels: Vec<f32> = frame(3, 24).iter().map(|&p| p as f32 / 255.0).collect();
    let image = Image::new(6, 4, pixels).expect("image");
    for name in ["in.png", "in.pgm"] {
        let path = dir.path().join(name);
        image.save(&path).expect("writes");
        let loaded = Image::load(&path).expect("reads back");
        assert_eq!(loaded.to_gray8(), image.to_gray8(), "{name}");
        let clean = denoiser.denoise(&loaded).expect("denoises");
        assert_eq!(
            clean.to_gray8(),
            box_blur_reference(&image.to_gray8(), 6, 4),
            "{name}"
        );
    }
    // 4x6 has the 24 pixels of a 6x4 frame: named by its size (a pixel count said nothing).
    let wrong = Image::new(4, 6, vec![0.0; 24]).expect("image");
    let err = denoiser.denoise(&wrong).expect_err("another size");
    assert!(matches!(err, Error::ImageSize { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "a 4x6 image given to a denoiser made for 6x4 frames"
    );
    let cut = dir.path().join("cut.pgm");
    std::fs::write(&cut, b"P5\n6 4\n255\n0123").expect("write");
    let err = Image::load(&cut).expect_err("truncated");
    assert!(
        err.to_string().contains("4 of its 6x4 = 24 pixels"),
        "{err}"
    );
    let junk = dir.path().join("junk.png");
    std::fs::write(&junk, b"not a png").expect("write");
    assert!(matches!(Image::load(&junk), Err(Error::ReadImage { .. })));
    // A 50-byte PNG announcing 20000 x 20000 pixels (400 MB; a size that fits a 32-bit
    // `usize`, so that the PNG decoder takes the header and our limit is what refuses it).
    let huge = dir.path().join("huge.png");
    std::fs::write(&huge, png_announcing(20_000, 20_000)).expect("write");
    let err = Image::load(&huge).expect_err("too large");
    assert!(matches!(err, Error::ReadImage { .. }), "{err}");
    assert!(err.to_string().contains("at most 16384 pixels"), "{err}");
    // Within the limit, 16000 x 16000 pixels (256 MB) cannot be in 50 bytes: refused before
    // the pixel buffer is allocated.
    std::fs::write(&huge, png_announcing(16_000, 16_000)).expect("write");
    let err = Image::load(&huge).expect_err("corrupt");
    assert!(matches!(err, Error::ReadImage { .. }), "{err}");
    assert!(err.to_string().contains("cannot be in"), "{err}");
}

/// The start of an 8-bit grayscale PNG of `width` x `height`: its header and the first bytes
/// of its pixel data, all a decoder reads before it allocates the pixels.
fn png_announcing(width: u32, height: u32) -> Vec<u8> {
    let crc32 = |bytes: &[u8]| {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= b as u32;
            for _ in 0..8 {
                crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
            }
        }
        !crc
    };
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        png.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let start = png.len();
        png.extend_from_slice(kind);
        png.extend_from_slice(data);
        let crc = crc32(&png[start..]);
        png.extend_from_slice(&crc.to_be_bytes());
    };
    let mut header = [width.to_be_bytes(), height.to_be_bytes()].concat();
    header.extend_from_slice(&[8, 0, 0, 0, 0]);
    chunk(b"IHDR", &header);
    chunk(b"IDAT", &[0x78, 0x9c, 0, 0, 0]);
    png
}

#[test]
fn a_model_that_is_not_a_denoiser_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("decoder.onnx");
    write_model(&path, &common::decoder_model(common::Batch::Dynamic));
    let err = Denoiser::load(&path, 28, 28).expect_err("a decoder is not a denoiser");
    assert!(
        matches!(err, Error::NotADecoder { ref reason, .. }
            if reason.contains("a denoiser takes gray frames [N, 1, H, W]")),
        "{err}"
    );
    // A model made for one size: named as such for another (its output had come out wrong).
    let digits = dir.path().join("digits.onnx");
    write_model(&digits, &common::box_blur_model_for(28, 28));
    Denoiser::load(&digits, 28, 28).expect("its own size");
    let err = Denoiser::load(&digits, 64, 48).expect_err("another size");
    assert!(
        err.to_string()
            .contains("it takes 28x28 images only, not 64x48"),
        "{err}"
    );
    let missing = Denoiser::load(dir.path().join("none.onnx"), 8, 8).expect_err("missing");
    assert!(matches!(missing, Error::ReadModel { .. }), "{missing}");
}

/// A writer that fails once it has taken `n` writes.
struct FailingWriter(usize);

impl std::io::Write for FailingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0 == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "closed",
            ));
        }
        self.0 -= 1;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_failing_writer_stops_the_stream_with_its_error() {
    let (w, h) = (8, 6);
    let (_dir, denoiser) = blur(w, h);
    let stream: Vec<u8> = (0..50).flat_map(|i| frame(i, w * h)).collect();
    // The third frame's write fails: the call returns that error (and does not hang), with
    // four workers and 47 frames still to come.
    let err = denoise_stream(
        &denoiser,
        FrameFormat::Gray8,
        stream.as_slice(),
        FailingWriter(2),
        4,
    )
    .expect_err("the writer fails");
    assert!(
        matches!(&err, Error::Stream { what, .. } if what == "writing frame 2"),
        "{err}"
    );
}

/// A reader that gives `good` bytes, then fails.
struct FailingReader<'a> {
    good: &'a [u8],
}

impl std::io::Read for FailingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.good.is_empty() {
            return Err(std::io::Error::other("the camera went away"));
        }
        let n = buf.len().min(self.good.len()).min(7);
        buf[..n].copy_from_slice(&self.good[..n]);
        self.good = &self.good[n..];
        Ok(n)
    }
}

#[test]
fn a_failing_reader_stops_the_stream_after_writing_the_frames_before_it() {
    let (w, h) = (8, 6);
    let (_dir, denoiser) = blur(w, h);
    let stream: Vec<u8> = (0..5).flat_map(|i| frame(i, w * h)).collect();
    // Three whole frames and half of the fourth, then a read error.
    let good = &stream[..3 * w * h + w * h / 2];
    let mut expected = Vec::new();
    denoise_stream(
        &denoiser,
        FrameFormat::Gray8,
        &stream[..3 * w * h],
        &mut expected,
        1,
    )
    .expect("three frames");
    for threads in [1, 4] {
        let mut out = Vec::new();
        let err = denoise_stream(
            &denoiser,
            FrameFormat::Gray8,
            FailingReader { good },
            &mut out,
            threads,
        )
        .expect_err("the reader fails");
        assert!(matches!(err, Error::ReadFrame { index: 3, .. }), "{err}");
        assert_eq!(out, expected, "{threads} threads");
    }
}

#[test]
fn a_frame_the_model_turns_into_nan_stops_the_stream_after_the_frames_before_it() {
    let (w, h) = (8, 6);
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("denoiser.onnx");
    write_model(&path, &common::sqrt_model());
    let denoiser = Denoiser::load(&path, w, h).expect("loads");
    // Frames of bright pixels (a finite square root), but frame 5 has one dark pixel (NaN).
    let mut stream = vec![200u8; 12 * w * h];
    stream[5 * w * h + 3] = 10;
    for threads in [1, 4] {
        let mut out = Vec::new();
        let err = denoise_stream(
            &denoiser,
            FrameFormat::Gray8,
            stream.as_slice(),
            &mut out,
            threads,
        )
        .expect_err("frame 5 fails");
        assert!(matches!(err, Error::Frame { index: 5, .. }), "{err}");
        let message = format!("{:#}", anyhow::Error::new(err));
        assert!(
            message.contains("pixel (3, 0) is not a finite number"),
            "{message}"
        );
        // sqrt(200/255 - 0.5) = 0.533 -> 136, for every frame before the failed one.
        assert_eq!(out, vec![136u8; 5 * w * h], "{threads} threads");
    }
}

/// A model without `reflect_padding` metadata has no known reach: its strips would read zero
/// padding where the rows next to them are, so it is never split (asked for strips, it says
/// why); whole frames, or strips as tall as the frame, are fine.
#[test]
fn a_model_without_its_reach_is_not_split_into_strips() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("blur.onnx");
    common::write_model(&path, &common::box_blur_model());
    let (w, h) = (10, 6);
    let two = NonZeroUsize::new(2).expect("rows");
    let err = Denoiser::load_in_strips(&path, w, h, two).expect_err("strips of an unknown reach");
    assert!(err.to_string().contains("no `reflect_padding`"), "{err}");
    let tall = NonZeroUsize::new(h).expect("rows");
    let whole = Denoiser::load_in_strips(&path, w, h, tall).expect("the frame's height");
    assert_eq!(whole.strip_rows(), h);
}
