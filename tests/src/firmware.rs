//! Running the QEMU firmware (`firmware/qemu`) from tests.

use std::{
    io::Write,
    path::Path,
    process::{Command, Output, Stdio},
};

use firmware_core::{
    decoder::{self, IMAGE_PIXELS, Scratch},
    q8::Model,
    render::{Framebuffer, PBM_LEN, render_frame},
};

use crate::workspace_root;

/// The QEMU boards the firmware runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Board {
    /// `mps2-an386`: Cortex-M4F (DSP kernels); reads the model from the host into RAM.
    Mps2An386,
    /// `microbit`: Cortex-M0 (portable kernels, 16 KiB RAM); the model is built into flash.
    Microbit,
}

impl Board {
    /// Both boards.
    pub const ALL: [Board; 2] = [Board::Mps2An386, Board::Microbit];

    /// The Rust target the board's firmware is built for.
    pub fn target(self) -> &'static str {
        match self {
            Board::Mps2An386 => "thumbv7em-none-eabihf",
            Board::Microbit => "thumbv6m-none-eabi",
        }
    }

    fn qemu_args(self) -> &'static [&'static str] {
        match self {
            Board::Mps2An386 => &["-cpu", "cortex-m4", "-machine", "mps2-an386"],
            Board::Microbit => &["-machine", "microbit"],
        }
    }
}

/// Runs `cmd` and panics with its output unless it succeeds.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Builds the `decode` firmware for `board` (the microbit's with `dir/model.q8` in flash), runs
/// it under QEMU on `model.q8` + `latents.f32` in `dir` (it writes `digits.gray` and
/// `frame_NNN.pbm` there), and returns its defmt log, decoded by `defmt-print`.
pub fn run_qemu_firmware(board: Board, dir: &Path) -> String {
    let fw = workspace_root().join("firmware/qemu");
    run(Command::new(env!("CARGO"))
        .current_dir(&fw)
        .env_remove("CARGO_TARGET_DIR")
        .env("DECODE_MODEL", dir.join("model.q8"))
        .args(["build", "--release", "--quiet", "--target", board.target()]));
    let elf = fw.join(format!("target/{}/release/decode", board.target()));
    // A firmware that locks up is not ended by QEMU: `timeout` ends it (status 124), a failure
    // here instead of a CI job that hangs. A decode run takes seconds.
    let out = Command::new("timeout")
        .args(["300", "qemu-system-arm"])
        .args(board.qemu_args())
        .args([
            "-nographic",
            "-semihosting-config",
            "enable=on,target=native",
            "-kernel",
        ])
        .arg(&elf)
        .current_dir(dir)
        .output()
        .expect("starting qemu-system-arm");
    let log = Command::new("defmt-print")
        .arg("-e")
        .arg(&elf)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child.stdin.take().expect("stdin").write_all(&out.stdout)?;
            child.wait_with_output()
        })
        .expect("running defmt-print");
    let log = String::from_utf8_lossy(&log.stdout).into_owned();
    assert!(
        out.status.success(),
        "{board:?} firmware exited with {} (124: ended by the 300 s timeout); log:\n{log}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    log
}

/// What the firmware core computes on the host for the q8 `model` and the `latents` (each of the
/// model's latent size): the digits (784 bytes each, one after the other) and the screens as PBM
/// files, exactly what the QEMU firmware must write.
pub fn host_outputs(model: &[u8], latents: &[Vec<f32>]) -> (Vec<u8>, Vec<Vec<u8>>) {
    let model = Model::parse(model).expect("q8 model parses");
    let mut scratch = Scratch::new();
    let (mut digits, mut frames) = (Vec::new(), Vec::new());
    for (i, z) in latents.iter().enumerate() {
        let mut q = vec![0i8; z.len()];
        model.quantize_latent(z, &mut q).expect("quantize");
        let mut digit = [0u8; IMAGE_PIXELS];
        decoder::decode(&model, &q, &mut scratch, &mut digit).expect("int8 decode");
        digits.extend_from_slice(&digit);
        let mut fb = Framebuffer::new();
        render_frame(&mut fb, &digit, i, z);
        let mut pbm = [0u8; PBM_LEN];
        frames.push(fb.pbm(&mut pbm).to_vec());
    }
    (digits, frames)
}
