//! Turns the round-trip fixtures' ONNX files (written by our exporter) back into Burn code with
//! burn-onnx's importer, the code generator Burn users run on ONNX files; `tests/roundtrip.rs`
//! runs the generated models against the trainer's.
fn main() {
    let mut generator = burn_onnx::ModelGen::new();
    for name in [
        "conv_vae_encoder",
        "conv_vae_decoder",
        "conv_vae_decoder_int8",
        "camera_denoiser",
        "super_res_upscaler",
    ] {
        let path = format!("fixtures/roundtrip/{name}.onnx");
        println!("cargo:rerun-if-changed={path}");
        generator.input(&path);
    }
    generator.out_dir("roundtrip/").run_from_script();
}
