//! Parse + dispatch of one `self.reply` request, in-process, no sockets.
//!
//! * `nbio-ws/…`: the framework's router, driven through the
//!   `nbio_ws::__bench::RpcFixture` hook (a built server plus one fake
//!   client); the handler is the one of `examples/src/bin/server.rs`
//!   (`#[rpc_method("self.reply")]`, typed params, typed result).
//! * `bare/…`: the same work in the baseline server
//!   (`nbio_ws_benches::baseline::handle_message`).
//!
//! Each iteration parses the request text, runs the handler and serializes
//! the response bytes that would be queued for the writer.
//!
//! ```text
//! CARGO_TARGET_DIR=/work/target-benches cargo bench -p nbio-ws-benches --bench dispatch
//! ```

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use nbio_ws::{rpc_method, Hub, Params, RpcError, Server};
use nbio_ws_benches::baseline;
use serde::{Deserialize, Serialize};

/// Params of both methods (as in the example server).
#[derive(Deserialize)]
struct TextParams {
    text: String,
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
fn self_reply(Params(p): Params<TextParams>) -> Reply {
    Reply {
        text_length: p.text.len(),
        echo: p.text,
    }
}

/// Sends the text to every connected client (here: nobody).
#[rpc_method("broadcast")]
fn broadcast(hub: Hub, Params(p): Params<TextParams>) -> Result<Broadcasted, RpcError> {
    hub.broadcast("broadcast", &BroadcastNotification { text: &p.text })
        .map_err(RpcError::internal)?;
    Ok(Broadcasted {
        status: "broadcasted",
        text_length: p.text.len(),
    })
}

fn request(text_size: usize, id: u64) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","method":"self.reply","params":{{"text":"{}"}},"id":{id}}}"#,
        nbio_ws_benches::filler_text(text_size)
    )
}

fn bench_dispatch(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = rt.enter();
    let fixture = nbio_ws::__bench::RpcFixture::new(Server::builder());
    let registry = baseline::Registry::new();

    let mut group = c.benchmark_group("dispatch_self_reply");
    group.throughput(Throughput::Elements(1));
    for size in [64usize, 1024] {
        let req = request(size, 42);
        // Both must produce the same response before they are timed.
        let expected = format!(
            r#"{{"jsonrpc":"2.0","result":{{"echo":"{}","text_length":{size}}},"id":42}}"#,
            nbio_ws_benches::filler_text(size)
        );
        let framework = fixture.dispatch(&req).expect("framework answers");
        assert_eq!(std::str::from_utf8(&framework).unwrap(), expected);
        let bare = baseline::handle_message(&registry, req.as_bytes()).expect("bare answers");
        assert_eq!(std::str::from_utf8(&bare).unwrap(), expected);

        group.bench_function(format!("nbio-ws/{size}B"), |b| {
            b.iter(|| fixture.dispatch(black_box(&req)))
        });
        group.bench_function(format!("bare/{size}B"), |b| {
            b.iter(|| baseline::handle_message(&registry, black_box(req.as_bytes())))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("dispatch_errors");
    let unknown = r#"{"jsonrpc":"2.0","method":"nope","params":{},"id":1}"#;
    let garbage = r#"{"jsonrpc":"2.0","method":"#;
    group.bench_function("nbio-ws/method_not_found", |b| {
        b.iter(|| fixture.dispatch(black_box(unknown)))
    });
    group.bench_function("nbio-ws/parse_error", |b| {
        b.iter(|| fixture.dispatch(black_box(garbage)))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench_dispatch
}
criterion_main!(benches);
