//! Loopback ports and bounded waiting.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::WAIT;

/// A loopback port that was free a moment ago (bound to port 0, then
/// released). Another process may take it meanwhile; a server that must
/// keep a port across restarts holds it with [`reserve_port`] instead.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// `127.0.0.1:port`.
pub fn loopback(port: u16) -> SocketAddr {
    (Ipv4Addr::LOCALHOST, port).into()
}

/// A loopback socket bound to `port` (0: any free one) but not listening:
/// connections to it are refused, as with nothing there, and no other
/// process (another test's server, or the source port of some connection)
/// can take the port while it is held. Drop it just before starting the
/// server that is to listen there.
///
/// `SO_REUSEADDR` is set, as servers such as `redis-server` set it, so that
/// the connections a killed server leaves in `TIME_WAIT` do not stand in
/// the way.
pub fn reserve_port(port: u16) -> std::io::Result<tokio::net::TcpSocket> {
    let s = tokio::net::TcpSocket::new_v4()?;
    s.set_reuseaddr(true)?;
    s.bind(loopback(port))?;
    Ok(s)
}

/// Waits until something accepts connections on the loopback `port`;
/// fails the test after [`WAIT`].
pub async fn wait_port(port: u16) {
    eventually(|| async move {
        tokio::net::TcpStream::connect(loopback(port))
            .await
            .map(drop)
            .map_err(|e| format!("nothing listens on port {port}: {e}"))
    })
    .await
}

/// Calls `probe` every 20 ms until it returns `Ok`, and returns that value.
/// After [`WAIT`] without success the test fails with the last `Err`
/// (say there what was expected and what was seen).
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let mut tries = 0;
/// let n = nbio_ws_testkit::eventually(|| {
///     tries += 1;
///     let t = tries;
///     async move { if t == 3 { Ok(t) } else { Err(format!("try {t}")) } }
/// })
/// .await;
/// assert_eq!(n, 3);
/// # });
/// ```
pub async fn eventually<T, F, Fut>(mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match probe().await {
            Ok(v) => return v,
            Err(last) if tokio::time::Instant::now() >= deadline => {
                panic!("not within {WAIT:?}: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}
