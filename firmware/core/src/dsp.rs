//! The few Armv7E-M DSP instructions the convolution kernel uses, as inline assembly (Rust has no
//! stable intrinsics for them). Each wrapper is one register-to-register instruction with no
//! memory access, so the `unsafe` blocks cannot break any Rust invariant.
#![allow(unsafe_code)]

use core::arch::asm;

/// Sign-extends bytes 0 and 2 of `x` into two 16-bit lanes: `(x0, x2)`.
#[inline(always)]
pub(crate) fn sxtb16(x: u32) -> u32 {
    let r: u32;
    // SAFETY: a pure register operation (no memory, no stack, flags untouched).
    unsafe {
        asm!("sxtb16 {r}, {x}", r = lateout(reg) r, x = in(reg) x,
             options(pure, nomem, nostack, preserves_flags));
    }
    r
}

/// Sign-extends bytes 1 and 3 of `x` into two 16-bit lanes: `(x1, x3)`.
#[inline(always)]
pub(crate) fn sxtb16_ror8(x: u32) -> u32 {
    let r: u32;
    // SAFETY: a pure register operation (no memory, no stack, flags untouched).
    unsafe {
        asm!("sxtb16 {r}, {x}, ror #8", r = lateout(reg) r, x = in(reg) x,
             options(pure, nomem, nostack, preserves_flags));
    }
    r
}

/// Dual 16-bit multiply-accumulate: `acc + a.lo * b.lo + a.hi * b.hi` (signed lanes).
#[inline(always)]
pub(crate) fn smlad(a: u32, b: u32, acc: i32) -> i32 {
    let r: i32;
    // SAFETY: a pure register operation (no memory, no stack); it may only set the sticky Q flag.
    unsafe {
        asm!("smlad {r}, {a}, {b}, {acc}", r = lateout(reg) r, a = in(reg) a, b = in(reg) b,
             acc = in(reg) acc, options(pure, nomem, nostack));
    }
    r
}
