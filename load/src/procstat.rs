//! The gateway's CPU time and memory, from /proc.

#[derive(Clone, Copy, Debug, Default)]
pub struct Stat {
    /// utime + stime, seconds.
    pub cpu: f64,
    /// stime alone: the kernel's share (syscalls, loopback delivery, scheduling).
    pub system: f64,
    pub rss_kb: u64,
    pub hwm_kb: u64,
    pub threads: u64,
}

pub fn read(pid: u32) -> Result<Stat, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("cannot read /proc/{pid}/stat (is the gateway running?): {e}"))?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let field = |i: usize| -> Result<f64, String> {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .ok_or_else(|| format!("unexpected /proc/{pid}/stat: {stat}"))
    };
    // Fields 14 and 15 of stat(5), counted here from field 3 (state).
    let ticks = clock_ticks();
    let cpu = (field(11)? + field(12)?) / ticks;
    let system = field(12)? / ticks;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("cannot read /proc/{pid}/status: {e}"))?;
    let kb = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    Ok(Stat {
        cpu,
        system,
        rss_kb: kb("VmRSS:"),
        hwm_kb: kb("VmHWM:"),
        threads: kb("Threads:"),
    })
}

/// USER_HZ; 100 on every Linux this runs on, `getconf` says otherwise.
fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}
