//! Puts `memory.x` on the linker's search path and copies the q8 model the firmware builds into
//! flash to `OUT_DIR/model.q8`: the one named by the `DECODE_MODEL` environment variable, else
//! the golden test model `firmware/golden/model.q8`.
use std::{env, fs, path::PathBuf};

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    fs::copy("memory.x", out.join("memory.x")).expect("copy memory.x into OUT_DIR");
    println!("cargo::rustc-link-search={}", out.display());
    println!("cargo::rerun-if-changed=memory.x");

    println!("cargo::rerun-if-env-changed=DECODE_MODEL");
    let model = env::var_os("DECODE_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("../golden/model.q8"));
    fs::copy(&model, out.join("model.q8"))
        .unwrap_or_else(|e| panic!("model {}: {e} (set DECODE_MODEL)", model.display()));
    check_model(&model);
    println!("cargo::rerun-if-changed={}", model.display());
    println!("cargo::rerun-if-changed=build.rs");
}

/// Fails the build for a model this firmware cannot run: one the parser rejects, one that does
/// not draw a 28x28 digit, or one that needs more working memory than the decoder's arena
/// (flashed, it would only stop at its first frame).
fn check_model(path: &std::path::Path) {
    use firmware_core::{decoder, q8::Model};
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("model {}: {e}", path.display()));
    let model = Model::parse(&bytes)
        .unwrap_or_else(|e| panic!("model {} is not a q8 decoder: {e:?}", path.display()));
    let shape = model.output_shape();
    if (shape.c, shape.h, shape.w) != (1, 28, 28) {
        panic!(
            "model {} draws {} channel(s) of {}x{}; this firmware shows 28x28 gray digits",
            path.display(),
            shape.c,
            shape.w,
            shape.h
        );
    }
    if model.working_bytes() > decoder::SCRATCH_BYTES {
        panic!(
            "model {} needs {} bytes of working memory; the decoder has {}",
            path.display(),
            model.working_bytes(),
            decoder::SCRATCH_BYTES
        );
    }
}
