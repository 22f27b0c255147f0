//! A node's parts for the `log-counter` and `health-checker` applets, as
//! real processes and sockets: a loopback HTTP server standing in for
//! kubelet / kube-proxy, scripted `journalctl`, `systemctl`, `crictl`,
//! `docker` and `pkill` that record how they were called, and a private
//! mount namespace in which `/home/kubernetes/bin`, `/var/log` and
//! `/usr/bin/crictl` are the test's, so NPD's configs run unchanged.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};

use super::bin::BIN;
use super::script;

/// A loopback HTTP server answering every GET with `status` (settable),
/// a 302 to `/ok` for paths under `/redirect`, and 200 for `/ok`; a
/// `status` of 0 accepts and never answers.
pub struct Health {
    pub addr: SocketAddr,
    status: Arc<AtomicU16>,
    paths: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Health {
    pub fn start(status: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let status = Arc::new(AtomicU16::new(status));
        let paths = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (st, ps) = (status.clone(), paths.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let (st, ps) = (st.clone(), ps.clone());
                std::thread::spawn(move || {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&head);
                    let path = head.split(' ').nth(1).unwrap_or_default().to_owned();
                    ps.lock().expect("lock").push(path.clone());
                    let reply = match (path.as_str(), st.load(Ordering::SeqCst)) {
                        ("/ok", _) => "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_owned(),
                        (p, _) if p.starts_with("/redirect") => {
                            "HTTP/1.1 302 Found\r\nLocation: /ok\r\nContent-Length: 0\r\n\r\n"
                                .to_owned()
                        }
                        (_, 0) => {
                            // Hang: hold the connection until the client leaves.
                            let _ = conn.read(&mut buf);
                            return;
                        }
                        (_, code) => format!("HTTP/1.1 {code} X\r\nContent-Length: 2\r\n\r\nok"),
                    };
                    let _ = conn.write_all(reply.as_bytes());
                });
            }
        });
        Self {
            addr,
            status,
            paths,
        }
    }

    pub fn set(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    /// The paths asked for so far.
    pub fn paths(&self) -> Vec<String> {
        self.paths.lock().expect("lock").clone()
    }
}

/// A directory of scripted node tools, each appending its arguments to
/// `calls` (one line per call, `TOOL ARGS…`).
pub struct Tools {
    pub dir: PathBuf,
    pub calls: PathBuf,
}

impl Tools {
    pub fn new(root: &Path) -> Self {
        let dir = root.join("tools");
        std::fs::create_dir_all(&dir).expect("tools dir");
        let calls = root.join("calls");
        std::fs::write(&calls, "").expect("calls file");
        Self { dir, calls }
    }

    /// `name`, recording its call, then running `body`.
    pub fn add(&self, name: &str, body: &str) -> PathBuf {
        script(
            &self.dir,
            name,
            &format!(
                "echo \"{name} $*\" >> '{calls}'\n{body}",
                calls = self.calls.display()
            ),
        )
    }

    /// A systemctl whose `show` says the service (re)started `ago_secs`
    /// seconds ago, and whose `kill` succeeds.
    pub fn systemctl_started(&self, ago_secs: u64) {
        self.add(
            "systemctl",
            &format!(
                "if [ \"$1\" = show ]; then\n  \
                 echo \"InactiveExitTimestamp=$(TZ=UTC date -d \"@$(( $(date +%s) - {ago_secs} ))\" '+%a %Y-%m-%d %H:%M:%S %Z')\"\n\
                 fi"
            ),
        );
    }

    /// A journalctl printing `entries` (JSON lines) for any query.
    pub fn journalctl(&self, entries: &[serde_json::Value]) -> PathBuf {
        let body: String = entries.iter().map(|e| format!("echo '{e}'\n")).collect();
        self.add("journalctl", &body)
    }

    /// Every recorded call.
    pub fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(&self.calls)
            .expect("calls")
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// `PATH` with the tools first.
    pub fn path_var(&self) -> String {
        format!(
            "{}:{}",
            self.dir.display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }
}

/// A journal entry as `journalctl --output=json` prints it, received
/// `ago_secs` seconds ago.
pub fn entry(identifier: &str, message: &str, ago_secs: u64) -> serde_json::Value {
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_micros();
    serde_json::json!({
        "__REALTIME_TIMESTAMP": (now_us - u128::from(ago_secs) * 1_000_000).to_string(),
        "SYSLOG_IDENTIFIER": identifier,
        "MESSAGE": message,
    })
}

/// A symlink `dir/name` to the binary, so the applet runs by argv[0].
pub fn applet(dir: &Path, name: &str) -> PathBuf {
    std::fs::create_dir_all(dir).expect("applet dir");
    let link = dir.join(name);
    if std::fs::read_link(&link).is_err() {
        std::os::unix::fs::symlink(BIN, &link).expect("symlink");
    }
    link
}

/// What the namespace shows in place of the node's directories.
pub struct Node {
    /// Seen as `/home` (holding `kubernetes/bin/{log-counter,health-checker}`).
    pub home: PathBuf,
    /// Seen as `/var/log` (holding `journal/`).
    pub var_log: PathBuf,
    /// Laid over `/usr/bin` (for `/usr/bin/crictl`).
    pub usr_bin: PathBuf,
}

impl Node {
    pub fn new(root: &Path) -> Self {
        let node = Self {
            home: root.join("home"),
            var_log: root.join("var-log"),
            usr_bin: root.join("usr-bin"),
        };
        applet(&node.home.join("kubernetes/bin"), "log-counter");
        applet(&node.home.join("kubernetes/bin"), "health-checker");
        std::fs::create_dir_all(node.var_log.join("journal")).expect("journal dir");
        std::fs::create_dir_all(&node.usr_bin).expect("usr-bin");
        node
    }

    /// `program args…` in a private mount namespace showing this node:
    /// as root a plain one, otherwise inside a user namespace.
    pub fn command(&self, program: &str) -> Command {
        const SETUP: &str = "set -e\n\
            mount --bind \"$1\" /home\n\
            mount --bind \"$2\" /var/log\n\
            mount -t overlay overlay -o \"lowerdir=$3:/usr/bin\" /usr/bin\n\
            shift 3\n\
            exec \"$@\"";
        let mut cmd = Command::new("unshare");
        if !is_root() {
            cmd.args(["--user", "--map-root-user"]);
        }
        cmd.args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            SETUP,
            "sh",
        ])
        .arg(&self.home)
        .arg(&self.var_log)
        .arg(&self.usr_bin)
        .arg(program);
        cmd
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}
