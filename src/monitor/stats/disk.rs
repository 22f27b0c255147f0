//! The disk collector: `/proc/diskstats` for the devices the config picks,
//! and `statvfs` of each block-device filesystem in `/proc/1/mountinfo`.
//!
//! Devices, as upstream picks them: with `includeRootBlk`, the whole disks
//! `lsblk -d -n -o NAME` lists; with `includeAllAttachedBlk`, every mounted
//! partition; with neither, every line of `/proc/diskstats`. Lines whose
//! counters are all zero are skipped. lsblk is the one tool run (as
//! upstream runs it, killed at `lsblkTimeout`), and only when the set of
//! `/sys/block` entries changed since its last answer; where it cannot
//! run, the disks are read from `/sys/block` as lsblk reads them (non-empty,
//! not RAM disks).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::collect::Samples;
use super::procfs::{self, DiskStats, MountInfo};
use crate::config::stats::DiskOptions;

/// Bytes per `/proc/diskstats` sector, whatever the device's own size.
const SECTOR: u64 = 512;

/// What the disk collector keeps between collections.
#[derive(Debug, Default)]
pub struct DiskState {
    /// `/sys/block`'s entries when lsblk last answered, and its answer.
    lsblk: Option<(Vec<String>, Vec<String>)>,
    /// Each device's weighted I/O time and when it was read, for the
    /// average queue length.
    last: HashMap<String, (Instant, u64)>,
    lsblk_failed: bool,
}

/// Where the collector reads.
#[derive(Debug)]
pub struct DiskPaths<'a> {
    pub proc: &'a Path,
    pub sys: &'a Path,
    /// Mount points are looked up under this root.
    pub root: &'a Path,
}

impl DiskState {
    /// The whole disks lsblk lists (`/sys/block` standing in where it
    /// cannot run).
    fn root_disks(&mut self, sys: &Path, timeout: Duration) -> Vec<String> {
        let mut entries: Vec<String> = std::fs::read_dir(sys.join("block"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        entries.sort();
        if let Some((seen, names)) = &self.lsblk
            && *seen == entries
        {
            return names.clone();
        }
        let mut cmd = Command::new("lsblk");
        cmd.args(["-d", "-n", "-o", "NAME"]);
        match crate::helpers::combined_output(cmd, timeout) {
            Ok(out) => {
                let names: Vec<String> = out
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned)
                    .collect();
                self.lsblk_failed = false;
                self.lsblk = Some((entries, names.clone()));
                names
            }
            Err(e) => {
                if !self.lsblk_failed {
                    tracing::warn!(
                        "lsblk -d -n -o NAME: {e}; reading whole disks from {}/block instead",
                        sys.display()
                    );
                    self.lsblk_failed = true;
                }
                entries
                    .into_iter()
                    .filter(|n| listed_by_lsblk(&sys.join("block").join(n)))
                    .collect()
            }
        }
    }

    pub fn collect(&mut self, opts: &DiskOptions, paths: &DiskPaths<'_>, s: &mut Samples<'_>) {
        let wants_usage = s.wants("disk/bytes_used") || s.wants("disk/percent_used");
        // mountinfo is read only for what needs it.
        let mounts = if wants_usage || opts.include_all_attached_blk {
            partitions(paths.proc)
        } else {
            Vec::new()
        };
        if wants_usage {
            usage(&mounts, paths.root, s);
        }
        let Ok(text) = std::fs::read_to_string(paths.proc.join("diskstats")) else {
            return;
        };
        let mut devices: Option<HashSet<String>> = None;
        if opts.include_root_blk {
            devices
                .get_or_insert_default()
                .extend(self.root_disks(paths.sys, opts.lsblk_timeout));
        }
        if opts.include_all_attached_blk {
            devices.get_or_insert_default().extend(
                mounts
                    .iter()
                    .map(|m| m.source.rsplit('/').next().unwrap_or(&m.source).to_owned()),
            );
        }
        let now = Instant::now();
        let mut seen = HashMap::new();
        for d in procfs::diskstats(&text) {
            if devices.as_ref().is_some_and(|set| !set.contains(&d.name)) || all_zero(&d) {
                continue;
            }
            if let Some(&(at, weighted)) = self.last.get(&d.name) {
                let ms = now.duration_since(at).as_secs_f64() * 1000.0;
                if ms > 0.0 {
                    let delta = d.weighted_io_ms.saturating_sub(weighted) as f64;
                    s.push("disk/avg_queue_len", dev(&d.name), delta / ms);
                }
            }
            seen.insert(d.name.clone(), (now, d.weighted_io_ms));
            io(&d, s);
        }
        self.last = seen;
    }
}

fn dev(name: &str) -> Vec<(&'static str, String)> {
    vec![("device_name", name.to_owned())]
}

fn all_zero(d: &DiskStats) -> bool {
    [
        d.reads,
        d.reads_merged,
        d.sectors_read,
        d.read_ms,
        d.writes,
        d.writes_merged,
        d.sectors_written,
        d.write_ms,
        d.in_flight,
        d.io_ms,
        d.weighted_io_ms,
    ]
    .iter()
    .all(|&v| v == 0)
}

fn io(d: &DiskStats, s: &mut Samples<'_>) {
    s.push("disk/io_time", dev(&d.name), d.io_ms as f64);
    s.push("disk/weighted_io", dev(&d.name), d.weighted_io_ms as f64);
    let both = |read: u64, write: u64| [("read", read), ("write", write)];
    for (id, pairs) in [
        ("disk/operation_count", both(d.reads, d.writes)),
        (
            "disk/merged_operation_count",
            both(d.reads_merged, d.writes_merged),
        ),
        (
            "disk/operation_bytes_count",
            both(d.sectors_read * SECTOR, d.sectors_written * SECTOR),
        ),
        ("disk/operation_time", both(d.read_ms, d.write_ms)),
    ] {
        for (direction, v) in pairs {
            s.push(
                id,
                vec![
                    ("device_name", d.name.clone()),
                    ("direction", direction.to_owned()),
                ],
                v as f64,
            );
        }
    }
}

/// Whether lsblk (without `-a`) lists the `/sys/block` entry at `dir`:
/// it has sectors and is not a RAM disk (major 1).
fn listed_by_lsblk(dir: &Path) -> bool {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    let size: u64 = read("size").trim().parse().unwrap_or(0);
    let major = read("dev")
        .split(':')
        .next()
        .unwrap_or("")
        .trim()
        .to_owned();
    size > 0 && major != "1"
}

/// The mounted block-device filesystems, first mount of each device
/// (gopsutil's `Partitions(false)`, which upstream uses): types not
/// `nodev` in `/proc/filesystems`, source not `none`.
pub fn partitions(proc: &Path) -> Vec<MountInfo> {
    let text = std::fs::read_to_string(proc.join("1/mountinfo"))
        .or_else(|_| std::fs::read_to_string(proc.join("self/mountinfo")))
        .unwrap_or_default();
    let fs = std::fs::read_to_string(proc.join("filesystems")).unwrap_or_default();
    let block = procfs::block_filesystems(&fs);
    let mut seen = HashSet::new();
    procfs::mountinfo(&text)
        .into_iter()
        .filter(|m| {
            m.source != "none"
                && block.contains(&m.fs_type.as_str())
                && seen.insert(m.source.clone())
        })
        .collect()
}

/// `disk/bytes_used` and `disk/percent_used` of each partition.
fn usage(mounts: &[MountInfo], root: &Path, s: &mut Samples<'_>) {
    for m in mounts {
        let path: PathBuf = root.join(m.mount_point.trim_start_matches('/'));
        let Ok(st) = rustix::fs::statvfs(&path) else {
            continue;
        };
        let bsize = st.f_frsize.max(1);
        let free = st.f_bavail.saturating_mul(bsize);
        let used = st.f_blocks.saturating_sub(st.f_bfree).saturating_mul(bsize);
        let device = m
            .source
            .strip_prefix("/dev/")
            .unwrap_or(&m.source)
            .to_owned();
        let mut options = m.options.clone();
        if m.root != "/" {
            options.push_str(",bind");
        }
        for (state, v) in [("free", free), ("used", used)] {
            s.push(
                "disk/bytes_used",
                vec![
                    ("device_name", device.clone()),
                    ("fs_type", m.fs_type.clone()),
                    ("mount_option", options.clone()),
                    ("state", state.to_owned()),
                ],
                v as f64,
            );
        }
        if used + free > 0 {
            s.push(
                "disk/percent_used",
                vec![("device_name", device)],
                100.0 * used as f64 / (used + free) as f64,
            );
        }
    }
}
