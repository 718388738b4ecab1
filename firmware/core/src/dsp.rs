//! The Armv7E-M DSP code of the convolution kernels, as inline assembly (Rust has no stable
//! intrinsics for these instructions).
//!
//! - `sxtb16`, `smlad`: one register-to-register instruction each, no memory access, so their
//!   `unsafe` blocks cannot break any Rust invariant.
//! - [`run_4ch`] and [`run_pixels`], and their `_store` forms: whole loops over the output pixels
//!   of a `decoder::Grid`, which load input quads and weights through raw pointers. Each checks,
//!   once per grid and with checked arithmetic (`Grid::x_end`, `Grid::out_end`), that every
//!   address its loops read lies inside the slices it was given, and for the `_store` forms that
//!   every byte they write lies in `out`; otherwise they write only a local parameter array (and
//!   the fixed-register kernels 8 bytes of stack, below).
//!   Input quads sit in the byte arena, so their `ldr`s may be unaligned, which the Cortex-M4
//!   allows (the reset default, `CCR.UNALIGN_TRP = 0`); `ldrd` is used only on weights whose
//!   4-byte alignment is checked. The loops need 12 allocatable registers (r9 included).
//! - The fixed-register kernels (`run_4ch_store_r2_asm!`, [`run_pixels_store_c16`]) name r0-r5
//!   and r8-r12, lr themselves, to load two channels' weights with one `ldm` (whose registers
//!   must ascend) or to keep four weight pairs live; they park the parameters' address on the
//!   stack (8 bytes, popped before they end) while their taps use every register.
#![allow(unsafe_code)]

use core::arch::asm;

use crate::decoder::Grid;

// The assembly text shared by the kernels below, as macros that expand to string literals (the
// operands are named alike in every kernel: `px`, `pw` input and weight pointers, `prm` the
// parameter array, `n` the quad counter, `a0`..`a3` accumulators, `t`, `u`, `e`, `o` scratch).

/// The tap rows of one output pixel for 4 channels: `prm[2]` rows of `prm[0]` quads, `prm[1]`
/// input bytes skipped between rows; weights with `ldrd` (4-byte-aligned) or two `ldr`.
macro_rules! taps_4ch {
    (ldrd) => {
        taps_4ch!(@rows
            "ldrd {t}, {u}, [{pw}], #8\n smlad {a0}, {e}, {t}, {a0}\n smlad {a0}, {o}, {u}, {a0}\n",
            "ldrd {t}, {u}, [{pw}], #8\n smlad {a1}, {e}, {t}, {a1}\n smlad {a1}, {o}, {u}, {a1}\n",
            "ldrd {t}, {u}, [{pw}], #8\n smlad {a2}, {e}, {t}, {a2}\n smlad {a2}, {o}, {u}, {a2}\n",
            "ldrd {t}, {u}, [{pw}], #8\n smlad {a3}, {e}, {t}, {a3}\n smlad {a3}, {o}, {u}, {a3}\n")
    };
    // As `(ldrd)`, with the row counter `prm[2]` first reset from `prm[8]`.
    (ldrd, reset) => {
        concat!("ldr {n}, [{prm}, #32]\n str {n}, [{prm}, #8]\n", taps_4ch!(ldrd))
    };
    (ldr) => {
        taps_4ch!(@rows
            "ldr {t}, [{pw}], #4\n smlad {a0}, {e}, {t}, {a0}\n ldr {u}, [{pw}], #4\n smlad {a0}, {o}, {u}, {a0}\n",
            "ldr {t}, [{pw}], #4\n smlad {a1}, {e}, {t}, {a1}\n ldr {u}, [{pw}], #4\n smlad {a1}, {o}, {u}, {a1}\n",
            "ldr {t}, [{pw}], #4\n smlad {a2}, {e}, {t}, {a2}\n ldr {u}, [{pw}], #4\n smlad {a2}, {o}, {u}, {a2}\n",
            "ldr {t}, [{pw}], #4\n smlad {a3}, {e}, {t}, {a3}\n ldr {u}, [{pw}], #4\n smlad {a3}, {o}, {u}, {a3}\n")
    };
    // Rows of exactly four quads (8 input channels x 2 taps: the MNIST decoders' upsampled
    // convs), unrolled: `{n}` counts the rows (from `prm[8]`) instead of the quads. 15
    // instructions per 16 multiply-accumulates, 4 more per row.
    (ldrd, q4) => {
        concat!(
            "ldr {n}, [{prm}, #32]\n",
            "2:\n",
            taps_4ch!(@quad ldrd), taps_4ch!(@quad ldrd), taps_4ch!(@quad ldrd), taps_4ch!(@quad ldrd),
            "ldr {t}, [{prm}, #4]\n add {px}, {px}, {t}\n subs {n}, {n}, #1\n bne 2b\n",
        )
    };
    (@quad ldrd) => {
        concat!(
            "ldr {t}, [{px}], #4\n sxtb16 {e}, {t}\n sxtb16 {o}, {t}, ror #8\n",
            "ldrd {t}, {u}, [{pw}], #8\n smlad {a0}, {e}, {t}, {a0}\n smlad {a0}, {o}, {u}, {a0}\n",
            "ldrd {t}, {u}, [{pw}], #8\n smlad {a1}, {e}, {t}, {a1}\n smlad {a1}, {o}, {u}, {a1}\n",
            "ldrd {t}, {u}, [{pw}], #8\n smlad {a2}, {e}, {t}, {a2}\n smlad {a2}, {o}, {u}, {a2}\n",
            "ldrd {t}, {u}, [{pw}], #8\n smlad {a3}, {e}, {t}, {a3}\n smlad {a3}, {o}, {u}, {a3}\n",
        )
    };
    (@rows $c0:literal, $c1:literal, $c2:literal, $c3:literal) => {
        concat!(
            "2:\n ldr {n}, [{prm}]\n",
            "3:\n ldr {t}, [{px}], #4\n sxtb16 {e}, {t}\n sxtb16 {o}, {t}, ror #8\n",
            $c0, $c1, $c2, $c3,
            "subs {n}, {n}, #1\n bne 3b\n",
            "ldr {t}, [{prm}, #4]\n add {px}, {px}, {t}\n",
            "ldr {t}, [{prm}, #8]\n subs {t}, {t}, #1\n str {t}, [{prm}, #8]\n bne 2b\n",
        )
    };
}

/// The tap rows of four neighbouring pixels of one channel, `{p1}`, `{p2}`, `{p3}` bytes after
/// the first: each weight block loaded once (`ldrd`, or two `ldr`) for the four. `(ldrd, 2)`:
/// the first two pixels only (a row's last pair when its width is not a multiple of four).
macro_rules! taps_4px {
    (ldrd) => { taps_4px!(@rows "ldrd {t}, {u}, [{pw}], #8\n", concat!(
        taps_4px!(@pixel "[{px}, #{p1}]", "{a1}"),
        taps_4px!(@pixel "[{px}, #{p2}]", "{a2}"),
        taps_4px!(@pixel "[{px}, #{p3}]", "{a3}"),
    )) };
    (ldrd, 2) => { taps_4px!(@rows "ldrd {t}, {u}, [{pw}], #8\n",
        taps_4px!(@pixel "[{px}, #{p1}]", "{a1}")) };
    (ldr) => { taps_4px!(@rows "ldr {t}, [{pw}], #4\n ldr {u}, [{pw}], #4\n", concat!(
        taps_4px!(@pixel "[{px}, #{p1}]", "{a1}"),
        taps_4px!(@pixel "[{px}, #{p2}]", "{a2}"),
        taps_4px!(@pixel "[{px}, #{p3}]", "{a3}"),
    )) };
    (@rows $weights:literal, $others:expr) => {
        concat!(
            "2:\n ldr {n}, [{prm}]\n",
            "3:\n", $weights,
            $others,
            taps_4px!(@pixel "[{px}], #4", "{a0}"),
            "subs {n}, {n}, #1\n bne 3b\n",
            "ldr {t}, [{prm}, #4]\n add {px}, {px}, {t}\n",
            "ldr {t}, [{prm}, #8]\n subs {t}, {t}, #1\n str {t}, [{prm}, #8]\n bne 2b\n",
        )
    };
    (@pixel $address:literal, $acc:literal) => {
        concat!(
            "ldr {e}, ", $address, "\n sxtb16 {o}, {e}, ror #8\n sxtb16 {e}, {e}\n",
            "smlad ", $acc, ", {e}, {t}, ", $acc, "\n smlad ", $acc, ", {o}, {u}, ", $acc, "\n",
        )
    };
}

/// `asm!` with the operands of the tap loops of [`run_4ch`] and [`run_pixels`] (`taps_4ch!`,
/// `taps_4px!`): the pointers `px`, `pw` and the parameters `prm` in, the accumulators in and
/// out, `$name = const` offsets for the template. Expands to an `asm!` statement, so it must sit
/// inside `unsafe`.
macro_rules! taps_asm {
    ($template:expr; $px:ident, $pw:ident, $prm:ident, [$a0:ident, $a1:ident, $a2:ident, $a3:ident]
     $(, $name:ident = const $value:expr)*) => {
        asm!(
            $template,
            $($name = const $value,)*
            px = inout(reg) $px => _,
            pw = inout(reg) $pw => _,
            prm = in(reg) $prm,
            n = out(reg) _,
            a0 = inout(reg) $a0,
            a1 = inout(reg) $a1,
            a2 = inout(reg) $a2,
            a3 = inout(reg) $a3,
            t = out(reg) _,
            u = out(reg) _,
            e = out(reg) _,
            o = out(reg) _,
            options(nostack),
        )
    };
}

/// Requantizes accumulator `$acc` into `{u}` (int8, sign-extended) with the constants at
/// `$base + $at` (`decoder::Requant::packed`): the 64-bit rounding constant, the multiplier,
/// `k | low << 8`. Nine instructions with the two loads; five when `low` is -128 (`no_low`: no
/// ReLU, or a ReLU whose zero point is -128, where the saturation alone clamps).
macro_rules! requantize {
    ($base:literal, $acc:literal, $at:literal, $at8:literal) => {
        concat!(
            requantize!($base, $acc, $at, $at8, no_low),
            "sxtb {o}, {o}, ror #8\n cmp {u}, {o}\n it lt\n movlt {u}, {o}\n",
        )
    };
    ($base:literal, $acc:literal, $at:literal, $at8:literal, no_low) => {
        concat!(
            "ldrd {t}, {u}, [",
            $base,
            ", #",
            $at,
            "]\n",
            "ldrd {e}, {o}, [",
            $base,
            ", #",
            $at8,
            "]\n",
            "smlal {t}, {u}, ",
            $acc,
            ", {e}\n asr {u}, {u}, {o}\n ssat {u}, #8, {u}\n",
        )
    };
}

/// The assembly of [`run_4ch_store`] for one line of its grid: for each pixel, the accumulators
/// from `init`, the taps (`taps_4ch!` with `$taps`), the requantization (the `no_low` form when
/// given, see `requantize!`) and the store of its four channels, then the next pixel. The
/// constants are in `prm` as laid out there. Expands to an `asm!` statement, so it must sit
/// inside `unsafe`.
macro_rules! run_4ch_store_asm {
    ($taps:tt; $px:ident, $prm:ident $(, $low:tt)?) => {
        asm!(
            "1:",
            "ldr {a0}, [{prm}, #16]\n ldr {a1}, [{prm}, #20]",
            "ldr {a2}, [{prm}, #24]\n ldr {a3}, [{prm}, #28]",
            "ldr {pw}, [{prm}, #12]",
            taps_4ch! $taps,
            // px: to the next pixel's first quad; pw: to this pixel's outputs.
            "ldr {t}, [{prm}, #44]\n add {px}, {px}, {t}\n ldr {pw}, [{prm}, #36]",
            requantize!("{prm}", "{a0}", 64, 72 $(, $low)?),
            "strb {u}, [{pw}]",
            requantize!("{prm}", "{a1}", 80, 88 $(, $low)?),
            "strb {u}, [{pw}, #1]",
            requantize!("{prm}", "{a2}", 96, 104 $(, $low)?),
            "strb {u}, [{pw}, #2]",
            requantize!("{prm}", "{a3}", 112, 120 $(, $low)?),
            "strb {u}, [{pw}, #3]",
            "ldr {t}, [{prm}, #40]\n add {pw}, {pw}, {t}\n str {pw}, [{prm}, #36]",
            "ldr {n}, [{prm}, #48]\n subs {n}, {n}, #1\n str {n}, [{prm}, #48]\n bne 1b",
            px = inout(reg) $px => _,
            pw = out(reg) _,
            prm = in(reg) $prm,
            n = out(reg) _,
            a0 = out(reg) _,
            a1 = out(reg) _,
            a2 = out(reg) _,
            a3 = out(reg) _,
            t = out(reg) _,
            u = out(reg) _,
            e = out(reg) _,
            o = out(reg) _,
            options(nostack),
        )
    };
}

/// `asm!` with the operands of the fixed-register kernels: r3 holds the parameters' address
/// and r4 the input pointer on entry; every free register is clobbered. Not `nostack`: they
/// push.
macro_rules! asm_fixed {
    ($px:ident, $prm:ident; $($template:expr),+ $(,)?) => {
        asm!(
            $($template),+,
            inout("r3") $prm => _,
            inout("r4") $px => _,
            out("r0") _,
            out("r1") _,
            out("r2") _,
            out("r5") _,
            out("r8") _,
            out("r9") _,
            out("r10") _,
            out("r11") _,
            out("r12") _,
            out("lr") _,
        )
    };
}

/// One quad of the two-row kernel ([`run_4ch_store`] with 2 rows of 4 quads) in fixed
/// registers: the quad at r4 split into r8 (even lanes) and r9 (odd lanes), the four channels'
/// weights loaded two channels per `ldm` into r0..r3 from r5, accumulated into r10, r11, r12
/// and lr. 13 instructions per 16 multiply-accumulates.
macro_rules! quad_r2 {
    () => {
        concat!(
            "ldr r0, [r4], #4\n sxtb16 r8, r0\n sxtb16 r9, r0, ror #8\n",
            "ldm r5!, {{r0-r3}}\n",
            "smlad r10, r8, r0, r10\n smlad r10, r9, r1, r10\n",
            "smlad r11, r8, r2, r11\n smlad r11, r9, r3, r11\n",
            "ldm r5!, {{r0-r3}}\n",
            "smlad r12, r8, r0, r12\n smlad r12, r9, r1, r12\n",
            "smlad lr, r8, r2, lr\n smlad lr, r9, r3, lr\n",
        )
    };
}

/// `requantize!` for the two-row kernel's fixed registers: accumulator `$acc`, the channel's
/// four constant words loaded with one `ldm` from r2 (which moves on to the next channel's),
/// result in r1.
macro_rules! requantize_r2 {
    ($acc:literal) => {
        concat!(
            requantize_r2!($acc, no_low),
            "sxtb r9, r9, ror #8\n cmp r1, r9\n it lt\n movlt r1, r9\n",
        )
    };
    ($acc:literal, no_low) => {
        concat!(
            "ldm r2!, {{r0, r1, r8, r9}}\n",
            "smlal r0, r1, ",
            $acc,
            ", r8\n asr r1, r1, r9\n ssat r1, #8, r1\n",
        )
    };
}

/// [`run_4ch_store_asm!`] for pixels of exactly 2 tap rows of 4 quads (the interior rows of the
/// MNIST decoders' upsampled convs), with the rows unrolled and fixed registers, so that the
/// weights of two channels come in one `ldm`: the parameters' address (r3) and the bytes between
/// the rows are kept on the stack while the taps use every free register. Same parameters.
macro_rules! run_4ch_store_r2_asm {
    ($px:ident, $prm:ident $(, $low:tt)?) => {
        asm_fixed!($px, $prm;
            "ldr r0, [r3, #4]\n push {{r0, r3}}",
            "1:",
            // Words 3..=7: the weights (r5) and the four accumulators' start, in one load.
            "ldm r3, {{r0, r1, r2, r5, r10, r11, r12, lr}}",
            quad_r2!(), quad_r2!(), quad_r2!(), quad_r2!(),
            "ldr r0, [sp]\n add r4, r4, r0",
            quad_r2!(), quad_r2!(), quad_r2!(), quad_r2!(),
            // r3: the parameters again; r4: to the next pixel's first quad; r5: to its outputs;
            // r2: to the requantization constants.
            "ldr r3, [sp, #4]\n ldr r0, [r3, #44]\n add r4, r4, r0\n ldr r5, [r3, #36]",
            "add r2, r3, #64",
            requantize_r2!("r10" $(, $low)?),
            "strb r1, [r5]",
            requantize_r2!("r11" $(, $low)?),
            "strb r1, [r5, #1]",
            requantize_r2!("r12" $(, $low)?),
            "strb r1, [r5, #2]",
            requantize_r2!("lr" $(, $low)?),
            "strb r1, [r5, #3]",
            // The next pixel's outputs, unless this was the line's last (word 13: its end).
            "ldr r0, [r3, #40]\n add r5, r5, r0\n str r5, [r3, #36]",
            "ldr r0, [r3, #52]\n cmp r5, r0\n bne 1b",
            "add sp, sp, #8",
        )
    };
}

/// Whether every channel of packed requantization constants has `low = -128`
/// (`requantize!(.., no_low)` applies).
fn no_low<const N: usize>(requant: &[[u32; 4]; N]) -> bool {
    requant.iter().all(|r| (r[3] >> 8) & 0xff == 0x80)
}

/// The bounds every kernel checks once per grid before its loops: each step reads `rows` tap rows
/// `stride` quads apart, `span` quads from its first quad (its taps' `quads` per row, plus the
/// other pixels of a group), all inside the `x_len` input quads; the `rows x quads` weight blocks
/// exist in the `w_len` given; and the bytes from one row's end to the next row's start fit the
/// loops' 32-bit register. Checked arithmetic throughout.
fn reads_fit(
    grid: &Grid,
    (stride, rows, quads): (usize, usize, usize),
    span: usize,
    (x_len, w_len): (usize, usize),
) -> bool {
    rows > 0
        && quads > 0
        && stride >= quads
        && grid
            .x_end((stride, rows, span))
            .is_some_and(|end| end <= x_len)
        && rows.checked_mul(quads).is_some_and(|n| n <= w_len)
        && stride
            .checked_mul(4)
            .is_some_and(|bytes| u32::try_from(bytes).is_ok())
}

/// Whether the kernels whose loop over a line's steps runs in the assembly can run it: at least
/// one step (the loop tests its count after a step), and the step count, the output step and
/// the input step in bytes fit their 32-bit words.
fn line_loop_fits(grid: &Grid) -> bool {
    let ((_, x_step, _), (_, out_step, _)) = (grid.x, grid.out);
    grid.count > 0
        && u32::try_from(grid.count).is_ok()
        && u32::try_from(out_step).is_ok()
        && x_step
            .checked_mul(4)
            .is_some_and(|b| u32::try_from(b).is_ok())
}

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

/// The output pixels of `grid` (a step is a pixel) for a block of 4 output channels: each starts
/// from the accumulators `init`, adds `sum of x . w` over its taps, and hands them to
/// `finish(out, acc)` with its output index (requantization and store). A pixel's taps are `rows`
/// tap rows of `quads` quads, row `r` at its first quad plus `r * stride`, with the weights `w`
/// (`rows x quads` blocks, one row after the other). If `x` or `w` is too short for the grid (or
/// `stride < quads`), no tap is added: every pixel gets `init`.
///
/// Each quad of 4 int8 inputs is split once into its even and odd lanes, and each channel's 8
/// bytes of folded i16 weights are those lanes' weights (`crate::fold::FoldLayout`), so a quad
/// costs one load, two `sxtb16`, and per channel one `ldrd` (two `ldr` when `w` is not 4-byte
/// aligned) and two `smlad`: 17 instructions for 16 multiply-accumulates with the loop, and 7
/// more per row. In assembly because the compiler keeps neither the accumulators nor the
/// pointers in registers across the rows (it reloaded them for ~40 instructions per row); the
/// bounds are checked once per grid, not per pixel.
#[inline(always)]
pub(crate) fn run_4ch(
    x: &[[i8; 4]],
    grid: &Grid,
    (stride, rows, quads): (usize, usize, usize),
    w: &[[[u8; 8]; 4]],
    init: [i32; 4],
    mut finish: impl FnMut(usize, [i32; 4]),
) {
    let fits = reads_fit(grid, (stride, rows, quads), quads, (x.len(), w.len()));
    if !fits {
        grid.steps().for_each(|(_, out)| finish(out, init));
        return;
    }
    if (w.as_ptr() as usize).is_multiple_of(4) {
        run_4ch_checked::<true>(x, grid, (stride, rows, quads), w, init, finish);
    } else {
        run_4ch_checked::<false>(x, grid, (stride, rows, quads), w, init, finish);
    }
}

/// [`run_4ch`] with the requantization and the store in the same assembly: a pixel's four
/// int8 outputs go to `out[at..][..4]` (`at` its output index), requantized with `requant` (per
/// channel: the 64-bit rounding constant with the zero point folded in as two words, the
/// multiplier, then `k | low << 8` with `k = n - 32` the shift of the high word and `low` the
/// lowest output; see `decoder::Requant`). Returns `false`, having done nothing, unless the
/// run's reads fit (as [`run_4ch`] checks), its writes fit in `out`, `w` is 4-byte aligned and
/// the line loop fits its 32-bit counters (`line_loop_fits`); the caller then takes the general
/// path.
///
/// Per output value: two `ldrd`, `smlal`, `asr`, `ssat`, a store, and when some channel's lowest
/// output is above -128 (a ReLU whose zero point is not -128) `sxtb`, a compare and a
/// conditional move: 6 or 10 instructions, where the compiled requantization took ~21 with its
/// constants reloaded from the stack. The pixel loop runs in the assembly too (15 instructions
/// per pixel where the compiled loop took 29). Rows of exactly 4 quads run unrolled
/// (`taps_4ch!(ldrd, q4)`), and pixels of exactly 2 such rows on the fixed-register kernel
/// (`run_4ch_store_r2_asm!`: 13 instructions per 16 multiply-accumulates).
pub(crate) fn run_4ch_store(
    x: &[[i8; 4]],
    grid: &Grid,
    (stride, rows, quads): (usize, usize, usize),
    w: &[[[u8; 8]; 4]],
    init: [i32; 4],
    requant: &[[u32; 4]; 4],
    out: &mut [i8],
) -> bool {
    let (_, x_step, _) = grid.x;
    let (_, out_step, _) = grid.out;
    let fits = reads_fit(grid, (stride, rows, quads), quads, (x.len(), w.len()))
        && grid.out_end(4).is_some_and(|end| end <= out.len())
        && (w.as_ptr() as usize).is_multiple_of(4)
        && line_loop_fits(grid);
    if !fits {
        return false;
    }
    // What the assembly reads (and counts down) at `prm`, as 32-bit words (pointers are 32-bit:
    // Armv7E-M only): 0 quads per row, 1 bytes from a row's end to the next row's start, 2 rows
    // left (the general taps count down), 3 the weights, 4..=7 `init` (3..=7 in one `ldm`), 8
    // rows, 9 the next pixel's outputs, 10 bytes between pixels' outputs, 11 bytes from where
    // the taps leave the input pointer to the next pixel's first quad (a wrapping difference),
    // 12 pixels left in the line, 13 the end of the line's outputs (where the two-row kernel
    // stops), 14 and 15 unused, then `requant` (byte 64: `Params4ch`).
    //
    // The taps move the input pointer by `rows * stride` quads, but for the unrolled two rows
    // (no step after the last row; no overflow: `reads_fit`). The two-row kernel stops at the
    // line's end pointer, so it needs pixels at distinct outputs.
    let two_rows = quads == 4 && rows == 2 && out_step > 0;
    let moved = rows * stride * 4 - if two_rows { (stride - quads) * 4 } else { 0 };
    let [i0, i1, i2, i3] = init.map(|a| a as u32);
    let mut params = Params4ch {
        words: [
            quads as u32,
            ((stride - quads) * 4) as u32,
            0,
            w.as_ptr() as usize as u32,
            i0,
            i1,
            i2,
            i3,
            rows as u32,
            0,
            out_step as u32,
            ((x_step * 4) as u32).wrapping_sub(moved as u32),
            0,
            0,
            0,
            0,
        ],
        requant: *requant,
    };
    let clamp_low = !no_low(requant);
    for l in 0..grid.lines {
        let (x_at, out_at) = grid.step(l, 0);
        let words = &mut params.words;
        words[9] = out.as_mut_ptr().wrapping_add(out_at) as usize as u32;
        words[12] = grid.count as u32;
        // `out_end` checked `out_at + (count - 1) * out_step + 4 <= out.len()`, so the output
        // pointer meets this end after exactly `count` steps of `out_step > 0`.
        words[13] = words[9].wrapping_add((grid.count as u32).wrapping_mul(out_step as u32));
        let px = x.as_ptr().wrapping_add(x_at);
        let prm = (&raw mut params).cast::<u32>();
        // SAFETY: the checks above: every quad a pixel of the line reads lies in `x` (row `r`:
        // `quads` quads from `x_at + p x_step + r stride`), the first `rows * quads` weight
        // blocks exist and are 4-byte aligned for `ldrd` and `ldm` (32-byte blocks), the four
        // bytes each pixel writes lie in `out` (`out_end`), and the line has at least one pixel
        // (`line_loop_fits`: the loop tests its count after a pixel). `params` is 128 readable,
        // aligned bytes; the assembly writes its words 2, 9 and 12 (a local) and those bytes of
        // `out`, which nothing else borrows while it runs, and (the two-row kernel) 8 bytes
        // below the stack pointer, which it restores. Flags are clobbered.
        unsafe {
            match (quads == 4, clamp_low) {
                (true, true) if two_rows => run_4ch_store_r2_asm!(px, prm),
                (true, false) if two_rows => run_4ch_store_r2_asm!(px, prm, no_low),
                (true, true) => run_4ch_store_asm!((ldrd, q4); px, prm),
                (true, false) => run_4ch_store_asm!((ldrd, q4); px, prm, no_low),
                (false, true) => run_4ch_store_asm!((ldrd, reset); px, prm),
                (false, false) => run_4ch_store_asm!((ldrd, reset); px, prm, no_low),
            }
        }
    }
    true
}

/// The parameter block of [`run_4ch_store`]'s assembly: 16 words, then the requantization
/// constants at byte 64 (one block, so the assembly reads both from one address).
#[repr(C)]
struct Params4ch {
    words: [u32; 16],
    requant: [[u32; 4]; 4],
}

/// [`run_4ch`] once its bounds are checked; `ALIGNED`: `w` is 4-byte aligned (`ldrd` allowed).
#[inline(always)]
fn run_4ch_checked<const ALIGNED: bool>(
    x: &[[i8; 4]],
    grid: &Grid,
    (stride, rows, quads): (usize, usize, usize),
    w: &[[[u8; 8]; 4]],
    init: [i32; 4],
    mut finish: impl FnMut(usize, [i32; 4]),
) {
    // The row loop's constants: quads per row, bytes from a row's end to the next row's start,
    // rows left (counted down by the loop, reset for every pixel).
    let mut params: [u32; 3] = [quads as u32, ((stride - quads) * 4) as u32, rows as u32];
    for l in 0..grid.lines {
        for p in 0..grid.count {
            let (x_at, out_at) = grid.step(l, p);
            params[2] = rows as u32;
            let [mut a0, mut a1, mut a2, mut a3] = init;
            let px = x.as_ptr().wrapping_add(x_at);
            let (pw, prm) = (w.as_ptr(), params.as_mut_ptr());
            if ALIGNED {
                // SAFETY: `run_4ch` checked that every quad the grid's pixels read lies in `x`
                // (row `r` of a pixel: `quads` quads from its `x_at + r * stride`), that
                // the first `rows * quads` blocks of `w` exist, and (ALIGNED) that `w` is 4-byte
                // aligned, as `ldrd` needs (blocks are 32 bytes, so every block stays aligned). The
                // only memory written is `params[2]`, a local. Flags are clobbered.
                unsafe {
                    taps_asm!(taps_4ch!(ldrd); px, pw, prm, [a0, a1, a2, a3]);
                }
            } else {
                // SAFETY: as above, with single-word loads (the Cortex-M4 allows unaligned `ldr`).
                unsafe {
                    taps_asm!(taps_4ch!(ldr); px, pw, prm, [a0, a1, a2, a3]);
                }
            }
            finish(out_at, [a0, a1, a2, a3]);
        }
    }
}

/// The groups of 4 neighbouring output pixels of `grid` (a step is a group) for a layer with
/// one output channel: each pixel starts from `init` and adds `sum of x . w` over its taps, and
/// a group's four sums go to `finish(out, acc)` with the group's output index. Pixel `p` of a
/// group reads from `p * QS` quads after the group's first quad; each pixel has `rows` tap rows
/// of `quads` quads, `stride` quads apart, all with the same weights `w` (`rows x quads` blocks
/// of 8 bytes: the even lanes' i16 pair, then the odd lanes'). If `x` or `w` is too short (or
/// `stride < quads`), no tap is added.
///
/// Each weight block is loaded once (`ldrd`, or two `ldr` when unaligned) for the four pixels,
/// each of whose quads costs a load, two `sxtb16` and two `smlad`: 23 instructions for 16
/// multiply-accumulates with the loop, 7 more per row.
#[inline(always)]
pub(crate) fn run_pixels<const QS: usize>(
    x: &[[i8; 4]],
    grid: &Grid,
    (stride, rows, quads): (usize, usize, usize),
    w: &[[u8; 8]],
    init: i32,
    mut finish: impl FnMut(usize, [i32; 4]),
) {
    // The group's last pixel reads up to 3 * QS quads after its first.
    let span = quads.checked_add(3 * QS);
    let fits =
        span.is_some_and(|span| reads_fit(grid, (stride, rows, quads), span, (x.len(), w.len())));
    if !fits {
        grid.steps().for_each(|(_, out)| finish(out, [init; 4]));
        return;
    }
    let aligned = (w.as_ptr() as usize).is_multiple_of(4);
    // The row loop's constants: quads per row, bytes from a row's end to the next row's start,
    // rows left (counted down, reset for every group).
    let mut params: [u32; 3] = [quads as u32, ((stride - quads) * 4) as u32, rows as u32];
    for l in 0..grid.lines {
        for p in 0..grid.count {
            let (x_at, out_at) = grid.step(l, p);
            params[2] = rows as u32;
            let [mut a0, mut a1, mut a2, mut a3] = [init; 4];
            let px = x.as_ptr().wrapping_add(x_at);
            let (pw, prm) = (w.as_ptr(), params.as_mut_ptr());
            if aligned {
                // SAFETY: `fits` checked that every quad read lies in `x`: pixel `p` of a group
                // reads, in row `r`, `quads` quads from `x_at + p QS + r stride` (the loads
                // at `px + 4 p QS` bytes while `px` walks the row); and that the first
                // `rows * quads` blocks of `w` exist. `ldrd` needs the 4-byte alignment checked above
                // (blocks are 8 bytes); the input `ldr`s may be unaligned (allowed on the Cortex-M4).
                // The only memory written is `params[2]`, a local. Flags are clobbered.
                unsafe {
                    taps_asm!(taps_4px!(ldrd); px, pw, prm, [a0, a1, a2, a3], p1 = const 4 * QS, p2 = const 8 * QS, p3 = const 12 * QS);
                }
            } else {
                // SAFETY: as above, with single-word weight loads (the Cortex-M4 allows unaligned
                // `ldr`).
                unsafe {
                    taps_asm!(taps_4px!(ldr); px, pw, prm, [a0, a1, a2, a3], p1 = const 4 * QS, p2 = const 8 * QS, p3 = const 12 * QS);
                }
            }
            finish(out_at, [a0, a1, a2, a3]);
        }
    }
}

/// Requantizes accumulator `$acc` of [`run_pixels_store`], looks it up in the sigmoid table
/// (`{n}`: its middle) and stores it at `{pw}`, which then steps to the next pixel (by `{prm}`)
/// unless this is the group's `last` pixel.
macro_rules! store_pixel {
    ($acc:literal) => {
        concat!(store_pixel!($acc, last), "add {pw}, {pw}, {prm}\n")
    };
    ($acc:literal, last) => {
        concat!(
            requantize!("{px}", $acc, 0, 8, no_low),
            "ldrb {u}, [{n}, {u}]\n strb {u}, [{pw}]\n",
        )
    };
}

/// One quad `q` of both taps of a row of the two-tap, 16-channel kernel
/// ([`run_pixels_store_c16`]) in fixed registers: the two taps' weights for channels `4q..4q+4`
/// (r0, r1 and r2, r3; from r5 + `$w0`, + `$w1`), then the quad `q` of the five input columns
/// the group's four pixels read (r4 + `$x0`.. + `$x4`, split into r8 and r9), each column feeding
/// the pixel whose first tap it is and the one whose second tap it is. Accumulators r10, r11,
/// r12, lr. 33 instructions per 32 multiply-accumulates.
macro_rules! quad_c16 {
    ($w0:literal, $w1:literal, $x0:literal, $x1:literal, $x2:literal, $x3:literal, $x4:literal) => {
        concat!(
            "ldrd r0, r1, [r5, #", $w0, "]\n ldrd r2, r3, [r5, #", $w1, "]\n",
            quad_c16!(@column $x0), quad_c16!(@mac "r10", "r0", "r1"),
            quad_c16!(@column $x1), quad_c16!(@mac "r11", "r0", "r1"), quad_c16!(@mac "r10", "r2", "r3"),
            quad_c16!(@column $x2), quad_c16!(@mac "r12", "r0", "r1"), quad_c16!(@mac "r11", "r2", "r3"),
            quad_c16!(@column $x3), quad_c16!(@mac "lr", "r0", "r1"), quad_c16!(@mac "r12", "r2", "r3"),
            quad_c16!(@column $x4), quad_c16!(@mac "lr", "r2", "r3"),
        )
    };
    // The first two pixels only (a row's last pair): three input columns.
    (pair; $w0:literal, $w1:literal, $x0:literal, $x1:literal, $x2:literal) => {
        concat!(
            "ldrd r0, r1, [r5, #", $w0, "]\n ldrd r2, r3, [r5, #", $w1, "]\n",
            quad_c16!(@column $x0), quad_c16!(@mac "r10", "r0", "r1"),
            quad_c16!(@column $x1), quad_c16!(@mac "r11", "r0", "r1"), quad_c16!(@mac "r10", "r2", "r3"),
            quad_c16!(@column $x2), quad_c16!(@mac "r11", "r2", "r3"),
        )
    };
    (@column $x:literal) => {
        concat!("ldr r8, [r4, #", $x, "]\n sxtb16 r9, r8, ror #8\n sxtb16 r8, r8\n")
    };
    (@mac $acc:literal, $even:literal, $odd:literal) => {
        concat!(
            "smlad ", $acc, ", r8, ", $even, ", ", $acc, "\n",
            "smlad ", $acc, ", r9, ", $odd, ", ", $acc, "\n",
        )
    };
}

/// A row of taps of [`run_pixels_store_c16`]: its four quads (`pair`: of a 2-pixel group).
macro_rules! row_c16 {
    () => {
        concat!(
            quad_c16!(0, 32, 0, 16, 32, 48, 64),
            quad_c16!(8, 40, 4, 20, 36, 52, 68),
            quad_c16!(16, 48, 8, 24, 40, 56, 72),
            quad_c16!(24, 56, 12, 28, 44, 60, 76),
        )
    };
    (pair) => {
        concat!(
            quad_c16!(pair; 0, 32, 0, 16, 32),
            quad_c16!(pair; 8, 40, 4, 20, 36),
            quad_c16!(pair; 16, 48, 8, 24, 40),
            quad_c16!(pair; 24, 56, 12, 28, 44),
        )
    };
}

/// The assembly of [`run_pixels_store_c16`] for one line: `$init` sets the accumulators from
/// r10, `$row` is `row_c16!` of the group's size, `$stores` the `store_c16!`s.
macro_rules! run_c16_asm {
    ($px:ident, $prm:ident; $init:literal, $row:expr, $stores:expr) => {
        asm_fixed!($px, $prm;
            "ldr r0, [r3]\n push {{r0, r3}}",
            "1:",
            "ldr r10, [r3, #24]",
            $init,
            "ldr r5, [r3, #4]",
            $row,
            "ldr r8, [sp]\n add r4, r4, r8\n add r5, r5, #64",
            $row,
            // r3: the parameters again; r4: to the next group's first quad; r5: to its
            // outputs; r2: the table's middle; r8, r9: the multiplier and the shift.
            "ldr r3, [sp, #4]\n ldr r0, [r3, #16]\n add r4, r4, r0",
            "ldr r5, [r3, #8]\n ldr r2, [r3, #28]\n ldrd r8, r9, [r3, #48]",
            $stores,
            "ldr r0, [r3, #12]\n add r5, r5, r0\n str r5, [r3, #8]",
            "ldr r0, [r3, #20]\n subs r0, r0, #1\n str r0, [r3, #20]\n bne 1b",
            "add sp, sp, #8",
        )
    };
}

/// Requantizes accumulator `$acc` of [`run_pixels_store_c16`] (rounding constant at r3 + 40,
/// multiplier in r8, shift in r9), looks it up in the table (r2: its middle) and stores it at
/// r5 + `$at` (the group's pixels are [`C16_PIXEL_STEP`] bytes apart).
macro_rules! store_c16 {
    ($acc:literal, $at:literal) => {
        concat!(
            "ldrd r0, r1, [r3, #40]\n smlal r0, r1, ",
            $acc,
            ", r8\n",
            "asr r1, r1, r9\n ssat r1, #8, r1\n ldrb r1, [r2, r1]\n strb r1, [r5, #",
            $at,
            "]\n",
        )
    };
}

/// The step between the outputs of a group of [`run_pixels_store_c16`], fixed so that its
/// stores take immediate offsets: a 2x upsampling phase of a single-channel layer, as the
/// MNIST decoders' last layer has.
const C16_PIXEL_STEP: usize = 2;

/// [`run_pixels_store`] for groups of `P` (4 or 2) pixels of a 16-channel input with 2 x 2 taps
/// (the MNIST decoders' last layer, interior rows; a group's pixels [`C16_PIXEL_STEP`] bytes
/// apart), once its checks passed: each input quad is
/// split once for the two pixels that read it, the rows are unrolled, the group loop is in the
/// assembly, and the registers are fixed (the parameters' address and the bytes between rows
/// wait on the stack while the taps use every free register). `false`, having done nothing,
/// when a count or step does not fit the assembly's 32-bit words.
fn run_pixels_store_c16<const P: usize>(
    x: &[[i8; 4]],
    grid: &Grid,
    stride: usize,
    w: &[[u8; 8]],
    init: i32,
    (requant, table): (&[u32; 4], &[u8; 256]),
    out: &mut [u8],
) -> bool {
    let (_, x_step, _) = grid.x;
    let (_, out_step, _) = grid.out;
    if !line_loop_fits(grid) {
        return false;
    }
    // What the assembly reads (and counts down) at `prm`, as 32-bit words (pointers are 32-bit:
    // Armv7E-M only): 0 bytes between input rows, 1 the weights, 2 the next group's first
    // output, 3 bytes between groups' outputs, 4 bytes from where the taps leave the input
    // pointer (one row down) to the next group's first quad (a wrapping difference), 5 groups
    // left in the line, 6 `init`, 7 the table's middle, 10..14 `requant`.
    let mut params = [0u32; 14];
    params[0] = (stride * 4) as u32;
    params[1] = w.as_ptr() as usize as u32;
    params[3] = out_step as u32;
    params[4] = ((x_step * 4) as u32).wrapping_sub((stride * 4) as u32);
    params[6] = init as u32;
    params[7] = table.as_ptr().wrapping_add(128) as usize as u32;
    params[10..].copy_from_slice(requant);
    for l in 0..grid.lines {
        let (x_at, out_at) = grid.step(l, 0);
        params[2] = out.as_mut_ptr().wrapping_add(out_at) as usize as u32;
        params[5] = grid.count as u32;
        let px = x.as_ptr().wrapping_add(x_at);
        let prm = params.as_mut_ptr();
        // SAFETY: `run_pixels_store` checked that every quad read lies in `x` (group `g`, row
        // `r`: the `4 P + 4` quads from `x_at + g x_step + r stride`, as its `P` pixels of 8
        // quads, 4 apart, read) and that the 16 weight blocks exist and are 4-byte aligned for
        // `ldrd`; the `P` bytes each group writes, `out_at + g out_step + 2 p`, lie in
        // `out`; the table read is `table[y + 128]` with `y` saturated to -128..=127; the line
        // has at least one group (`line_loop_fits`: the loop tests its count after a group).
        // `params` is 56 readable, aligned bytes; the assembly writes its words 2 and 5 (a
        // local), those bytes of `out`, and 8 bytes below the stack pointer, which it restores.
        // Flags are clobbered.
        unsafe {
            if P == 4 {
                run_c16_asm!(px, prm;
                    "mov r11, r10\n mov r12, r10\n mov lr, r10",
                    row_c16!(),
                    concat!(
                        store_c16!("r10", 0),
                        store_c16!("r11", 2),
                        store_c16!("r12", 4),
                        store_c16!("lr", 6),
                    )
                );
            } else {
                run_c16_asm!(px, prm;
                    "mov r11, r10",
                    row_c16!(pair),
                    concat!(store_c16!("r10", 0), store_c16!("r11", 2))
                );
            }
        }
    }
    true
}

/// [`run_pixels`] for the last layer with its requantization, sigmoid table and store in the
/// same assembly: pixel `p` of a group becomes `table[y + 128]` at `out[at + p * pixel_step]`
/// (`at` the group's output index), `y` requantized with `requant` (as in
/// [`run_4ch_store`], whose lowest output must be -128: the last layer has no ReLU). A group is
/// `P` pixels: 4, or 2 for the pair that ends a row whose width is not a multiple of 4. Returns
/// `false`, having done nothing, unless the reads fit (as [`run_pixels`] checks), the writes fit
/// in `out`, `pixel_step` fits in 32 bits, `w` is 4-byte aligned and the lowest output is -128
/// (and, for the 16-channel kernel, its line loop fits its counters: `line_loop_fits`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_pixels_store<const QS: usize, const P: usize>(
    x: &[[i8; 4]],
    (grid, pixel_step): (&Grid, usize),
    (stride, rows, quads): (usize, usize, usize),
    w: &[[u8; 8]],
    init: i32,
    (requant, table): (&[u32; 4], &[u8; 256]),
    out: &mut [u8],
) -> bool {
    const { assert!(P == 2 || P == 4) };
    // A group's last pixel reads up to (P - 1) * QS quads after its first, and is written
    // P - 1 pixel steps after its first.
    let span = quads.checked_add((P - 1) * QS);
    let out_end = pixel_step
        .checked_mul(P - 1)
        .and_then(|last| grid.out_end(last.checked_add(1)?));
    let fits = span
        .is_some_and(|span| reads_fit(grid, (stride, rows, quads), span, (x.len(), w.len())))
        && out_end.is_some_and(|end| end <= out.len())
        && u32::try_from(pixel_step).is_ok()
        && (w.as_ptr() as usize).is_multiple_of(4)
        && no_low(&[*requant]);
    if !fits {
        return false;
    }
    if QS == 4 && quads == 8 && rows == 2 && pixel_step == C16_PIXEL_STEP {
        let finish = (requant, table);
        return run_pixels_store_c16::<P>(x, grid, stride, w, init, finish, out);
    }
    // The row loop's constants, then the requantization constants, this group's first output,
    // the table's middle (index 0 for a logit of 0) and the step between outputs (32-bit
    // pointers: Armv7E-M only).
    let mut params: [u32; 7] = [
        quads as u32,
        ((stride - quads) * 4) as u32,
        rows as u32,
        requant.as_ptr() as usize as u32,
        0,
        table.as_ptr().wrapping_add(128) as usize as u32,
        pixel_step as u32,
    ];
    for l in 0..grid.lines {
        for p in 0..grid.count {
            let (x_at, out_at) = grid.step(l, p);
            params[2] = rows as u32;
            params[4] = out.as_mut_ptr().wrapping_add(out_at) as usize as u32;
            let [a0, a1, a2, a3] = [init; 4];
            let px = x.as_ptr().wrapping_add(x_at);
            let (pw, prm) = (w.as_ptr(), params.as_mut_ptr());
            // SAFETY: the checks above: every quad read lies in `x` (pixel `p` of the group, row
            // `r`: `quads` quads from `x_at + p QS + r stride`), the first `rows * quads` weight
            // blocks exist and are 4-byte aligned for `ldrd`; the `P` bytes written,
            // `out_at + p pixel_step`, lie in `out`; the table read is `table[y + 128]` with
            // `y` saturated to -128..=127; `requant` is 16 readable, aligned bytes. Writes
            // `params[2]` (a local) and those bytes of `out`. Flags are clobbered. After the
            // taps the assembly points px at the constants, pw at the outputs, n at the table's
            // middle and prm at the step between outputs.
            unsafe {
                if P == 4 {
                    asm!(
                        taps_4px!(ldrd),
                        "ldr {px}, [{prm}, #12]\n ldr {pw}, [{prm}, #16]",
                        "ldr {n}, [{prm}, #20]\n ldr {prm}, [{prm}, #24]",
                        store_pixel!("{a0}"),
                        store_pixel!("{a1}"),
                        store_pixel!("{a2}"),
                        store_pixel!("{a3}", last),
                        p1 = const 4 * QS,
                        p2 = const 8 * QS,
                        p3 = const 12 * QS,
                        px = inout(reg) px => _,
                        pw = inout(reg) pw => _,
                        prm = inout(reg) prm => _,
                        n = out(reg) _,
                        a0 = inout(reg) a0 => _,
                        a1 = inout(reg) a1 => _,
                        a2 = inout(reg) a2 => _,
                        a3 = inout(reg) a3 => _,
                        t = out(reg) _,
                        u = out(reg) _,
                        e = out(reg) _,
                        o = out(reg) _,
                        options(nostack),
                    );
                } else {
                    let _ = (a2, a3);
                    asm!(
                        taps_4px!(ldrd, 2),
                        "ldr {px}, [{prm}, #12]\n ldr {pw}, [{prm}, #16]",
                        "ldr {n}, [{prm}, #20]\n ldr {prm}, [{prm}, #24]",
                        store_pixel!("{a0}"),
                        store_pixel!("{a1}", last),
                        p1 = const 4 * QS,
                        px = inout(reg) px => _,
                        pw = inout(reg) pw => _,
                        prm = inout(reg) prm => _,
                        n = out(reg) _,
                        a0 = inout(reg) a0 => _,
                        a1 = inout(reg) a1 => _,
                        t = out(reg) _,
                        u = out(reg) _,
                        e = out(reg) _,
                        o = out(reg) _,
                        options(nostack),
                    );
                }
            }
        }
    }
    true
}
