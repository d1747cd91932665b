//! A broker for scale-out tests: an in-process one, or a real
//! `redis-server` / `nats-server` on a free loopback port that a test can
//! kill and restart on the same port.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nbio_ws::broker::{LocalBroker, PubSubConfig};
use nbio_ws::ServerBuilder;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

#[derive(Clone, Copy, Debug, PartialEq)]
#[allow(dead_code)] // Redis and Nats only with their features
pub enum Kind {
    Local,
    Redis,
    Nats,
}

/// The broker under test: an in-process one, or a real server process on
/// a fixed loopback port (killed on drop).
pub struct Backend {
    pub kind: Kind,
    pub port: u16,
    pub local: LocalBroker,
    /// NATS's monitoring port (`-m`).
    pub monitor: u16,
    child: Option<Child>,
}

impl Backend {
    pub async fn start(kind: Kind) -> Backend {
        let mut b = Backend {
            kind,
            port: free_port(),
            local: LocalBroker::new(),
            monitor: free_port(),
            child: None,
        };
        b.up().await;
        b
    }

    pub fn url(&self) -> String {
        match self.kind {
            Kind::Local => String::new(),
            Kind::Redis => format!("redis://127.0.0.1:{}/0", self.port),
            Kind::Nats => format!("nats://127.0.0.1:{}", self.port),
        }
    }

    /// The pub/sub configuration of an instance on this broker.
    pub fn pubsub(&self, channel: &str) -> PubSubConfig {
        match self.kind {
            Kind::Local => PubSubConfig::new("local").channel(channel),
            Kind::Redis => PubSubConfig::redis(self.url()).channel(channel),
            Kind::Nats => PubSubConfig::nats(self.url()).channel(channel),
        }
    }

    /// `app` configured for this broker.
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

    /// Starts the broker (on the same port as before) and waits until it
    /// accepts connections.
    pub async fn up(&mut self) {
        let port = self.port.to_string();
        let mut cmd = match self.kind {
            Kind::Local => {
                self.local.set_connected(true);
                return;
            }
            Kind::Redis => {
                let mut c = Command::new("redis-server");
                c.args([
                    "--port",
                    &port,
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ]);
                c
            }
            Kind::Nats => {
                let mut c = Command::new("nats-server");
                let monitor = self.monitor.to_string();
                c.args(["-a", "127.0.0.1", "-p", &port, "-m", &monitor]);
                c
            }
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {:?} (is it installed?): {e}", self.kind));
        self.child = Some(child);
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "{:?} did not listen on port {} in time",
            self.kind, self.port
        );
    }

    /// Takes the broker down hard (SIGKILL for a real server).
    pub fn down(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.kind == Kind::Local {
            self.local.set_connected(false);
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.down();
    }
}

impl Backend {
    /// How many subscriptions the broker has on `channel` (Redis:
    /// `PUBSUB NUMSUB`; NATS: the subscriptions its monitoring endpoint
    /// lists); `None` for the in-process broker.
    pub async fn subscribers(&self, channel: &str) -> Option<usize> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        match self.kind {
            Kind::Local => None,
            Kind::Redis => {
                let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                    .await
                    .expect("redis up");
                let cmd = format!(
                    "*3\r\n$6\r\nPUBSUB\r\n$6\r\nNUMSUB\r\n${}\r\n{}\r\n",
                    channel.len(),
                    channel
                );
                s.write_all(cmd.as_bytes()).await.expect("write");
                // *2 $len channel :count
                let mut buf = Vec::new();
                let mut chunk = [0u8; 512];
                loop {
                    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
                        .await
                        .expect("redis answers")
                        .expect("read");
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf);
                    if let Some(at) = text.rfind(':') {
                        if let Some(end) = text[at..].find("\r\n") {
                            return text[at + 1..at + end].parse().ok();
                        }
                    }
                    assert!(n > 0, "redis closed: {text}");
                }
            }
            Kind::Nats => {
                let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.monitor))
                    .await
                    .expect("nats monitor up");
                let req =
                    "GET /connz?subs=1&limit=1000 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
                s.write_all(req.as_bytes()).await.expect("write");
                let mut buf = Vec::new();
                tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
                    .await
                    .expect("nats monitor answers")
                    .expect("read");
                let text = String::from_utf8_lossy(&buf);
                let body = match (text.find('{'), text.rfind('}')) {
                    (Some(a), Some(b)) if a < b => &text[a..=b],
                    _ => "",
                };
                let v: serde_json::Value = serde_json::from_str(body)
                    .unwrap_or_else(|e| panic!("connz JSON: {e}: {text}"));
                let n = v["connections"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|c| c["subscriptions_list"].as_array().into_iter().flatten())
                    .filter(|s| s.as_str() == Some(channel))
                    .count();
                Some(n)
            }
        }
    }
}
