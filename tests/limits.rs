//! What a plugin may send: statuses over the limits are trimmed, oversized
//! messages refused, and nothing else is disturbed.
#![allow(clippy::expect_used, clippy::panic)] // test code: a failed expectation is the test failing

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{find, http_get, monitor_config, wait_for};
use npd_ext::problem::ConditionStatus;
use npd_ext::rpc::pb;
use npd_ext::rpc::pb::external_monitor_server::{ExternalMonitor, ExternalMonitorServer};
use npd_ext::rpc::server::BoundSocket;
use prost::Message;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;

/// A plugin that answers CheckHealth with whatever status the test sets.
#[derive(Clone)]
struct Scripted(Arc<Mutex<pb::Status>>);

/// How a plugin's WatchHealth stream misbehaves.
#[derive(Clone, Copy)]
enum Stream {
    /// Headers, then nothing, ever.
    Silent,
    /// This many statuses as fast as it can (the last says "final").
    Flood(usize),
}

#[derive(Clone)]
struct Streaming(Stream);

#[tonic::async_trait]
impl ExternalMonitor for Streaming {
    async fn get_metadata(
        &self,
        _req: tonic::Request<()>,
    ) -> Result<tonic::Response<pb::MonitorMetadata>, tonic::Status> {
        metadata("streaming")
    }

    async fn watch_health(
        &self,
        _req: tonic::Request<pb::HealthCheckRequest>,
    ) -> Result<tonic::Response<tonic::codegen::BoxStream<pb::Status>>, tonic::Status> {
        let stream: tonic::codegen::BoxStream<pb::Status> = match self.0 {
            Stream::Silent => Box::pin(tokio_stream::pending()),
            Stream::Flood(n) => Box::pin(tokio_stream::StreamExt::chain(
                tokio_stream::iter((0..n).map(move |i| {
                    let last = i + 1 == n;
                    Ok(pb::Status {
                        source: "flood".into(),
                        events: vec![],
                        conditions: vec![cond(
                            "Flooded",
                            if last {
                                pb::ConditionStatus::True
                            } else {
                                pb::ConditionStatus::False
                            },
                            if last {
                                "final".into()
                            } else {
                                format!("n{i}")
                            },
                        )],
                    })
                })),
                tokio_stream::pending(),
            )),
        };
        Ok(tonic::Response::new(stream))
    }
}

/// Serves `svc` on a fresh socket at `path` until `token` is cancelled (the
/// socket goes with it).
fn spawn_plugin<S: ExternalMonitor>(
    path: &Path,
    svc: ExternalMonitorServer<S>,
    token: CancellationToken,
) {
    let mut socket = BoundSocket::bind(path).expect("bind");
    let listener = socket.take_listener().expect("listener");
    tokio::spawn(async move {
        let _keep = socket;
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming_shutdown(
                UnixListenerStream::new(listener),
                token.cancelled_owned(),
            )
            .await
    });
}

fn serve_streaming(path: &Path, how: Stream, token: CancellationToken) {
    spawn_plugin(path, ExternalMonitorServer::new(Streaming(how)), token);
}

/// Accepts connections and answers each with bytes that are not HTTP/2.
fn serve_garbage(path: &Path, token: CancellationToken) {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::UnixListener::bind(path).expect("bind");
    tokio::spawn(async move {
        loop {
            let (mut s, _) = tokio::select! {
                r = listener.accept() => match r { Ok(c) => c, Err(_) => return },
                () = token.cancelled() => return,
            };
            let _ = s
                .write_all(&[0xde, 0xad, 0xbe, 0xef, 0x00, 0xff, b'?', b'\n'].repeat(64))
                .await;
        }
    });
}

#[tonic::async_trait]
impl ExternalMonitor for Scripted {
    async fn check_health(
        &self,
        _req: tonic::Request<pb::HealthCheckRequest>,
    ) -> Result<tonic::Response<pb::Status>, tonic::Status> {
        Ok(tonic::Response::new(self.0.lock().expect("lock").clone()))
    }

    async fn get_metadata(
        &self,
        _req: tonic::Request<()>,
    ) -> Result<tonic::Response<pb::MonitorMetadata>, tonic::Status> {
        metadata("scripted")
    }
}

fn serve(path: &Path, status: pb::Status, token: CancellationToken) -> Arc<Mutex<pb::Status>> {
    let shared = Arc::new(Mutex::new(status));
    let svc =
        ExternalMonitorServer::new(Scripted(shared.clone())).max_encoding_message_size(64 << 20);
    spawn_plugin(path, svc, token);
    shared
}

/// A status of one condition.
fn one(source: &str, t: &str, status: pb::ConditionStatus, message: &str) -> pb::Status {
    pb::Status {
        source: source.into(),
        events: vec![],
        conditions: vec![cond(t, status, message.into())],
    }
}

/// A monitor config for `<dir>/<name>.sock`, with `name` as its source.
fn named(dir: &Path, name: &str, types: &[&str]) -> npd_ext::config::ExternalMonitorConfig {
    let mut c = monitor_config(&dir.join(format!("{name}.sock")), types);
    c.source = name.into();
    c
}

fn cond(t: &str, status: pb::ConditionStatus, message: String) -> pb::Condition {
    pb::Condition {
        r#type: t.into(),
        status: status as i32,
        transition: None,
        reason: format!("{t}Reason"),
        message,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_overfull_statuses_are_refused_or_trimmed_and_nothing_else_moves() {
    let dir = common::tempdir();
    let token = CancellationToken::new();
    // A well-behaved plugin beside the others.
    let good = serve_good(dir.path(), &token);
    // 10 000 conditions, the declared one first with a 1 MiB message, a
    // transition in 1970 and an unknown status value.
    let mut big = cond("Crowded", pb::ConditionStatus::True, "é".repeat(512 * 1024));
    big.transition = Some(prost_types::Timestamp {
        seconds: 86_400,
        nanos: 0,
    });
    let mut crowd = vec![big];
    crowd.extend(
        (0..9_999).map(|i| cond(&format!("Extra{i}"), pb::ConditionStatus::True, "x".into())),
    );
    let mut odd = cond("Odd", pb::ConditionStatus::True, "odd".into());
    odd.status = 42;
    crowd.insert(1, odd);
    let crowded = serve(
        &dir.path().join("crowded.sock"),
        pb::Status {
            source: "crowded".into(),
            events: vec![],
            conditions: crowd,
        },
        token.clone(),
    );
    // More than 1 MiB in one message.
    let huge = serve(
        &dir.path().join("huge.sock"),
        pb::Status {
            source: "huge".into(),
            events: vec![],
            conditions: vec![cond("Huge", pb::ConditionStatus::True, "y".repeat(2 << 20))],
        },
        token.clone(),
    );
    let (shutdown, d) = common::start_detector(vec![
        named(dir.path(), "good", &["GoodThing"]),
        // A 1 MiB message needs a larger limit than the default 1 MiB message size.
        {
            let mut c = named(dir.path(), "crowded", &["Crowded", "Odd"]);
            c.max_message_size = 4 << 20;
            c
        },
        named(dir.path(), "huge", &["Huge"]),
    ]);
    let mut conds = d.conditions();
    let c = wait_for(
        &mut conds,
        Duration::from_secs(20),
        "all three monitors settled",
        |c| {
            find(c, "GoodThing").is_some()
                && find(c, "Crowded").is_some()
                && common::has(c, "Huge", ConditionStatus::Unknown)
        },
    )
    .await;
    let crowded_c = find(&c, "Crowded").expect("set");
    assert_eq!(crowded_c.status, ConditionStatus::True);
    assert_eq!(crowded_c.message.len(), 1024, "cut to 1 KiB");
    assert!(
        crowded_c.message.chars().all(|ch| ch == 'é'),
        "on a character boundary"
    );
    assert!(
        crowded_c.transition > std::time::UNIX_EPOCH + Duration::from_secs(946_684_800),
        "1970 replaced"
    );
    assert_eq!(
        find(&c, "Odd").expect("set").status,
        ConditionStatus::Unknown,
        "unknown value read as Unknown"
    );
    assert!(
        find(&c, "Extra0").is_none(),
        "undeclared and over the limit"
    );
    let h = find(&c, "Huge").expect("set");
    assert_eq!(h.reason, "MonitorUnreachable");
    assert!(
        h.message
            .to_lowercase()
            .contains("message length too large")
            || h.message.contains("OutOfRange"),
        "{}",
        h.message
    );
    // Nothing else moved: the good plugin's condition is as it said.
    assert_bystander_fine(&c, &d).await;
    // What was trimmed is counted, per status: 10 001 conditions less the
    // 64 kept, one message cut, one status value 42, one 1970 transition.
    let (_, metrics) = http_get(d.metrics_addr.expect("metrics"), "/metrics").await;
    let count = |what: &str| -> u64 {
        let key =
            format!("npd_ext_plugin_status_trimmed_total{{monitor=\"crowded\",what=\"{what}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(key.as_str()))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {what} in {metrics}"))
    };
    // (The plugin keeps being polled: whole statuses, any number of them.)
    let dropped = count("conditions_dropped");
    assert!(dropped >= 9_937 && dropped % 9_937 == 0, "{dropped}");
    for what in ["unknown_enums", "bad_times", "strings_cut"] {
        assert!(count(what) >= 1, "{what}");
    }
    assert!(
        !metrics.contains("npd_ext_plugin_status_trimmed_total{monitor=\"good\""),
        "the good plugin sent nothing over the limits"
    );
    drop((good, crowded, huge));
    shutdown.token().cancel();
    token.cancel();
}

#[test]
fn a_string_field_that_is_not_utf8_is_a_decode_error_not_a_status() {
    // Status { source (1): bytes ff fe } laid by hand.
    let bytes = [0x0a, 0x02, 0xff, 0xfe];
    assert!(pb::Status::decode(&bytes[..]).is_err());
    // The same with valid text decodes.
    let ok = [0x0a, 0x02, b'o', b'k'];
    assert_eq!(pb::Status::decode(&ok[..]).expect("decodes").source, "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_served_by_a_user_not_in_allowed_peer_uids_is_not_trusted() {
    let dir = common::tempdir();
    let token = CancellationToken::new();
    let _plugin = serve(
        &dir.path().join("p.sock"),
        one("p", "Trusted", pb::ConditionStatus::False, "fine"),
        token.clone(),
    );
    let me = rustix_uid();
    let mut strict = monitor_config(&dir.path().join("p.sock"), &["Trusted"]);
    strict.allowed_peer_uids = Some(vec![me.wrapping_add(4242)]);
    let (shutdown, d) = common::start_detector(vec![strict]);
    let mut conds = d.conditions();
    let c = wait_for(
        &mut conds,
        Duration::from_secs(20),
        "Trusted Unknown",
        |c| common::has(c, "Trusted", ConditionStatus::Unknown),
    )
    .await;
    let t = find(&c, "Trusted").expect("set");
    assert!(t.message.contains("allowedPeerUids"), "{}", t.message);
    shutdown.token().cancel();

    // The same plugin, its user allowed: trusted.
    let mut ok = monitor_config(&dir.path().join("p.sock"), &["Trusted"]);
    ok.allowed_peer_uids = Some(vec![me]);
    let (shutdown, d) = common::start_detector(vec![ok]);
    let mut conds = d.conditions();
    wait_for(&mut conds, Duration::from_secs(20), "Trusted False", |c| {
        common::has(c, "Trusted", ConditionStatus::False)
    })
    .await;
    shutdown.token().cancel();
    token.cancel();
}

fn rustix_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").expect("proc").uid()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_streams_garbage_and_floods_are_survived() {
    let dir = common::tempdir();
    let token = CancellationToken::new();
    let _good = serve_good(dir.path(), &token);
    serve_streaming(
        &dir.path().join("silent.sock"),
        Stream::Silent,
        token.clone(),
    );
    serve_streaming(
        &dir.path().join("flood.sock"),
        Stream::Flood(50_000),
        token.clone(),
    );
    serve_garbage(&dir.path().join("garbage.sock"), token.clone());
    let (shutdown, d) = common::start_detector(vec![
        named(dir.path(), "good", &["GoodThing"]),
        named(dir.path(), "silent", &["Silent"]),
        named(dir.path(), "flood", &["Flooded"]),
        named(dir.path(), "garbage", &["Garbage"]),
    ]);
    let mut conds = d.conditions();
    let c = wait_for(
        &mut conds,
        Duration::from_secs(30),
        "every monitor settled",
        |c| {
            common::has(c, "Silent", ConditionStatus::Unknown)
                && common::has(c, "Garbage", ConditionStatus::Unknown)
                && find(c, "Flooded").is_some_and(|f| f.message == "final")
                && find(c, "GoodThing").is_some()
        },
    )
    .await;
    let silent = find(&c, "Silent").expect("set");
    assert_eq!(silent.reason, "MonitorUnreachable");
    assert!(
        silent.message.contains("sent no status"),
        "{}",
        silent.message
    );
    let garbage = find(&c, "Garbage").expect("set");
    assert_eq!(garbage.reason, "MonitorUnreachable");
    assert_eq!(
        find(&c, "Flooded").expect("set").status,
        ConditionStatus::True
    );
    assert_bystander_fine(&c, &d).await;
    shutdown.token().cancel();
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_that_are_not_sockets_and_reconnect_storms() {
    let dir = common::tempdir();
    let token = CancellationToken::new();
    // A path that is a directory, one that is a regular file.
    std::fs::create_dir(dir.path().join("dir.sock")).expect("mkdir");
    std::fs::write(dir.path().join("file.sock"), b"not a socket").expect("write");
    // A socket that accepts and hangs up at once, counting how often it is tried.
    let storm = dir.path().join("storm.sock");
    let listener = tokio::net::UnixListener::bind(&storm).expect("bind");
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    let t = token.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                r = listener.accept() => match r {
                    Ok((s, _)) => {
                        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        drop(s);
                    }
                    Err(_) => return,
                },
                () = t.cancelled() => return,
            }
        }
    });
    let slow_retry = |name: &str, types: &[&str]| {
        let mut c = named(dir.path(), name, types);
        c.retry.initial_backoff = Duration::from_millis(100);
        c.retry.max_backoff = Duration::from_secs(1);
        c
    };
    let (shutdown, d) = common::start_detector(vec![
        slow_retry("dir", &["DirPlugin"]),
        slow_retry("file", &["FilePlugin"]),
        slow_retry("storm", &["StormPlugin"]),
    ]);
    let mut conds = d.conditions();
    let c = wait_for(
        &mut conds,
        Duration::from_secs(20),
        "all three Unknown",
        |c| {
            ["DirPlugin", "FilePlugin", "StormPlugin"]
                .iter()
                .all(|t| common::has(c, t, ConditionStatus::Unknown))
        },
    )
    .await;
    for t in ["DirPlugin", "FilePlugin", "StormPlugin"] {
        let x = find(&c, t).expect("set");
        assert_eq!(x.reason, "MonitorUnreachable", "{t}");
        assert!(
            x.message.contains(".sock"),
            "{t}: the message names the socket: {}",
            x.message
        );
    }
    // Five seconds of a plugin that hangs up on every call: the backoff
    // (100 ms doubling to 1 s) holds the attempts down.
    let before = accepted.load(std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let tries = accepted.load(std::sync::atomic::Ordering::Relaxed) - before;
    eprintln!("connections to a hanging-up plugin in 5 s: {tries}");
    assert!(tries <= 20, "{tries} connections in 5 s");
    let (code, _) = http_get(d.http_addr.expect("http"), "/healthz").await;
    assert_eq!(code, 200);
    shutdown.token().cancel();
    token.cancel();
}

/// A plugin that answers CheckHealth after `delay`.
#[derive(Clone)]
struct Slow {
    status: pb::Status,
    delay: Duration,
}

#[tonic::async_trait]
impl ExternalMonitor for Slow {
    async fn check_health(
        &self,
        _req: tonic::Request<pb::HealthCheckRequest>,
    ) -> Result<tonic::Response<pb::Status>, tonic::Status> {
        tokio::time::sleep(self.delay).await;
        Ok(tonic::Response::new(self.status.clone()))
    }

    async fn get_metadata(
        &self,
        _req: tonic::Request<()>,
    ) -> Result<tonic::Response<pb::MonitorMetadata>, tonic::Status> {
        metadata("slow")
    }
}

fn serve_slow(path: &Path, status: pb::Status, delay: Duration, token: CancellationToken) {
    spawn_plugin(
        path,
        ExternalMonitorServer::new(Slow { status, delay }),
        token,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_answers_count_within_the_deadline_and_turn_unknown_past_it() {
    let dir = common::tempdir();
    let token = CancellationToken::new();
    let _good = serve_good(dir.path(), &token);
    // Deadlines are 500 ms (common::monitor_config): one plugin answers in
    // 300 ms, one in 2 s.
    serve_slow(
        &dir.path().join("late.sock"),
        one(
            "late",
            "LateButInTime",
            pb::ConditionStatus::True,
            "slow but sure",
        ),
        Duration::from_millis(300),
        token.clone(),
    );
    serve_slow(
        &dir.path().join("sluggish.sock"),
        one(
            "sluggish",
            "TooSlow",
            pb::ConditionStatus::True,
            "never seen",
        ),
        Duration::from_secs(2),
        token.clone(),
    );
    let (shutdown, d) = common::start_detector(vec![
        named(dir.path(), "good", &["GoodThing"]),
        named(dir.path(), "late", &["LateButInTime"]),
        named(dir.path(), "sluggish", &["TooSlow"]),
    ]);
    let mut conds = d.conditions();
    let c = wait_for(
        &mut conds,
        Duration::from_secs(20),
        "the slow plugin's answer and the sluggish one Unknown",
        |c| {
            common::has(c, "LateButInTime", ConditionStatus::True)
                && common::has(c, "TooSlow", ConditionStatus::Unknown)
                && find(c, "GoodThing").is_some()
        },
    )
    .await;
    assert_eq!(
        find(&c, "LateButInTime").expect("set").message,
        "slow but sure"
    );
    assert_timed_out(&c, "TooSlow");
    assert_bystander_fine(&c, &d).await;
    shutdown.token().cancel();
    token.cancel();
}

#[test]
fn two_plugins_declaring_one_condition_is_a_config_error_at_start() {
    let dir = common::tempdir();
    let mut a = named(dir.path(), "a", &["GPULost", "OnlyA"]);
    a.file = dir.path().join("a.json");
    let mut b = named(dir.path(), "b", &["GPULost"]);
    b.file = dir.path().join("b.json");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = rt.enter();
    let shutdown = npd_ext::shutdown::Shutdown::new();
    let err = npd_ext::detector::start(
        npd_ext::detector::DetectorOptions {
            external: vec![a, b],
            ..Default::default()
        },
        &shutdown,
    )
    .expect_err("a condition type has one owner");
    let text = err.to_string();
    assert!(
        text.contains("b.json: GPULost is declared by both a and b")
            && text.contains("(first declared in ")
            && text.contains("a.json)"),
        "names the file, the type and the other owner: {text}"
    );
    // Nothing was started.
    assert!(
        shutdown.tracker().is_empty(),
        "{} tasks",
        shutdown.tracker().len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_panics_is_reported_by_healthz_restarted_and_counted() {
    let dir = common::tempdir();
    let token = CancellationToken::new();
    let _good = serve_good(dir.path(), &token);
    let shutdown = npd_ext::shutdown::Shutdown::new();
    let d = npd_ext::detector::start(
        npd_ext::detector::DetectorOptions {
            external: vec![named(dir.path(), "good", &["GoodThing"])],
            http: Some(std::net::TcpListener::bind("127.0.0.1:0").expect("bind")),
            metrics: Some(std::net::TcpListener::bind("127.0.0.1:0").expect("bind")),
            ..Default::default()
        },
        &shutdown,
    )
    .expect("starts");
    let mut conds = d.conditions();
    wait_for(
        &mut conds,
        Duration::from_secs(20),
        "GoodThing False",
        |c| common::has(c, "GoodThing", ConditionStatus::False),
    )
    .await;
    // A task under the detector's supervisor that panics on its first two
    // runs, then serves until shutdown.
    let runs = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let (gate_tx, gate) = tokio::sync::watch::channel(0u32);
    let r = runs.clone();
    let t = shutdown.token().clone();
    d.supervisor().spawn_plain("buggy exporter", move || {
        let n = r.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        let (t, mut gate) = (t.clone(), gate.clone());
        async move {
            if n <= 2 {
                // Each panic waits for the test's go, so the test sees every state.
                let _ = gate.wait_for(|g| *g >= n).await;
                panic!("bug number {n}");
            }
            t.cancelled().await;
        }
    });
    let http = d.http_addr.expect("http");
    let health_until = |want: u16, needle: &'static str| async move {
        let mut last = (0, String::new());
        for _ in 0..200 {
            last = http_get(http, "/healthz").await;
            if last.0 == want && last.1.contains(needle) {
                return last.1;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("/healthz never answered {want} with {needle:?}; last {last:?}");
    };
    gate_tx.send_replace(1);
    let body = health_until(503, "buggy exporter (panicked: bug number 1; restart 1 in").await;
    assert!(!body.contains("external-monitor"), "{body}");
    gate_tx.send_replace(2);
    health_until(503, "bug number 2; restart 2 in").await;
    let body = health_until(
        200,
        "buggy exporter (restarted after 2 panics; last: bug number 2)",
    )
    .await;
    assert!(body.starts_with("ok"), "{body}");
    assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 3);
    let (_, metrics) = http_get(d.metrics_addr.expect("metrics"), "/metrics").await;
    assert!(
        metrics.contains("npd_ext_task_panics_total{task=\"buggy exporter\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("npd_ext_task_panics_total{task=\"fan-in\"} 0"),
        "every supervised task has its series: {metrics}"
    );
    // The other monitors were not disturbed.
    let c = d.conditions().borrow().clone();
    let g = find(&c, "GoodThing").expect("set");
    assert_eq!(
        (g.status, g.message.as_str()),
        (ConditionStatus::False, "fine")
    );
    assert!(shutdown.drain(Duration::from_secs(5)).await);
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_and_a_hung_plugin_turn_unknown_beside_a_good_one() {
    let dir = common::tempdir();
    let token = CancellationToken::new();
    let _good = serve_good(dir.path(), &token);
    // This one answers, then goes away with its socket (a crash).
    let crash_token = CancellationToken::new();
    let _crashing = serve(
        &dir.path().join("crash.sock"),
        one("crash", "CrashPlugin", pb::ConditionStatus::False, "alive"),
        crash_token.clone(),
    );
    // This one never answers within the test.
    serve_slow(
        &dir.path().join("hung.sock"),
        one(
            "hung",
            "HungPlugin",
            pb::ConditionStatus::False,
            "never seen",
        ),
        Duration::from_secs(3600),
        token.clone(),
    );
    let (shutdown, d) = common::start_detector(vec![
        named(dir.path(), "good", &["GoodThing"]),
        named(dir.path(), "crash", &["CrashPlugin"]),
        named(dir.path(), "hung", &["HungPlugin"]),
    ]);
    let mut conds = d.conditions();
    wait_for(
        &mut conds,
        Duration::from_secs(20),
        "CrashPlugin False",
        |c| common::has(c, "CrashPlugin", ConditionStatus::False),
    )
    .await;
    crash_token.cancel();
    let c = wait_for(
        &mut conds,
        Duration::from_secs(20),
        "the crashed and the hung plugin Unknown",
        |c| {
            common::has(c, "CrashPlugin", ConditionStatus::Unknown)
                && common::has(c, "HungPlugin", ConditionStatus::Unknown)
        },
    )
    .await;
    let crashed = find(&c, "CrashPlugin").expect("set");
    assert_eq!(crashed.reason, "MonitorUnreachable");
    assert!(
        crashed.message.contains("crash.sock"),
        "names the socket: {}",
        crashed.message
    );
    assert_timed_out(&c, "HungPlugin");
    assert_bystander_fine(&c, &d).await;
    shutdown.token().cancel();
    token.cancel();
}

/// The well-behaved plugin beside a faulty one kept its condition, and the
/// detector is healthy.
async fn assert_bystander_fine(
    c: &[npd_ext::conditions::NodeCondition],
    d: &npd_ext::detector::Detector,
) {
    let g = find(c, "GoodThing").expect("set");
    assert_eq!(
        (g.status, g.message.as_str()),
        (ConditionStatus::False, "fine")
    );
    let (code, body) = http_get(d.http_addr.expect("http"), "/healthz").await;
    assert_eq!(code, 200, "{body}");
}

/// Condition `t` is Unknown because its plugin did not answer in time.
fn assert_timed_out(c: &[npd_ext::conditions::NodeCondition], t: &str) {
    let x = find(c, t).expect("set");
    assert_eq!(x.reason, "MonitorUnreachable", "{t}");
    assert!(
        x.message.to_lowercase().contains("deadline") || x.message.contains("no answer within"),
        "{t}: the reason says the plugin was too slow: {}",
        x.message
    );
}

fn metadata(name: &str) -> Result<tonic::Response<pb::MonitorMetadata>, tonic::Status> {
    Ok(tonic::Response::new(pb::MonitorMetadata {
        name: name.into(),
        api_version: "v1".into(),
        ..Default::default()
    }))
}

/// The well-behaved plugin every fault test runs beside: `GoodThing` False "fine".
fn serve_good(dir: &Path, token: &CancellationToken) -> Arc<Mutex<pb::Status>> {
    serve(
        &dir.join("good.sock"),
        one("good", "GoodThing", pb::ConditionStatus::False, "fine"),
        token.clone(),
    )
}
