//! End-to-end: the `bare` binary on a free loopback port, driven by the
//! three loadgen scenarios with small, short loads. Checks that the
//! baseline speaks the wire format and that the scenarios count correctly.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use nbio_ws_benches::ws::WsTarget;
use nbio_ws_benches::{fanout, idle, reply};
use nbio_ws_testkit::Proc;

/// The `bare` server, killed on drop.
struct Bare {
    proc: Proc,
    url: String,
}

impl Bare {
    fn start() -> Bare {
        let mut proc = Proc::spawn(
            Command::new(env!("CARGO_BIN_EXE_bare"))
                .args(["--host", "127.0.0.1", "--port", "0"])
                .stdout(Stdio::piped()),
        );
        let mut line = String::new();
        BufReader::new(proc.child().stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("bare listening on ")
            .expect("banner")
            .to_string();
        Bare { proc, url }
    }

    fn pid(&self) -> u32 {
        self.proc.pid()
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn reply_against_bare() {
    let bare = Bare::start();
    let report = rt().block_on(reply::run(reply::ReplyConfig {
        target: WsTarget::parse(&bare.url).unwrap(),
        connections: 4,
        inflight: 4,
        text_size: 100,
        duration: Duration::from_millis(500),
        warmup: Duration::from_millis(100),
        server_pid: Some(bare.pid()),
        connect_concurrency: 4,
        connect_timeout: Duration::from_secs(5),
        drain_timeout: Duration::from_secs(5),
    }));
    assert_eq!(report.connected, 4);
    assert!(report.responses > 100, "{report:?}");
    assert_eq!(report.errors.total, 0, "{report:?}");
    assert!(report.latency.count > 0);
    assert!(report.server_cpu.is_some());
}

#[test]
fn fanout_against_two_bare_instances() {
    let a = Bare::start();
    let b = Bare::start();
    // Two independent instances: receivers on `b` get nothing (no broker),
    // which the report must show as missing, per target.
    let report = rt().block_on(fanout::run(fanout::FanoutConfig {
        targets: vec![
            WsTarget::parse(&a.url).unwrap(),
            WsTarget::parse(&b.url).unwrap(),
        ],
        clients: 20,
        rate: 50.0,
        duration: Duration::from_millis(200),
        senders: 1,
        text_size: 64,
        settle: Duration::from_millis(100),
        grace: Duration::from_millis(300),
        connect_concurrency: 8,
        connect_timeout: Duration::from_secs(5),
        server_pid: Some(a.pid()),
    }));
    assert_eq!(report.connected, 20);
    assert_eq!(report.broadcasts_sent, 10);
    assert_eq!(report.acks_ok, 10);
    assert_eq!(report.expected_deliveries, 200);
    assert_eq!(report.per_target[0].deliveries, 100, "{report:?}");
    assert_eq!(report.per_target[0].missing, 0);
    assert_eq!(report.per_target[1].deliveries, 0);
    assert_eq!(report.missing, 100);
    assert_eq!(report.duplicates, 0);
    assert_eq!(report.sender_deliveries, 10);
    // /health counts the 10 receivers plus the sender on `a`.
    assert_eq!(report.per_target[0].health_connected_clients, Some(11));
}

#[test]
fn fanout_single_instance_complete() {
    let a = Bare::start();
    let report = rt().block_on(fanout::run(fanout::FanoutConfig {
        targets: vec![WsTarget::parse(&a.url).unwrap()],
        clients: 50,
        rate: 100.0,
        duration: Duration::from_millis(200),
        senders: 2,
        text_size: 64,
        settle: Duration::from_millis(100),
        grace: Duration::from_secs(2),
        connect_concurrency: 16,
        connect_timeout: Duration::from_secs(5),
        server_pid: None,
    }));
    assert_eq!(report.broadcasts_sent, 20);
    assert_eq!(report.expected_deliveries, 1000);
    assert_eq!(report.deliveries, 1000, "{report:?}");
    assert_eq!(report.missing, 0);
    assert_eq!(report.duplicates, 0);
    assert_eq!(report.unexpected_frames, 0);
    assert_eq!(report.latency.count, 1000);
}

#[test]
fn idle_against_bare() {
    let bare = Bare::start();
    let report = rt()
        .block_on(idle::run(idle::IdleConfig {
            target: WsTarget::parse(&bare.url).unwrap(),
            connections: 200,
            pid: bare.pid(),
            hold: Duration::from_millis(300),
            connect_concurrency: 64,
            connect_timeout: Duration::from_secs(5),
            after_close: Duration::from_millis(100),
        }))
        .unwrap();
    assert_eq!(report.connected, 200, "{report:?}");
    assert_eq!(report.lost_during_hold, 0);
    assert_eq!(report.health_connected_clients, Some(200));
    assert!(report.rss_held_kib >= report.rss_before_kib);
    assert!(report.server_fds_held.unwrap() >= 200);
}

#[test]
fn refuses_non_loopback() {
    assert!(WsTarget::parse("ws://192.168.1.1:9000/ws").is_err());
    assert!(WsTarget::parse("ws://localhost:9000/ws").is_ok());
}
