//! Parsers for the `/proc` files the system stats monitor reads, from the
//! kernel's documented formats (Documentation/filesystems/proc.rst,
//! Documentation/admin-guide/iostats.rst). Pure functions over text: no I/O,
//! so tests feed them real files' contents.

/// `/proc/loadavg`: `0.09 0.08 0.03 3/92 2783`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LoadAvg {
    pub one: f64,
    pub five: f64,
    pub fifteen: f64,
    /// Runnable scheduling entities now (the numerator of `3/92`).
    pub runnable: u64,
}

pub fn loadavg(text: &str) -> Option<LoadAvg> {
    let mut f = text.split_ascii_whitespace();
    let one = f.next()?.parse().ok()?;
    let five = f.next()?.parse().ok()?;
    let fifteen = f.next()?.parse().ok()?;
    let runnable = f.next()?.split('/').next()?.parse().ok()?;
    Some(LoadAvg {
        one,
        five,
        fifteen,
        runnable,
    })
}

/// The time columns of a `cpu` line of `/proc/stat`, in the kernel's order,
/// in USER_HZ ticks.
pub const CPU_STATES: [&str; 10] = [
    "user",
    "nice",
    "system",
    "idle",
    "iowait",
    "irq",
    "softirq",
    "steal",
    "guest",
    "guest_nice",
];

/// One `cpu` / `cpuN` line: its name and up to ten tick counts (older
/// kernels have fewer columns; missing ones are 0).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CpuTimes {
    pub name: String,
    pub ticks: [u64; 10],
}

/// `/proc/stat`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stat {
    /// The `cpu` line (all CPUs).
    pub total: Option<CpuTimes>,
    /// The `cpuN` lines, in order.
    pub cpus: Vec<CpuTimes>,
    /// The first number of `intr`: every interrupt since boot.
    pub interrupts: Option<u64>,
    pub processes: Option<u64>,
    pub procs_running: Option<u64>,
    pub procs_blocked: Option<u64>,
    pub btime: Option<u64>,
}

pub fn stat(text: &str) -> Stat {
    let mut s = Stat::default();
    for line in text.lines() {
        let mut f = line.split_ascii_whitespace();
        let Some(key) = f.next() else { continue };
        if let Some(rest) = key.strip_prefix("cpu") {
            let mut t = CpuTimes {
                name: key.to_owned(),
                ticks: [0; 10],
            };
            for (slot, v) in t.ticks.iter_mut().zip(f) {
                *slot = v.parse().unwrap_or(0);
            }
            if rest.is_empty() {
                s.total = Some(t);
            } else {
                s.cpus.push(t);
            }
            continue;
        }
        let first = f.next().and_then(|v| v.parse().ok());
        match key {
            "intr" => s.interrupts = first,
            "processes" => s.processes = first,
            "procs_running" => s.procs_running = first,
            "procs_blocked" => s.procs_blocked = first,
            "btime" => s.btime = first,
            _ => {}
        }
    }
    s
}

/// One line of `/proc/diskstats` (fields 4–14 of iostats.rst; the discard
/// and flush fields of newer kernels are not used).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiskStats {
    pub major: u32,
    pub minor: u32,
    pub name: String,
    pub reads: u64,
    pub reads_merged: u64,
    pub sectors_read: u64,
    pub read_ms: u64,
    pub writes: u64,
    pub writes_merged: u64,
    pub sectors_written: u64,
    pub write_ms: u64,
    pub in_flight: u64,
    pub io_ms: u64,
    pub weighted_io_ms: u64,
}

pub fn diskstats(text: &str) -> Vec<DiskStats> {
    text.lines().filter_map(diskstats_line).collect()
}

fn diskstats_line(line: &str) -> Option<DiskStats> {
    let mut f = line.split_ascii_whitespace();
    let major = f.next()?.parse().ok()?;
    let minor = f.next()?.parse().ok()?;
    let name = f.next()?.to_owned();
    let mut n = [0u64; 11];
    for slot in &mut n {
        *slot = f.next()?.parse().ok()?;
    }
    Some(DiskStats {
        major,
        minor,
        name,
        reads: n[0],
        reads_merged: n[1],
        sectors_read: n[2],
        read_ms: n[3],
        writes: n[4],
        writes_merged: n[5],
        sectors_written: n[6],
        write_ms: n[7],
        in_flight: n[8],
        io_ms: n[9],
        weighted_io_ms: n[10],
    })
}

/// `/proc/meminfo`: `(key, bytes)` for every `kB` line (`HugePages_*`
/// counts, which have no unit, are left out).
pub fn meminfo(text: &str) -> Vec<(&str, u64)> {
    text.lines()
        .filter_map(|line| {
            let (key, rest) = line.split_once(':')?;
            let mut f = rest.split_ascii_whitespace();
            let v: u64 = f.next()?.parse().ok()?;
            match f.next() {
                Some("kB") => Some((key.trim(), v.saturating_mul(1024))),
                _ => None,
            }
        })
        .collect()
}

/// The sixteen counters of one interface in `/proc/net/dev`, in the
/// kernel's order: receive bytes, packets, errs, drop, fifo, frame,
/// compressed, multicast; transmit bytes, packets, errs, drop, fifo, colls,
/// carrier, compressed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetDev {
    pub name: String,
    pub counters: [u64; 16],
}

pub fn net_dev(text: &str) -> Vec<NetDev> {
    text.lines()
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let name = name.trim();
            if name.is_empty() || name.contains('|') {
                return None;
            }
            let mut counters = [0u64; 16];
            let mut f = rest.split_ascii_whitespace();
            for slot in &mut counters {
                *slot = f.next()?.parse().ok()?;
            }
            Some(NetDev {
                name: name.to_owned(),
                counters,
            })
        })
        .collect()
}

/// `/proc/uptime`: seconds since boot (the first number).
pub fn uptime(text: &str) -> Option<f64> {
    text.split_ascii_whitespace().next()?.parse().ok()
}

/// One line of `/proc/<pid>/mounts` (fstab format: octal escapes such as
/// `\040` for a space are decoded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub device: String,
    pub mount_point: String,
    pub fs_type: String,
    pub options: String,
}

pub fn mounts(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_ascii_whitespace();
            Some(Mount {
                device: unescape(f.next()?),
                mount_point: unescape(f.next()?),
                fs_type: f.next()?.to_owned(),
                options: f.next()?.to_owned(),
            })
        })
        .collect()
}

fn unescape(s: &str) -> String {
    if !s.contains('\\') {
        return s.to_owned();
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `/proc/modules`: the name of every loaded module (first column).
pub fn modules(text: &str) -> Vec<&str> {
    text.lines()
        .filter_map(|l| l.split_ascii_whitespace().next())
        .collect()
}
