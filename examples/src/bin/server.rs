//! The seed-compatible server: `self.reply` and `broadcast`, configured
//! only from `WS_*` environment variables.
//!
//! ```text
//! cargo run -p nbio-ws-examples --bin server
//! wscat -c ws://127.0.0.1:8080/ws
//! > {"jsonrpc":"2.0","method":"self.reply","params":{"text":"hi"},"id":1}
//! < {"jsonrpc":"2.0","result":{"echo":"hi","text_length":2},"id":1}
//! ```
//!
//! It also serves the JavaScript client at `/nbio-ws.js` and its example
//! page at `/client-example.html` (`clients/js/`).
//!
//! Several instances share broadcasts through Redis or NATS when built
//! with the `redis`/`nats` features (`--all-features` gives both):
//!
//! ```text
//! WS_PUBSUB_ENABLED=true WS_PUBSUB_ADAPTER=redis WS_REDIS_URL=redis://127.0.0.1:6379/0 WS_PORT=8080 \
//!   cargo run -p nbio-ws-examples --all-features --bin server
//! WS_PUBSUB_ENABLED=true WS_PUBSUB_ADAPTER=redis WS_REDIS_URL=redis://127.0.0.1:6379/0 WS_PORT=8081 \
//!   cargo run -p nbio-ws-examples --all-features --bin server
//! ```

use nbio_ws::{rpc_method, FromRequest, Hub, RequestContext, RpcError, Server};
use serde::{Deserialize, Serialize};

/// The `text` param of both methods: present and a non-empty string, or
/// -32602 with the seed's `data.detail`.
struct Text(String);

/// What the seed answers when `text` is missing, empty or not a string.
const TEXT_REQUIRED: &str = "text field is required and must be a non-empty string";

impl FromRequest for Text {
    fn from_request(ctx: &RequestContext) -> Result<Self, RpcError> {
        #[derive(Deserialize)]
        struct Raw {
            #[serde(default)]
            text: Option<serde_json::Value>,
        }
        let text = ctx
            .params()
            .and_then(|p| serde_json::from_str::<Raw>(p.get()).ok())
            .and_then(|raw| match raw.text {
                Some(serde_json::Value::String(s)) if !s.is_empty() => Some(s),
                _ => None,
            });
        text.map(Text)
            .ok_or_else(|| RpcError::invalid_params(TEXT_REQUIRED))
    }
}

#[derive(Serialize)]
struct Reply {
    echo: String,
    text_length: usize,
}

#[derive(Serialize)]
struct Broadcasted {
    status: &'static str,
    text_length: usize,
}

#[derive(Serialize)]
struct BroadcastNotification<'a> {
    text: &'a str,
}

/// Echoes the text back to the caller only.
#[rpc_method("self.reply")]
fn self_reply(Text(text): Text) -> Reply {
    Reply {
        text_length: text.len(),
        echo: text,
    }
}

/// Sends the text to every connected client, the caller included.
#[rpc_method("broadcast")]
fn broadcast(hub: Hub, Text(text): Text) -> Result<Broadcasted, RpcError> {
    hub.broadcast("broadcast", &BroadcastNotification { text: &text })
        .map_err(RpcError::internal)?;
    Ok(Broadcasted {
        status: "broadcasted",
        text_length: text.len(),
    })
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = match nbio_ws::Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    nbio_ws::init_logging(&config);
    // The JavaScript client and its README's example page
    // (clients/js/example.html): open http://127.0.0.1:8080/client-example.html.
    let server = Server::builder()
        .config(config)
        .page(
            "/nbio-ws.js",
            "text/javascript; charset=utf-8",
            include_str!("../../../clients/js/nbio-ws.js"),
        )
        .page(
            "/client-example.html",
            "text/html; charset=utf-8",
            include_str!("../../../clients/js/example.html"),
        )
        .build();
    let server = match server {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    tracing::info!(methods = ?server.method_names(), "nbio-ws example server");
    if let Some(broker) = server.hub().broker_health() {
        tracing::info!(
            adapter = broker.adapter,
            channel = %server.config().pubsub.channel,
            "pub/sub enabled: broadcasts reach every instance on this channel"
        );
    }
    match server.serve().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
