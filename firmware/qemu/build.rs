//! Picks the board from the target (`thumbv7em-none-eabihf`: QEMU `mps2-an386`,
//! `thumbv6m-none-eabi`: QEMU `microbit`), puts that board's memory map on the linker's search path
//! as `memory.x` (cortex-m-rt's `link.x` includes it), and sets `cfg(board = "...")` for
//! `src/board.rs`. For the microbit it also copies the model named by the `DECODE_MODEL`
//! environment variable to `OUT_DIR/model.q8`, which the firmware builds into flash (an empty
//! file when the variable is unset).

use std::{env, fs, path::PathBuf};

fn main() {
    let target = env::var("TARGET").expect("cargo sets TARGET");
    let (board, memory) = match target.as_str() {
        "thumbv7em-none-eabihf" => ("mps2_an386", "memory-mps2-an386.x"),
        "thumbv6m-none-eabi" => ("microbit", "memory-microbit.x"),
        other => panic!(
            "no QEMU board for target {other}: build for thumbv7em-none-eabihf (mps2-an386) \
             or thumbv6m-none-eabi (microbit)"
        ),
    };
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    fs::copy(memory, out.join("memory.x")).expect("copy the memory map into OUT_DIR");
    println!("cargo::rustc-link-search={}", out.display());
    println!("cargo::rustc-check-cfg=cfg(board, values(\"mps2_an386\", \"microbit\"))");
    println!("cargo::rustc-cfg=board=\"{board}\"");
    println!("cargo::rerun-if-changed={memory}");
    if board == "microbit" {
        println!("cargo::rerun-if-env-changed=DECODE_MODEL");
        let model = out.join("model.q8");
        match env::var_os("DECODE_MODEL") {
            Some(path) => {
                fs::copy(&path, &model)
                    .unwrap_or_else(|e| panic!("DECODE_MODEL={}: {e}", path.to_string_lossy()));
                println!("cargo::rerun-if-changed={}", path.to_string_lossy());
            }
            None => fs::write(&model, b"").expect("write an empty model into OUT_DIR"),
        }
    }
    println!("cargo::rerun-if-changed=build.rs");
}
