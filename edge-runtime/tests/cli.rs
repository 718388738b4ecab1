//! Runs the `edge` binary on the hand-built test decoder (see `common/mod.rs`).

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::OnceLock;

use common::{ATOL, Batch, PIXELS, SIDE, decoder_model, expected_pixels, max_abs_diff};

/// A temporary directory holding the test decoder as `decoder.onnx`.
fn workspace() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    common::write_model(
        &dir.path().join("decoder.onnx"),
        &decoder_model(Batch::Dynamic),
    );
    dir
}

/// [`workspace`] with the test encoder and upscaler beside the decoder, as `encoder.onnx` and
/// `upscaler.onnx`.
fn image_models_workspace() -> tempfile::TempDir {
    let dir = workspace();
    common::write_model(&dir.path().join("encoder.onnx"), &common::encoder_model());
    common::write_model(&dir.path().join("upscaler.onnx"), &common::upscaler_model());
    dir
}

/// Runs `edge` with `args` in `dir`.
fn edge(dir: &Path, args: &[&str]) -> Output {
    edge_command()
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run edge")
}

/// A command that starts the `edge` binary built for these tests.
///
/// Cross-built tests run under qemu-user, and a process inside qemu-user cannot start a foreign
/// binary by itself unless binfmt_misc is set up (glibc's spawn then fails in the child, which
/// exits with 127). So `edge --version` is tried once; if it does not run natively, `edge` is
/// started through `EDGE_<ARCH>_RUNNER` (e.g. `EDGE_AARCH64_RUNNER`), which the workspace's
/// `.cargo/config.toml` sets to the same qemu command line as cargo's runner.
fn edge_command() -> Command {
    const EXE: &str = env!("CARGO_BIN_EXE_edge");
    static RUNNER: OnceLock<Option<Vec<String>>> = OnceLock::new();
    let runner = RUNNER.get_or_init(|| {
        let native = Command::new(EXE).arg("--version").output();
        if native.as_ref().is_ok_and(|o| o.status.success()) {
            return None;
        }
        let variable = format!("EDGE_{}_RUNNER", std::env::consts::ARCH.to_uppercase());
        let runner = std::env::var(&variable).unwrap_or_else(|_| {
            panic!("{EXE} does not run natively ({native:?}) and {variable} is not set")
        });
        Some(runner.split_whitespace().map(String::from).collect())
    });
    match runner.as_deref() {
        None => Command::new(EXE),
        Some([program, args @ ..]) => {
            let mut command = Command::new(program);
            command.args(args).arg(EXE);
            command
        }
        Some([]) => panic!(
            "EDGE_{}_RUNNER is empty",
            std::env::consts::ARCH.to_uppercase()
        ),
    }
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Little-endian f32 values.
fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Gray levels of an 8-bit grayscale PNG, after checking its header.
fn read_png(path: &Path) -> Vec<u8> {
    let file = std::fs::File::open(path).expect("open png");
    let mut reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .expect("png header");
    let mut buf = vec![0; reader.output_buffer_size().expect("buffer size")];
    let info = reader.next_frame(&mut buf).expect("png frame");
    assert_eq!((info.width, info.height), (SIDE as u32, SIDE as u32));
    assert_eq!(
        (info.color_type, info.bit_depth),
        (png::ColorType::Grayscale, png::BitDepth::Eight)
    );
    buf.truncate(info.buffer_size());
    buf
}

#[test]
fn generates_one_png_and_raw_pixels() {
    let dir = workspace();
    let out = edge(
        dir.path(),
        &[
            "generate",
            "--model",
            "decoder.onnx",
            "--latent",
            "0.5,-1.2",
            "--out",
            "digit.png",
            "--raw",
            "digit.f32",
        ],
    );
    assert!(out.status.success(), "edge failed: {}", stderr(&out));

    let expected = expected_pixels(&[0.5, -1.2]);
    let raw = f32s(&std::fs::read(dir.path().join("digit.f32")).expect("raw file"));
    let diff = max_abs_diff(&raw, &expected);
    assert!(
        diff <= ATOL,
        "raw pixels differ from the reference by {diff}"
    );

    let gray = read_png(&dir.path().join("digit.png"));
    let expected_gray: Vec<u8> = expected
        .iter()
        .map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
        .collect();
    // A value within ATOL of a rounding boundary may land on either side of it.
    let worst = gray
        .iter()
        .zip(&expected_gray)
        .map(|(a, e)| a.abs_diff(*e))
        .max()
        .unwrap_or(0);
    assert!(
        worst <= 1,
        "PNG gray levels differ from the reference by {worst}"
    );
}

#[test]
fn several_latents_get_numbered_files() {
    let dir = workspace();
    let out = edge(
        dir.path(),
        &[
            "generate",
            "--model",
            "decoder.onnx",
            "--latent",
            "0,0",
            "--latent",
            "-1,2",
            "--out",
            "d.pgm",
            "--raw",
            "d.f32",
        ],
    );
    assert!(out.status.success(), "edge failed: {}", stderr(&out));
    assert!(
        !dir.path().join("d.pgm").exists(),
        "plain --out name must not be written"
    );

    let header = format!("P5\n{SIDE} {SIDE}\n255\n");
    for i in 0..2 {
        let pgm = std::fs::read(dir.path().join(format!("d_{i}.pgm"))).expect("numbered pgm");
        assert!(
            pgm.starts_with(header.as_bytes()),
            "digit {i}: bad PGM header"
        );
        assert_eq!(pgm.len(), header.len() + PIXELS);
    }
    let raw = f32s(&std::fs::read(dir.path().join("d.f32")).expect("raw file"));
    assert_eq!(raw.len(), 2 * PIXELS);
    assert!(max_abs_diff(&raw[..PIXELS], &expected_pixels(&[0.0, 0.0])) <= ATOL);
    assert!(max_abs_diff(&raw[PIXELS..], &expected_pixels(&[-1.0, 2.0])) <= ATOL);
}

#[test]
fn wrong_latent_length_fails_clearly_and_writes_nothing() {
    let dir = workspace();
    let out = edge(
        dir.path(),
        &[
            "generate",
            "--model",
            "decoder.onnx",
            "--latent",
            "1,2",
            "--latent",
            "1,2,3",
            "--out",
            "d.png",
        ],
    );
    assert!(!out.status.success());
    let message = stderr(&out);
    assert!(message.contains("decoding latent 1 (1,2,3)"), "{message}");
    assert!(
        message.contains("latent has 3 values but the decoder expects 2"),
        "{message}"
    );
    assert!(
        !dir.path().join("d_0.png").exists(),
        "nothing may be written when a latent is bad"
    );
}

#[test]
fn non_numeric_latent_is_a_usage_error() {
    let dir = workspace();
    let out = edge(
        dir.path(),
        &[
            "generate",
            "--model",
            "decoder.onnx",
            "--latent",
            "1,abc",
            "--out",
            "d.png",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "clap's usage-error code");
    assert!(
        stderr(&out).contains("`abc` is not a number"),
        "{}",
        stderr(&out)
    );
}

/// Runs `edge generate` with `args` in a fresh workspace and checks it fails with `message`.
fn generate_fails_with(args: &[&str], message: &str) {
    let dir = workspace();
    fails_with(dir.path(), &[&["generate"], args].concat(), message);
}

/// Runs `edge` with `args` in `dir` and checks it fails with `message`.
fn fails_with(dir: &Path, args: &[&str], message: &str) {
    let out = edge(dir, args);
    assert!(!out.status.success(), "edge {args:?} succeeded");
    assert!(stderr(&out).contains(message), "{}", stderr(&out));
}

#[test]
fn bad_inputs_fail_clearly() {
    generate_fails_with(
        &[
            "--model",
            "decoder.onnx",
            "--latent",
            "0,NaN",
            "--out",
            "d.png",
        ],
        "latent value #1 is NaN, not a finite number",
    );
    generate_fails_with(
        &["--model", "nope.onnx", "--latent", "0,0", "--out", "d.png"],
        "cannot read model file nope.onnx",
    );
    // The extension is checked before the (missing) model is loaded.
    generate_fails_with(
        &["--model", "nope.onnx", "--latent", "0,0", "--out", "d.jpg"],
        "use a .png or .pgm extension",
    );
    // An empty model file and a folder in its place, said plainly.
    let dir = workspace();
    std::fs::write(dir.path().join("empty.onnx"), b"").expect("empty model");
    std::fs::create_dir(dir.path().join("folder.onnx")).expect("mkdir");
    for (model, message) in [
        ("empty.onnx", "the file is empty"),
        ("folder.onnx", "it is a directory"),
    ] {
        let args = [
            "generate", "--model", model, "--latent", "0,0", "--out", "d.png",
        ];
        fails_with(dir.path(), &args, message);
    }
    // Every output's folder is checked before the first is written: `keep.png` stays.
    std::fs::write(dir.path().join("keep.png"), b"old").expect("old output");
    let args = [
        "generate",
        "--model",
        "decoder.onnx",
        "--latent",
        "0,0",
        "--out",
        "keep.png",
        "--sheet",
        "nodir/s.png",
    ];
    fails_with(
        dir.path(),
        &args,
        "the folder of nodir/s.png does not exist",
    );
    assert_eq!(
        std::fs::read(dir.path().join("keep.png")).expect("keep.png"),
        b"old"
    );
    // The outputs are one set: a folder where the sheet should go stops the run before any
    // digit is written (the digits came first, and were written, before the set).
    std::fs::write(dir.path().join("keep_0.png"), b"old").expect("old output");
    std::fs::create_dir(dir.path().join("sheet.png")).expect("mkdir");
    let args = [
        "generate",
        "--model",
        "decoder.onnx",
        "--latent",
        "0,0",
        "--latent",
        "1,1",
        "--out",
        "keep.png",
        "--sheet",
        "sheet.png",
    ];
    fails_with(dir.path(), &args, "0: cannot write sheet.png");
    fails_with(dir.path(), &args, "1: a folder is in the way");
    assert_eq!(
        std::fs::read(dir.path().join("keep_0.png")).expect("keep_0.png"),
        b"old"
    );
    assert!(!dir.path().join("keep_1.png").exists());
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
    // A file where the output's folder should be is named.
    let args = [
        "generate",
        "--model",
        "decoder.onnx",
        "--latent",
        "0,0",
        "--out",
        "keep.png/d.png",
    ];
    fails_with(
        dir.path(),
        &args,
        "cannot write keep.png/d.png: keep.png is not a folder",
    );
    // A morph between latents of two lengths is named as such.
    let args = [
        "generate",
        "--model",
        "decoder.onnx",
        "--morph",
        "0,0,0",
        "1,1",
        "--out",
        "m.png",
    ];
    fails_with(
        dir.path(),
        &args,
        "two latents of the same length: 3 values, then 2",
    );
    // bench: at most a million warm-up calls (as timed ones); --batch is for decoders only.
    let bench = ["bench", "--model", "decoder.onnx"];
    fails_with(
        dir.path(),
        &[&bench[..], &["--warmup", "2000000"]].concat(),
        "--warmup",
    );
    let args = [&bench[..], &["--size", "8x8", "--batch", "4"]].concat();
    fails_with(dir.path(), &args, "cannot be used with");
}

#[test]
fn help_shows_an_example() {
    let dir = workspace();
    let out = edge(dir.path(), &["generate", "--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("Examples:") && help.contains("--latent 0.5,-1.2"),
        "{help}"
    );
}

/// Runs `edge generate` with `args` in `dir` and returns the raw pixels it wrote to `r.f32`.
fn generate_raw(dir: &Path, args: &[&str]) -> Vec<f32> {
    let out = edge(
        dir,
        &[
            &["generate", "--model", "decoder.onnx", "--raw", "r.f32"],
            args,
        ]
        .concat(),
    );
    assert!(
        out.status.success(),
        "edge {args:?} failed: {}",
        stderr(&out)
    );
    f32s(&std::fs::read(dir.join("r.f32")).expect("raw file"))
}

#[test]
fn grid_contact_sheet_holds_every_digit_in_order() {
    let dir = workspace();
    let raw = generate_raw(
        dir.path(),
        &["--grid", "3", "--span", "1", "--sheet", "grid.pgm"],
    );
    // Row by row from the top left: z0 from -1 to 1, z1 from 1 to -1.
    let expected: Vec<f32> = [-1.0f32, 0.0, 1.0]
        .iter()
        .flat_map(|&z1| [-1.0f32, 0.0, 1.0].map(|z0| expected_pixels(&[z0, -z1])))
        .flatten()
        .collect();
    assert!(max_abs_diff(&raw, &expected) <= ATOL);

    // 3 x 3 cells of 28 pixels with 2-pixel gaps: 92 x 92.
    let pgm = std::fs::read(dir.path().join("grid.pgm")).expect("sheet");
    let header = b"P5\n92 92\n255\n";
    assert!(pgm.starts_with(header), "sheet header");
    let gray = &pgm[header.len()..];
    assert_eq!(gray.len(), 92 * 92);
    // Cell (row 1, column 2) is latent (1, 0); the gaps are mid gray.
    let cell = expected_pixels(&[1.0, 0.0]);
    for y in 0..SIDE {
        for x in 0..SIDE {
            let sheet = gray[(2 + 30 + y) * 92 + 2 + 2 * 30 + x];
            let want = (cell[y * SIDE + x].clamp(0.0, 1.0) * 255.0).round() as u8;
            assert!(sheet.abs_diff(want) <= 1, "pixel ({x}, {y}) of cell (1, 2)");
        }
    }
    assert_eq!(gray[0], 128, "gap");
}

#[test]
fn morph_and_random_latents() {
    let dir = workspace();
    let raw = generate_raw(dir.path(), &["--morph", "-1,1", "1,-1", "--steps", "3"]);
    let expected: Vec<f32> = [[-1.0, 1.0], [0.0, 0.0], [1.0, -1.0]]
        .iter()
        .flat_map(expected_pixels)
        .collect();
    assert!(max_abs_diff(&raw, &expected) <= ATOL);

    let a = generate_raw(dir.path(), &["--random", "4", "--seed", "5"]);
    let b = generate_raw(dir.path(), &["--random", "4", "--seed", "5"]);
    let c = generate_raw(dir.path(), &["--random", "4", "--seed", "6"]);
    assert_eq!(a.len(), 4 * PIXELS);
    assert_eq!(a, b, "the same seed gives the same digits");
    assert_ne!(a, c, "another seed gives other digits");
}

#[test]
fn latents_from_csv_and_json_files() {
    let dir = workspace();
    std::fs::write(dir.path().join("z.csv"), "# z0,z1\n0.5,-1.2\n\n0,0\n").expect("csv");
    std::fs::write(dir.path().join("z.json"), "[[0.5, -1.2], [0, 0]]").expect("json");
    let expected: Vec<f32> = [[0.5, -1.2], [0.0, 0.0]]
        .iter()
        .flat_map(expected_pixels)
        .collect();
    for file in ["z.csv", "z.json"] {
        let raw = generate_raw(dir.path(), &["--latents", file]);
        assert!(max_abs_diff(&raw, &expected) <= ATOL, "{file}");
    }

    std::fs::write(dir.path().join("bad.csv"), "1,2\n3\n").expect("csv");
    let out = edge(
        dir.path(),
        &[
            "generate",
            "--model",
            "decoder.onnx",
            "--latents",
            "bad.csv",
            "--out",
            "b.png",
        ],
    );
    assert!(!out.status.success());
    let message = stderr(&out);
    assert!(
        message.contains("bad.csv") && message.contains("vector 2 has 1 values"),
        "{message}"
    );
    assert!(!dir.path().join("b_0.png").exists(), "nothing written");
}

#[test]
fn bench_prints_latency_percentiles() {
    let dir = workspace();
    let out = edge(
        dir.path(),
        &[
            "bench",
            "--model",
            "decoder.onnx",
            "--runs",
            "20",
            "--warmup",
            "2",
            "--batch",
            "1,8",
        ],
    );
    assert!(out.status.success(), "edge bench failed: {}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("p50 ms") && text.contains("digits/s"),
        "{text}"
    );
    // One tract row per batch size (the workspace's decoder has a symbolic batch).
    let rows: Vec<&str> = text.lines().filter(|l| l.starts_with("tract")).collect();
    assert_eq!(rows.len(), 2, "{text}");
    for (row, batch) in rows.iter().zip(["1", "8"]) {
        let fields: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(fields.len(), 8, "{row}");
        assert_eq!((fields[1], fields[2]), (batch, "20"), "batch, runs: {row}");
        let p50: f64 = fields[3].parse().expect("p50");
        let p99: f64 = fields[5].parse().expect("p99");
        assert!(p50 > 0.0 && p99 >= p50, "{row}");
    }
}

/// A build without ONNX Runtime says so when asked for it, instead of timing tract alone in
/// silence.
#[cfg(not(feature = "ort"))]
#[test]
fn bench_without_the_ort_feature_says_ort_dylib_path_goes_unused() {
    let dir = workspace();
    let args = [
        "bench",
        "--model",
        "decoder.onnx",
        "--runs",
        "2",
        "--warmup",
        "0",
    ];
    let out = edge_command()
        .current_dir(dir.path())
        .args(args)
        .env("ORT_DYLIB_PATH", "/nowhere/libonnxruntime.so")
        .output()
        .expect("run edge");
    assert!(out.status.success(), "edge bench failed: {}", stderr(&out));
    assert!(
        stderr(&out).contains("without the `ort` feature"),
        "{}",
        stderr(&out)
    );
    let quiet = edge_command()
        .current_dir(dir.path())
        .args(args)
        .env_remove("ORT_DYLIB_PATH")
        .output()
        .expect("run edge");
    assert!(
        !stderr(&quiet).contains("ORT_DYLIB_PATH"),
        "{}",
        stderr(&quiet)
    );
}

/// `edge denoise` of a stream of 10x6 gray frames with the box-blur model `blur.onnx`.
const GRAY_STREAM: [&str; 7] = [
    "denoise",
    "--model",
    "blur.onnx",
    "--size",
    "10x6",
    "--format",
    "gray8",
];

#[test]
fn denoise_pipes_a_raw_stream_and_denoises_image_folders() {
    use std::io::Write;
    use std::process::Stdio;
    let dir = workspace();
    common::write_model(&dir.path().join("blur.onnx"), &common::box_blur_model());
    let (w, h) = (10, 6);
    let frames: Vec<u8> = (0..3 * w * h).map(|i| (i * 7 % 256) as u8).collect();
    // Two and a half gray frames on stdin: two come out on stdout, the third is an error.
    let mut child = edge_command()
        .current_dir(dir.path())
        .args(GRAY_STREAM)
        .args(["--threads", "2"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start edge");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(&frames[..5 * w * h / 2])
        .expect("write frames");
    drop(stdin);
    let out = child.wait_with_output().expect("edge finishes");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("frame 2 is short: 30 of its 60 bytes"),
        "{}",
        stderr(&out)
    );
    let expected: Vec<u8> = frames[..2 * w * h]
        .chunks(w * h)
        .flat_map(|f| common::box_blur_reference(f, w, h))
        .collect();
    assert_eq!(out.stdout, expected);

    // A folder of images: each written under its own name into --out.
    let photos = dir.path().join("photos");
    std::fs::create_dir(&photos).expect("mkdir");
    let image = edge_runtime::Image::new(w, h, vec![0.5; w * h]).expect("image");
    image.save(photos.join("a.png")).expect("png");
    image.save(photos.join("b.pgm")).expect("pgm");
    // A 16-bit image comes out with its 16 bits.
    let deep = image.clone().with_depth(edge_runtime::Depth::Sixteen);
    deep.save(photos.join("c.png")).expect("16-bit png");
    let out = edge(
        dir.path(),
        &[
            "denoise",
            "--model",
            "blur.onnx",
            "photos",
            "--out",
            "clean",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    for name in ["a.png", "b.pgm"] {
        let clean = edge_runtime::Image::load(dir.path().join("clean").join(name)).expect(name);
        assert_eq!((clean.width(), clean.height()), (w, h));
        // The middle of a uniform image stays; the zero-padded corner darkens to 4/9.
        assert_eq!(clean.to_gray8()[w + 1], 128);
        assert_eq!(clean.to_gray8()[0], 57);
        assert_eq!(clean.depth(), edge_runtime::Depth::Eight);
    }
    let clean = edge_runtime::Image::load(dir.path().join("clean/c.png")).expect("c.png");
    assert_eq!(clean.depth(), edge_runtime::Depth::Sixteen);
    // 0.5 x 4/9 at 16 bits: a level 8 bits round away.
    let corner = clean.pixels()[0] * 65535.0;
    assert!((corner - 14563.3).abs() < 1.0, "{corner}");
    let denoise = ["denoise", "--model", "blur.onnx"];
    fails_with(dir.path(), &denoise, "no images to denoise");

    // Written into the folder they came from, the images would replace themselves; two inputs
    // of one name would land on one file. Both refused, the originals untouched.
    let before = std::fs::read(photos.join("a.png")).expect("a.png");
    let args = [&denoise[..], &["photos", "--out", "photos"]].concat();
    fails_with(dir.path(), &args, "would overwrite an input");
    assert_eq!(std::fs::read(photos.join("a.png")).expect("a.png"), before);
    std::fs::create_dir(dir.path().join("more")).expect("mkdir");
    image
        .save(dir.path().join("more").join("a.png"))
        .expect("png");
    let args = [&denoise[..], &["photos", "more", "--out", "x"]].concat();
    fails_with(dir.path(), &args, "two inputs named a.png");

    // Frame sizes past the limit are refused before anything is read.
    let args = [&denoise[..], &["--size", "20000x480"]].concat();
    fails_with(dir.path(), &args, "each side must be 1 to 16384");
}

/// A frame that fails to denoise ends the stream with an error naming it, and the output file
/// keeps every frame before it (nothing already denoised is lost).
#[test]
fn a_frame_that_fails_keeps_the_frames_before_it_in_the_output_file() {
    let dir = workspace();
    common::write_model(&dir.path().join("sqrt.onnx"), &common::sqrt_model());
    let (w, h) = (10, 6);
    // Bright frames (a finite square root), but frame 3 has a dark pixel (not a number).
    let mut frames = vec![200u8; 6 * w * h];
    frames[3 * w * h + 7] = 10;
    std::fs::write(dir.path().join("in.y8"), &frames).expect("input");
    std::fs::write(dir.path().join("out.y8"), b"an older file").expect("old output");
    let args = [
        "denoise",
        "--model",
        "sqrt.onnx",
        "--size",
        "10x6",
        "--format",
        "gray8",
        "--input",
        "in.y8",
        "--out",
        "out.y8",
        "--threads",
        "2",
    ];
    let out = edge(dir.path(), &args);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("denoising frame 3 failed (3 frames written before it)"),
        "{}",
        stderr(&out)
    );
    // sqrt(200/255 - 0.5) = 0.533 -> 136.
    let written = std::fs::read(dir.path().join("out.y8")).expect("out.y8");
    assert_eq!(written, vec![136u8; 3 * w * h]);

    // A stream that fails before its first frame is written (the first frame fails, or is
    // short) leaves an existing output as it was: there is nothing to keep.
    let old = b"an older file";
    for input in [&frames[3 * w * h..], &frames[..w * h / 2]] {
        std::fs::write(dir.path().join("in.y8"), input).expect("input");
        std::fs::write(dir.path().join("out.y8"), old).expect("old output");
        let out = edge(dir.path(), &args);
        assert!(!out.status.success());
        assert!(stderr(&out).contains("frame 0 "), "{}", stderr(&out));
        assert_eq!(
            std::fs::read(dir.path().join("out.y8")).expect("out.y8"),
            old
        );
    }
}

/// A folder with an image that cannot be read: the others are denoised, the bad one is named,
/// and the run ends with an error.
#[test]
fn an_unreadable_image_is_skipped_and_reported() {
    let dir = workspace();
    common::write_model(&dir.path().join("blur.onnx"), &common::box_blur_model());
    let photos = dir.path().join("photos");
    std::fs::create_dir(&photos).expect("mkdir");
    let image = edge_runtime::Image::new(10, 6, vec![0.5; 60]).expect("image");
    image.save(photos.join("a.png")).expect("png");
    std::fs::write(photos.join("b.png"), b"\x89PNG\r\n").expect("truncated png");
    image.save(photos.join("c.pgm")).expect("pgm");
    std::os::unix::fs::symlink("gone.png", photos.join("d.png")).expect("broken link");
    let args = [
        "denoise",
        "--model",
        "blur.onnx",
        "photos",
        "--out",
        "clean",
    ];
    let out = edge(dir.path(), &args);
    assert!(!out.status.success());
    let message = stderr(&out);
    assert!(
        message.contains("cannot read image photos/b.png"),
        "{message}"
    );
    assert!(
        message.contains("1 of 3 images could not be read"),
        "{message}"
    );
    assert!(
        message.contains("skipped: photos/d.png is not a readable file"),
        "{message}"
    );
    let clean = dir.path().join("clean");
    assert!(clean.join("a.png").is_file() && clean.join("c.pgm").is_file());
    assert!(!clean.join("b.png").exists());
    // Only unreadable images: said so, and no output folder is left.
    fails_with(
        dir.path(),
        &[
            "denoise",
            "--model",
            "blur.onnx",
            "photos/b.png",
            "--out",
            "none",
        ],
        "none of the 1 image(s) could be read",
    );
    assert!(!dir.path().join("none").exists());

    // --out must be a folder for images; the stream's options are refused with them.
    std::fs::write(dir.path().join("keep.png"), b"old").expect("a file");
    for (extra, message) in [
        (["--out", "keep.png"], "--out keep.png is a file"),
        (["--out", "-"], "--out - (stdout) is for a raw stream"),
        (["--format", "gray8"], "cannot be used with"),
        (["--input", "in.y8"], "cannot be used with"),
        (["--threads", "4"], "cannot be used with"),
    ] {
        let args = [
            &["denoise", "--model", "blur.onnx", "photos/a.png"][..],
            &extra,
        ]
        .concat();
        fails_with(dir.path(), &args, message);
    }
    assert_eq!(
        std::fs::read(dir.path().join("keep.png")).expect("keep.png"),
        b"old"
    );
    assert!(!dir.path().join("-").exists());

    // A model that cannot be loaded stops the run, and the output folder it made is removed.
    let args = [
        "denoise",
        "--model",
        "decoder.onnx",
        "photos",
        "--out",
        "none",
    ];
    fails_with(
        dir.path(),
        &args,
        "a denoiser takes gray frames [N, 1, H, W]",
    );
    assert!(!dir.path().join("none").exists());
}

/// Ctrl-C (SIGINT) ends a stream cleanly: the frames read before it are denoised and the
/// output file is kept, with the shell's status for an interrupted command.
#[cfg(unix)]
#[test]
fn an_interrupted_stream_keeps_the_frames_read_before_it() {
    use std::io::{BufRead, Write};
    use std::process::Stdio;
    let dir = workspace();
    common::write_model(&dir.path().join("blur.onnx"), &common::box_blur_model());
    let (w, h) = (10, 6);
    let frames: Vec<u8> = (0..2 * w * h).map(|i| (i * 11 % 256) as u8).collect();
    let mut child = edge_command()
        .current_dir(dir.path())
        .args(GRAY_STREAM)
        .args(["--out", "out.y8"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start edge");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(&frames).expect("write frames");
    stdin.flush().expect("flush");
    // Both frames are in the temporary file once it holds their bytes: the stream is running.
    let written = || {
        std::fs::read_dir(dir.path())
            .expect("list")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with(".out.y8.tmp-"))
            .map(|e| e.metadata().map_or(0, |m| m.len()))
            .sum::<u64>()
    };
    let start = std::time::Instant::now();
    while written() < frames.len() as u64 {
        assert!(
            start.elapsed().as_secs() < 120,
            "the frames never reached the file"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(sent.success());
    // The note on stderr says the signal was taken; half a frame more arrives, and then the
    // input stays open and silent, as a camera pipeline's may: the stream still ends, the cut
    // frame dropped (after a Ctrl-C not an error).
    let mut stderr = std::io::BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    stderr.read_line(&mut line).expect("stderr");
    assert!(line.starts_with("interrupted"), "{line}");
    // (The reader may have stopped already: then the write fails, and that is fine.)
    let _ = stdin.write_all(&frames[..w * h / 2]);
    let _ = stdin.flush();
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("edge runs") {
            break status;
        }
        assert!(
            start.elapsed().as_secs() < 60,
            "edge waits for input after the Ctrl-C"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    drop(stdin);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).expect("stderr");
    assert_eq!(status.code(), Some(130), "{rest}");
    assert!(rest.contains("denoised 2 frames"), "{rest}");
    let expected: Vec<u8> = frames
        .chunks(w * h)
        .flat_map(|f| common::box_blur_reference(f, w, h))
        .collect();
    assert_eq!(
        std::fs::read(dir.path().join("out.y8")).expect("kept"),
        expected
    );
    assert_eq!(written(), 0, "no temporary file is left");
}

/// A stream written to something that is not a regular file (here a FIFO, like /dev/null or
/// a pipe to another program) is written in place: renaming a temporary file over it would
/// replace it. Through a link, the link's file is written.
#[cfg(unix)]
#[test]
fn a_stream_into_a_fifo_stays_a_fifo() {
    use std::os::unix::fs::FileTypeExt;
    let dir = workspace();
    common::write_model(&dir.path().join("blur.onnx"), &common::box_blur_model());
    let fifo = dir.path().join("out.fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(fifo).expect("read the fifo"))
    };
    let frames: Vec<u8> = (0..2 * 60).map(|i| (i * 5 % 256) as u8).collect();
    std::fs::write(dir.path().join("in.y8"), &frames).expect("frames");
    let args = [&GRAY_STREAM[..], &["--input", "in.y8", "--out", "out.fifo"]].concat();
    let out = edge(dir.path(), &args);
    if !out.status.success() {
        // Let the reader's open return, so the failure is reported instead of a hang.
        let _ = std::fs::OpenOptions::new().write(true).open(&fifo);
    }
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(reader.join().expect("reader").len(), frames.len());
    let kind = std::fs::metadata(&fifo).expect("still there").file_type();
    assert!(kind.is_fifo(), "{kind:?}");

    // A link's file is replaced, and the link stays; a folder is refused before the stream.
    std::os::unix::fs::symlink("real.y8", dir.path().join("link.y8")).expect("link");
    let args = [&GRAY_STREAM[..], &["--input", "in.y8", "--out", "link.y8"]].concat();
    let out = edge(dir.path(), &args);
    assert!(out.status.success(), "{}", stderr(&out));
    let link = std::fs::symlink_metadata(dir.path().join("link.y8")).expect("link");
    assert!(link.is_symlink());
    let written = std::fs::read(dir.path().join("real.y8")).expect("the link's file");
    assert_eq!(written.len(), frames.len());
    std::fs::create_dir(dir.path().join("folder")).expect("mkdir");
    let args = [&GRAY_STREAM[..], &["--input", "in.y8", "--out", "folder"]].concat();
    fails_with(dir.path(), &args, "--out folder is a folder");

    // An input without a frame (a camera pipeline that failed) is an error, and an earlier
    // output stays as it was, to a file or to stdout.
    std::fs::write(dir.path().join("empty.y8"), b"").expect("empty input");
    for out in ["link.y8", "-"] {
        let args = [&GRAY_STREAM[..], &["--input", "empty.y8", "--out", out]].concat();
        fails_with(
            dir.path(),
            &args,
            "the input ended before its first frame (a 10x6 frame is 60 bytes): nothing was written",
        );
    }
    assert_eq!(
        written,
        std::fs::read(dir.path().join("real.y8")).expect("kept")
    );
}

/// A stream's output file, or the file stdout goes to, may not be a file the run reads: its
/// input (by name, through a hard link, or as the file stdin is redirected from) or its model.
/// Each is refused before a frame is read, and left as it was.
#[cfg(unix)]
#[test]
fn a_stream_never_overwrites_its_input_or_its_model() {
    let dir = workspace();
    let path = |name: &str| dir.path().join(name);
    common::write_model(&path("blur.onnx"), &common::box_blur_model());
    let frames: Vec<u8> = (0..2 * 60).map(|i| (i * 7 % 256) as u8).collect();
    std::fs::write(path("in.y8"), &frames).expect("frames");
    std::fs::hard_link(path("in.y8"), path("link.y8")).expect("hard link");
    let model = std::fs::read(path("blur.onnx")).expect("model");
    for (input, out, message) in [
        (Some("in.y8"), "in.y8", "--out in.y8 is also the input"),
        (Some("in.y8"), "link.y8", "--out link.y8 is also the input"),
        (None, "in.y8", "--out in.y8 is also the input (stdin)"),
        (Some("in.y8"), "blur.onnx", "--out blur.onnx is the model"),
    ] {
        let mut args = GRAY_STREAM.to_vec();
        if let Some(input) = input {
            args.extend(["--input", input]);
        }
        args.extend(["--out", out]);
        let stdin = std::fs::File::open(path("in.y8")).expect("open");
        let output = edge_command()
            .current_dir(dir.path())
            .args(&args)
            .stdin(stdin)
            .output()
            .expect("run edge");
        assert!(!output.status.success(), "{args:?} succeeded");
        assert!(stderr(&output).contains(message), "{}", stderr(&output));
        assert_eq!(std::fs::read(path("in.y8")).expect("input"), frames);
        assert_eq!(std::fs::read(path("blur.onnx")).expect("model"), model);
    }
    // The same for stdout (`--out -`, the default) appending to one of them (`>> in.y8`): the
    // stream would read its own frames back for ever.
    for (input, stdout, message) in [
        (Some("in.y8"), "in.y8", "stdout is also the input"),
        (None, "link.y8", "stdout is also the input (stdin)"),
        (Some("in.y8"), "blur.onnx", "stdout is the model"),
    ] {
        let mut args = GRAY_STREAM.to_vec();
        if let Some(input) = input {
            args.extend(["--input", input]);
        }
        let appended = std::fs::OpenOptions::new()
            .append(true)
            .open(path(stdout))
            .expect("open for appending");
        let output = edge_command()
            .current_dir(dir.path())
            .args(&args)
            .stdin(std::fs::File::open(path("in.y8")).expect("open"))
            .stdout(appended)
            .output()
            .expect("run edge");
        assert!(!output.status.success(), "{args:?} > {stdout} succeeded");
        assert!(stderr(&output).contains(message), "{}", stderr(&output));
        assert_eq!(std::fs::read(path("in.y8")).expect("input"), frames);
        assert_eq!(std::fs::read(path("blur.onnx")).expect("model"), model);
    }
    // A regular file that is neither is written as before.
    let output = edge_command()
        .current_dir(dir.path())
        .args([&GRAY_STREAM[..], &["--input", "in.y8"]].concat())
        .stdout(std::fs::File::create(path("clean.y8")).expect("create"))
        .output()
        .expect("run edge");
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        std::fs::read(path("clean.y8")).expect("output").len(),
        frames.len()
    );
}

#[test]
fn encode_upscale_and_anomaly_run_their_models() {
    let dir = image_models_workspace();
    let path = |name: &str| dir.path().join(name);
    std::fs::create_dir(path("digits")).expect("mkdir");
    let digit: Vec<f32> = (0..PIXELS)
        .map(|j| ((j * 13) % 256) as f32 / 255.0)
        .collect();
    let digit = edge_runtime::Image::new(SIDE, SIDE, digit).expect("image");
    digit.save(path("digits/a.pgm")).expect("write");
    edge_runtime::Image::new(SIDE, SIDE, vec![0.0; PIXELS])
        .expect("image")
        .save(path("digits/b.png"))
        .expect("write");

    // encode: a `# file` comment, then the vector, for each image; `generate --latents` reads it.
    let out = edge(
        dir.path(),
        &[
            "encode",
            "--model",
            "encoder.onnx",
            "digits",
            "--out",
            "z.csv",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let csv = std::fs::read_to_string(path("z.csv")).expect("csv");
    // `--out -` is stdout, as its help says, not a file named `-`.
    let out = edge(
        dir.path(),
        &["encode", "--model", "encoder.onnx", "digits", "--out", "-"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), csv);
    assert!(!path("-").exists());
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 4, "{csv}");
    assert!(
        lines[0].starts_with('#') && lines[0].ends_with("a.pgm"),
        "{csv}"
    );
    let z: Vec<f32> = lines[1]
        .split(',')
        .map(|v| v.parse().expect("number"))
        .collect();
    let want = common::encoder_reference(
        &digit
            .to_gray8()
            .iter()
            .map(|&p| p as f32 / 255.0)
            .collect::<Vec<_>>(),
    );
    assert!(max_abs_diff(&z, &want) < ATOL, "{z:?} vs {want:?}");
    // A fully convolutional model has no fixed input size to encode at.
    common::write_model(&path("blur.onnx"), &common::box_blur_model());
    let args = ["encode", "--model", "blur.onnx", "digits"];
    fails_with(dir.path(), &args, "where a fixed size is needed");
    let out = edge(
        dir.path(),
        &[
            "generate",
            "--model",
            "decoder.onnx",
            "--latents",
            "z.csv",
            "--sheet",
            "back.png",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));

    // anomaly: the score is the mean squared error of decode(encode(image)).
    let out = edge(
        dir.path(),
        &[
            "anomaly",
            "--encoder",
            "encoder.onnx",
            "--decoder",
            "decoder.onnx",
            "digits",
            "--threshold",
            "0.1",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    let score = |name: &str| -> f32 {
        let line = report
            .lines()
            .find(|l| l.contains(name))
            .expect("a row per image");
        line.split_whitespace()
            .next()
            .expect("score")
            .parse()
            .expect("number")
    };
    let blank = common::expected_pixels(&common::encoder_reference(&[0.0; PIXELS]));
    let want_b = blank.iter().map(|p| p * p).sum::<f32>() / PIXELS as f32;
    assert!((score("b.png") - want_b).abs() < 1e-4, "{report}");
    // Each row is marked exactly when its score is above the threshold, and the count agrees.
    let rows: Vec<&str> = report.lines().filter(|l| l.contains(".p")).collect();
    assert_eq!(rows.len(), 2, "{report}");
    let mut flagged = 0;
    for row in rows {
        let score: f32 = row
            .split_whitespace()
            .next()
            .expect("score")
            .parse()
            .expect("number");
        assert_eq!(row.ends_with("  ANOMALY"), score > 0.1, "{row}");
        flagged += usize::from(score > 0.1);
    }
    assert!(
        report.contains(&format!("\n{flagged} of 2 above 0.1")),
        "{report}"
    );

    // upscale: 14x14 in, 28x28 out, nearest neighbour.
    std::fs::create_dir(path("low")).expect("mkdir");
    let low: Vec<f32> = (0..196).map(|j| j as f32 / 255.0).collect();
    edge_runtime::Image::new(14, 14, low)
        .expect("image")
        .save(path("low/x.pgm"))
        .expect("write");
    // Beside it a 16-bit image, of a level 8-bit files do not have.
    edge_runtime::Image::new(14, 14, vec![1.0 / 65535.0; 196])
        .expect("image")
        .with_depth(edge_runtime::Depth::Sixteen)
        .save(path("low/y.png"))
        .expect("write");
    let out = edge(
        dir.path(),
        &["upscale", "--model", "upscaler.onnx", "low", "--out", "up"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let up = edge_runtime::Image::load(path("up/x.pgm")).expect("upscaled");
    assert_eq!((up.width(), up.height()), (28, 28));
    let px = up.to_gray8();
    // Output pixel (x, y) is input pixel (x / 2, y / 2), whose value is its index y/2 * 14 + x/2.
    assert_eq!(
        (px[0], px[1], px[2], px[28], px[783]),
        (0, 0, 1, 0, 13 * 14 + 13)
    );
    assert_eq!(up.depth(), edge_runtime::Depth::Eight);
    // The 16-bit image comes out with its 16 bits: its level survives.
    let up = edge_runtime::Image::load(path("up/y.png")).expect("upscaled");
    assert_eq!(up.depth(), edge_runtime::Depth::Sixteen);
    assert_eq!(up.pixels()[783] * 65535.0, 1.0);

    // A 28x28 image is not an upscaler input: a clear error naming it.
    let out = edge(
        dir.path(),
        &["upscale", "--model", "upscaler.onnx", "digits/a.pgm"],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("a.pgm is 28x28, the model takes 14x14"),
        "{}",
        stderr(&out)
    );

    // A fully convolutional upscaler takes every image at its own size.
    common::write_model(
        &path("upscaler_any.onnx"),
        &common::upscaler_any_size_model(),
    );
    std::fs::create_dir(path("mixed")).expect("mkdir");
    let wide: Vec<f32> = (0..6 * 10).map(|j| j as f32 / 255.0).collect();
    edge_runtime::Image::new(10, 6, wide)
        .expect("image")
        .save(path("mixed/wide.pgm"))
        .expect("write");
    std::fs::copy(path("low/x.pgm"), path("mixed/x.pgm")).expect("copy");
    let out = edge(
        dir.path(),
        &[
            "upscale",
            "--model",
            "upscaler_any.onnx",
            "mixed",
            "--out",
            "up_any",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let wide = edge_runtime::Image::load(path("up_any/wide.pgm")).expect("upscaled");
    assert_eq!((wide.width(), wide.height()), (20, 12));
    let px = wide.to_gray8();
    // Output pixel (x, y) is input pixel (x / 2, y / 2), whose value is y/2 * 10 + x/2.
    assert_eq!((px[0], px[3], px[20], px[239]), (0, 1, 0, 5 * 10 + 9));
    let square = edge_runtime::Image::load(path("up_any/x.pgm")).expect("upscaled");
    assert_eq!((square.width(), square.height()), (28, 28));

    // An odd side would not come back doubled: a clear error naming the image.
    edge_runtime::Image::new(7, 6, vec![0.5; 42])
        .expect("image")
        .save(path("odd.pgm"))
        .expect("write");
    let out = edge(
        dir.path(),
        &[
            "upscale",
            "--model",
            "upscaler_any.onnx",
            "odd.pgm",
            "--out",
            "up_odd",
        ],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("odd.pgm is 7x6"), "{}", stderr(&out));
    // The output folder the failed run made is gone again (it had been left behind empty).
    assert!(!path("up_odd").exists());
    assert!(!path("upscaled").exists(), "left by the 28x28 image's run");
    // A file as --out is said before any image is read.
    fails_with(
        dir.path(),
        &[
            "upscale",
            "--model",
            "upscaler.onnx",
            "low",
            "--out",
            "odd.pgm",
        ],
        "--out odd.pgm is a file: image files are upscaled into a folder",
    );

    // anomaly: an encoder and a decoder whose latents differ are refused before any image.
    common::write_model(
        &path("decoder3.onnx"),
        &common::mean_spread_decoder_model(3, SIDE),
    );
    fails_with(
        dir.path(),
        &[
            "anomaly",
            "--encoder",
            "encoder.onnx",
            "--decoder",
            "decoder3.onnx",
            "digits",
        ],
        "the encoder makes latents of 2 values, the decoder takes 3",
    );
}

/// A conditional decoder (trained: `tests/fixtures/conditional`) draws the digit `--digit` asks
/// for, and `anomaly` names the digit an image looks most like.
#[test]
fn a_conditional_decoder_draws_and_names_digits() {
    let dir = workspace();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/conditional");
    let (encoder, decoder) = (fixtures.join("encoder.onnx"), fixtures.join("decoder.onnx"));
    let (encoder, decoder) = (
        encoder.to_str().expect("utf-8"),
        decoder.to_str().expect("utf-8"),
    );
    std::fs::create_dir(dir.path().join("digits")).expect("mkdir");
    for digit in ["0", "3", "8"] {
        let out_file = format!("digits/{digit}.png");
        let out = edge(
            dir.path(),
            &[
                "generate", "--model", decoder, "--digit", digit, "--latent", "0.3,-0.5", "--out",
                &out_file,
            ],
        );
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let out = edge(
        dir.path(),
        &[
            "anomaly",
            "--encoder",
            encoder,
            "--decoder",
            decoder,
            "digits",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    for digit in ["0", "3", "8"] {
        let line = report
            .lines()
            .find(|l| l.contains(&format!("{digit}.png")))
            .expect("a row per image");
        assert!(
            line.ends_with(&format!("(closest digit: {digit})")),
            "{report}"
        );
    }

    // Without a digit, a conditional decoder cannot draw random samples; an unconditional one
    // cannot be asked for a digit.
    let out = edge(
        dir.path(),
        &[
            "generate", "--model", decoder, "--random", "2", "--sheet", "x.png",
        ],
    );
    assert!(stderr(&out).contains("say which digit"), "{}", stderr(&out));
    // Nor draw a style given without one (the message names the missing digit, not only the
    // latent's length).
    let out = edge(
        dir.path(),
        &[
            "generate", "--model", decoder, "--latent", "0.3,-0.5", "--out", "x.png",
        ],
    );
    let expected = "say which digit to draw with --digit (0-9): the 2 values given are a style";
    assert!(stderr(&out).contains(expected), "{}", stderr(&out));
    let out = edge(
        dir.path(),
        &[
            "generate",
            "--model",
            "decoder.onnx",
            "--digit",
            "3",
            "--random",
            "2",
            "--sheet",
            "x.png",
        ],
    );
    assert!(
        stderr(&out).contains("needs a conditional decoder"),
        "{}",
        stderr(&out)
    );
    assert!(!dir.path().join("x.png").exists(), "nothing written");
}

/// `--device` (cargo feature `v4l2`): a missing device and a file that is no V4L2 device are
/// clear errors that name it, before any frame is written. (No camera on the test machines: a
/// real capture is not tested here.)
#[cfg(v4l2_camera)]
#[test]
fn denoise_from_a_camera_names_a_bad_device() {
    let dir = workspace();
    common::write_model(&dir.path().join("blur.onnx"), &common::box_blur_model());
    std::fs::write(dir.path().join("not-a-camera"), b"frames").expect("write file");
    for (device, message) in [
        (
            "/nonexistent/video9",
            "camera /nonexistent/video9 cannot open",
        ),
        ("not-a-camera", "camera not-a-camera is not a V4L2 device"),
    ] {
        let args = [
            "denoise",
            "--model",
            "blur.onnx",
            "--size",
            "10x6",
            "--device",
            device,
        ];
        let output = edge(dir.path(), &args);
        assert!(!output.status.success(), "{device}: succeeded");
        assert!(output.stdout.is_empty(), "{device}: wrote frames");
        assert!(
            stderr(&output).contains(message),
            "{device}: {}",
            stderr(&output)
        );
    }
    // A stream to a file (no --frames: it ends with Ctrl-C) from a bad camera fails on the
    // camera and leaves no file behind.
    let args = ["denoise", "--model", "blur.onnx", "--size", "10x6"];
    let camera = ["--device", "not-a-camera", "--out", "clean.y8"];
    let output = edge(dir.path(), &[&args[..], &camera[..]].concat());
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("camera not-a-camera is not a V4L2 device"),
        "{}",
        stderr(&output)
    );
    assert!(!dir.path().join("clean.y8").exists());
}

/// A build without V4L2 input (the default, and every 32-bit ARM build) accepts `--device` and
/// says what the build lacks, writing nothing.
#[cfg(not(v4l2_camera))]
#[test]
fn denoise_from_a_camera_without_v4l2_names_the_missing_feature() {
    let dir = workspace();
    common::write_model(&dir.path().join("blur.onnx"), &common::box_blur_model());
    let args = ["denoise", "--model", "blur.onnx", "--size", "10x6"];
    let camera = [
        "--device",
        "/dev/video0",
        "--frames",
        "3",
        "--out",
        "clean.y8",
    ];
    let output = edge(dir.path(), &[&args[..], &camera[..]].concat());
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("--device /dev/video0: this edge was built without V4L2"),
        "{}",
        stderr(&output)
    );
    assert!(!dir.path().join("clean.y8").exists());
}

/// The trained camera denoiser in `models/` on the held-out photographs with noise of sigma 25
/// (the CLI's seeded draw): each comes out far cleaner than it went in, and the mean PSNR is above
/// OpenCV fastNlMeans' 28.39 dB on the same photographs and level (RESULTS.md).
#[test]
fn the_bundled_camera_denoiser_beats_fastnlmeans_at_sigma_25() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let model = root.join("models/camera_denoiser.onnx");
    let photos = ["camera", "coins", "chelsea"].map(|name| {
        root.join(format!("data/natural/{name}.png"))
            .display()
            .to_string()
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let mut args = vec!["denoise", "--model", model.to_str().expect("utf-8 path")];
    args.extend(photos.iter().map(String::as_str));
    args.extend(["--add-noise", "25", "--out", "clean"]);
    let output = edge(dir.path(), &args);
    assert!(output.status.success(), "{}", stderr(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    // "<photo> -> <noisy> (20.60 dB) and <clean> (28.63 dB), PSNR against the original"
    let db = |part: &str| -> f64 {
        let start = part.rfind('(').expect("a PSNR in parentheses") + 1;
        part[start..]
            .trim_end_matches(" dB")
            .parse()
            .expect("a PSNR")
    };
    let mut denoised = Vec::new();
    for line in stdout.lines() {
        let mut parts = line.split(" dB)").take(2).map(db);
        let (noisy, clean) = (parts.next().expect("noisy"), parts.next().expect("clean"));
        assert!(clean > noisy + 6.0, "{line}");
        denoised.push(clean);
    }
    assert_eq!(denoised.len(), 3, "{stdout}");
    let mean = denoised.iter().sum::<f64>() / 3.0;
    assert!(mean > 28.39, "mean {mean:.2} dB: {stdout}");
}

/// `--add-noise` writes `<name>_noisy.<ext>` beside each output: an input of that name is
/// refused up front instead of one output silently replacing the other.
#[test]
fn a_noisy_copy_may_not_overwrite_another_output() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let model = root.join("models/camera_denoiser.onnx");
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(dir.path().join("in")).expect("mkdir");
    for name in ["a.png", "a_noisy.png"] {
        std::fs::copy(
            root.join("data/natural/coins.png"),
            dir.path().join("in").join(name),
        )
        .expect("copy");
    }
    let model = model.to_str().expect("utf-8 path");
    let args = [
        "denoise",
        "--model",
        model,
        "in",
        "--add-noise",
        "25",
        "--out",
        "out",
    ];
    fails_with(
        dir.path(),
        &args,
        "a_noisy.png would overwrite another image",
    );
    assert!(!dir.path().join("out/a.png").exists());
    // An image and its noisy copy are written as a pair: a folder where the copy should go
    // leaves the denoised image unwritten too.
    std::fs::remove_file(dir.path().join("in/a_noisy.png")).expect("rm");
    std::fs::create_dir_all(dir.path().join("out/a_noisy.png")).expect("mkdir");
    fails_with(dir.path(), &args, "cannot write out/a_noisy.png");
    assert!(!dir.path().join("out/a.png").exists());
    // `a.png` and `a.PNG` are two images, and their noisy copies two files (both had been
    // `a_noisy.png`, the second replacing the first).
    std::fs::remove_dir_all(dir.path().join("out")).expect("rm");
    std::fs::copy(dir.path().join("in/a.png"), dir.path().join("in/a.PNG")).expect("copy");
    let out = edge(dir.path(), &args);
    assert!(out.status.success(), "{}", stderr(&out));
    for name in ["a.png", "a.PNG", "a_noisy.png", "a_noisy.PNG"] {
        assert!(dir.path().join("out").join(name).is_file(), "out/{name}");
    }
}

/// `edge ARGS` (a shell command line: arguments and redirections) in `dir` with its address space
/// limited to `kib` KiB (`ulimit -v`).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn edge_with_memory_limit(dir: &Path, kib: u64, args: &str) -> Output {
    let script = format!(
        "ulimit -v {kib}; exec {} {args}",
        env!("CARGO_BIN_EXE_edge")
    );
    Command::new("sh")
        .current_dir(dir)
        .args(["-c", &script])
        .output()
        .expect("run sh")
}

/// A decoder whose declared latent is too large for the memory is refused at load, and one
/// whose images are too large for the digits asked for before any is decoded: errors, not
/// aborts (a 4 TiB latent had been allocated, and failed, drawing `--random 1`). The small
/// version of each runs. The 2^40-value latent on 64-bit targets only: a 32-bit one cannot
/// even name its size.
#[test]
fn a_decoder_too_large_for_memory_is_an_error() {
    let dir = workspace();
    let path = |name: &str| dir.path().join(name);
    common::write_model(
        &path("big.onnx"),
        &common::mean_spread_decoder_model(2, 8192),
    );
    common::write_model(
        &path("small.onnx"),
        &common::mean_spread_decoder_model(2, 4),
    );
    let generate = |model: &'static str, n: &'static str| {
        [
            "generate", "--model", model, "--random", n, "--out", "d.png",
        ]
    };
    if cfg!(target_pointer_width = "64") {
        common::write_model(
            &path("wide.onnx"),
            &common::mean_spread_decoder_model(1 << 40, 2),
        );
        fails_with(dir.path(), &generate("wide.onnx", "1"), "needs at least");
    }
    fails_with(
        dir.path(),
        &generate("big.onnx", "10000"),
        "10000 digits of 8192x8192 need about",
    );
    assert!(!path("d.png").exists() && !path("d_0.png").exists());
    let out = edge(dir.path(), &generate("small.onnx", "2"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(path("d_0.png").is_file() && path("d_1.png").is_file());
}

/// A stream whose frame buffers and workers' tensors need more memory than the process may have
/// is an error before any frame is read, not an abort (here a 2.8 GiB address-space limit
/// against nine 402 MB frames of 16384x16384 YUV 4:2:0 and four workers holding two 1 GiB
/// tensors each). Native x86_64 only: under qemu-user the limit would bind the emulator itself.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[test]
fn a_stream_that_does_not_fit_in_memory_is_an_error() {
    let dir = workspace();
    common::write_model(&dir.path().join("blur.onnx"), &common::box_blur_model());
    let out = edge_with_memory_limit(
        dir.path(),
        3_000_000,
        "denoise --model blur.onnx --size 16384x16384 --threads 4 < /dev/null > /dev/null",
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let message = stderr(&out);
    assert!(message.contains("16384x16384 frames"), "{message}");
    assert!(message.contains("needs at least"), "{message}");
    assert!(message.contains("GiB this process can get"), "{message}");
}

/// A frame whose activations do not fit in the memory the process may have (4000x4000: two
/// 8-channel feature maps of 0.5 GB each and the input, 1.1 GB in all, more than half of a
/// 1.4 GiB address-space limit) is denoised in strips of rows, each with the model's context,
/// and comes out as it does whole, without the limit; not a crash, nor the kernel's OOM killer
/// where memory runs out without a limit. Native x86_64 only, as above.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[test]
fn a_frame_too_large_for_memory_whole_is_denoised_in_strips() {
    let dir = workspace();
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/camera_denoiser.onnx");
    let side = 4000;
    let noisy: Vec<u8> = (0..side * side)
        .map(|i: usize| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(dir.path().join("noisy.y8"), noisy).expect("frame");
    let args = |out: &str| {
        format!(
            "denoise --model {} --size {side}x{side} --format gray8 --input noisy.y8 --out {out}",
            model.display()
        )
    };
    let limited = edge_with_memory_limit(dir.path(), 1_500_000, &args("strips.y8"));
    assert!(limited.status.success(), "{}", stderr(&limited));
    assert!(
        stderr(&limited).contains(&format!("denoised 1 frames of {side}x{side}, in strips of")),
        "{}",
        stderr(&limited)
    );
    let whole = edge_with_memory_limit(dir.path(), 100_000_000, &args("whole.y8"));
    assert!(whole.status.success(), "{}", stderr(&whole));
    assert!(!stderr(&whole).contains("strips"), "{}", stderr(&whole));
    let read = |name: &str| std::fs::read(dir.path().join(name)).expect("output");
    assert_eq!(read("strips.y8").len(), side * side);
    assert!(
        read("strips.y8") == read("whole.y8"),
        "strips differ from the whole frame"
    );
}

/// An image file too large for the memory the process may have is said to be so, reading it or
/// denoising it, instead of an abort; with enough for the strips (not for the whole frame's
/// 4.6 GB of tensors) it is denoised. An all-black 8192x8192 PNG (a 65 KB file): under 300 MB of
/// address space it cannot be read, under 600 MB not denoised, under 1.4 GB it is denoised.
/// Native x86_64 only, as above.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[test]
fn an_image_too_large_for_memory_is_an_error_not_an_abort() {
    let dir = workspace();
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/camera_denoiser.onnx");
    let side = 8192u32;
    let mut png = Vec::new();
    let mut encoder = png::Encoder::new(&mut png, side, side);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().expect("header");
    writer
        .write_image_data(&vec![0; (side * side) as usize])
        .expect("pixels");
    drop(writer);
    std::fs::write(dir.path().join("black.png"), png).expect("png");
    let run = |kib: u64, out: &str| {
        edge_with_memory_limit(
            dir.path(),
            kib,
            &format!("denoise --model {} black.png --out {out}", model.display()),
        )
    };
    // 64 MiB of 8-bit samples to decode into, then 4 bytes a pixel of f32 gray levels.
    let unread = run(300_000, "a");
    assert!(!unread.status.success());
    assert!(
        stderr(&unread).contains("a 8192x8192 image needs 320.0 MiB to read"),
        "{}",
        stderr(&unread)
    );
    let undenoised = run(600_000, "b");
    assert!(!undenoised.status.success());
    assert!(
        stderr(&undenoised).contains("denoising a 8192x8192 image needs at least"),
        "{}",
        stderr(&undenoised)
    );
    let denoised = run(1_400_000, "c");
    assert!(denoised.status.success(), "{}", stderr(&denoised));
    let clean = edge_runtime::Image::load(dir.path().join("c/black.png")).expect("denoised");
    assert_eq!((clean.width(), clean.height()), (8192, 8192));
}

/// A second Ctrl-C quits at once and keeps nothing: neither `--out` nor a temporary file cut
/// inside a frame. Frame 1 (a slow model: ~1 s a frame here) is still being denoised when both
/// signals arrive. Native x86_64 only: under qemu-user the slow model would take minutes.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[test]
fn a_second_interrupt_quits_at_once_and_keeps_nothing() {
    use std::io::{BufRead, Write};
    use std::process::Stdio;
    let dir = workspace();
    common::write_model(&dir.path().join("slow.onnx"), &common::slow_model(512));
    let (w, h) = (128, 128);
    let mut child = edge_command()
        .current_dir(dir.path())
        .args(["denoise", "--model", "slow.onnx", "--size", "128x128"])
        .args(["--format", "gray8", "--threads", "1", "--out", "out.y8"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start edge");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(&vec![100u8; 2 * w * h])
        .expect("write frames");
    stdin.flush().expect("flush");
    let temporary = || {
        std::fs::read_dir(dir.path())
            .expect("list")
            .filter_map(Result::ok)
            .find(|e| e.file_name().to_string_lossy().starts_with(".out.y8.tmp-"))
    };
    // Frame 0 written: frame 1, already read, is being denoised.
    let start = std::time::Instant::now();
    while temporary()
        .and_then(|e| e.metadata().ok())
        .map_or(0, |m| m.len())
        < (w * h) as u64
    {
        assert!(
            start.elapsed().as_secs() < 120,
            "frame 0 never reached the file"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let pid = child.id().to_string();
    let interrupt = || {
        let sent = Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .expect("kill");
        assert!(sent.success());
    };
    interrupt();
    let mut stderr = std::io::BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    stderr.read_line(&mut line).expect("stderr");
    assert!(line.starts_with("interrupted"), "{line}");
    interrupt();
    let status = child.wait().expect("edge exits");
    drop(stdin);
    assert_eq!(status.code(), Some(130));
    assert!(!dir.path().join("out.y8").exists(), "the output was kept");
    assert!(temporary().is_none(), "a temporary file was left");
}

/// An output path that names the model, an input or another output is refused before anything
/// is written: each would have been replaced, the model by pixels, an image by a CSV.
#[test]
fn outputs_never_overwrite_inputs_or_each_other() {
    let dir = image_models_workspace();
    let path = |name: &str| dir.path().join(name);
    edge_runtime::Image::new(SIDE, SIDE, vec![0.5; PIXELS])
        .expect("image")
        .save(path("a.png"))
        .expect("write");
    std::fs::write(path("z.csv"), "0,0\n").expect("latents");
    let before = |name: &str| std::fs::read(path(name)).expect("read");
    let (decoder, encoder, image, latents) = (
        before("decoder.onnx"),
        before("encoder.onnx"),
        before("a.png"),
        before("z.csv"),
    );
    let generate = ["generate", "--model", "decoder.onnx", "--latent", "0,0"];
    // A link to a file not there yet names the file it would make.
    std::os::unix::fs::symlink("new.png", path("link.f32")).expect("symlink");
    let cases: [(Vec<&str>, &str); 7] = [
        (
            [&generate[..], &["--out", "new.png", "--raw", "link.f32"]].concat(),
            "--raw and --out name the same file, link.f32",
        ),
        (
            [&generate[..], &["--raw", "decoder.onnx"]].concat(),
            "--raw decoder.onnx is a file this command reads",
        ),
        (
            [&generate[..], &["--out", "a.png", "--raw", "./a.png"]].concat(),
            "--raw and --out name the same file, ./a.png",
        ),
        (
            vec![
                "generate",
                "--model",
                "decoder.onnx",
                "--latents",
                "z.csv",
                "--raw",
                "z.csv",
            ],
            "--raw z.csv is a file this command reads",
        ),
        (
            vec![
                "encode",
                "--model",
                "encoder.onnx",
                "--out",
                "a.png",
                "a.png",
            ],
            "--out a.png is a file this command reads",
        ),
        (
            vec![
                "encode",
                "--model",
                "encoder.onnx",
                "--out",
                "encoder.onnx",
                "a.png",
            ],
            "--out encoder.onnx is a file this command reads",
        ),
        // An image-to-image model is not an encoder: its "latents" would be pixels.
        (
            vec!["encode", "--model", "upscaler.onnx", "a.png"],
            "not a latent vector [1, N]: it is not an encoder",
        ),
    ];
    for (args, message) in cases {
        fails_with(dir.path(), &args, message);
    }
    assert_eq!(before("decoder.onnx"), decoder);
    assert_eq!(before("encoder.onnx"), encoder);
    assert_eq!(before("a.png"), image);
    assert_eq!(before("z.csv"), latents);
}

/// Output to a reader that has gone (`| head`) ends the program quietly, with SIGPIPE's status,
/// and to a full device with an error; neither panics.
#[test]
fn a_closed_or_full_stdout_is_no_panic() {
    let dir = workspace();
    let generate = |latents: &[&str], stdout: std::process::Stdio| {
        edge_command()
            .current_dir(dir.path())
            .args(["generate", "--model", "decoder.onnx", "--out", "d.png"])
            .args(latents)
            .stdout(stdout)
            .output()
            .expect("run edge")
    };
    // A pipe whose reader has gone before the program starts.
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = generate(&["--random", "200"], writer.into());
    assert_eq!(out.status.code(), Some(141), "{}", stderr(&out));
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    // The same for a denoised frame stream written to stdout.
    common::write_model(&dir.path().join("blur.onnx"), &common::box_blur_model());
    std::fs::write(dir.path().join("in.y8"), vec![7u8; 3 * 60]).expect("frames");
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = edge_command()
        .current_dir(dir.path())
        .args(GRAY_STREAM)
        .args(["--input", "in.y8"])
        .stdout(writer)
        .output()
        .expect("run edge");
    assert_eq!(out.status.code(), Some(141), "{}", stderr(&out));
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
    let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") else {
        return; // no /dev/full here
    };
    let out = generate(&["--latent", "0,0"], full.into());
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("writing to stdout: No space left on device"),
        "{}",
        stderr(&out)
    );
}
