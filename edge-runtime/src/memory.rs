//! What a plan's tensors need and what memory the process can still get, so that a frame too
//! large for the machine is an error at load time instead of the kernel's OOM killer ending the
//! process without a word (Linux overcommits: the allocations succeed and the pages fail later).

use std::fs;
use std::path::Path;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::model::memory::eval_tmp_memory_usage;
use tract_onnx::tract_core::ops::konst::Const;

use crate::Error;

/// The most bytes the plan's tensors hold at once while it runs: at each step, the outputs of
/// the steps before it that a later step still reads, its inputs and its own outputs (tract frees
/// a tensor after its last reader). Weights and the ops' scratch buffers are not counted, so it
/// is a lower bound of what a run takes on top of the loaded model. `None` when a tensor's size
/// is not a number.
pub(crate) fn plan_tensor_bytes(plan: &TypedRunnableModel) -> Option<u64> {
    let usage = eval_tmp_memory_usage(plan.model(), plan.order_without_consts(), |node| {
        !node.op_is::<Const>()
    })
    .ok()?;
    usage
        .iter()
        .map(|(_, bytes)| bytes.to_i64().ok().and_then(|b| u64::try_from(b).ok()))
        .try_fold(0u64, |peak, bytes| Some(peak.max(bytes?)))
}

/// Refuses work that needs `needed` bytes when the process cannot get that much
/// ([`available_bytes`]); does nothing where the limits cannot be read.
///
/// # Errors
/// [`Error::Memory`], naming `what`.
pub(crate) fn ensure_fits(needed: u64, what: impl FnOnce() -> String) -> Result<(), Error> {
    match available_bytes() {
        Some(available) if needed > available => Err(Error::Memory {
            what: what(),
            needed,
            available,
        }),
        _ => Ok(()),
    }
}

/// Bytes this process can still allocate and use: the free memory and swap (`MemAvailable` +
/// `SwapFree` of `/proc/meminfo`), no more than is left under its cgroup's memory limit (v1 or
/// v2, with the swap) or its address-space limit (`ulimit -v`). `None` where none of these can
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
        let (mount, limit, usage) = match controllers {
            "" => (root.to_path_buf(), "memory.max", "memory.current"),
            c if c.split(',').any(|c| c == "memory") => (
                root.join(c),
                "memory.limit_in_bytes",
                "memory.usage_in_bytes",
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
                let left = limit.saturating_sub(usage);
                room = Some(room.map_or(left, |r| r.min(left)));
            }
            if dir == mount || !dir.pop() {
                break;
            }
        }
    }
    room
}

/// `bytes` in the unit that suits it, e.g. `1.5 GiB`, for messages.
pub(crate) fn human(bytes: u64) -> String {
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
