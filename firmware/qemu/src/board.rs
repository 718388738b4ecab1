//! What differs between the QEMU boards this crate builds for. The board follows from the target
//! (`build.rs` sets `cfg(board = ...)`); everything else in the crate is the same on both.

/// QEMU `mps2-an386`: Cortex-M4F, 4 MiB of flash, 4 MiB of RAM.
#[cfg(board = "mps2_an386")]
mod this {
    /// The board, as QEMU's `-machine` names it.
    pub const MACHINE: &str = "mps2-an386";
    /// Processor clock (SysTick's `Core` source): QEMU's MPS2 `SYSCLK_FRQ`.
    pub const CPU_HZ: u32 = 25_000_000;
    /// Largest model file read into RAM, in bytes.
    pub const MODEL_CAPACITY: usize = 32 * 1024;
}

/// QEMU `microbit`: nRF51822, Cortex-M0, 256 KiB of flash, 16 KiB of RAM.
#[cfg(board = "microbit")]
mod this {
    /// The board, as QEMU's `-machine` names it.
    pub const MACHINE: &str = "microbit";
    /// Processor clock (SysTick's `Core` source): the nRF51's 16 MHz HCLK in QEMU.
    pub const CPU_HZ: u32 = 16_000_000;
    /// The model, built into flash: 16 KiB of RAM cannot hold the ~13 KB model next to the
    /// decoder's 4 KiB scratch, the screen buffers and a ~4 KiB stack. `build.rs` copies the file
    /// named by the `DECODE_MODEL` environment variable at build time (empty when it is unset).
    pub static MODEL: &[u8] =
        &firmware_core::q8::Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/model.q8"))).0;
}

pub use this::*;
