//! The process's own limits, read (and where allowed raised) at start: the
//! memory it may use, which sizes the default request byte budget, and the
//! open-file limit, which bounds how many connections it can hold.

use std::path::Path;

/// Bytes the process may use: its cgroup's limit (v2, then v1) when one is set,
/// else the machine's memory.
pub fn memory_limit() -> Option<u64> {
    cgroup_limit(Path::new("/sys/fs/cgroup")).or_else(physical_memory)
}

fn cgroup_limit(root: &Path) -> Option<u64> {
    let read = |p: &str| std::fs::read_to_string(root.join(p)).ok();
    // v2 says "max" for none; v1 says a huge number (about 2^63) for none.
    let v2 = read("memory.max").and_then(|s| s.trim().parse::<u64>().ok());
    let v1 = read("memory/memory.limit_in_bytes")
        .and_then(|s| s.trim().parse::<u64>().ok())
        .filter(|&n| n < 1 << 60);
    v2.or(v1)
}

fn physical_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib = info
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .ok()?;
    kib.checked_mul(1024)
}

/// The default of `--max-inflight-bytes`: a quarter of the memory limit, so that
/// the requests held (each about twice its charge at its peak: the body or
/// message and the tensors decoded from it) leave room for the models; 1 GiB
/// when no limit can be read.
pub fn default_inflight_bytes(memory: Option<u64>) -> usize {
    let bytes = memory.map_or(1 << 30, |m| m / 4);
    usize::try_from(bytes).unwrap_or(usize::MAX)
}

/// The default of `--max-connections`, per listener: a third of the open-file
/// limit less 256 (for model files, libraries and the other listeners), from 16
/// to 10,000; 1,024 when the limit is unknown.
pub fn default_max_connections(open_files: Option<u64>) -> usize {
    let per_listener = open_files.map_or(1024, |n| n.saturating_sub(256) / 3);
    usize::try_from(per_listener)
        .unwrap_or(usize::MAX)
        .clamp(16, 10_000)
}

/// Raises the soft open-file limit to the hard one; returns both (before, after).
pub fn raise_open_files() -> std::io::Result<(u64, u64)> {
    let (soft, hard) = rlimit::Resource::NOFILE.get()?;
    if soft < hard {
        rlimit::Resource::NOFILE.set(hard, hard)?;
    }
    Ok((soft, rlimit::Resource::NOFILE.get()?.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cgroup_v2_then_v1_limits() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(cgroup_limit(dir.path()), None);
        std::fs::create_dir(dir.path().join("memory")).unwrap();
        std::fs::write(
            dir.path().join("memory/memory.limit_in_bytes"),
            "9223372036854771712\n",
        )
        .unwrap();
        assert_eq!(cgroup_limit(dir.path()), None, "v1's 'no limit'");
        std::fs::write(
            dir.path().join("memory/memory.limit_in_bytes"),
            "2147483648\n",
        )
        .unwrap();
        assert_eq!(cgroup_limit(dir.path()), Some(2 << 30));
        std::fs::write(dir.path().join("memory.max"), "max\n").unwrap();
        assert_eq!(
            cgroup_limit(dir.path()),
            Some(2 << 30),
            "v2 without a limit"
        );
        std::fs::write(dir.path().join("memory.max"), "4294967296\n").unwrap();
        assert_eq!(cgroup_limit(dir.path()), Some(4 << 30));
    }

    #[test]
    fn the_default_budget_is_a_quarter_of_memory() {
        assert_eq!(default_inflight_bytes(Some(4 << 30)), 1 << 30);
        assert_eq!(default_inflight_bytes(None), 1 << 30);
        assert!(physical_memory().is_some_and(|m| m > 0));
    }

    #[test]
    fn connections_default_to_a_share_of_the_open_file_limit() {
        assert_eq!(default_max_connections(Some(1024)), 256);
        assert_eq!(default_max_connections(Some(1 << 20)), 10_000);
        assert_eq!(default_max_connections(Some(100)), 16);
        assert_eq!(default_max_connections(None), 1024);
    }

    #[test]
    fn the_open_file_limit_is_raised_to_the_hard_limit() {
        let (_, after) = raise_open_files().unwrap();
        assert_eq!(after, rlimit::Resource::NOFILE.get().unwrap().1);
    }
}
