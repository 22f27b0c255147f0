//! Every metric upstream NPD's system stats monitor knows: its ID (the key
//! in `metricsConfigs`), collector, Prometheus type, HELP text and label
//! keys, exactly as upstream declares them (`pkg/systemstatsmonitor`,
//! `pkg/util/metrics`). The family name on `/metrics` is the metric's
//! `displayName`, sanitised as OpenCensus's Prometheus exporter does.

/// The config section a metric belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Group {
    Cpu,
    Disk,
    Host,
    Memory,
    OsFeature,
    Net,
}

impl Group {
    pub const ALL: [Group; 6] = [
        Self::Cpu,
        Self::Disk,
        Self::Host,
        Self::Memory,
        Self::OsFeature,
        Self::Net,
    ];

    /// The section's key in the config.
    pub fn key(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Disk => "disk",
            Self::Host => "host",
            Self::Memory => "memory",
            Self::OsFeature => "osFeature",
            Self::Net => "net",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// OpenCensus `LastValue`.
    Gauge,
    /// OpenCensus `Sum`.
    Counter,
}

/// One metric as upstream declares it.
#[derive(Debug)]
pub struct Def {
    pub id: &'static str,
    pub group: Group,
    pub kind: Kind,
    pub help: &'static str,
    pub labels: &'static [&'static str],
}

const fn def(
    id: &'static str,
    group: Group,
    kind: Kind,
    help: &'static str,
    labels: &'static [&'static str],
) -> Def {
    Def {
        id,
        group,
        kind,
        help,
        labels,
    }
}

use Group::{Cpu, Disk, Host, Memory, Net, OsFeature};
use Kind::{Counter, Gauge};

const DEV: &[&str] = &["device_name"];
const DEV_DIR: &[&str] = &["device_name", "direction"];
const STATE: &[&str] = &["state"];
const IFACE: &[&str] = &["interface_name"];

pub const CATALOG: &[Def] = &[
    def(
        "cpu/runnable_task_count",
        Cpu,
        Gauge,
        "The average number of runnable tasks in the run-queue during the last minute",
        &[],
    ),
    def(
        "cpu/usage_time",
        Cpu,
        Counter,
        "CPU usage, in seconds",
        STATE,
    ),
    def("cpu/load_1m", Cpu, Gauge, "CPU average load (1m)", &[]),
    def("cpu/load_5m", Cpu, Gauge, "CPU average load (5m)", &[]),
    def("cpu/load_15m", Cpu, Gauge, "CPU average load (15m)", &[]),
    def(
        "system/processes_total",
        Cpu,
        Counter,
        "Number of forks since boot.",
        &[],
    ),
    def(
        "system/procs_running",
        Cpu,
        Gauge,
        "Number of processes currently running.",
        &[],
    ),
    def(
        "system/procs_blocked",
        Cpu,
        Gauge,
        "Number of processes currently blocked.",
        &[],
    ),
    def(
        "system/interrupts_total",
        Cpu,
        Counter,
        "Total number of interrupts serviced (cumulative).",
        &[],
    ),
    def(
        "system/cpu_stat",
        Cpu,
        Counter,
        "Cumulative time each cpu spent in various stages.",
        &["cpu", "stage"],
    ),
    def(
        "disk/io_time",
        Disk,
        Counter,
        "The IO time spent on the disk, in ms",
        DEV,
    ),
    def(
        "disk/weighted_io",
        Disk,
        Counter,
        "The weighted IO on the disk, in ms",
        DEV,
    ),
    def(
        "disk/avg_queue_len",
        Disk,
        Gauge,
        "The average queue length on the disk",
        DEV,
    ),
    def(
        "disk/operation_count",
        Disk,
        Counter,
        "Disk operations count",
        DEV_DIR,
    ),
    def(
        "disk/merged_operation_count",
        Disk,
        Counter,
        "Disk merged operations count",
        DEV_DIR,
    ),
    def(
        "disk/operation_bytes_count",
        Disk,
        Counter,
        "Bytes transferred in disk operations",
        DEV_DIR,
    ),
    def(
        "disk/operation_time",
        Disk,
        Counter,
        "Time spent in disk operations, in ms",
        DEV_DIR,
    ),
    def(
        "disk/bytes_used",
        Disk,
        Gauge,
        "Disk bytes used, in Bytes",
        &["device_name", "fs_type", "mount_option", "state"],
    ),
    def(
        "disk/percent_used",
        Disk,
        Gauge,
        "Disk usage in percentage of total space",
        DEV,
    ),
    def(
        "host/uptime",
        Host,
        Gauge,
        "The uptime of the operating system",
        &["kernel_version", "os_version"],
    ),
    def(
        "memory/bytes_used",
        Memory,
        Gauge,
        "Memory usage by each memory state, in Bytes. Summing values of all states yields the total memory on the node.",
        STATE,
    ),
    def(
        "memory/anonymous_used",
        Memory,
        Gauge,
        "Anonymous memory usage, in Bytes. Summing values of all states yields the total anonymous memory used.",
        STATE,
    ),
    def(
        "memory/page_cache_used",
        Memory,
        Gauge,
        "Page cache memory usage, in Bytes. Summing values of all states yields the total anonymous memory used.",
        STATE,
    ),
    def(
        "memory/unevictable_used",
        Memory,
        Gauge,
        "Unevictable memory usage, in Bytes",
        &[],
    ),
    def(
        "memory/dirty_used",
        Memory,
        Gauge,
        "Dirty pages usage, in Bytes. Dirty means the memory is waiting to be written back to disk, and writeback means the memory is actively being written back to disk.",
        STATE,
    ),
    def(
        "memory/percent_used",
        Memory,
        Gauge,
        "Memory usage in percentage of total memory.",
        STATE,
    ),
    def(
        "system/os_feature",
        OsFeature,
        Gauge,
        "OS Features like GPU support, KTD kernel, third party modules as unknown modules. 1 if the feature is enabled and 0, if disabled.",
        &["os_feature", "value"],
    ),
    def(
        "net/rx_bytes",
        Net,
        Counter,
        "Cumulative count of bytes received.",
        IFACE,
    ),
    def(
        "net/rx_packets",
        Net,
        Counter,
        "Cumulative count of packets received.",
        IFACE,
    ),
    def(
        "net/rx_errors",
        Net,
        Counter,
        "Cumulative count of receive errors encountered.",
        IFACE,
    ),
    def(
        "net/rx_dropped",
        Net,
        Counter,
        "Cumulative count of packets dropped while receiving.",
        IFACE,
    ),
    def(
        "net/rx_fifo",
        Net,
        Counter,
        "Cumulative count of FIFO buffer errors.",
        IFACE,
    ),
    def(
        "net/rx_frame",
        Net,
        Counter,
        "Cumulative count of packet framing errors.",
        IFACE,
    ),
    def(
        "net/rx_compressed",
        Net,
        Counter,
        "Cumulative count of compressed packets received by the device driver.",
        IFACE,
    ),
    def(
        "net/rx_multicast",
        Net,
        Counter,
        "Cumulative count of multicast frames received by the device driver.",
        IFACE,
    ),
    def(
        "net/tx_bytes",
        Net,
        Counter,
        "Cumulative count of bytes transmitted.",
        IFACE,
    ),
    def(
        "net/tx_packets",
        Net,
        Counter,
        "Cumulative count of packets transmitted.",
        IFACE,
    ),
    def(
        "net/tx_errors",
        Net,
        Counter,
        "Cumulative count of transmit errors encountered.",
        IFACE,
    ),
    def(
        "net/tx_dropped",
        Net,
        Counter,
        "Cumulative count of packets dropped while transmitting.",
        IFACE,
    ),
    def(
        "net/tx_fifo",
        Net,
        Counter,
        "Cumulative count of FIFO buffer errors.",
        IFACE,
    ),
    def(
        "net/tx_collisions",
        Net,
        Counter,
        "Cumulative count of collisions detected on the interface.",
        IFACE,
    ),
    def(
        "net/tx_carrier",
        Net,
        Counter,
        "Cumulative count of carrier losses detected by the device driver.",
        IFACE,
    ),
    def(
        "net/tx_compressed",
        Net,
        Counter,
        "Cumulative count of compressed packets transmitted by the device driver.",
        IFACE,
    ),
];

/// The net metrics in `/proc/net/dev`'s column order.
pub const NET_COLUMNS: [&str; 16] = [
    "net/rx_bytes",
    "net/rx_packets",
    "net/rx_errors",
    "net/rx_dropped",
    "net/rx_fifo",
    "net/rx_frame",
    "net/rx_compressed",
    "net/rx_multicast",
    "net/tx_bytes",
    "net/tx_packets",
    "net/tx_errors",
    "net/tx_dropped",
    "net/tx_fifo",
    "net/tx_collisions",
    "net/tx_carrier",
    "net/tx_compressed",
];

/// The metric with this ID, if upstream knows it.
pub fn find(id: &str) -> Option<(usize, &'static Def)> {
    CATALOG.iter().enumerate().find(|(_, d)| d.id == id)
}

/// The IDs of a section, for did-you-mean help.
pub fn ids_of(group: Group) -> impl Iterator<Item = &'static str> {
    CATALOG
        .iter()
        .filter(move |d| d.group == group)
        .map(|d| d.id)
}

/// A `displayName` as a Prometheus family name, as OpenCensus's exporter
/// makes it: at most 100 bytes, every character that is not a letter or a
/// digit becomes `_`, and a name starting with a digit or `_` gets `key_` /
/// `key` in front.
pub fn sanitize(display: &str) -> String {
    let mut cut = display.len().min(100);
    while !display.is_char_boundary(cut) {
        cut -= 1;
    }
    let s: String = display[..cut]
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    match s.chars().next() {
        Some(c) if c.is_ascii_digit() => format!("key_{s}"),
        Some('_') => format!("key{s}"),
        _ => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_sanitised_as_opencensus_does() {
        assert_eq!(sanitize("cpu/load_1m"), "cpu_load_1m");
        assert_eq!(sanitize("test/key-1"), "test_key_1");
        assert_eq!(sanitize("0123"), "key_0123");
        assert_eq!(sanitize("/x"), "key_x");
        assert_eq!(sanitize(&"a".repeat(150)).len(), 100);
    }

    #[test]
    fn ids_are_unique_and_every_net_column_is_known() {
        for (i, d) in CATALOG.iter().enumerate() {
            assert_eq!(find(d.id).map(|(j, _)| j), Some(i), "{}", d.id);
        }
        for id in NET_COLUMNS {
            assert_eq!(find(id).map(|(_, d)| d.group), Some(Net), "{id}");
        }
        assert_eq!(CATALOG.len(), 43);
    }
}
