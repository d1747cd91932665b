//! nbio-ws mounted inside an axum application, next to ordinary routes.
//!
//! ```text
//! cargo run -p nbio-ws-examples --bin embed
//! curl http://127.0.0.1:3000/            # an ordinary axum route
//! wscat -c ws://127.0.0.1:3000/ws        # the nbio-ws endpoint
//! ```
//! `PORT` sets the port (default 3000).

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request};
use axum::routing::get;
use axum::Router;
use nbio_ws::{rpc_method, Client, Server};

/// Returns the caller's client id.
#[rpc_method("whoami")]
fn whoami(client: Client) -> String {
    client.id().to_string()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // WS_* variables configure the endpoint (limits, logging); the
    // address is axum's.
    let config = nbio_ws::Config::from_env()?;
    nbio_ws::init_logging(&config);
    let server = Server::builder().config(config).build()?;
    let ws = server.endpoint();
    let hub = server.hub().clone();

    let app = Router::new()
        .route(
            "/",
            get(|| async { "an ordinary axum route; the WebSocket is at /ws\n" }),
        )
        .route(
            "/clients",
            get(move || {
                let hub = hub.clone();
                async move { format!("{}\n", hub.len()) }
            }),
        )
        .route(
            "/ws",
            get(
                move |ConnectInfo(peer): ConnectInfo<SocketAddr>, req: Request| {
                    let ws = ws.clone();
                    // Async: origin, caps and the authenticator run first.
                    async move { ws.upgrade(req, peer).await }
                },
            ),
        );

    let port: u16 = match std::env::var("PORT") {
        Ok(p) => p
            .parse()
            .map_err(|_| format!("invalid PORT={p:?}: expected a port number"))?,
        Err(_) => 3000,
    };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    tracing::info!(addr = %listener.local_addr()?, "axum app with nbio-ws at /ws");
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(nbio_ws::shutdown_signal())
    .await?;
    Ok(())
}
