//! `health-checker`: is a node component (kubelet, docker, the CRI runtime,
//! kube-proxy) healthy, and if it is not and has been up longer than the
//! cooldown, kill its systemd service so systemd restarts it (NPD's
//! `cmd/healthchecker` and `pkg/healthchecker`, Linux).
//!
//! - kubelet / kube-proxy: `GET http://$HOST_ADDRESS:$KUBELET_PORT/healthz`
//!   (`10248`) or `…:$KUBEPROXY_PORT/livez` (`10256`); only a final 200 is
//!   healthy (redirects are followed, up to 10), within
//!   `--health-check-timeout`.
//! - docker: `docker ps` exits 0; cri: `crictl --timeout=… --runtime-endpoint=…
//!   pods --latest` exits 0, both killed at `--health-check-timeout`.
//! - Every `--log-pattern COUNT:REGEX` is counted in the service's journal
//!   since it started (or `--loopback-time`, if shorter) with upstream's
//!   `journalctl | grep -i | wc -l` pipeline; COUNT or more is unhealthy.
//! - Repair: `systemctl kill --kill-who=main SERVICE` (docker first gets
//!   `pkill -SIGUSR1 dockerd`, for its goroutine dump), only when the
//!   service's `InactiveExitTimestamp` is longer ago than `--cooldown-time`.
//!   No state is kept between runs: a service systemd restarted is not
//!   killed again within the cooldown because its timestamp is new.
//!
//! Output: nothing when healthy (exit 0); `COMPONENT:SERVICE was found
//! unhealthy; repair flag : BOOL` (exit 1); `error checking COMPONENT
//! health: …` (exit 2).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use super::{COMMAND_TIMEOUT, CommandError, combined_output};
use crate::config::duration::format_go;

pub const COMPONENTS: [&str; 4] = ["kubelet", "docker", "cri", "kube-proxy"];
pub const DEFAULT_CRICTL: &str = "/usr/bin/crictl";
pub const DEFAULT_CRI_SOCKET: &str = "unix:///var/run/containerd/containerd.sock";
/// How many redirects a health GET follows (Go's `http.Client`).
const MAX_REDIRECTS: usize = 10;

/// What to check and how, after upstream's defaults are applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    pub component: String,
    /// The systemd unit behind the component.
    pub service: String,
    pub enable_repair: bool,
    pub crictl_path: String,
    pub cri_socket_path: String,
    pub cri_timeout: Duration,
    pub cooldown: Duration,
    /// 0: the log patterns are counted since the service started.
    pub loopback: Duration,
    pub health_check_timeout: Duration,
    /// Pattern → how many occurrences make the component unhealthy.
    pub log_patterns: BTreeMap<String, i64>,
}

impl Options {
    /// NPD's `SetDefaults` and `IsValid`: the service defaults to the
    /// component (`containerd` for cri); the first problem is the error.
    pub fn resolve(mut self) -> Result<Self, String> {
        if self.service.is_empty() {
            self.service = match self.component.as_str() {
                "cri" => "containerd".into(),
                c => c.to_owned(),
            };
        }
        if !COMPONENTS.contains(&self.component.as_str()) {
            return Err(format!(
                "the component specified is not supported. Supported components are : <{}>",
                COMPONENTS.join("/")
            ));
        }
        if self.component == "cri" {
            if self.crictl_path.is_empty() {
                return Err("the crictl-path cannot be empty for cri component".into());
            }
            if self.cri_socket_path.is_empty() {
                return Err("the cri-socket-path cannot be empty for cri component".into());
            }
        }
        Ok(self)
    }
}

/// One `--log-pattern` value: `COUNT:PATTERN[,COUNT:PATTERN…]`, split on the
/// first `:` of each item; a zero or unparsable count, or an empty pattern,
/// is refused with upstream's words.
pub fn parse_log_patterns(value: &str, into: &mut BTreeMap<String, i64>) -> Result<(), String> {
    for item in value.split(',') {
        let Some((count, pattern)) = item.split_once(':') else {
            return Err(format!("invalid format of the flag value: [{item}]"));
        };
        let n: i64 = count.strip_prefix('+').unwrap_or(count).parse().map_err(|_| {
            format!(
                "invalid format for the flag value: [{count} {pattern}]: strconv.Atoi: parsing {count:?}: invalid syntax"
            )
        })?;
        if n == 0 || pattern.is_empty() {
            return Err(format!(
                "invalid format for the flag value: [{count} {pattern}]: <nil>"
            ));
        }
        into.insert(pattern.to_owned(), n);
    }
    Ok(())
}

/// The verdict of one run.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Healthy,
    /// Unhealthy; whether a repair was attempted (for the log).
    Unhealthy {
        repaired: bool,
    },
}

/// Checks once, repairs if due; `Err` is a check that could not be made
/// (exit 2).
pub fn check(o: &Options) -> Result<Verdict, String> {
    let healthy = component_healthy(o);
    // Upstream runs the log check even when the component already failed,
    // and its error wins (no repair).
    let logs_healthy = log_patterns_healthy(o)?;
    if healthy && logs_healthy {
        return Ok(Verdict::Healthy);
    }
    let mut repaired = false;
    if o.enable_repair {
        match service_uptime(&o.service, SystemTime::now()) {
            Err(e) => {
                tracing::info!(component = %o.component, "cannot get the service's uptime: {e}")
            }
            Ok(up) => {
                tracing::info!(component = %o.component, "unhealthy; service up for {}", format_go(up));
                if up > o.cooldown {
                    tracing::info!(component = %o.component, "cooldown of {} passed: repairing", format_go(o.cooldown));
                    repair(o);
                    repaired = true;
                }
            }
        }
    }
    Ok(Verdict::Unhealthy { repaired })
}

/// The line upstream prints for an unhealthy component.
pub fn unhealthy_line(o: &Options) -> String {
    format!(
        "{}:{} was found unhealthy; repair flag : {}",
        o.component, o.service, o.enable_repair
    )
}

fn component_healthy(o: &Options) -> bool {
    match o.component.as_str() {
        "kubelet" => http_healthy(
            &endpoint("KUBELET_PORT", "10248", "/healthz"),
            o.health_check_timeout,
        ),
        "kube-proxy" => http_healthy(
            &endpoint("KUBEPROXY_PORT", "10256", "/livez"),
            o.health_check_timeout,
        ),
        "docker" => {
            let mut c = Command::new("docker");
            c.arg("ps");
            command_ok(c, o.health_check_timeout)
        }
        "cri" => {
            let mut c = Command::new(&o.crictl_path);
            c.arg(format!("--timeout={}", format_go(o.cri_timeout)))
                .arg(format!("--runtime-endpoint={}", o.cri_socket_path))
                .args(["pods", "--latest"]);
            command_ok(c, o.health_check_timeout)
        }
        _ => false,
    }
}

fn command_ok(cmd: Command, timeout: Duration) -> bool {
    match combined_output(cmd, timeout) {
        Ok(_) => true,
        Err(e) => {
            tracing::info!("health check command failed: {e}");
            false
        }
    }
}

/// `http://HOST:PORT/PATH` from `$HOST_ADDRESS` and the port variable,
/// read when the check runs (an empty variable is unset).
pub fn endpoint(port_var: &str, default_port: &str, path: &str) -> String {
    let var = |k: &str, d: &str| {
        std::env::var(k)
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| d.to_owned())
    };
    format!(
        "http://{}:{}{path}",
        var("HOST_ADDRESS", "127.0.0.1"),
        var(port_var, default_port)
    )
}

/// A plain-HTTP GET that must end in 200 within `timeout` (0: no limit),
/// redirects included.
pub fn http_healthy(url: &str, timeout: Duration) -> bool {
    let deadline = (!timeout.is_zero()).then(|| Instant::now() + timeout);
    let mut url = url.to_owned();
    for _ in 0..=MAX_REDIRECTS {
        match get(&url, deadline) {
            Ok((200, _)) => return true,
            Ok((301 | 302 | 303 | 307 | 308, Some(next))) => {
                url = resolve(&url, &next);
            }
            Ok((code, _)) => {
                tracing::info!(%url, code, "health endpoint did not answer 200");
                return false;
            }
            Err(e) => {
                tracing::info!(%url, "health endpoint unreachable: {e}");
                return false;
            }
        }
    }
    false
}

/// A redirect's `Location` against the URL it came from.
fn resolve(base: &str, location: &str) -> String {
    if location.contains("://") {
        return location.to_owned();
    }
    let origin_end = base
        .find("://")
        .and_then(|i| base[i + 3..].find('/').map(|j| i + 3 + j))
        .unwrap_or(base.len());
    format!("{}{}", &base[..origin_end], location)
}

/// One GET: the status code and `Location`.
fn get(url: &str, deadline: Option<Instant>) -> std::io::Result<(u16, Option<String>)> {
    let invalid = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, m.to_owned());
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| invalid("only http:// URLs"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let left = || -> std::io::Result<Option<Duration>> {
        match deadline {
            None => Ok(None),
            Some(d) => match d.checked_duration_since(Instant::now()) {
                Some(l) if !l.is_zero() => Ok(Some(l)),
                _ => Err(std::io::ErrorKind::TimedOut.into()),
            },
        }
    };
    let addr = authority
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| invalid("no address"))?;
    let mut s = match left()? {
        Some(l) => TcpStream::connect_timeout(&addr, l)?,
        None => TcpStream::connect(addr)?,
    };
    s.set_write_timeout(left()?)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: npd-ext-health-checker\r\nConnection: close\r\n\r\n"
    )?;
    // The status line and headers are all that is read.
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        s.set_read_timeout(left()?)?;
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    let mut lines = head.split("\r\n");
    let code = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "no HTTP status line")
        })?;
    let location = lines.take_while(|l| !l.is_empty()).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("location")
            .then(|| v.trim().to_owned())
    });
    Ok((code, location))
}

/// How long ago systemd last started `service`
/// (`systemctl show SERVICE --property=InactiveExitTimestamp`).
pub fn service_uptime(service: &str, now: SystemTime) -> Result<Duration, String> {
    let mut c = Command::new("systemctl");
    c.args(["show", service, "--property=InactiveExitTimestamp"]);
    let out = combined_output(c, COMMAND_TIMEOUT).map_err(|e| describe(&e))?;
    let mut parts = out.split('=');
    let (Some(_), Some(value)) = (parts.next(), parts.next()) else {
        return Err("could not parse the service uptime time correctly".into());
    };
    let started = parse_systemd_time(value)?;
    Ok(now.duration_since(started).unwrap_or_default())
}

/// systemd's timestamp, `Mon 2006-01-02 15:04:05 MST`, read as Go's
/// `time.Parse` reads that layout: `UTC`, `GMT±N` and the local zone's
/// abbreviation have their offsets, any other abbreviation is read as UTC.
pub fn parse_systemd_time(value: &str) -> Result<SystemTime, String> {
    let err = || {
        format!("parsing time {value:?} as \"Mon 2006-01-02 15:04:05 MST\": cannot parse {value:?}")
    };
    let mut f = value.split(' ');
    let (Some(day), Some(date), Some(time), Some(zone), None) =
        (f.next(), f.next(), f.next(), f.next(), f.next())
    else {
        return Err(err());
    };
    if !["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"].contains(&day) {
        return Err(err());
    }
    let civil: jiff::civil::DateTime = format!("{date}T{time}").parse().map_err(|_| err())?;
    let offset_hours = match zone {
        "UTC" | "GMT" => Some(0),
        z if z.starts_with("GMT") => Some(z[3..].parse::<i8>().map_err(|_| err())?),
        _ => None,
    };
    let ts = match offset_hours {
        Some(h) => jiff::tz::Offset::constant(h)
            .to_timestamp(civil)
            .map_err(|_| err())?,
        None => {
            let local = jiff::tz::TimeZone::system();
            match local.to_ambiguous_timestamp(civil).compatible() {
                Ok(t) if local.to_offset_info(t).abbreviation() == zone => t,
                _ => jiff::tz::Offset::UTC
                    .to_timestamp(civil)
                    .map_err(|_| err())?,
            }
        }
    };
    SystemTime::try_from(ts).map_err(|_| err())
}

fn repair(o: &Options) {
    if o.component == "docker" {
        let mut c = Command::new("pkill");
        c.args(["-SIGUSR1", "dockerd"]);
        if let Err(e) = combined_output(c, COMMAND_TIMEOUT) {
            tracing::error!("cannot send SIGUSR1 to dockerd: {}", describe(&e));
        }
    }
    let mut c = Command::new("systemctl");
    c.args(["kill", "--kill-who=main", &o.service]);
    if let Err(e) = combined_output(c, COMMAND_TIMEOUT) {
        tracing::error!(service = %o.service, "cannot kill the service: {}", describe(&e));
    }
}

/// `Err`: the count could not be made (exit 2).
fn log_patterns_healthy(o: &Options) -> Result<bool, String> {
    if o.log_patterns.is_empty() {
        return Ok(true);
    }
    let now = SystemTime::now();
    let up = service_uptime(&o.service, now)?;
    let back = if !o.loopback.is_zero() && up > o.loopback {
        o.loopback
    } else {
        up
    };
    let since = jiff::Timestamp::try_from(now - back)
        .map_err(|e| e.to_string())?
        .to_zoned_datetime(jiff::tz::TimeZone::system())
        .strftime("%Y-%m-%d %H:%M:%S")
        .to_string();
    for (pattern, &count) in &o.log_patterns {
        // Upstream's pipeline, word for word (the shell sees the pattern
        // unescaped, as upstream's does).
        let script = format!(
            "journalctl --unit \"{}\" --since \"{since}\" | grep -i \"{pattern}\" | wc -l",
            o.service
        );
        let mut c = Command::new("/bin/sh");
        c.args(["-c", &script]);
        let out = combined_output(c, COMMAND_TIMEOUT).map_err(|e| describe(&e))?;
        let n: i64 = out
            .parse()
            .map_err(|_| format!("strconv.Atoi: parsing {out:?}: invalid syntax"))?;
        if n >= count {
            tracing::info!(service = %o.service, %pattern, occurrences = n, "log pattern check failed");
            return Ok(false);
        }
    }
    Ok(true)
}

/// A command's failure as upstream words it (`exit status 1`, `signal: killed`).
fn describe(e: &CommandError) -> String {
    match e {
        CommandError::Failed { status, .. } => match status.code() {
            Some(c) => format!("exit status {c}"),
            None => status.to_string(),
        },
        CommandError::Timeout { .. } => "signal: killed".into(),
        CommandError::Spawn { program, source } => format!("exec: {program:?}: {source}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(component: &str) -> Options {
        Options {
            component: component.into(),
            service: String::new(),
            enable_repair: true,
            crictl_path: DEFAULT_CRICTL.into(),
            cri_socket_path: DEFAULT_CRI_SOCKET.into(),
            cri_timeout: Duration::from_secs(2),
            cooldown: Duration::from_secs(120),
            loopback: Duration::ZERO,
            health_check_timeout: Duration::from_secs(10),
            log_patterns: BTreeMap::new(),
        }
    }

    #[test]
    fn services_default_by_component_and_bad_components_are_named() {
        assert_eq!(opts("cri").resolve().expect("valid").service, "containerd");
        assert_eq!(
            opts("kube-proxy").resolve().expect("valid").service,
            "kube-proxy"
        );
        let mut o = opts("kubelet");
        o.service = "k8s-kubelet".into();
        assert_eq!(o.resolve().expect("valid").service, "k8s-kubelet");
        assert_eq!(
            opts("etcd").resolve().expect_err("unsupported"),
            "the component specified is not supported. Supported components are : <kubelet/docker/cri/kube-proxy>"
        );
        let mut o = opts("cri");
        o.crictl_path.clear();
        assert_eq!(
            o.resolve().expect_err("no crictl"),
            "the crictl-path cannot be empty for cri component"
        );
    }

    #[test]
    fn log_patterns_parse_as_upstream_does() {
        let mut m = BTreeMap::new();
        parse_log_patterns("10:pattern1,20:a:b", &mut m).expect("valid");
        parse_log_patterns("-1:neg", &mut m).expect("negative counts are accepted");
        assert_eq!(m.get("pattern1"), Some(&10));
        assert_eq!(m.get("a:b"), Some(&20));
        assert_eq!(m.get("neg"), Some(&-1));
        assert_eq!(
            parse_log_patterns("foo", &mut m).expect_err("no colon"),
            "invalid format of the flag value: [foo]"
        );
        assert_eq!(
            parse_log_patterns("0:p", &mut m).expect_err("zero"),
            "invalid format for the flag value: [0 p]: <nil>"
        );
        assert_eq!(
            parse_log_patterns("10:", &mut m).expect_err("empty"),
            "invalid format for the flag value: [10 ]: <nil>"
        );
        assert!(
            parse_log_patterns("x:p", &mut m)
                .expect_err("not a number")
                .ends_with("strconv.Atoi: parsing \"x\": invalid syntax")
        );
    }

    #[test]
    fn systemd_timestamps_read_as_go_reads_them() {
        let t = parse_systemd_time("Wed 2026-12-02 08:04:19 UTC").expect("parses");
        assert_eq!(
            t.duration_since(SystemTime::UNIX_EPOCH)
                .expect("after")
                .as_secs(),
            1_796_198_659
        );
        let t2 = parse_systemd_time("Wed 2026-12-02 10:04:19 GMT+2").expect("parses");
        assert_eq!(t, t2);
        assert!(parse_systemd_time("").is_err());
        assert!(parse_systemd_time("Xyz 2026-12-02 08:04:19 UTC").is_err());
        assert!(parse_systemd_time("Wed 2026-12-02 UTC").is_err());
    }

    #[test]
    fn redirects_resolve_against_their_origin() {
        assert_eq!(
            resolve("http://127.0.0.1:10248/healthz", "/ok"),
            "http://127.0.0.1:10248/ok"
        );
        assert_eq!(resolve("http://a:1/x", "http://b:2/y"), "http://b:2/y");
    }
}
