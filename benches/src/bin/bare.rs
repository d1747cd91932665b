//! `bare`: the baseline server — hyper 1 (http1) + fastwebsockets, no
//! framework — speaking the same wire format as the nbio-ws seed server, so
//! that the framework's overhead can be measured against it.
//!
//! * `GET /health` → `{"status":"ok","connected_clients":N}`
//! * WebSocket upgrade on `--path` (default `/ws`), JSON-RPC 2.0 in text frames:
//!   * `self.reply {"text"}` → `{"echo", "text_length"}` (bytes)
//!   * `broadcast {"text"}` → `{"status":"broadcasted","text_length"}` to the
//!     sender, and the notification `{"jsonrpc":"2.0","method":"broadcast",
//!     "params":{"text"}}` to every connected client, the sender included.
//!   * errors: -32700 parse error, -32600 invalid request, -32601 unknown
//!     method, -32602 invalid params.
//!
//! The JSON-RPC handling and the registry are in
//! [`nbio_ws_benches::baseline`] (so the criterion benches can time them);
//! this file is the socket half. It is written the way a competent person
//! would without a framework:
//! one reader task and one writer task per connection (split socket), a
//! bounded `tokio::sync::mpsc` queue feeding the writer, a
//! `RwLock<HashMap>` registry of those queues for broadcasts, and the
//! notification serialized once and shared (`Bytes`) by every queue. A
//! client whose queue is full misses that broadcast (it is never allowed to
//! stall the others).
//!
//! ```text
//! bare --host 127.0.0.1 --port 9000 [--path /ws]
//! ```
//!
//! Prints `bare listening on ws://HOST:PORT/PATH` once bound (`--port 0`
//! picks a free port). File descriptors: it does not raise
//! `RLIMIT_NOFILE`; for 10k connections start it under `ulimit -n 65536`.

use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use clap::Parser;
use fastwebsockets::{upgrade, FragmentCollectorRead, Frame, OpCode, Payload, WebSocketError};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use nbio_ws_benches::baseline::{error_bytes, handle_message, Out, Registry, QUEUE};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

#[derive(Parser, Debug)]
#[command(
    name = "bare",
    about = "Baseline hyper + fastwebsockets JSON-RPC server (no framework)"
)]
struct Args {
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to bind (0 = any free port).
    #[arg(long, default_value_t = 9000)]
    port: u16,
    /// WebSocket path.
    #[arg(long, default_value = "/ws")]
    path: String,
}

/// Shared server state.
struct State {
    ws_path: String,
    registry: Registry,
}

/// Runs one upgraded WebSocket: registers its queue, spawns the writer,
/// reads until close or error, unregisters.
async fn serve_ws(fut: upgrade::UpgradeFut, state: Arc<State>) -> Result<(), WebSocketError> {
    let ws = fut.await?;
    let (rx, mut tx) = ws.split(tokio::io::split);
    let mut rx = FragmentCollectorRead::new(rx);
    let (out_tx, mut out_rx) = mpsc::channel::<Out>(QUEUE);
    let id = state.registry.register(out_tx.clone());

    let writer = tokio::spawn(async move {
        while let Some(msg) = out_rx.recv().await {
            let (frame, last) = match &msg {
                Out::Text(b) => (Frame::text(Payload::Borrowed(b)), false),
                Out::Pong(b) => (Frame::pong(Payload::Borrowed(b)), false),
                Out::Close(b) => (Frame::close_raw(Payload::Borrowed(b)), true),
            };
            if tx.write_frame(frame).await.is_err() || last {
                break;
            }
        }
    });

    let result = async {
        loop {
            let frame = rx
                .read_frame(&mut |f: Frame<'_>| {
                    // Pong/close replies owed by the protocol go through the queue.
                    let out = match f.opcode {
                        OpCode::Close => Out::Close(Bytes::copy_from_slice(&f.payload)),
                        _ => Out::Pong(Bytes::copy_from_slice(&f.payload)),
                    };
                    let q = out_tx.clone();
                    async move { q.send(out).await }
                })
                .await?;
            match frame.opcode {
                OpCode::Close => break,
                OpCode::Text => {
                    if let Some(resp) = handle_message(&state.registry, &frame.payload) {
                        if out_tx.send(Out::Text(resp)).await.is_err() {
                            break;
                        }
                    }
                }
                OpCode::Binary => {
                    let resp = error_bytes(-32600, "Invalid Request: binary frame", None);
                    if out_tx.send(Out::Text(resp)).await.is_err() {
                        break;
                    }
                }
                _ => {}
            }
        }
        Ok::<(), WebSocketError>(())
    }
    .await;

    state.registry.unregister(id);
    drop(out_tx);
    let _ = writer.await;
    result
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("static response is valid")
}

async fn handle_http(
    mut req: Request<Incoming>,
    state: Arc<State>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path();
    if path == "/health" && req.method() == Method::GET {
        let mut body = Vec::new();
        write!(
            body,
            r#"{{"status":"ok","connected_clients":{}}}"#,
            state.registry.len()
        )
        .expect("write to Vec");
        return Ok(json_response(StatusCode::OK, body));
    }
    if path == state.ws_path && upgrade::is_upgrade_request(&req) {
        return Ok(match upgrade::upgrade(&mut req) {
            Ok((resp, fut)) => {
                tokio::spawn(async move {
                    let _ = serve_ws(fut, state).await;
                });
                let (parts, _) = resp.into_parts();
                Response::from_parts(parts, Full::new(Bytes::new()))
            }
            Err(e) => json_response(
                StatusCode::BAD_REQUEST,
                format!(r#"{{"error":"{e}"}}"#).into_bytes(),
            ),
        });
    }
    Ok(json_response(
        StatusCode::NOT_FOUND,
        br#"{"error":"not found"}"#.to_vec(),
    ))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let addr: SocketAddr = format!("{}:{}", args.host, args.port)
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    println!("bare listening on ws://{local}{}", args.path);
    let state = Arc::new(State {
        ws_path: args.path,
        registry: Registry::new(),
    });

    let accept = async {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and friends: report and back off instead of spinning.
                    eprintln!("bare: accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let state = state.clone();
            tokio::spawn(async move {
                let io = TokioIo::new(stream);
                let service = service_fn(move |req| handle_http(req, state.clone()));
                let _ = http1::Builder::new()
                    .serve_connection(io, service)
                    .with_upgrades()
                    .await;
            });
        }
    };
    tokio::select! {
        _ = accept => {}
        _ = tokio::signal::ctrl_c() => eprintln!("bare: shutting down"),
    }
    Ok(())
}
