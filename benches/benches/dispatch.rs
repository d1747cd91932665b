//! Parse + dispatch of one `self.reply` request, in-process, no sockets.
//!
//! * `nbio-ws/…`: the framework's router, driven through the
//!   `nbio_ws::__bench::RpcFixture` hook (a built server plus one fake
//!   client); the handler is the one `examples/src/bin/server.rs` serves
//!   (`nbio_ws_examples::seed::self_reply`: typed params, typed result).
//! * `bare/…`: the same work in the baseline server
//!   (`nbio_ws_benches::baseline::handle_message`).
//!
//! Each iteration parses the request text, runs the handler and serializes
//! the response bytes that would be queued for the writer.
//!
//! ```text
//! CARGO_TARGET_DIR=/work/target-benches cargo bench -p nbio-ws-benches --bench dispatch
//! ```

mod common;

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use nbio_ws::Server;
use nbio_ws_benches::baseline;
use nbio_ws_testkit::seed;

fn request(text_size: usize, id: u64) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","method":"self.reply","params":{{"text":"{}"}},"id":{id}}}"#,
        nbio_ws_benches::filler_text(text_size)
    )
}

fn bench_dispatch(c: &mut Criterion) {
    let rt = common::runtime();
    let _guard = rt.enter();
    let fixture = nbio_ws::__bench::RpcFixture::new(seed::methods(Server::builder()));
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
    config = common::config();
    targets = bench_dispatch
}
criterion_main!(benches);
