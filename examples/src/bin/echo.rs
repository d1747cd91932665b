//! A raw-mode echo server: every text or binary message is sent back as
//! it came. It accepts the upgrade on `/` (where conformance tools such as
//! the Autobahn suite connect) and answers `/health` and `/metrics`.
//!
//! ```text
//! WS_PORT=9001 cargo run --release -p nbio-ws-examples --bin echo
//! ```
//! `WS_*` variables apply; the path defaults to `/` and the message limit
//! to 64 MiB (the conformance cases send 16 MiB messages).

use nbio_ws::{Client, RawMessage, Server};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let mut config = match nbio_ws::Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if std::env::var_os("WS_PATH").is_none() {
        config.path = "/".into();
    }
    if std::env::var_os("WS_MAX_MESSAGE_SIZE").is_none() {
        config.max_message_size = 64 << 20;
    }
    nbio_ws::init_logging(&config);
    let server = Server::builder()
        .config(config)
        .raw(|client: Client, msg: RawMessage| async move {
            let _ = match msg {
                RawMessage::Text(text) => client.send_text(text),
                RawMessage::Binary(data) => client.send_binary(data),
            };
        })
        .build();
    let server = match server {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match server.serve().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
