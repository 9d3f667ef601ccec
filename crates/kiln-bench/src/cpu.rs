//! CPU time: the client's own (getrusage, microsecond resolution) and a server's
//! whole process tree (user + system time of the process and every descendant,
//! from /proc), sampled before and after the measured window.

use std::collections::BTreeSet;

/// This process's user + system CPU seconds so far.
pub fn own_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return 0.0;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    secs(u.ru_utime) + secs(u.ru_stime)
}

/// CPU seconds of `pid` and its descendants so far; `None` when `pid` is gone.
pub fn tree_seconds(pid: u32) -> Option<f64> {
    // SAFETY: sysconf has no preconditions.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut seen = BTreeSet::new();
    let mut todo = vec![pid];
    let mut ticks = 0u64;
    let mut found = false;
    while let Some(p) = todo.pop() {
        if !seen.insert(p) {
            continue;
        }
        let Some(t) = process_ticks(p) else { continue };
        found |= p == pid;
        ticks += t;
        todo.extend(children(p));
    }
    found.then(|| ticks as f64 / tick)
}

/// utime + stime of one process (fields 14 and 15 of /proc/PID/stat, counted
/// after the command name, which may hold spaces and parentheses).
fn process_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_ticks(&stat)
}

fn parse_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // After the name, field 3 (state) is index 0: utime is field 14, stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The children of every thread of `pid`.
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_past_odd_command_names() {
        let line = "1234 (kiln (worker) 1) S 1 1234 1234 0 -1 4194560 1000 0 0 0 250 75 0 0 20 0 9 0 100 0 0";
        assert_eq!(parse_ticks(line), Some(325));
        assert_eq!(parse_ticks("garbage"), None);
    }

    #[test]
    fn this_process_and_its_tree_use_cpu() {
        let before = own_seconds();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(own_seconds() > before);
        assert!(tree_seconds(std::process::id()).is_some());
        assert_eq!(tree_seconds(u32::MAX), None);
    }
}
