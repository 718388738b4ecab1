//! How much memory a training step allocates, so that a batch too large for the machine is an
//! error before the run starts instead of the kernel's OOM killer ending the process in its first
//! step, without a word (Linux overcommits: the allocations succeed and the pages fail later).
//!
//! Burn does not say what a step will allocate, so it is measured: the `trainer` binary counts
//! every allocation through [`CountingAllocator`], and [`peak_during`] reports the most bytes a
//! piece of work held at once. [`crate::training`] measures steps of 128, 256, ... examples up
//! to half the run's batch and extrapolates the two largest to it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{
    AtomicBool, AtomicI64, AtomicU64,
    Ordering::{Relaxed, SeqCst},
};

/// The system allocator, counting the bytes handed out and taken back while [`peak_during`]
/// measures, and their peak. Install it with `#[global_allocator]` (the `trainer` binary does);
/// without it [`peak_during`] measures nothing. Outside a measurement an allocation costs one
/// relaxed load more, which does not show in `trainer bench`.
pub struct CountingAllocator;

/// Whether [`peak_during`] is measuring.
static MEASURING: AtomicBool = AtomicBool::new(false);
/// Bytes allocated less bytes freed since the measurement started (negative when the work frees
/// what was there before it).
static HELD: AtomicI64 = AtomicI64::new(0);
/// The most `HELD` has been since the measurement started.
static PEAK: AtomicI64 = AtomicI64::new(0);
/// Allocations counted since the measurement started: none means no counting allocator.
static COUNTED: AtomicU64 = AtomicU64::new(0);

fn allocated(bytes: usize) {
    if MEASURING.load(Relaxed) {
        let now = HELD.fetch_add(bytes as i64, Relaxed) + bytes as i64;
        PEAK.fetch_max(now, Relaxed);
        COUNTED.fetch_add(1, Relaxed);
    }
}

fn freed(bytes: usize) {
    if MEASURING.load(Relaxed) {
        HELD.fetch_sub(bytes as i64, Relaxed);
    }
}

// SAFETY: every call goes to `System` with the caller's arguments unchanged; the counters are
// only arithmetic on the side and never affect what is returned.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `GlobalAlloc::alloc`, passed on.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            allocated(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            allocated(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, which is `System`'s, with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        freed(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc`, and `new_size` is the caller's to check.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            allocated(new_size);
            freed(layout.size());
        }
        new
    }
}

/// Whether [`CountingAllocator`] is the global allocator: a measured allocation was counted.
pub fn counting() -> bool {
    peak_during(|| std::hint::black_box(Vec::<u8>::with_capacity(64)))
        .1
        .is_some()
}

/// Runs `work` and returns its result with the most bytes held at once while it ran, above what
/// was held when it started: `None` when [`CountingAllocator`] is not the global allocator.
/// Allocations by other threads meanwhile count too (the work's own thread pool is the point);
/// one measurement at a time.
pub fn peak_during<R>(work: impl FnOnce() -> R) -> (R, Option<u64>) {
    HELD.store(0, Relaxed);
    PEAK.store(0, Relaxed);
    COUNTED.store(0, Relaxed);
    MEASURING.store(true, SeqCst);
    let result = work();
    MEASURING.store(false, SeqCst);
    let peak = u64::try_from(PEAK.load(Relaxed)).unwrap_or(0);
    (result, (COUNTED.load(Relaxed) > 0).then_some(peak))
}

/// The bytes each further example adds, from the peaks measured on smaller batches
/// (`(examples, bytes)`, in increasing size): the slope of the line through the last two, or
/// for one probe its bytes per example (which counts its fixed part too: an upper bound).
/// `None` without probes or for probes out of order.
pub fn per_example(probes: &[(usize, u64)]) -> Option<u64> {
    match *probes {
        [.., (small, small_peak), (large, large_peak)] if small < large => {
            Some(large_peak.saturating_sub(small_peak) / (large - small) as u64)
        }
        [(only, peak)] if only > 0 => Some(peak.div_ceil(only as u64)),
        _ => None,
    }
}

/// What a batch of `batch` examples is expected to hold at once, from the peaks measured on
/// smaller batches ([`per_example`]): the largest probe's peak plus the slope for each further
/// example. `None` without a usable probe below `batch`.
pub fn extrapolate(probes: &[(usize, u64)], batch: usize) -> Option<u64> {
    let &(large, large_peak) = probes.last()?;
    if large >= batch {
        return None;
    }
    let slope = per_example(probes)?;
    Some(large_peak.saturating_add(slope.saturating_mul((batch - large) as u64)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_extrapolated_along_the_probes() {
        // 1 MB fixed (weights' gradients) + 300 kB an example.
        let peak = |n: u64| 1_000_000 + 300_000 * n;
        assert_eq!(
            extrapolate(&[(8, 1), (16, peak(16)), (32, peak(32))], 60_000),
            Some(peak(60_000))
        );
        assert_eq!(extrapolate(&[(16, peak(16)), (32, peak(32))], 32), None);
        assert_eq!(extrapolate(&[(32, peak(32)), (16, peak(16))], 100), None);
        assert_eq!(extrapolate(&[], 100), None);
        // One probe: its bytes per example, fixed part included (more than the line's).
        assert_eq!(per_example(&[(16, peak(16))]), Some(362_500));
        assert_eq!(
            extrapolate(&[(16, peak(16))], 32),
            Some(peak(16) + 16 * 362_500)
        );
        // A probe that allocated less at the larger size (a reused buffer) gives no growth.
        assert_eq!(extrapolate(&[(16, 500), (32, 400)], 100), Some(400));
    }

    #[test]
    fn without_the_allocator_nothing_is_measured() {
        // The unit tests run on the system allocator.
        let (len, peak) = peak_during(|| vec![0u8; 1 << 20].len());
        assert_eq!((len, peak), (1 << 20, None));
        assert!(!counting());
    }
}
