//! The seed-compatible server: `self.reply` and `broadcast`, configured
//! from `WS_*` environment variables.
//!
//! ```text
//! cargo run -p nbio-ws-examples --bin server
//! wscat -c ws://127.0.0.1:8080/ws
//! > {"jsonrpc":"2.0","method":"self.reply","params":{"text":"hi"},"id":1}
//! < {"jsonrpc":"2.0","result":{"echo":"hi","text_length":2},"id":1}
//! ```
//!
//! With `--features openrpc` it describes itself: `rpc.discover` and
//! `curl http://127.0.0.1:8080/openrpc.json` answer its OpenRPC document
//! (both methods, their params and results, the `broadcast` notification).
//!
//! It also serves the JavaScript client at `/nbio-ws.js` and its example
//! page at `/client-example.html` (`clients/js/`). With `--static DIR` it
//! serves the files of a folder of your own too, read at startup, each at
//! its path below the folder (see `nbio_ws_examples::static_dir`):
//!
//! ```text
//! mkdir mypage && $EDITOR mypage/index.html      # the client README's example, say
//! cargo run -p nbio-ws-examples --bin server -- --static mypage
//! # open http://127.0.0.1:8080/ (index.html), or /any-other-file.html
//! ```
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

use nbio_ws::{rpc_method, Hub, RpcError, Server};
// The `text` extractor of both methods, shared with the tests.
use nbio_ws_examples::seed::Text;
use nbio_ws_examples::static_dir::{self, StaticFile};
use serde::Serialize;

/// The answer to `self.reply`.
#[derive(Serialize)]
#[cfg_attr(feature = "openrpc", derive(schemars::JsonSchema))]
struct Reply {
    /// The text, unchanged.
    echo: String,
    /// Its length in bytes (UTF-8).
    text_length: usize,
}

/// The answer to `broadcast`.
#[derive(Serialize)]
#[cfg_attr(feature = "openrpc", derive(schemars::JsonSchema))]
struct Broadcasted {
    /// Always `"broadcasted"`.
    #[cfg_attr(feature = "openrpc", schemars(extend("const" = "broadcasted")))]
    status: &'static str,
    /// The length of the text in bytes (UTF-8).
    text_length: usize,
}

/// The params of the `broadcast` notification every client gets.
#[derive(Serialize)]
#[cfg_attr(feature = "openrpc", derive(schemars::JsonSchema))]
struct BroadcastNotification<'a> {
    /// The text broadcast.
    text: &'a str,
}

/// Echoes the text back to the caller only.
///
/// Nobody else sees it. The text must be a non-empty string.
#[rpc_method(
    "self.reply",
    errors(-32602 = "text field is required and must be a non-empty string"),
    example(
        name = "echo",
        params = r#"{"text": "hi"}"#,
        result = r#"{"echo": "hi", "text_length": 2}"#
    )
)]
fn self_reply(Text(text): Text) -> Reply {
    Reply {
        text_length: text.len(),
        echo: text,
    }
}

/// Sends the text to every connected client, the caller included.
///
/// Each client, on every instance sharing a broker, gets the `broadcast`
/// notification with `{"text": ...}`; the caller gets it before this
/// answer.
#[rpc_method(
    "broadcast",
    errors(
        -32602 = "text field is required and must be a non-empty string",
        -32021 = "with a broker: the text is too large to reach the other instances"
    ),
    example(
        name = "hello all",
        params = r#"{"text": "hello all"}"#,
        result = r#"{"status": "broadcasted", "text_length": 9}"#
    )
)]
fn broadcast(hub: Hub, Text(text): Text) -> Result<Broadcasted, RpcError> {
    // With a broker, a text too large for it is -32021, sent to nobody.
    hub.broadcast("broadcast", &BroadcastNotification { text: &text })?;
    Ok(Broadcasted {
        status: "broadcasted",
        text_length: text.len(),
    })
}

const USAGE: &str = "usage: server [--static DIR]  (settings: WS_* environment variables)";

/// The files of `--static DIR`, if given; an error for anything else.
fn static_files() -> Result<Vec<StaticFile>, String> {
    let mut args = std::env::args_os().skip(1);
    let mut files = Vec::new();
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("--static") => {
                let dir = args.next().ok_or("--static needs a folder")?;
                files.extend(static_dir::read_static_dir(dir.as_ref())?);
            }
            Some("-h" | "--help") => return Err(USAGE.into()),
            _ => return Err(format!("unknown argument {arg:?}\n{USAGE}")),
        }
    }
    Ok(files)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let files = match static_files() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
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
    let builder = Server::builder().config(config);
    #[cfg(feature = "openrpc")]
    let builder = builder
        .openrpc_info("nbio-ws example server", env!("CARGO_PKG_VERSION"))
        .openrpc_description(
            "The seed-compatible server: `self.reply` echoes to the caller, `broadcast` to everyone.",
        )
        .notification::<BroadcastNotification<'static>>(
            "broadcast",
            "A text sent with the `broadcast` method, by any client.",
        );
    let builder = builder
        .page(
            "/nbio-ws.js",
            "text/javascript; charset=utf-8",
            include_str!("../../../clients/js/nbio-ws.js"),
        )
        .page(
            "/client-example.html",
            "text/html; charset=utf-8",
            include_str!("../../../clients/js/example.html"),
        );
    let served = files.len();
    let server = static_dir::serve(builder, files).build();
    let server = match server {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    tracing::info!(methods = ?server.method_names(), "nbio-ws example server");
    if served > 0 {
        tracing::info!(files = served, "serving the --static folder's files");
    }
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
