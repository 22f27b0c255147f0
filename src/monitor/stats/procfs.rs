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

/// Decodes the octal escapes (`\040` for a space) of mount tables.
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

/// One line of `/proc/<pid>/mountinfo` (proc.rst 3.5): the fields the disk
/// collector needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountInfo {
    /// The root of the mount within its filesystem (`/` unless a bind mount).
    pub root: String,
    pub mount_point: String,
    /// Per-mount options (`rw,relatime`).
    pub options: String,
    pub fs_type: String,
    /// The mount source (`/dev/sda1`).
    pub source: String,
}

pub fn mountinfo(text: &str) -> Vec<MountInfo> {
    text.lines()
        .filter_map(|line| {
            let (head, tail) = line.split_once(" - ")?;
            let mut h = head.split_ascii_whitespace();
            let root = unescape(h.nth(3)?);
            let mount_point = unescape(h.next()?);
            let options = h.next()?.to_owned();
            let mut t = tail.split_ascii_whitespace();
            Some(MountInfo {
                root,
                mount_point,
                options,
                fs_type: t.next()?.to_owned(),
                source: unescape(t.next()?),
            })
        })
        .collect()
}

/// `/proc/filesystems`: the types that need a block device (those not
/// marked `nodev`).
pub fn block_filesystems(text: &str) -> Vec<&str> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_ascii_whitespace();
            match (f.next(), f.next()) {
                (Some("nodev"), _) => None,
                (Some(t), None) => Some(t),
                _ => None,
            }
        })
        .collect()
}

/// `/etc/os-release`: `KEY=value` pairs, quotes removed.
pub fn os_release(text: &str) -> Vec<(&str, &str)> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.trim().split_once('=')?;
            if k.starts_with('#') {
                return None;
            }
            Some((k, v.trim_matches(|c| c == '"' || c == '\'')))
        })
        .collect()
}

/// `/proc/cmdline`: its `key=value` words and bare flags (value "").
pub fn cmdline(text: &str) -> Vec<(&str, &str)> {
    text.split_ascii_whitespace()
        .map(|w| w.split_once('=').unwrap_or((w, "")))
        .collect()
}

/// `/proc/modules` lines with their taint flags: `(name, flags)`, flags
/// being the letters inside the trailing `(…)` (e.g. `"PO"`), if any.
pub fn module_taints(text: &str) -> Vec<(&str, &str)> {
    text.lines()
        .filter_map(|l| {
            let name = l.split_ascii_whitespace().next()?;
            let flags = l
                .rfind('(')
                .and_then(|i| l[i + 1..].split_once(')').map(|(f, _)| f))
                .unwrap_or("");
            Some((name, flags))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_kernels_formats() {
        let l = loadavg("0.09 0.08 0.03 3/92 2783\n").expect("loadavg");
        assert_eq!((l.one, l.fifteen, l.runnable), (0.09, 0.03, 3));
        let s = stat(
            "cpu  100 2 30 4000 5 6 7 8 9 10\ncpu0 50 1 15 2000 2 3 3 4 4 5\nintr 123 0 1\nctxt 9\nbtime 1700000000\nprocesses 4567\nprocs_running 2\nprocs_blocked 1\n",
        );
        assert_eq!(s.total.as_ref().map(|t| t.ticks[3]), Some(4000));
        assert_eq!(s.cpus.len(), 1);
        assert_eq!(
            (s.interrupts, s.processes, s.procs_running, s.procs_blocked),
            (Some(123), Some(4567), Some(2), Some(1))
        );
        let d = diskstats(
            " 259       0 nvme0n1 1000 20 30000 400 500 60 70000 800 0 900 1200 0 0 0 0 10 20\n",
        );
        assert_eq!(
            (
                d[0].name.as_str(),
                d[0].sectors_written,
                d[0].weighted_io_ms
            ),
            ("nvme0n1", 70000, 1200)
        );
        let m = meminfo(
            "MemTotal:       16314424 kB\nHugePages_Total:       0\nActive(anon):     123 kB\n",
        );
        assert_eq!(
            m,
            [("MemTotal", 16314424 * 1024), ("Active(anon)", 123 * 1024)]
        );
        let n = net_dev(
            "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo: 1000 10 0 0 0 0 0 0 1000 10 0 0 0 0 0 0\n  eth0: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16\n",
        );
        assert_eq!(n.len(), 2);
        assert_eq!(n[1].counters[15], 16);
    }

    #[test]
    fn parses_mountinfo_with_escapes_and_optional_fields() {
        let m = mountinfo(
            "29 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw\n\
             40 29 259:2 /var/lib/x /mnt/my\\040dir rw,nosuid master:3 shared:9 - ext4 /dev/nvme0n1p2 rw\n\
             41 29 0:5 / /dev rw - devtmpfs udev rw\n",
        );
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].root, "/var/lib/x");
        assert_eq!(m[1].mount_point, "/mnt/my dir");
        assert_eq!(
            (m[1].fs_type.as_str(), m[1].source.as_str()),
            ("ext4", "/dev/nvme0n1p2")
        );
        assert_eq!(
            block_filesystems("nodev\tsysfs\n\text4\nnodev\tproc\n\txfs\n"),
            ["ext4", "xfs"]
        );
    }

    #[test]
    fn parses_os_release_cmdline_and_module_taints() {
        let o = os_release(
            "NAME=\"Ubuntu\"\nID=ubuntu\nVERSION=\"22.04.4 LTS (Jammy Jellyfish)\"\n# x=y\n",
        );
        assert!(o.contains(&("VERSION", "22.04.4 LTS (Jammy Jellyfish)")));
        assert!(!o.iter().any(|(k, _)| k.starts_with('#')));
        assert_eq!(
            cmdline("ro quiet csm.enabled=1\n"),
            [("ro", ""), ("quiet", ""), ("csm.enabled", "1")]
        );
        let t = module_taints(
            "nvidia_uvm 1531904 0 - Live 0x0000000000000000 (PO)\next4 1007616 1 - Live 0x0000000000000000\n",
        );
        assert_eq!(t, [("nvidia_uvm", "PO"), ("ext4", "")]);
    }
}
