//! Brokers for scale-out tests: real `redis-server` and `nats-server`
//! processes of the test's own, on free loopback ports (never the default
//! 6379/4222), which a test can kill and restart on the same port; and the
//! [`Backend`] a scale-out scenario runs on, in-process or real.

use std::io::ErrorKind;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use nbio_ws::broker::{LocalBroker, PubSubConfig};
use nbio_ws::ServerBuilder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::net::{eventually, loopback, reserve_port};
use crate::process::Proc;
use crate::tools::missing;
use crate::TIMEOUT;

/// A broker server process on a loopback port that stays the same across
/// [`down`](BrokerProcess::down) and [`up`](BrokerProcess::up): while it is
/// down the port is held by a socket that is bound but not listening, so
/// connections are refused (as with no broker at all) and nothing else can
/// take the port. Killed on drop.
struct BrokerProcess {
    program: &'static str,
    ports: Vec<u16>,
    holds: Vec<TcpSocket>,
    proc: Option<Proc>,
}

impl BrokerProcess {
    /// `n` ports, held.
    fn stopped(program: &'static str, n: usize) -> BrokerProcess {
        let holds: Vec<TcpSocket> = (0..n)
            .map(|_| reserve_port(0).expect("a free loopback port"))
            .collect();
        let ports = holds
            .iter()
            .map(|h| h.local_addr().expect("its address").port())
            .collect();
        BrokerProcess {
            program,
            ports,
            holds,
            proc: None,
        }
    }

    /// Releases the ports and starts the program with `args`.
    fn spawn(&mut self, args: &[String]) {
        self.holds.clear();
        let child = Command::new(self.program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| match e.kind() {
                ErrorKind::NotFound => panic!("{}", missing(self.program, "not on PATH")),
                _ => panic!("cannot start {}: {e}", self.program),
            });
        self.proc = Some(Proc::new(child));
    }

    /// The running process's id.
    fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Proc::pid)
    }

    /// Fails the test if the process has exited.
    fn check_running(&mut self) {
        if let Some(p) = self.proc.as_mut() {
            if let Ok(Some(status)) = p.child().try_wait() {
                panic!(
                    "{} on port {} exited: {status}",
                    self.program, self.ports[0]
                );
            }
        }
    }

    /// SIGKILL (nothing saved, clients see their connections drop); the
    /// ports are held again.
    fn down(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
        self.holds = self
            .ports
            .iter()
            .map(|&p| reserve_port(p).unwrap_or_else(|e| panic!("cannot keep port {p}: {e}")))
            .collect();
    }
}

/// A `redis-server` of the test's own: no persistence, a free loopback
/// port kept across restarts, killed on drop.
pub struct Redis(BrokerProcess);

impl Redis {
    /// Started, answering `PING`.
    pub async fn start() -> Redis {
        let mut r = Redis::stopped();
        r.up().await;
        r
    }

    /// A port for a Redis that is not running (yet): connections to it are
    /// refused until [`up`](Redis::up).
    pub fn stopped() -> Redis {
        Redis(BrokerProcess::stopped("redis-server", 1))
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.0.ports[0]
    }

    /// The `redis-server` process's id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.0.pid()
    }

    /// `redis://127.0.0.1:port/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port())
    }

    /// The variables that put a server binary on this Redis
    /// (`WS_PUBSUB_ENABLED`, `WS_PUBSUB_ADAPTER`, `WS_REDIS_URL`).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        pubsub_env("redis", "WS_REDIS_URL", self.url())
    }

    /// Starts it (on the same port as before) and waits until it answers
    /// `PING`.
    pub async fn up(&mut self) {
        let port = self.port().to_string();
        self.0.spawn(&[
            "--port".into(),
            port,
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            "no".into(),
        ]);
        let port = self.port();
        eventually(|| {
            self.0.check_running();
            async move {
                match redis_command(port, &["PING"]).await {
                    Ok(reply) if reply == "+PONG\r\n" => Ok(()),
                    other => Err(format!("redis-server on port {port}: {other:?}")),
                }
            }
        })
        .await
    }

    /// Kills it (SIGKILL: nothing is saved, clients see the connection
    /// drop) and keeps its port.
    pub fn down(&mut self) {
        self.0.down();
    }

    /// Sends one command; its raw RESP reply, read whole.
    pub async fn try_cmd(&self, args: &[&str]) -> std::io::Result<String> {
        redis_command(self.port(), args).await
    }

    /// [`try_cmd`](Redis::try_cmd), failing the test on an error.
    pub async fn cmd(&self, args: &[&str]) -> String {
        self.try_cmd(args).await.expect("redis answers")
    }

    /// How many subscribers `channel` has (`PUBSUB NUMSUB`).
    pub async fn subscribers(&self, channel: &str) -> usize {
        // *2 $len channel :count
        let reply = self.cmd(&["PUBSUB", "NUMSUB", channel]).await;
        reply
            .rsplit_once(':')
            .and_then(|(_, n)| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("PUBSUB NUMSUB {channel}: {reply:?}"))
    }
}

/// One command to the Redis on `port`; its raw RESP reply, read whole.
pub async fn redis_command(port: u16, args: &[&str]) -> std::io::Result<String> {
    let mut s = TcpStream::connect(loopback(port)).await?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while resp_len(&buf).is_none() {
        let n = tokio::time::timeout(TIMEOUT, s.read(&mut chunk))
            .await
            .map_err(|_| std::io::Error::other("timed out"))??;
        if n == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// `WS_PUBSUB_*` for `adapter`, with its URL in `url_var`.
fn pubsub_env(adapter: &str, url_var: &'static str, url: String) -> Vec<(&'static str, String)> {
    vec![
        ("WS_PUBSUB_ENABLED", "true".to_owned()),
        ("WS_PUBSUB_ADAPTER", adapter.to_owned()),
        (url_var, url),
    ]
}

/// The length of the first complete RESP value in `buf`, if there is one.
fn resp_len(buf: &[u8]) -> Option<usize> {
    let line = buf.windows(2).position(|w| w == b"\r\n")? + 2;
    let n = || {
        std::str::from_utf8(&buf[1..line - 2])
            .ok()?
            .parse::<i64>()
            .ok()
    };
    match buf[0] {
        b'+' | b'-' | b':' => Some(line),
        b'$' => match n()? {
            len if len < 0 => Some(line),
            len => Some(line + len as usize + 2).filter(|&end| buf.len() >= end),
        },
        b'*' => {
            let mut end = line;
            for _ in 0..n()?.max(0) {
                end += resp_len(&buf[end..])?;
            }
            Some(end)
        }
        _ => Some(buf.len()),
    }
}

/// A `nats-server` of the test's own, with its monitoring port, on free
/// loopback ports kept across restarts; killed on drop.
pub struct Nats {
    server: BrokerProcess,
    /// JetStream's store directory, when JetStream is on (`-js`).
    store: Option<PathBuf>,
    /// A configuration file (`-c`), when the test gave one.
    config: Option<PathBuf>,
}

impl Nats {
    /// Started, accepting connections.
    pub async fn start() -> Nats {
        let mut n = Nats::stopped(false);
        n.up().await;
        n
    }

    /// Started with JetStream (`-js`), its store in a directory of its own
    /// (removed on drop).
    pub async fn start_jetstream() -> Nats {
        let mut n = Nats::stopped(true);
        n.up().await;
        n
    }

    /// Ports for a NATS that is not running (yet).
    pub fn stopped(jetstream: bool) -> Nats {
        let server = BrokerProcess::stopped("nats-server", 2);
        let store = jetstream.then(|| {
            std::env::temp_dir().join(format!(
                "nbio-ws-nats-{}-{}",
                std::process::id(),
                server.ports[0]
            ))
        });
        Nats {
            server,
            store,
            config: None,
        }
    }

    /// Started with `config` as its configuration file (`-c`; for
    /// settings that have no command-line flag, such as
    /// `max_payload: 65536` or `authorization { ... }`). The address and
    /// ports stay the test's own.
    pub async fn start_with_config(config: &str) -> Nats {
        let mut n = Nats::stopped(false);
        let path = std::env::temp_dir().join(format!(
            "nbio-ws-nats-{}-{}.conf",
            std::process::id(),
            n.port()
        ));
        std::fs::write(&path, config).expect("a NATS configuration file");
        n.config = Some(path);
        n.up().await;
        n
    }

    /// Replaces its configuration file with `config` and has it reload it
    /// (SIGHUP), as an operator would. Needs [`Nats::start_with_config`].
    pub fn reload(&mut self, config: &str) {
        let path = self
            .config
            .as_ref()
            .expect("started with a configuration file");
        std::fs::write(path, config).expect("a NATS configuration file");
        self.server
            .proc
            .as_ref()
            .expect("nats-server is running")
            .hangup();
    }

    /// The `nats-server` process's id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.server.pid()
    }

    /// Its client port.
    pub fn port(&self) -> u16 {
        self.server.ports[0]
    }

    /// Its monitoring port (`-m`).
    pub fn monitor(&self) -> u16 {
        self.server.ports[1]
    }

    /// `nats://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port())
    }

    /// The variables that put a server binary on this NATS
    /// (`WS_PUBSUB_ENABLED`, `WS_PUBSUB_ADAPTER`, `WS_NATS_URL`).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        pubsub_env("nats", "WS_NATS_URL", self.url())
    }

    /// Starts it (on the same ports as before) and waits until it accepts
    /// connections.
    pub async fn up(&mut self) {
        let mut args: Vec<String> = ["-a", "127.0.0.1", "-p"].map(String::from).to_vec();
        args.push(self.port().to_string());
        args.push("-m".into());
        args.push(self.monitor().to_string());
        if let Some(config) = &self.config {
            args.extend(["-c".into(), config.display().to_string()]);
        }
        if let Some(store) = &self.store {
            std::fs::create_dir_all(store).expect("a JetStream store directory");
            args.extend(["-js".into(), "-sd".into(), store.display().to_string()]);
        }
        self.server.spawn(&args);
        let port = self.port();
        eventually(|| {
            self.server.check_running();
            async move {
                TcpStream::connect(loopback(port))
                    .await
                    .map(drop)
                    .map_err(|e| format!("nats-server on port {port}: {e}"))
            }
        })
        .await
    }

    /// Kills it (SIGKILL) and keeps its ports.
    pub fn down(&mut self) {
        self.server.down();
    }

    /// How many subscriptions on `subject` its monitoring endpoint lists
    /// (`/connz?subs=1`).
    pub async fn subscribers(&self, subject: &str) -> usize {
        let (_, _, body) =
            crate::http::http_request(loopback(self.monitor()), "GET", "/connz?subs=1&limit=1000")
                .await;
        // The body is chunked: the JSON is from the first `{` to the last `}`.
        let json = match (body.find('{'), body.rfind('}')) {
            (Some(a), Some(b)) if a < b => &body[a..=b],
            _ => "",
        };
        let v: serde_json::Value =
            serde_json::from_str(json).unwrap_or_else(|e| panic!("connz JSON: {e}: {body}"));
        v["connections"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| c["subscriptions_list"].as_array().into_iter().flatten())
            .filter(|s| s.as_str() == Some(subject))
            .count()
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.server.down();
        if let Some(store) = &self.store {
            let _ = std::fs::remove_dir_all(store);
        }
        if let Some(config) = &self.config {
            let _ = std::fs::remove_file(config);
        }
    }
}

/// Which broker a scale-out scenario runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The in-process [`LocalBroker`] (shared by the servers of one test).
    Local,
    /// A real `redis-server`.
    Redis,
    /// A real `nats-server`.
    Nats,
}

impl Kind {
    /// The program this kind needs, if any.
    pub fn tool(self) -> Option<&'static str> {
        match self {
            Kind::Local => None,
            Kind::Redis => Some("redis-server"),
            Kind::Nats => Some("nats-server"),
        }
    }
}

enum Real {
    Local,
    Redis(Redis),
    Nats(Nats),
}

/// The broker under test: in-process, or a real server process (killed
/// on drop) that the test can take down and bring back on the same port.
pub struct Backend {
    /// Which one.
    pub kind: Kind,
    /// A port of its own (the real server's; for the in-process broker,
    /// just a number that no other test of this run has): tests name their
    /// channels after it.
    pub port: u16,
    /// The in-process broker (used with [`Kind::Local`]).
    pub local: LocalBroker,
    real: Real,
}

impl Backend {
    /// Starts the broker and waits until it accepts connections.
    pub async fn start(kind: Kind) -> Backend {
        let real = match kind {
            Kind::Local => Real::Local,
            Kind::Redis => Real::Redis(Redis::start().await),
            Kind::Nats => Real::Nats(Nats::start().await),
        };
        Backend::of(kind, real)
    }

    /// A real `nats-server` with JetStream (`-js`), for rooms that keep
    /// their history in it; otherwise like `Backend::start(Kind::Nats)`.
    pub async fn start_jetstream() -> Backend {
        Backend::of(Kind::Nats, Real::Nats(Nats::start_jetstream().await))
    }

    fn of(kind: Kind, real: Real) -> Backend {
        let port = match &real {
            Real::Local => crate::free_port(),
            Real::Redis(r) => r.port(),
            Real::Nats(n) => n.port(),
        };
        let local = LocalBroker::new();
        local.set_connected(true);
        Backend {
            kind,
            port,
            local,
            real,
        }
    }

    /// The broker's URL (empty for the in-process one).
    pub fn url(&self) -> String {
        match &self.real {
            Real::Local => String::new(),
            Real::Redis(r) => r.url(),
            Real::Nats(n) => n.url(),
        }
    }

    /// The pub/sub configuration of an instance on this broker.
    pub fn pubsub(&self, channel: &str) -> PubSubConfig {
        match &self.real {
            Real::Local => {
                let mut local = PubSubConfig::default();
                local.enabled = true;
                local.channel(channel)
            }
            Real::Redis(r) => PubSubConfig::redis(r.url()).channel(channel),
            Real::Nats(n) => PubSubConfig::nats(n.url()).channel(channel),
        }
    }

    /// `app` configured for this broker, on `channel`.
    pub fn builder(&self, app: ServerBuilder, channel: &str) -> ServerBuilder {
        self.builder_with(app, self.pubsub(channel))
    }

    /// `app` with `pubsub` (made by [`Backend::pubsub`]).
    pub fn builder_with(&self, app: ServerBuilder, pubsub: PubSubConfig) -> ServerBuilder {
        match self.kind {
            Kind::Local => app.pubsub(pubsub).broker(self.local.clone()),
            Kind::Redis | Kind::Nats => app.pubsub(pubsub),
        }
    }

    /// Starts the broker again (on the same port) and waits until it
    /// accepts connections.
    pub async fn up(&mut self) {
        match &mut self.real {
            Real::Local => self.local.set_connected(true),
            Real::Redis(r) => r.up().await,
            Real::Nats(n) => n.up().await,
        }
    }

    /// Takes the broker down hard (SIGKILL for a real server).
    pub fn down(&mut self) {
        match &mut self.real {
            Real::Local => self.local.set_connected(false),
            Real::Redis(r) => r.down(),
            Real::Nats(n) => n.down(),
        }
    }

    /// How many subscriptions the broker has on `channel`; `None` for the
    /// in-process broker.
    pub async fn subscribers(&self, channel: &str) -> Option<usize> {
        match &self.real {
            Real::Local => None,
            Real::Redis(r) => Some(r.subscribers(channel).await),
            Real::Nats(n) => Some(n.subscribers(channel).await),
        }
    }
}

/// Three tests of one scale-out scenario, `async fn scenario(Kind)`: on the
/// in-process broker, on a real Redis (with the calling crate's `redis`
/// feature) and on a real NATS (with its `nats` feature). The Redis and
/// NATS tests first [`require_tool`](crate::require_tool) their server.
///
/// ```ignore
/// nbio_ws_testkit::per_broker! {
///     #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
///     scale_out: scale_out_local, scale_out_redis, scale_out_nats
/// }
/// ```
#[macro_export]
macro_rules! per_broker {
    ($(#[$attr:meta])* $scenario:ident: $local:ident, $redis:ident, $nats:ident) => {
        $(#[$attr])*
        async fn $local() {
            $scenario($crate::broker::Kind::Local).await;
        }

        #[cfg(feature = "redis")]
        $(#[$attr])*
        async fn $redis() {
            $crate::require_tools!("redis-server");
            $scenario($crate::broker::Kind::Redis).await;
        }

        #[cfg(feature = "nats")]
        $(#[$attr])*
        async fn $nats() {
            $crate::require_tools!("nats-server");
            $scenario($crate::broker::Kind::Nats).await;
        }
    };
}
