//! Scale-out as deployed: the example `server` binary, three processes
//! configured only by `WS_PUBSUB_*` variables and sharing a `redis-server`
//! started here, behind Debian's nginx running `deploy/nginx/nginx.conf`
//! (round robin) and `deploy/nginx/nginx-ip-hash.conf` (sticky), with
//! `deploy/nginx/proxy.conf` included as is. Clients that nginx sent to
//! different instances see each other's broadcasts.
//!
//! Also: the binary's configuration errors for the pub/sub variables.

// The nginx test needs the `redis` feature; its helpers are idle without it.
#![cfg_attr(not(feature = "redis"), allow(dead_code, unused_imports))]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nbio_ws_testkit::process::{command, run_to_exit, ServerProcess};
use nbio_ws_testkit::{free_port, wait_port, Proc, WsClient};
use serde_json::{json, Value};

/// `/health` of the instance on `port`.
async fn health(port: u16) -> Value {
    let (_, _, body) =
        nbio_ws_testkit::http_request(nbio_ws_testkit::loopback(port), "GET", "/health").await;
    serde_json::from_str(&body).expect("health JSON")
}

/// The example server with the given extra environment.
fn server(port: u16, env: &[(&str, &str)]) -> Command {
    let mut cmd = command(env!("CARGO_BIN_EXE_server"), port);
    cmd.envs(env.iter().copied());
    cmd
}

/// Runs the server expecting it to stop at once: (exit code, stderr).
fn run_server_to_exit(env: &[(&str, &str)]) -> (Option<i32>, String) {
    run_to_exit(env!("CARGO_BIN_EXE_server"), env)
}

#[test]
fn pubsub_configuration_errors_stop_startup() {
    let (code, err) = run_server_to_exit(&[
        ("WS_PUBSUB_ENABLED", "true"),
        ("WS_PUBSUB_ADAPTER", "kafka"),
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(r#"error: invalid WS_PUBSUB_ADAPTER="kafka": expected local, redis or nats"#),
        "{err}"
    );

    let (code, err) = run_server_to_exit(&[
        ("WS_PUBSUB_ENABLED", "true"),
        ("WS_PUBSUB_ADAPTER", "redis"),
        ("WS_REDIS_URL", "http://:s3cret@127.0.0.1:6379"),
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(r#"error: invalid WS_REDIS_URL="http://:***@127.0.0.1:6379""#),
        "{err}"
    );
    assert!(!err.contains("s3cret"), "a password was printed: {err}");

    let (code, err) = run_server_to_exit(&[
        ("WS_PUBSUB_ENABLED", "true"),
        ("WS_PUBSUB_ADAPTER", "nats"),
        ("WS_NATS_URL", "nats://127.0.0.1:42x2"),
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("error: invalid WS_NATS_URL="), "{err}");

    let (code, err) = run_server_to_exit(&[("WS_PUBSUB_CHANNEL", "two words")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(r#"invalid WS_PUBSUB_CHANNEL="two words""#),
        "{err}"
    );
}

/// A binary built without a backend's feature says which feature to add.
#[cfg(not(all(feature = "redis", feature = "nats")))]
#[test]
fn an_adapter_that_is_not_compiled_names_its_feature() {
    let missing = if cfg!(feature = "redis") {
        "nats"
    } else {
        "redis"
    };
    let (code, err) = run_server_to_exit(&[
        ("WS_PUBSUB_ENABLED", "true"),
        ("WS_PUBSUB_ADAPTER", missing),
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(&format!("`{missing}` cargo feature")), "{err}");
}

async fn connect(port: u16) -> WsClient {
    WsClient::connect(&format!("ws://127.0.0.1:{port}/ws")).await
}

async fn broadcast(ws: &mut WsClient, text: &str) {
    let req = json!({"jsonrpc": "2.0", "method": "broadcast", "params": {"text": text}, "id": 1});
    ws.send_json(&req).await;
}

/// Reads until a `broadcast` notification with `text` arrives.
async fn expect_broadcast(ws: &mut WsClient, text: &str) {
    expect_broadcasts(ws, &[text]).await;
}

/// Reads until a `broadcast` notification with each of `texts` arrived,
/// in any order (broadcasts of different senders are not ordered).
async fn expect_broadcasts(ws: &mut WsClient, texts: &[&str]) {
    let mut missing: std::collections::HashSet<&str> = texts.iter().copied().collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !missing.is_empty() {
        let v = ws
            .json_before(deadline)
            .await
            .unwrap_or_else(|| panic!("no broadcast {missing:?} in time"));
        if v["method"] == "broadcast" {
            if let Some(text) = v["params"]["text"].as_str() {
                missing.remove(text);
            }
        }
    }
}

/// A configuration from `deploy/nginx/<file>`, changed only where a test
/// must differ from a deployment: loopback ports, paths in a temporary
/// prefix, one worker, no daemon.
fn nginx_conf(file: &str, prefix: &Path, listen: u16, upstreams: &[u16]) -> String {
    let deploy = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/nginx");
    let conf = std::fs::read_to_string(deploy.join(file)).expect("deploy config");
    let servers: String = upstreams
        .iter()
        .map(|p| format!("server 127.0.0.1:{p} max_fails=3 fail_timeout=5s;\n        "))
        .collect();
    let p = prefix.display();
    let replacements = [
        ("worker_processes auto;", format!(
            "worker_processes 1;\ndaemon off;\npid {p}/nginx.pid;\nerror_log {p}/error.log warn;"
        )),
        ("http {", format!(
            "http {{\n    access_log off;\n    client_body_temp_path {p}/body;\n    proxy_temp_path {p}/proxy;\n    \
             fastcgi_temp_path {p}/fastcgi;\n    uwsgi_temp_path {p}/uwsgi;\n    scgi_temp_path {p}/scgi;"
        )),
        ("server websocket:8080 max_fails=3 fail_timeout=5s;", servers),
        ("listen 80;", format!("listen 127.0.0.1:{listen};")),
        (
            "include /etc/nginx/nbio-ws/proxy.conf;",
            format!("include {};", deploy.join("proxy.conf").display()),
        ),
    ];
    let mut out = conf;
    for (from, to) in replacements {
        assert!(
            out.contains(from),
            "deploy/nginx/{file} no longer contains {from:?}"
        );
        out = out.replacen(from, &to, 1);
    }
    out
}

/// nginx's master process: stopped with SIGTERM, so that it stops its
/// worker too (SIGKILL would leave the worker running).
fn start_nginx(file: &str, dir: &Path, listen: u16, upstreams: &[u16]) -> Proc {
    let prefix = dir.join(file.trim_end_matches(".conf"));
    std::fs::create_dir_all(&prefix).expect("nginx prefix");
    let conf_path = prefix.join("nginx.conf");
    std::fs::write(&conf_path, nginx_conf(file, &prefix, listen, upstreams)).expect("write conf");
    let nginx = || {
        let mut cmd = Command::new("nginx");
        cmd.arg("-c").arg(&conf_path).arg("-p").arg(&prefix);
        cmd.arg("-e").arg(prefix.join("error.log"));
        cmd
    };
    let check = nginx()
        .arg("-t")
        .output()
        .expect("nginx on PATH (scripts/install-test-deps.sh installs it)");
    assert!(
        check.status.success(),
        "nginx -t: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let child = nginx()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nginx");
    Proc::graceful(child)
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_balances_instances_that_share_broadcasts_through_redis() {
    nbio_ws_testkit::require_tools!("redis-server", "nginx");
    let redis = nbio_ws_testkit::broker::Redis::start().await;
    let redis_url = redis.url();
    let channel = format!("nbio-nginx-test.{}", std::process::id());
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut instances = Vec::new();
    for &port in &ports {
        let mut cmd = server(
            port,
            &[
                ("WS_PUBSUB_ENABLED", "true"),
                ("WS_PUBSUB_ADAPTER", "redis"),
                ("WS_REDIS_URL", &redis_url),
                ("WS_PUBSUB_CHANNEL", &channel),
            ],
        );
        cmd.stderr(Stdio::null());
        instances.push(ServerProcess::spawn(&mut cmd, port, "/health").await);
    }
    for instance in &instances {
        instance.wait_broker_connected().await;
    }
    let dir = std::env::temp_dir().join(format!("nbio-ws-nginx-{}", std::process::id()));

    // Round robin: three connections through nginx land on three instances.
    let listen = free_port();
    let nginx = start_nginx("nginx.conf", &dir, listen, &ports);
    wait_port(listen).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(connect(listen).await);
    }
    let mut per_instance = Vec::new();
    for &port in &ports {
        per_instance.push(
            health(port).await["connected_clients"]
                .as_u64()
                .unwrap_or(0),
        );
    }
    assert_eq!(
        per_instance,
        vec![1, 1, 1],
        "round robin spreads the clients"
    );
    // Subscriptions are live once a probe crosses between instances.
    warm_up(&mut clients).await;
    for (i, c) in clients.iter_mut().enumerate() {
        broadcast(c, &format!("rr-from-{i}")).await;
    }
    for c in clients.iter_mut() {
        expect_broadcasts(c, &["rr-from-0", "rr-from-1", "rr-from-2"]).await;
    }
    for mut c in clients {
        c.close().await;
    }
    drop(nginx);

    // ip_hash: every loopback client lands on the same instance; a client
    // connected straight to another instance still sees their broadcasts.
    let listen = free_port();
    let nginx = start_nginx("nginx-ip-hash.conf", &dir, listen, &ports);
    wait_port(listen).await;
    let mut sticky = Vec::new();
    for _ in 0..3 {
        sticky.push(connect(listen).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await; // old closes settle
    let mut counts = Vec::new();
    for &port in &ports {
        counts.push(
            health(port).await["connected_clients"]
                .as_u64()
                .unwrap_or(0),
        );
    }
    let home = counts
        .iter()
        .position(|&n| n == 3)
        .unwrap_or_else(|| panic!("ip_hash should keep one address on one instance: {counts:?}"));
    let other = ports[(home + 1) % ports.len()];
    let mut direct = connect(other).await;
    broadcast(&mut sticky[0], "sticky-hello").await;
    expect_broadcast(&mut direct, "sticky-hello").await;
    broadcast(&mut direct, "direct-hello").await;
    for c in sticky.iter_mut() {
        expect_broadcasts(c, &["sticky-hello", "direct-hello"]).await;
    }
    drop(nginx);
    drop(instances);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Broadcasts from the first client until every client has seen one
/// (bounded), so that the real checks do not race the subscriptions.
async fn warm_up(clients: &mut [WsClient]) {
    for k in 0..50 {
        let text = format!("warm-{k}");
        broadcast(&mut clients[0], &text).await;
        let mut all = true;
        for c in clients.iter_mut() {
            let got =
                tokio::time::timeout(Duration::from_millis(200), expect_broadcast(c, &text)).await;
            all &= got.is_ok();
        }
        if all {
            return;
        }
    }
    panic!("cross-instance delivery did not start");
}

/// A Redis that is down at startup does not stop the binary: it serves,
/// reports `degraded` (200), and the failure counter grows.
#[cfg(feature = "redis")]
#[tokio::test]
async fn the_binary_starts_while_redis_is_down() {
    let port = free_port();
    let dead = format!("redis://127.0.0.1:{}/0", free_port());
    let mut cmd = server(
        port,
        &[
            ("WS_PUBSUB_ENABLED", "true"),
            ("WS_PUBSUB_ADAPTER", "redis"),
            ("WS_REDIS_URL", &dead),
        ],
    );
    cmd.stderr(Stdio::null());
    let instance = ServerProcess::spawn(&mut cmd, port, "/health").await;
    let (status, _, body) = instance.get("/health").await;
    let h: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(status, 200);
    assert_eq!(h["status"], "degraded", "{h}");
    assert_eq!(h["broker"], json!({"adapter": "redis", "connected": false}));
    let mut ws = connect(port).await;
    broadcast(&mut ws, "alone").await;
    expect_broadcast(&mut ws, "alone").await;
    let mut failures = 0.0;
    for _ in 0..100 {
        let (_, _, metrics) = instance.get("/metrics").await;
        failures = nbio_ws_testkit::metric(&metrics, "nbio_ws_broker_publish_failures_total")
            .unwrap_or(0) as f64;
        if failures >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(failures >= 1.0, "publish failure not counted");
}
