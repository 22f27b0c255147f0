//! What the benchmarks read of a detector they started: a free port for
//! it, its CPU and memory from `/proc`, its `/metrics`.
#![allow(dead_code, clippy::expect_used)]

use std::io::{Read, Write};

/// A loopback port nothing listens on.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// User plus system CPU of `pid`, in clock ticks (100 a second on Linux).
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<u64> = stat
        .rsplit_once(") ")
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // Fields 14 and 15 (utime, stime), counted after the command name.
    fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0)
}

/// A `kB` line of `/proc/<pid>/status` (`"VmRSS:"`, `"VmHWM:"`), in KiB.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The body of `GET /metrics` on 127.0.0.1:`port`.
pub fn metrics_text(port: u16) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

/// One thread of a process: its name, CPU time (ns) and how many times it
/// was switched in (a wakeup, near enough, for a thread that sleeps).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Thread {
    pub tid: u32,
    pub name: String,
    pub cpu_ns: u64,
    pub switches: u64,
}

/// Every thread of `pid`, from `/proc/<pid>/task/*/{comm,schedstat,status}`.
pub fn threads(pid: u32) -> Vec<Thread> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|t| {
            let p = t.path();
            let tid = t.file_name().to_str()?.parse().ok()?;
            let name = std::fs::read_to_string(p.join("comm")).ok()?;
            let sched = std::fs::read_to_string(p.join("schedstat")).ok()?;
            let cpu_ns = sched.split_whitespace().next()?.parse().ok()?;
            let status = std::fs::read_to_string(p.join("status")).ok()?;
            let switches = status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum();
            Some(Thread {
                tid,
                name: name.trim().to_owned(),
                cpu_ns,
                switches,
            })
        })
        .collect()
}
