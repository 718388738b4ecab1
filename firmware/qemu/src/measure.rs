//! Instruction counts and the stack high-water mark, for runs under `qemu-system-arm -icount
//! shift=0`.
//!
//! QEMU does not model cycles. With `-icount shift=0` its virtual clock advances exactly 1 ns per
//! executed instruction, and SysTick (clocked by the processor clock, [`board::CPU_HZ`]) counts
//! that virtual time, so `instructions = ticks * 10^9 / CPU_HZ`: 40 instructions per tick on
//! `mps2-an386` (25 MHz), 62.5 on `microbit` (16 MHz). [`calibrate`] checks the relation at run
//! time on a loop of known length. Without `-icount` SysTick follows the host's wall clock and
//! the counts mean nothing.
//!
//! The stack is painted with `0xCCCC_CCCC` at reset (cortex-m-rt's `paint-stack` feature);
//! [`stack_high_water`] finds the deepest word that is no longer paint. Words a frame reserves but
//! never writes do not count; they cannot clobber anything either, as long as the stack stays
//! inside its region (a high-water mark equal to the region's size means it did not).

use core::sync::atomic::{AtomicU32, Ordering};

use cortex_m::peripheral::SYST;
use cortex_m::peripheral::syst::SystClkSource;
use cortex_m_rt::exception;

use crate::board;

/// SysTick reload value: the full 24-bit range, so a period is `2^24` ticks.
const RELOAD: u32 = 0x00FF_FFFF;
/// The value cortex-m-rt paints the stack with (its `STACK_PAINT_VALUE`).
const PAINT: u32 = 0xCCCC_CCCC;

/// SysTick periods elapsed since [`Counter::start`]; only the SysTick handler writes it.
static WRAPS: AtomicU32 = AtomicU32::new(0);

#[exception]
fn SysTick() {
    // Load and store (thumbv6m has no atomic read-modify-write); nothing else writes WRAPS.
    WRAPS.store(
        WRAPS.load(Ordering::Relaxed).wrapping_add(1),
        Ordering::Relaxed,
    );
}

/// A free-running 64-bit SysTick tick count (24-bit hardware counter plus wrap interrupts).
pub struct Counter {
    _syst: SYST,
}

impl Counter {
    /// Starts SysTick on the processor clock, counting down from `2^24 - 1` and interrupting on
    /// each wrap.
    pub fn start(mut syst: SYST) -> Self {
        syst.disable_counter();
        syst.set_clock_source(SystClkSource::Core);
        syst.set_reload(RELOAD);
        syst.clear_current();
        WRAPS.store(0, Ordering::Relaxed);
        syst.enable_interrupt();
        syst.enable_counter();
        Counter { _syst: syst }
    }

    /// Ticks since [`Counter::start`].
    pub fn ticks(&self) -> u64 {
        loop {
            let before = WRAPS.load(Ordering::Relaxed);
            let current = SYST::get_current();
            // A wrap between the two loads would pair the new counter value with the old count.
            if WRAPS.load(Ordering::Relaxed) == before {
                // After each wrap (and after `start`) the counter sits at 0 for one tick, then
                // runs down from RELOAD to 0, where it interrupts: 0 is the start of a period.
                let in_period = (RELOAD + 1 - current) & RELOAD;
                return ((before as u64) << 24) + in_period as u64;
            }
        }
    }
}

/// Instructions QEMU executed in `ticks` SysTick ticks (valid under `-icount shift=0` only).
pub fn instructions(ticks: u64) -> u64 {
    ticks * 1_000_000_000 / board::CPU_HZ as u64
}

/// Times a loop of `2 * iterations` instructions (`subs`, `bne`) and returns the SysTick ticks it
/// took, less the ticks of an empty measurement. [`instructions`] of the result should give back
/// `2 * iterations` to within one tick.
pub fn calibrate(counter: &Counter, iterations: u32) -> u64 {
    let t0 = counter.ticks();
    let t1 = counter.ticks();
    let empty = t1 - t0;
    let t2 = counter.ticks();
    // SAFETY: only counts r0 down to zero; touches no memory and no stack.
    unsafe {
        core::arch::asm!(
            "2:",
            "subs r0, r0, #1",
            "bne 2b",
            inout("r0") iterations.max(1) => _,
            options(nomem, nostack),
        );
    }
    let t3 = counter.ticks();
    (t3 - t2).saturating_sub(empty)
}

/// Deepest stack use since reset, in bytes, and the size of the stack region (from the end of
/// the statics to the top of RAM).
pub fn stack_high_water() -> (usize, usize) {
    unsafe extern "C" {
        static _stack_end: u32;
        static _stack_start: u32;
    }
    let bottom = &raw const _stack_end as usize;
    let top = &raw const _stack_start as usize;
    let mut at = bottom;
    // SAFETY: [bottom, top) is the stack region, word aligned (cortex-m-rt's link.x asserts it);
    // the words below the current stack pointer are not in use by anyone, so reading them races
    // with nothing.
    while at < top && unsafe { core::ptr::read_volatile(at as *const u32) } == PAINT {
        at += 4;
    }
    (top - at, top - bottom)
}
