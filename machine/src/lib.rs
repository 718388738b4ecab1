//! What the binaries (`trainer`, `exporter`, `edge`) need from the machine they run on:
//!
//! - how much memory the process can still get ([`available_bytes`]), so that work too large
//!   for the machine is an error before it starts instead of the kernel's OOM killer ending the
//!   process without a word (Linux overcommits: the allocations succeed and the pages fail
//!   later). `edge` checks a plan's tensors against it, `trainer` a training batch's
//!   allocations;
//! - glibc's allocator settings ([`keep_freed_buffers`]);
//! - files written atomically, one or a set ([`write_file`], [`write_files`]): where the bytes
//!   go ([`destination`]: a link's file; a device or a pipe written into, not replaced), and the
//!   temporary files of writes killed before their rename ([`temporary_path`],
//!   [`remove_stale_temporaries`]);
//! - a command's output on stdout that ends the program quietly when the reader has gone
//!   ([`outln!`], [`print_stdout`]) instead of panicking as `println!` does.

use std::fs;
use std::path::Path;

mod files;

pub use files::{
    Destination, WriteError, check_output_folder, destination, parent_folder,
    remove_stale_temporaries, temporary_path, write_file, write_files,
};

/// Bytes this process can still allocate and use: the free memory and swap (`MemAvailable` +
/// `SwapFree` of `/proc/meminfo`), no more than is left under its cgroup's memory limit (v1 or
/// v2, with the swap; the group's inactive page cache counts as room) or its address-space
/// limit (`ulimit -v`). `None` where none of these can
/// be read (not Linux).
pub fn available_bytes() -> Option<u64> {
    let meminfo = fs::read_to_string("/proc/meminfo").ok();
    let swap_free = meminfo
        .as_deref()
        .and_then(|m| kib_field(m, "SwapFree"))
        .unwrap_or(0);
    let free = meminfo
        .as_deref()
        .and_then(|m| kib_field(m, "MemAvailable"))
        .map(|available| available.saturating_add(swap_free));
    let cgroup = fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|groups| cgroup_room(&groups, Path::new("/sys/fs/cgroup")))
        .map(|room| room.saturating_add(swap_free));
    let address_space = match (
        fs::read_to_string("/proc/self/limits"),
        fs::read_to_string("/proc/self/status"),
    ) {
        (Ok(limits), Ok(status)) => address_space_room(&limits, &status),
        _ => None,
    };
    [free, cgroup, address_space].into_iter().flatten().min()
}

/// `Key:   123 kB` in `/proc/meminfo` or `/proc/self/status`, in bytes.
fn kib_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(key)?.strip_prefix(':')?;
        let kib: u64 = value.trim().strip_suffix("kB")?.trim().parse().ok()?;
        Some(kib.saturating_mul(1024))
    })
}

/// What is left under the soft address-space limit (`/proc/self/limits`' "Max address space")
/// after the process's present size (`VmSize` in `/proc/self/status`); `None` when unlimited.
/// (Not the 3 GiB a 32-bit process can address: under qemu-user, as the armv7 tests run,
/// `VmSize` is the emulator's own.)
fn address_space_room(limits: &str, status: &str) -> Option<u64> {
    let soft: u64 = limits
        .lines()
        .find_map(|line| line.strip_prefix("Max address space"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(soft.saturating_sub(kib_field(status, "VmSize")?))
}

/// The least room under the memory limits of the process's cgroup and its ancestors
/// (`/proc/self/cgroup`'s text; the hierarchies mounted under `root`): cgroup v2's `memory.max`
/// less `memory.current`, or v1's `memory.limit_in_bytes` less `memory.usage_in_bytes`. `None`
/// when no limit is set or none can be read.
fn cgroup_room(groups: &str, root: &Path) -> Option<u64> {
    let mut room: Option<u64> = None;
    for line in groups.lines() {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next(), fields.next()?, fields.next()?);
        // The usage counts the group's page cache, of which the kernel reclaims the inactive
        // files' before it runs out (a container that has just built or copied data would
        // otherwise look full): that part is subtracted, as container tools do.
        let (mount, limit, usage, reclaimable) = match controllers {
            "" => (
                root.to_path_buf(),
                "memory.max",
                "memory.current",
                "inactive_file",
            ),
            c if c.split(',').any(|c| c == "memory") => (
                root.join(c),
                "memory.limit_in_bytes",
                "memory.usage_in_bytes",
                "total_inactive_file",
            ),
            _ => continue,
        };
        // The group and each of its ancestors up to the mount (inside a container the mount
        // is the container's own group, and the longer paths do not exist there).
        let mut dir = mount.join(path.trim_start_matches('/'));
        loop {
            let read = |file: &str| -> Option<u64> {
                fs::read_to_string(dir.join(file)).ok()?.trim().parse().ok()
            };
            if let (Some(limit), Some(usage)) = (read(limit), read(usage)) {
                let cache = fs::read_to_string(dir.join("memory.stat"))
                    .ok()
                    .and_then(|stat| stat_field(&stat, reclaimable))
                    .unwrap_or(0);
                let left = limit.saturating_sub(usage.saturating_sub(cache));
                room = Some(room.map_or(left, |r| r.min(left)));
            }
            if dir == mount || !dir.pop() {
                break;
            }
        }
    }
    room
}

/// `key value` in a cgroup's `memory.stat`.
fn stat_field(stat: &str, key: &str) -> Option<u64> {
    stat.lines().find_map(|line| {
        let (name, value) = line.split_once(' ')?;
        (name == key).then(|| value.trim().parse().ok())?
    })
}

/// `bytes` in the unit that suits it, e.g. `1.5 GiB`, for messages.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["bytes", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Tells glibc's allocator to keep freed large buffers for reuse instead of returning them to
/// the kernel; call it first thing in `main`. Burn's `flex` backend allocates every activation
/// and gradient of a training step afresh (a few MB each at batch 128), and tract a
/// convolution's big per-call buffers (im2col patches: ~30 MB for a batch of 64 digits, a few MB
/// for a 640x480 frame). By default glibc maps each with `mmap` and unmaps it on free, so every
/// step or call page-faults its buffers in again (~8% of a conv AE training step under `perf`,
/// 6.6x more page faults; a quarter of the time of a batch-64 decode). Kept, they are reused:
/// the process holds on to its peak heap instead. BENCHMARKS.md has the before/after figures.
/// Does nothing on other C libraries.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn keep_freed_buffers() {
    // SAFETY: `mallopt` only sets allocator parameters (glibc takes its arena locks to do so).
    // The trim threshold is only set once the mmap threshold was accepted (setting either turns
    // off glibc's adaptive thresholds; one without the other would be worse than the defaults).
    unsafe {
        if libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 20) == 1 {
            libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 20);
        }
    }
}

/// Tells glibc's allocator to keep freed large buffers (see the Linux build's documentation);
/// nothing to do on other C libraries.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn keep_freed_buffers() {}

/// Writes a command's output to stdout. Where the reader is gone (a closed pipe: `| head`) the
/// process ends quietly with status 141, as a C tool ends on SIGPIPE (Rust ignores the signal,
/// and `println!` panics on the error instead); any other write error (a full disk) is said on
/// stderr, with status 1. Every file a command writes is complete before it says so, so ending
/// here loses nothing written. For binaries: use [`outln!`] / [`out!`].
pub fn print_stdout(args: std::fmt::Arguments) {
    use std::io::Write;
    if let Err(e) = std::io::stdout().lock().write_fmt(args) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(141);
        }
        print_stderr(format_args!("Error: writing to stdout: {e}\n"));
        std::process::exit(1);
    }
}

/// Writes progress and diagnostics to stderr, ignoring a failure to: a closed or full stderr
/// (`2>&1 | head`, a log file on a full disk) must not stop a command whose work and output do
/// not depend on it (`eprintln!` panics there, which had ended trainings mid-run). For
/// binaries: use [`errln!`] / [`err!`].
pub fn print_stderr(args: std::fmt::Arguments) {
    use std::io::Write;
    let _ = std::io::stderr().lock().write_fmt(args);
}

/// `println!` for a command's output, through [`print_stdout`]: no panic when stdout is gone.
#[macro_export]
macro_rules! outln {
    () => {
        $crate::print_stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::print_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` for a command's output, through [`print_stdout`]: no panic when stdout is gone.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::print_stdout(format_args!($($arg)*))
    };
}

/// `eprintln!` for progress and diagnostics, through [`print_stderr`]: no panic when stderr is
/// gone.
#[macro_export]
macro_rules! errln {
    () => {
        $crate::print_stderr(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::print_stderr(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `eprint!` through [`print_stderr`]: no panic when stderr is gone.
#[macro_export]
macro_rules! err {
    ($($arg:tt)*) => {
        $crate::print_stderr(format_args!($($arg)*))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kib_fields_are_read_in_bytes() {
        let text = "MemTotal:       24576000 kB\nMemAvailable:    1000 kB\nSwapFree:  0 kB\n";
        assert_eq!(kib_field(text, "MemAvailable"), Some(1_024_000));
        assert_eq!(kib_field(text, "SwapFree"), Some(0));
        assert_eq!(kib_field(text, "Mem"), None);
        assert_eq!(kib_field(text, "Cached"), None);
    }

    #[test]
    fn the_address_space_limit_leaves_what_the_process_does_not_use() {
        let status = "Name:\tedge\nVmPeak:\t  300000 kB\nVmSize:\t  100000 kB\n";
        let limited = "Limit  Soft Limit  Hard Limit  Units\n\
                       Max address space         4096000000           unlimited            bytes\n";
        assert_eq!(
            address_space_room(limited, status),
            Some(4_096_000_000 - 102_400_000)
        );
        let unlimited =
            "Max address space         unlimited            unlimited            bytes\n";
        assert_eq!(address_space_room(unlimited, status), None);
    }

    #[test]
    fn cgroup_limits_are_read_up_the_hierarchy() {
        let root = tempfile::tempdir().expect("temp dir");
        let write = |path: &str, text: &str| {
            let path = root.path().join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        };
        // v2: the service's parent slice has the tighter limit.
        write("system.slice/memory.max", "1000000\n");
        write("system.slice/memory.current", "400000\n");
        write("system.slice/edge.service/memory.max", "max\n");
        write("system.slice/edge.service/memory.current", "100000\n");
        assert_eq!(
            cgroup_room("0::/system.slice/edge.service\n", root.path()),
            Some(600_000)
        );
        // The inactive page cache counts as room: the kernel reclaims it first.
        write(
            "system.slice/edge.service/memory.stat",
            "anon 5\ninactive_file 50000\n",
        );
        write(
            "system.slice/memory.stat",
            "inactive_file 300000\nactive_file 7\n",
        );
        assert_eq!(
            cgroup_room("0::/system.slice/edge.service\n", root.path()),
            Some(900_000)
        );
        // v1, the group's path not under the mount (a container's namespace): the mount's own.
        write("memory/memory.limit_in_bytes", "5000\n");
        write("memory/memory.usage_in_bytes", "1000\n");
        assert_eq!(
            cgroup_room("4:memory:/elsewhere/abc\n1:cpu:/\n", root.path()),
            Some(4000)
        );
        assert_eq!(cgroup_room("1:cpu:/\n", root.path()), None);
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human(512), "512 bytes");
        assert_eq!(human(3 * 1024 * 1024 / 2), "1.5 MiB");
        assert_eq!(human(17 << 30), "17.0 GiB");
    }
}
