//! Enables the `arm_dsp` cfg on targets whose cores all have the DSP extension (Armv7E-M:
//! Cortex-M4 and M7), so the int8 kernels can use its dual 16-bit multiply-accumulate, and the
//! `armv6m` cfg on Armv6-M (Cortex-M0, M0+, M1), whose cores have no 32 x 32 -> 64-bit multiply.
//! Arm target features cannot be tested with `cfg(target_feature)` on stable Rust, hence the
//! target name.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(arm_dsp)");
    println!("cargo::rustc-check-cfg=cfg(armv6m)");
    println!("cargo::rerun-if-changed=build.rs");
    let target = std::env::var("TARGET").unwrap_or_default();
    if target.starts_with("thumbv7em-") {
        println!("cargo::rustc-cfg=arm_dsp");
    }
    if target.starts_with("thumbv6m-") {
        println!("cargo::rustc-cfg=armv6m");
    }
}
