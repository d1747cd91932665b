//! Rooms, in-process, no sockets, no broker: 10,000 clients, 1,000 of them
//! in `lobby`.
//!
//! * `rooms/notify_1k_of_10k`: `hub.to("lobby").notify(..)` (serialize
//!   once, push into the 1,000 members' queues; the other 9,000 clients
//!   cost nothing). Throughput in deliveries.
//! * `rooms/join_leave`: one more client joins `lobby` with presence data
//!   and leaves it (two presence events, the room's member map updated
//!   twice).
//! * `rooms/members_1k`: `hub.members("lobby")`: the 1,000 members, with
//!   their presence data, sorted.
//!
//! ```text
//! CARGO_TARGET_DIR=/work/target-benches cargo bench -p nbio-ws-benches --bench rooms
//! ```

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::json;

const CLIENTS: usize = 10_000;
const MEMBERS: usize = 1_000;
const QUEUE: usize = 64;

fn bench_rooms(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = rt.enter();
    let text = nbio_ws_benches::filler_text(64);
    let mut hub = nbio_ws::__bench::HubFixture::new(CLIENTS, QUEUE);
    for (i, client) in hub.clients.iter().take(MEMBERS).enumerate() {
        client.join_with("lobby", json!({ "nick": format!("user{i}") }));
    }
    let params = json!({ "room": "lobby", "nick": "user1", "text": text });

    let mut group = c.benchmark_group("rooms");
    group.sample_size(30);
    group.throughput(Throughput::Elements(MEMBERS as u64));
    assert_eq!(
        hub.hub.to("lobby").notify("chat.message", &params).unwrap(),
        MEMBERS
    );
    assert_eq!(hub.drain(), MEMBERS);
    group.bench_function("notify_1k_of_10k", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                let n = hub.hub.to("lobby").notify("chat.message", &params).unwrap();
                timed += t.elapsed();
                assert_eq!(n, MEMBERS);
                hub.drain();
            }
            timed
        })
    });

    group.throughput(Throughput::Elements(1));
    let newcomer = hub.clients[CLIENTS - 1].clone();
    group.bench_function("join_leave", |b| {
        b.iter(|| {
            assert!(newcomer.join_with("lobby", json!({ "nick": "newcomer" })));
            assert!(newcomer.leave("lobby"));
        })
    });

    group.bench_function("members_1k", |b| {
        b.iter(|| {
            let members = rt.block_on(hub.hub.members("lobby"));
            assert_eq!(members.len(), MEMBERS);
            members
        })
    });
    group.finish();
}

criterion_group!(benches, bench_rooms);
criterion_main!(benches);
