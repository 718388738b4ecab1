//! The Armv7E-M DSP code of the convolution kernels, as inline assembly (Rust has no stable
//! intrinsics for these instructions).
//!
//! - `sxtb16`, `smlad`: one register-to-register instruction each, no memory access, so their
//!   `unsafe` blocks cannot break any Rust invariant.
//! - [`run_4ch`] and [`run_pixels`], and their `_store` forms: whole loops over the output pixels
//!   of a `decoder::Grid`, which load input quads and weights through raw pointers. Each checks,
//!   once per grid and with checked arithmetic (`Grid::x_end`, `Grid::out_end`), that every
//!   address its loops read lies inside the slices it was given, and for the `_store` forms that
//!   every byte they write lies in `out`; otherwise they write only a local parameter array.
//!   Input quads sit in the byte arena, so their `ldr`s may be unaligned, which the Cortex-M4
//!   allows (the reset default, `CCR.UNALIGN_TRP = 0`); `ldrd` is used only on weights whose
//!   4-byte alignment is checked. The loops need 12 allocatable registers (r9 included).
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
    (ldr) => {
        taps_4ch!(@rows
            "ldr {t}, [{pw}], #4\n smlad {a0}, {e}, {t}, {a0}\n ldr {t}, [{pw}], #4\n smlad {a0}, {o}, {t}, {a0}\n",
            "ldr {t}, [{pw}], #4\n smlad {a1}, {e}, {t}, {a1}\n ldr {t}, [{pw}], #4\n smlad {a1}, {o}, {t}, {a1}\n",
            "ldr {t}, [{pw}], #4\n smlad {a2}, {e}, {t}, {a2}\n ldr {t}, [{pw}], #4\n smlad {a2}, {o}, {t}, {a2}\n",
            "ldr {t}, [{pw}], #4\n smlad {a3}, {e}, {t}, {a3}\n ldr {t}, [{pw}], #4\n smlad {a3}, {o}, {t}, {a3}\n")
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
/// the first: each weight block loaded once (`ldrd`, or two `ldr`) for the four.
macro_rules! taps_4px {
    (ldrd) => { taps_4px!(@rows "ldrd {t}, {u}, [{pw}], #8\n") };
    (ldr) => { taps_4px!(@rows "ldr {t}, [{pw}], #4\n ldr {u}, [{pw}], #4\n") };
    (@rows $weights:literal) => {
        concat!(
            "2:\n ldr {n}, [{prm}]\n",
            "3:\n", $weights,
            taps_4px!(@pixel "[{px}, #{p1}]", "{a1}"),
            taps_4px!(@pixel "[{px}, #{p2}]", "{a2}"),
            taps_4px!(@pixel "[{px}, #{p3}]", "{a3}"),
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

/// Requantizes accumulator `$acc` into `{u}` (int8, sign-extended) with the constants at
/// `{px} + $at` (`decoder::Requant::packed`): the 64-bit rounding constant, the multiplier,
/// `k | low << 8`. Nine instructions with the two loads; five when `low` is -128 (`no_low`: no
/// ReLU, or a ReLU whose zero point is -128, where the saturation alone clamps).
macro_rules! requantize {
    ($acc:literal, $at:literal, $at8:literal) => {
        concat!(
            requantize!($acc, $at, $at8, no_low),
            "sxtb {o}, {o}, ror #8\n cmp {u}, {o}\n it lt\n movlt {u}, {o}\n",
        )
    };
    ($acc:literal, $at:literal, $at8:literal, no_low) => {
        concat!(
            "ldrd {t}, {u}, [{px}, #",
            $at,
            "]\n ldrd {e}, {o}, [{px}, #",
            $at8,
            "]\n",
            "smlal {t}, {u}, ",
            $acc,
            ", {e}\n asr {u}, {u}, {o}\n ssat {u}, #8, {u}\n",
        )
    };
}

/// The assembly of one pixel of [`run_4ch_store`]: the taps, then the requantization (the
/// `no_low` form when given, see `requantize!`) and the store of its four channels. Expands to
/// an `asm!` statement, so it must sit inside `unsafe`.
macro_rules! run_4ch_store_asm {
    ($px:ident, $pw:ident, $prm:ident, [$a0:ident, $a1:ident, $a2:ident, $a3:ident] $(, $low:tt)?) => {
        asm!(
            taps_4ch!(ldrd),
            // Requantize and store: px <- the constants, pw <- the outputs.
            "ldr {px}, [{prm}, #12]",
            "ldr {pw}, [{prm}, #16]",
            requantize!("{a0}", 0, 8 $(, $low)?),
            "strb {u}, [{pw}]",
            requantize!("{a1}", 16, 24 $(, $low)?),
            "strb {u}, [{pw}, #1]",
            requantize!("{a2}", 32, 40 $(, $low)?),
            "strb {u}, [{pw}, #2]",
            requantize!("{a3}", 48, 56 $(, $low)?),
            "strb {u}, [{pw}, #3]",
            px = inout(reg) $px => _,
            pw = inout(reg) $pw => _,
            prm = in(reg) $prm,
            n = out(reg) _,
            a0 = inout(reg) $a0 => _,
            a1 = inout(reg) $a1 => _,
            a2 = inout(reg) $a2 => _,
            a3 = inout(reg) $a3 => _,
            t = out(reg) _,
            u = out(reg) _,
            e = out(reg) _,
            o = out(reg) _,
            options(nostack),
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
/// run's reads fit (as [`run_4ch`] checks), its writes fit in `out`, and `w` is 4-byte aligned;
/// the caller then takes the general path.
///
/// Per output value: two `ldrd`, `smlal`, `asr`, `ssat`, a store, and when some channel's lowest
/// output is above -128 (a ReLU whose zero point is not -128) `sxtb`, a compare and a
/// conditional move: 6 or 10 instructions, where the compiled requantization took ~21 with its
/// constants reloaded from the stack.
pub(crate) fn run_4ch_store(
    x: &[[i8; 4]],
    grid: &Grid,
    (stride, rows, quads): (usize, usize, usize),
    w: &[[[u8; 8]; 4]],
    init: [i32; 4],
    requant: &[[u32; 4]; 4],
    out: &mut [i8],
) -> bool {
    let fits = reads_fit(grid, (stride, rows, quads), quads, (x.len(), w.len()))
        && grid.out_end(4).is_some_and(|end| end <= out.len())
        && (w.as_ptr() as usize).is_multiple_of(4);
    if !fits {
        return false;
    }
    // The row loop's constants (as in `run_4ch_checked`), then where the requantization
    // constants are and where this pixel's outputs go (32-bit pointers: Armv7E-M only).
    let clamp_low = !no_low(requant);
    let mut params: [u32; 5] = [
        quads as u32,
        ((stride - quads) * 4) as u32,
        rows as u32,
        requant.as_ptr() as usize as u32,
        0,
    ];
    for l in 0..grid.lines {
        for p in 0..grid.count {
            let (x_at, out_at) = grid.step(l, p);
            params[2] = rows as u32;
            params[4] = out.as_mut_ptr().wrapping_add(out_at) as usize as u32;
            let [a0, a1, a2, a3] = init;
            let px = x.as_ptr().wrapping_add(x_at);
            let (pw, prm) = (w.as_ptr(), params.as_mut_ptr());
            // SAFETY: the checks above: every quad the pixel reads lies in `x` (row `r`: `quads`
            // quads from `x_at + r * stride`), the first `rows * quads` weight blocks exist and
            // are 4-byte aligned for `ldrd` (32-byte blocks), the four bytes written lie in `out`
            // (`out_at + 3 < out.len()`, `out_end`), and `requant` is 64 readable,
            // 4-byte-aligned bytes. Writes `params[2]` (a local) and those four bytes of `out`,
            // which nothing else borrows while the asm runs. Flags are clobbered.
            unsafe {
                if clamp_low {
                    run_4ch_store_asm!(px, pw, prm, [a0, a1, a2, a3]);
                } else {
                    run_4ch_store_asm!(px, pw, prm, [a0, a1, a2, a3], no_low);
                }
            }
        }
    }
    true
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
                    asm!(
                        taps_4ch!(ldrd),
                        px = inout(reg) px => _,
                        pw = inout(reg) pw => _,
                        prm = in(reg) prm,
                        n = out(reg) _,
                        a0 = inout(reg) a0,
                        a1 = inout(reg) a1,
                        a2 = inout(reg) a2,
                        a3 = inout(reg) a3,
                        t = out(reg) _,
                        u = out(reg) _,
                        e = out(reg) _,
                        o = out(reg) _,
                        options(nostack),
                    );
                }
            } else {
                // SAFETY: as above, with single-word loads (the Cortex-M4 allows unaligned `ldr`).
                unsafe {
                    asm!(
                        taps_4ch!(ldr),
                        px = inout(reg) px => _,
                        pw = inout(reg) pw => _,
                        prm = in(reg) prm,
                        n = out(reg) _,
                        a0 = inout(reg) a0,
                        a1 = inout(reg) a1,
                        a2 = inout(reg) a2,
                        a3 = inout(reg) a3,
                        t = out(reg) _,
                        e = out(reg) _,
                        o = out(reg) _,
                        options(nostack),
                    );
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
                    asm!(
                        taps_4px!(ldrd),
                        p1 = const 4 * QS,
                        p2 = const 8 * QS,
                        p3 = const 12 * QS,
                        px = inout(reg) px => _,
                        pw = inout(reg) pw => _,
                        prm = in(reg) prm,
                        n = out(reg) _,
                        a0 = inout(reg) a0,
                        a1 = inout(reg) a1,
                        a2 = inout(reg) a2,
                        a3 = inout(reg) a3,
                        t = out(reg) _,
                        u = out(reg) _,
                        e = out(reg) _,
                        o = out(reg) _,
                        options(nostack),
                    );
                }
            } else {
                // SAFETY: as above, with single-word weight loads (the Cortex-M4 allows unaligned
                // `ldr`).
                unsafe {
                    asm!(
                        taps_4px!(ldr),
                        p1 = const 4 * QS,
                        p2 = const 8 * QS,
                        p3 = const 12 * QS,
                        px = inout(reg) px => _,
                        pw = inout(reg) pw => _,
                        prm = in(reg) prm,
                        n = out(reg) _,
                        a0 = inout(reg) a0,
                        a1 = inout(reg) a1,
                        a2 = inout(reg) a2,
                        a3 = inout(reg) a3,
                        t = out(reg) _,
                        u = out(reg) _,
                        e = out(reg) _,
                        o = out(reg) _,
                        options(nostack),
                    );
                }
            }
            finish(out_at, [a0, a1, a2, a3]);
        }
    }
}

/// [`run_pixels`] for the last layer with its requantization, sigmoid table and store in the
/// same assembly: pixel `p` of a group becomes `table[y + 128]` at `out[at + p * pixel_step]`
/// (`at` the group's output index), `y` requantized with `requant` (as in
/// [`run_4ch_store`], whose lowest output must be -128: the last layer has no ReLU). Returns
/// `false`, having done nothing, unless the reads fit (as [`run_pixels`] checks), the writes fit
/// in `out`, `w` is 4-byte aligned and the lowest output is -128.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_pixels_store<const QS: usize>(
    x: &[[i8; 4]],
    (grid, pixel_step): (&Grid, usize),
    (stride, rows, quads): (usize, usize, usize),
    w: &[[u8; 8]],
    init: i32,
    (requant, table): (&[u32; 4], &[u8; 256]),
    out: &mut [u8],
) -> bool {
    // A group's last pixel reads up to 3 * QS quads after its first, and is written 3 pixel
    // steps after its first.
    let span = quads.checked_add(3 * QS);
    let out_end = pixel_step
        .checked_mul(3)
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
            // blocks exist and are 4-byte aligned for `ldrd`; the four bytes written,
            // `out_at + p pixel_step`, lie in `out`; the table read is `table[y + 128]` with
            // `y` saturated to -128..=127; `requant` is 16 readable, aligned bytes. Writes
            // `params[2]` (a local) and those bytes of `out`. Flags are clobbered.
            unsafe {
                asm!(
                    taps_4px!(ldrd),
                    // Requantize, look up and store the four pixels: px <- the constants, pw <- the
                    // outputs, n <- the table's middle, prm <- the step between outputs.
                    "ldr {px}, [{prm}, #12]",
                    "ldr {pw}, [{prm}, #16]",
                    "ldr {n}, [{prm}, #20]",
                    "ldr {prm}, [{prm}, #24]",
                    requantize!("{a0}", 0, 8, no_low),
                    "ldrb {u}, [{n}, {u}]",
                    "strb {u}, [{pw}]",
                    "add {pw}, {pw}, {prm}",
                    requantize!("{a1}", 0, 8, no_low),
                    "ldrb {u}, [{n}, {u}]",
                    "strb {u}, [{pw}]",
                    "add {pw}, {pw}, {prm}",
                    requantize!("{a2}", 0, 8, no_low),
                    "ldrb {u}, [{n}, {u}]",
                    "strb {u}, [{pw}]",
                    "add {pw}, {pw}, {prm}",
                    requantize!("{a3}", 0, 8, no_low),
                    "ldrb {u}, [{n}, {u}]",
                    "strb {u}, [{pw}]",
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
            }
        }
    }
    true
}
