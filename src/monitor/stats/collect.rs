//! The cpu, memory, host, OS-feature and net collectors: one reading of the
//! node's files into samples, by metric ID, as upstream's collectors record
//! them (`pkg/systemstatsmonitor/*_collector*.go`). Disk is in
//! [`super::disk`].

use super::procfs;

/// `USER_HZ`: the unit of `/proc/stat` times (100 on every Linux ABI).
pub const USER_HZ: f64 = 100.0;

/// One value of one metric, with its labels (in any order).
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub id: &'static str,
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
}

/// Where samples go; `wanted` are the IDs the config exports, so nothing
/// is kept for a metric nobody asked for.
#[derive(Debug)]
pub struct Samples<'a> {
    pub wanted: &'a [&'static str],
    pub out: Vec<Sample>,
}

impl Samples<'_> {
    pub fn push(&mut self, id: &'static str, labels: Vec<(&'static str, String)>, value: f64) {
        if self.wants(id) {
            self.out.push(Sample { id, labels, value });
        }
    }

    pub fn wants(&self, id: &str) -> bool {
        self.wanted.contains(&id)
    }
}

fn label(k: &'static str, v: impl Into<String>) -> (&'static str, String) {
    (k, v.into())
}

/// `cpu/*` and `system/*` from `/proc/loadavg` and `/proc/stat`.
pub fn cpu(loadavg: Option<&str>, stat: Option<&str>, s: &mut Samples<'_>) {
    if let Some(l) = loadavg.and_then(procfs::loadavg) {
        // Upstream reports the 1-minute load as the run-queue average.
        s.push("cpu/runnable_task_count", Vec::new(), l.one);
        s.push("cpu/load_1m", Vec::new(), l.one);
        s.push("cpu/load_5m", Vec::new(), l.five);
        s.push("cpu/load_15m", Vec::new(), l.fifteen);
    }
    let Some(st) = stat.map(procfs::stat) else {
        return;
    };
    if let Some(total) = &st.total {
        // Upstream: the `cpu` line's ticks (USER_HZ), by state.
        for (state, i) in [
            ("user", 0),
            ("system", 2),
            ("idle", 3),
            ("nice", 1),
            ("iowait", 4),
            ("irq", 5),
            ("softirq", 6),
            ("steal", 7),
            ("guest", 8),
            ("guest_nice", 9),
        ] {
            s.push(
                "cpu/usage_time",
                vec![label("state", state)],
                total.ticks[i] as f64,
            );
        }
    }
    if s.wants("system/cpu_stat") {
        const STAGES: [&str; 10] = [
            "user",
            "nice",
            "system",
            "idle",
            "iowait",
            "iRQ",
            "softIRQ",
            "steal",
            "guest",
            "guestNice",
        ];
        for cpu in &st.cpus {
            for (stage, ticks) in STAGES.iter().zip(cpu.ticks) {
                s.push(
                    "system/cpu_stat",
                    vec![label("cpu", &cpu.name), label("stage", *stage)],
                    ticks as f64 / USER_HZ,
                );
            }
        }
    }
    for (id, v) in [
        ("system/processes_total", st.processes),
        ("system/procs_running", st.procs_running),
        ("system/procs_blocked", st.procs_blocked),
        ("system/interrupts_total", st.interrupts),
    ] {
        if let Some(v) = v {
            s.push(id, Vec::new(), v as f64);
        }
    }
}

/// `memory/*` from `/proc/meminfo`.
pub fn memory(meminfo: &str, s: &mut Samples<'_>) {
    let m = procfs::meminfo(meminfo);
    let get = |k: &str| m.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
    let (Some(total), Some(free)) = (get("MemTotal"), get("MemFree")) else {
        return;
    };
    let buffers = get("Buffers").unwrap_or(0);
    let cached = get("Cached").unwrap_or(0);
    let slab = get("Slab").unwrap_or(0);
    let used = total.saturating_sub(free + buffers + cached + slab);
    for (state, v) in [
        ("free", free),
        ("buffered", buffers),
        ("cached", cached),
        ("slab", slab),
        ("used", used),
    ] {
        s.push("memory/bytes_used", vec![label("state", state)], v as f64);
    }
    if total > 0 {
        s.push(
            "memory/percent_used",
            vec![label("state", "used")],
            100.0 * used as f64 / total as f64,
        );
    }
    for (id, pairs) in [
        (
            "memory/anonymous_used",
            [("active", "Active(anon)"), ("inactive", "Inactive(anon)")],
        ),
        (
            "memory/page_cache_used",
            [("active", "Active(file)"), ("inactive", "Inactive(file)")],
        ),
        (
            "memory/dirty_used",
            [("dirty", "Dirty"), ("writeback", "Writeback")],
        ),
    ] {
        for (state, key) in pairs {
            if let Some(v) = get(key) {
                s.push(id, vec![label("state", state)], v as f64);
            }
        }
    }
    if let Some(v) = get("Unevictable") {
        s.push("memory/unevictable_used", Vec::new(), v as f64);
    }
}

/// `"<ID> <VERSION>"`, or for Container-Optimized OS
/// `"cos <VERSION>-<BUILD_ID>"`, as upstream's `GetOSVersion` makes it
/// (upstream refuses IDs it does not list; any ID is taken here).
pub fn os_version(os_release: &str) -> Option<String> {
    let kv = procfs::os_release(os_release);
    let get = |k: &str| kv.iter().rev().find(|(key, _)| *key == k).map(|(_, v)| *v);
    let id = get("ID")?;
    let version = get("VERSION").unwrap_or("");
    Some(if id == "cos" {
        format!("{id} {version}-{}", get("BUILD_ID").unwrap_or(""))
    } else {
        format!("{id} {version}")
    })
}

/// `host/uptime`: whole seconds since boot, labelled with the kernel
/// release and OS version.
pub fn host(uptime: &str, kernel: &str, os_version: &str, s: &mut Samples<'_>) {
    if let Some(up) = procfs::uptime(uptime) {
        s.push(
            "host/uptime",
            vec![
                label("kernel_version", kernel.trim()),
                label("os_version", os_version),
            ],
            up.trunc(),
        );
    }
}

/// `system/os_feature`'s KTD, UnifiedCgroupHierarchy and
/// KernelModuleIntegrity, from `/proc/cmdline`.
pub fn os_feature_cmdline(cmdline: &str, s: &mut Samples<'_>) {
    let args = procfs::cmdline(cmdline);
    let int = |k: &str| {
        args.iter()
            .rev()
            .find(|(key, _)| *key == k)
            .and_then(|(_, v)| v.parse::<i64>().ok())
            .unwrap_or(0)
    };
    let feature = |name: &str, value: &str| vec![label("os_feature", name), label("value", value)];
    s.push(
        "system/os_feature",
        feature("KTD", ""),
        int("csm.enabled") as f64,
    );
    s.push(
        "system/os_feature",
        feature("UnifiedCgroupHierarchy", ""),
        int("systemd.unified_cgroup_hierarchy") as f64,
    );
    let integrity = int("module.sig_enforce") == 1 && int("loadpin.enabled") == 1;
    s.push(
        "system/os_feature",
        feature("KernelModuleIntegrity", ""),
        f64::from(u8::from(integrity)),
    );
}

/// `system/os_feature`'s GPUSupport and UnknownModules, from
/// `/proc/modules`; `known`: the known-modules list (empty when it could
/// not be read, so every out-of-tree or proprietary module counts as
/// unknown, as upstream's).
pub fn os_feature_modules(modules: &str, known: &[String], s: &mut Samples<'_>) {
    let feature = |name: &str, value: &str| vec![label("os_feature", name), label("value", value)];
    let mut gpu = false;
    let mut unknown: Vec<&str> = Vec::new();
    for (name, flags) in procfs::module_taints(modules) {
        if name.contains("nvidia") {
            gpu = true;
        } else if (flags.contains('O') || flags.contains('P')) && !known.iter().any(|k| k == name) {
            unknown.push(name);
        }
    }
    s.push(
        "system/os_feature",
        feature("UnknownModules", &unknown.join(",")),
        f64::from(u8::from(!unknown.is_empty())),
    );
    s.push(
        "system/os_feature",
        feature("GPUSupport", ""),
        f64::from(u8::from(gpu)),
    );
}

/// The module names of a known-modules file (`[{"moduleName": …}, …]`).
pub fn known_modules(text: &str) -> Result<Vec<String>, serde_json::Error> {
    #[derive(serde::Deserialize)]
    struct Module {
        #[serde(rename = "moduleName", default)]
        module_name: String,
    }
    let list: Vec<Module> = serde_json::from_str(text)?;
    Ok(list.into_iter().map(|m| m.module_name).collect())
}

/// `net/*` from `/proc/net/dev`, every interface but those `exclude`
/// matches.
pub fn net(net_dev: &str, exclude: Option<&regex::Regex>, s: &mut Samples<'_>) {
    for dev in procfs::net_dev(net_dev) {
        if exclude.is_some_and(|re| re.is_match(&dev.name)) {
            continue;
        }
        for (id, v) in super::catalog::NET_COLUMNS.iter().zip(dev.counters) {
            s.push(id, vec![label("interface_name", &dev.name)], v as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(f: impl FnOnce(&mut Samples<'_>)) -> Vec<Sample> {
        let every: Vec<&'static str> = super::super::catalog::CATALOG
            .iter()
            .map(|d| d.id)
            .collect();
        let mut s = Samples {
            wanted: &every,
            out: Vec::new(),
        };
        f(&mut s);
        s.out
    }

    fn value(samples: &[Sample], id: &str, labels: &[(&str, &str)]) -> Option<f64> {
        samples
            .iter()
            .find(|s| {
                s.id == id
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|s| s.value)
    }

    #[test]
    fn cpu_reads_load_ticks_and_per_cpu_seconds() {
        let s = all(|s| {
            cpu(
                Some("1.50 0.75 0.25 2/300 99\n"),
                Some(
                    "cpu  100 2 30 4000 5 6 7 8 9 10\ncpu0 50 1 15 2000 2 3 3 4 4 5\nintr 777 1 2\nprocesses 42\nprocs_running 3\nprocs_blocked 0\n",
                ),
                s,
            );
        });
        assert_eq!(value(&s, "cpu/runnable_task_count", &[]), Some(1.5));
        assert_eq!(value(&s, "cpu/load_15m", &[]), Some(0.25));
        assert_eq!(
            value(&s, "cpu/usage_time", &[("state", "system")]),
            Some(30.0)
        );
        assert_eq!(
            value(&s, "cpu/usage_time", &[("state", "guest_nice")]),
            Some(10.0)
        );
        assert_eq!(
            value(&s, "system/cpu_stat", &[("cpu", "cpu0"), ("stage", "idle")]),
            Some(20.0)
        );
        assert_eq!(
            value(
                &s,
                "system/cpu_stat",
                &[("cpu", "cpu0"), ("stage", "softIRQ")]
            ),
            Some(0.03)
        );
        assert_eq!(value(&s, "system/interrupts_total", &[]), Some(777.0));
        assert_eq!(value(&s, "system/procs_blocked", &[]), Some(0.0));
    }

    #[test]
    fn memory_states_add_up_to_the_total() {
        let s = all(|s| {
            memory(
                "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 50 kB\nCached: 300 kB\nSlab: 50 kB\nActive(anon): 200 kB\nInactive(anon): 20 kB\nActive(file): 150 kB\nInactive(file): 130 kB\nUnevictable: 4 kB\nDirty: 8 kB\nWriteback: 0 kB\n",
                s,
            );
        });
        let states: f64 = ["free", "buffered", "cached", "slab", "used"]
            .iter()
            .filter_map(|st| value(&s, "memory/bytes_used", &[("state", st)]))
            .sum();
        assert_eq!(states, 1000.0 * 1024.0);
        assert_eq!(
            value(&s, "memory/percent_used", &[("state", "used")]),
            Some(50.0)
        );
        assert_eq!(
            value(&s, "memory/page_cache_used", &[("state", "inactive")]),
            Some(130.0 * 1024.0)
        );
        assert_eq!(value(&s, "memory/unevictable_used", &[]), Some(4096.0));
        assert_eq!(
            value(&s, "memory/dirty_used", &[("state", "writeback")]),
            Some(0.0)
        );
    }

    #[test]
    fn os_version_is_upstreams() {
        assert_eq!(
            os_version("ID=ubuntu\nVERSION=\"22.04.4 LTS (Jammy Jellyfish)\"\n").as_deref(),
            Some("ubuntu 22.04.4 LTS (Jammy Jellyfish)")
        );
        assert_eq!(
            os_version("ID=cos\nVERSION=109\nBUILD_ID=17800.147.54\n").as_deref(),
            Some("cos 109-17800.147.54")
        );
        assert_eq!(os_version("NAME=x\n"), None);
    }

    #[test]
    fn os_features_follow_the_cmdline_and_tainted_modules() {
        let s = all(|s| {
            os_feature_cmdline(
                "BOOT_IMAGE=/vmlinuz csm.enabled=1 module.sig_enforce=1 loadpin.enabled=1 systemd.unified_cgroup_hierarchy=0\n",
                s,
            );
            os_feature_modules(
                "nvidia 100 0 - Live 0x0 (PO)\nzfs 10 0 - Live 0x0 (PO)\nlustre 10 0 - Live 0x0 (O)\next4 10 1 - Live 0x0\n",
                &["lustre".to_owned()],
                s,
            );
        });
        let f = |name: &str, v: &str| {
            value(
                &s,
                "system/os_feature",
                &[("os_feature", name), ("value", v)],
            )
        };
        assert_eq!(f("KTD", ""), Some(1.0));
        assert_eq!(f("UnifiedCgroupHierarchy", ""), Some(0.0));
        assert_eq!(f("KernelModuleIntegrity", ""), Some(1.0));
        assert_eq!(f("GPUSupport", ""), Some(1.0));
        assert_eq!(f("UnknownModules", "zfs"), Some(1.0));
        assert_eq!(
            known_modules(r#"[{"moduleName": "a"}, {"moduleName": "b"}]"#).expect("json"),
            ["a", "b"]
        );
    }

    #[test]
    fn net_skips_excluded_interfaces_unanchored_as_go_does() {
        let text = "h\nh\n  eth0: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16\n vethab: 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1\nmycali0: 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1\n";
        let re = regex::Regex::new("(cali|veth)").expect("re");
        let s = all(|s| net(text, Some(&re), s));
        assert_eq!(s.len(), 16);
        assert_eq!(
            value(&s, "net/tx_carrier", &[("interface_name", "eth0")]),
            Some(15.0)
        );
    }
}
