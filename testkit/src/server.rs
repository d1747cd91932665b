//! Servers served in-process, on free loopback ports.

use std::net::SocketAddr;
use std::time::Duration;

use nbio_ws::{Hub, ServeError, ServerBuilder, WsEndpoint};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::http::http_request;

/// A server built from a builder and served on a free loopback port by a
/// task of the test's runtime, until [`shutdown`](TestServer::shutdown) or
/// the end of the test.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its hub.
    pub hub: Hub,
    /// Its endpoint (for [`nbio_ws::SecurityStats`] and the like).
    pub endpoint: WsEndpoint,
    stop: Option<oneshot::Sender<()>>,
    /// The task running `serve_listener`.
    pub task: Option<JoinHandle<Result<(), ServeError>>>,
}

impl TestServer {
    /// Builds `builder` (failing the test if it does not build) and serves
    /// it on a free loopback port.
    pub async fn start(builder: ServerBuilder) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("its address");
        let server = builder.build().expect("server builds");
        let hub = server.hub().clone();
        let endpoint = server.endpoint();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve_listener(listener, async move {
            let _ = rx.await;
        }));
        TestServer {
            addr,
            hub,
            endpoint,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// `ws://addr{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// Triggers graceful shutdown and waits (at most 30 s) for `serve` to
    /// return; its result.
    pub async fn shutdown(&mut self) -> Result<(), ServeError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = self.task.take().expect("not shut down yet");
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("shutdown in time")
            .expect("serve task")
    }

    /// Triggers graceful shutdown and waits (at most 30 s) for it, whatever
    /// its outcome.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
        }
    }

    /// `GET path`: `(status, head, body)`.
    pub async fn http_get(&self, path: &str) -> (u16, String, String) {
        http_request(self.addr, "GET", path).await
    }

    /// The value of `name` in `/metrics`, if there.
    pub async fn metric(&self, name: &str) -> Option<u64> {
        crate::metric(&self.http_get("/metrics").await.2, name)
    }

    /// Waits until exactly `n` connections hold per-client state (the
    /// security layer's count and the hub's agree).
    pub async fn wait_connections(&self, n: usize) {
        for _ in 0..500 {
            let s = self.endpoint.security_stats();
            if s.connections == n && self.endpoint.hub().len() == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "expected {n} connections, have {:?} (hub {})",
            self.endpoint.security_stats(),
            self.endpoint.hub().len()
        );
    }
}

/// A server on its own runtime, in its own thread, that can be crashed:
/// the runtime is dropped with everything on it (no shutdown, no goodbye to
/// its clients or its broker), as when the process dies.
pub struct Crashable {
    /// Where it listens.
    pub addr: SocketAddr,
    crash: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Crashable {
    /// Builds and serves `builder` on a free loopback port.
    pub fn start(builder: ServerBuilder) -> Crashable {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        listener.set_nonblocking(true).expect("nonblocking");
        let (crash, crashed) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = TcpListener::from_std(listener).expect("listener");
                let server = builder.build().expect("server builds");
                tokio::select! {
                    _ = server.serve_listener(listener, std::future::pending::<()>()) => {}
                    _ = crashed => {}
                }
            });
            rt.shutdown_background();
        });
        Crashable {
            addr,
            crash: Some(crash),
            thread: Some(thread),
        }
    }

    /// Drops its runtime (and waits for its thread).
    pub fn crash(&mut self) {
        if let Some(c) = self.crash.take() {
            let _ = c.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Crashable {
    fn drop(&mut self) {
        self.crash();
    }
}
