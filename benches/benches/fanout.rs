//! Fan-out of one broadcast to 10,000 clients, in-process, no sockets.
//!
//! * `nbio-ws/hub_broadcast`: `Hub::broadcast` (serialize the notification
//!   once, push the shared buffer into every client's bounded queue) over
//!   10,000 clients registered through the `nbio_ws::__bench::HubFixture`
//!   hook;
//! * `bare/registry_broadcast`: the baseline's equivalent (serialize once,
//!   `try_send` into each of 10,000 `tokio::sync::mpsc` queues held in a
//!   `RwLock<HashMap>`).
//!
//! Only the broadcast call is timed (`iter_custom`); emptying the queues
//! between iterations is not. Throughput is in deliveries (queue pushes).
//!
//! ```text
//! CARGO_TARGET_DIR=/work/target-benches cargo bench -p nbio-ws-benches --bench fanout
//! ```

mod common;

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use nbio_ws_benches::baseline::{self, Out};
use nbio_ws_testkit::seed::BroadcastNotification;
use tokio::sync::mpsc;

const CLIENTS: usize = 10_000;
/// Per-client queue capacity (both sides); drained after every broadcast.
const QUEUE: usize = 64;

fn bench_fanout(c: &mut Criterion) {
    let rt = common::runtime();
    let _guard = rt.enter();
    let text = nbio_ws_benches::filler_text(64);

    let mut group = c.benchmark_group("fanout_10k");
    group.throughput(Throughput::Elements(CLIENTS as u64));
    group.sample_size(30);

    let mut hub = nbio_ws::__bench::HubFixture::new(CLIENTS, QUEUE);
    assert_eq!(
        hub.hub
            .broadcast("broadcast", &BroadcastNotification { text: &text })
            .unwrap(),
        CLIENTS
    );
    assert_eq!(hub.drain(), CLIENTS);
    group.bench_function("nbio-ws/hub_broadcast", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                let n = hub
                    .hub
                    .broadcast("broadcast", &BroadcastNotification { text: &text })
                    .unwrap();
                timed += t.elapsed();
                assert_eq!(n, CLIENTS);
                hub.drain();
            }
            timed
        })
    });

    let registry = baseline::Registry::new();
    let mut rxs: Vec<mpsc::Receiver<Out>> = (0..CLIENTS)
        .map(|_| {
            let (tx, rx) = mpsc::channel(QUEUE);
            registry.register(tx);
            rx
        })
        .collect();
    let drain = |rxs: &mut Vec<mpsc::Receiver<Out>>| {
        rxs.iter_mut()
            .map(|rx| std::iter::from_fn(|| rx.try_recv().ok()).count())
            .sum::<usize>()
    };
    group.bench_function("bare/registry_broadcast", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                let n = registry.broadcast(baseline::encode_broadcast(&text));
                timed += t.elapsed();
                assert_eq!(n, CLIENTS);
                drain(&mut rxs);
            }
            timed
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = bench_fanout
}
criterion_main!(benches);
