//! Linux process introspection: RSS, CPU time, open file descriptors and
//! `RLIMIT_NOFILE`, for the loadgen itself and for the server under test
//! (by pid, through `/proc`).

use serde::Serialize;

/// Resident set size of `pid` in KiB (`VmRSS` of `/proc/PID/status`).
pub fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Number of open file descriptors of `pid` (entries of `/proc/PID/fd`).
pub fn open_fds(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

/// Soft "Max open files" limit of `pid` (from `/proc/PID/limits`).
pub fn max_open_files(pid: u32) -> Option<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l["Max open files".len()..].split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Number of threads of `pid`.
pub fn threads(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
}

/// User + system CPU time consumed so far by `pid`, in seconds
/// (`utime + stime` of `/proc/PID/stat`).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces: skip past its ')'.
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as f64 } else { 100.0 };
    Some((utime + stime) as f64 / hz)
}

/// Busy CPU time of the whole machine so far, in seconds summed over all
/// cores (`/proc/stat`: everything but idle and iowait).
pub fn machine_busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal [guest guest_nice]
    let busy = v.get(0..3)?.iter().sum::<u64>() + v.get(5..8)?.iter().sum::<u64>();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as f64 } else { 100.0 };
    Some(busy as f64 / hz)
}

/// Cores used over a window by processes other than the server and the
/// loadgen: a noise indicator (another build running on the machine).
pub fn others_cores(
    machine: (Option<f64>, Option<f64>),
    server: Option<&CpuUsage>,
    loadgen: &CpuUsage,
    window_s: f64,
) -> Option<f64> {
    let (Some(a), Some(b)) = machine else {
        return None;
    };
    if window_s <= 0.0 {
        return None;
    }
    let total = (b - a) / window_s;
    Some((total - server.map_or(0.0, |c| c.cores) - loadgen.cores).max(0.0))
}

/// User + system CPU time consumed so far by this process, in seconds.
pub fn self_cpu_seconds() -> f64 {
    // SAFETY: an all-zero rusage is a valid out-parameter for getrusage.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a rusage; RUSAGE_SELF is always valid.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Outcome of [`raise_nofile_limit`].
#[derive(Debug, Clone, Copy, Serialize)]
pub struct NofileLimit {
    /// Soft limit before.
    pub before: u64,
    /// Soft limit after.
    pub after: u64,
}

/// Raises this process's `RLIMIT_NOFILE` soft limit to at least `wanted`:
/// up to the hard limit, and past it when permitted (root). Returns the
/// limits before and after; never fails hard (the caller reports).
pub fn raise_nofile_limit(wanted: u64) -> NofileLimit {
    // SAFETY: an all-zero rlimit is a valid out-parameter.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer; RLIMIT_NOFILE is a valid resource.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return NofileLimit {
            before: 0,
            after: 0,
        };
    }
    let before = lim.rlim_cur;
    if lim.rlim_cur >= wanted {
        return NofileLimit {
            before,
            after: before,
        };
    }
    // First try to lift the hard limit too (works as root).
    if lim.rlim_max < wanted {
        let raised = libc::rlimit {
            rlim_cur: wanted,
            rlim_max: wanted,
        };
        // SAFETY: valid pointer to an initialized rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return NofileLimit {
                before,
                after: wanted,
            };
        }
    }
    let target = wanted.min(lim.rlim_max);
    let raised = libc::rlimit {
        rlim_cur: target,
        rlim_max: lim.rlim_max,
    };
    // SAFETY: valid pointer to an initialized rlimit.
    let ok = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0;
    NofileLimit {
        before,
        after: if ok { target } else { before },
    }
}

/// CPU used by a process over a measurement window.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CpuUsage {
    /// CPU seconds (user + system) consumed in the window.
    pub cpu_seconds: f64,
    /// Average number of cores busy: `cpu_seconds / window`.
    pub cores: f64,
    /// CPU microseconds per operation (request or delivery) in the window.
    pub us_per_op: f64,
}

impl CpuUsage {
    /// Builds the usage from two CPU-time samples.
    pub fn from_samples(before: f64, after: f64, window_s: f64, ops: u64) -> Self {
        let cpu = (after - before).max(0.0);
        CpuUsage {
            cpu_seconds: cpu,
            cores: if window_s > 0.0 { cpu / window_s } else { 0.0 },
            us_per_op: if ops > 0 { cpu * 1e6 / ops as f64 } else { 0.0 },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let pid = std::process::id();
        assert!(vm_rss_kib(pid).unwrap() > 0);
        assert!(open_fds(pid).unwrap() > 0);
        assert!(max_open_files(pid).unwrap() > 0);
        assert!(threads(pid).unwrap() >= 1);
        assert!(cpu_seconds(pid).unwrap() >= 0.0);
        assert!(self_cpu_seconds() >= 0.0);
        assert!(machine_busy_seconds().unwrap() > 0.0);
    }

    #[test]
    fn nofile_never_lowers() {
        let l = raise_nofile_limit(256);
        assert!(l.after >= l.before.min(256));
    }
}
