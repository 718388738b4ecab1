//! Sets the `v4l2_camera` cfg when the `v4l2` feature is on and the target can use it: Linux on a
//! 64-bit CPU. (The `linuxvideo` crate does not build for 32-bit ARM, where `off_t` is 32 bits, so
//! the 32-bit Raspberry Pi OS build reads camera frames from `rpicam-vid` on stdin only.)
fn main() {
    println!("cargo::rustc-check-cfg=cfg(v4l2_camera)");
    println!("cargo::rerun-if-changed=build.rs");
    let feature = std::env::var_os("CARGO_FEATURE_V4L2").is_some();
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let width = std::env::var("CARGO_CFG_TARGET_POINTER_WIDTH").unwrap_or_default();
    if feature && os == "linux" && width == "64" {
        println!("cargo::rustc-cfg=v4l2_camera");
    }
}
