//! Platform glue for the firmware running in QEMU's `mps2-an386` (Cortex-M4F, target
//! `thumbv7em-none-eabihf`) or `microbit` (Cortex-M0, target `thumbv6m-none-eabi`).
//!
//! Every binary does `use firmware_qemu as _;` to get, from here:
//! - the defmt global logger, which writes frames to the host's stdout through semihosting
//!   (decode them with `defmt-print -e <elf>`);
//! - a panic handler and HardFault / default interrupt handlers that log and end QEMU with a
//!   failure exit code, so that a crash never hangs a CI job;
//! - [`exit`] and [`exit_failure`], which end the QEMU session with exit code 0 or 1;
//! - [`hostfs`]: reading and writing files in the host's current directory;
//! - [`measure`]: instruction counts (SysTick under `-icount shift=0`) and the stack high-water
//!   mark;
//! - [`board`]: the constants that differ between the two boards.
#![no_std]

// Linked for its `critical-section` implementation (single core), which the defmt logger uses;
// without this line a binary that does not use `cortex_m` itself fails to link.
use core::sync::atomic::{AtomicBool, Ordering};

use cortex_m as _;
use cortex_m_rt::{ExceptionFrame, exception};
use cortex_m_semihosting::debug;
use defmt_semihosting as _;

pub mod board;
pub mod hostfs;
pub mod measure;

/// Ends the QEMU session with exit code 0.
pub fn exit() -> ! {
    loop {
        debug::exit(debug::EXIT_SUCCESS);
    }
}

/// Ends the QEMU session with a failure exit code (1).
pub fn exit_failure() -> ! {
    loop {
        debug::exit(debug::EXIT_FAILURE);
    }
}

/// Set by the first panic or fault: one inside the logger (re-entered by the handler's own log
/// line) would otherwise recurse until the stack overflows and the core locks up, which QEMU
/// does not end.
static FAILING: AtomicBool = AtomicBool::new(false);

/// Ends QEMU at once when a panic or fault is already being handled; else marks it so.
fn first_failure() {
    // Load and store: thumbv6m has no atomic swap; one core, and a nested failure is all this
    // guards against.
    if FAILING.load(Ordering::Relaxed) {
        exit_failure();
    }
    FAILING.store(true, Ordering::Relaxed);
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    first_failure();
    defmt::error!("panicked: {}", defmt::Display2Format(info));
    exit_failure()
}

// `defmt::panic!` and friends have already logged their message when they get here.
#[defmt::panic_handler]
fn defmt_panic() -> ! {
    exit_failure()
}

#[exception]
unsafe fn HardFault(frame: &ExceptionFrame) -> ! {
    first_failure();
    defmt::error!(
        "HardFault: pc={=u32:#010x} lr={=u32:#010x}",
        frame.pc(),
        frame.lr()
    );
    exit_failure()
}

#[exception]
unsafe fn DefaultHandler(irqn: i16) {
    first_failure();
    defmt::error!("unexpected exception or interrupt {=i16}", irqn);
    exit_failure()
}
