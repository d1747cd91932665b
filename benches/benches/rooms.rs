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
//! * `rooms/join_leave_2_threads`: two threads, each with its own client,
//!   join and leave rooms of their own (64 each) with presence data, at
//!   the same time. Time per join + leave of one thread.
//! * `rooms/join_leave_2_threads_during_fanout`: the same while a third
//!   thread sends to `lobby` (1,000 members) and drains their queues,
//!   without pause.
//!
//! ```text
//! CARGO_TARGET_DIR=/work/target-benches cargo bench -p nbio-ws-benches --bench rooms
//! ```

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::json;

const CLIENTS: usize = 10_000;
const MEMBERS: usize = 1_000;
const QUEUE: usize = 64;

fn bench_rooms(c: &mut Criterion) {
    let rt = common::runtime();
    let _guard = rt.enter();
    let text = nbio_ws_benches::filler_text(64);
    let mut hub = nbio_ws::__bench::HubFixture::new(CLIENTS, QUEUE);
    for (i, client) in hub.clients.iter().take(MEMBERS).enumerate() {
        let _ = client.join_with("lobby", json!({ "nick": format!("user{i}") }));
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
            let joined = newcomer.join_with("lobby", json!({ "nick": "newcomer" }));
            assert!(matches!(joined, Ok(true)));
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

/// `iters` joins and leaves on each of two threads at once; the wall time.
fn two_threads(joiners: &[nbio_ws::Client; 2], rooms: &[Vec<String>; 2], iters: u64) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for (client, rooms) in joiners.iter().zip(rooms) {
            s.spawn(move || {
                for i in 0..iters as usize {
                    let room = &rooms[i % rooms.len()];
                    let _ = client.join_with(room, json!({ "nick": "joiner" }));
                    client.leave(room);
                }
            });
        }
    });
    start.elapsed()
}

fn bench_concurrent(c: &mut Criterion) {
    let rt = common::runtime();
    let _guard = rt.enter();
    let mut hub = nbio_ws::__bench::HubFixture::new(MEMBERS + 2, QUEUE);
    for (i, client) in hub.clients.iter().take(MEMBERS).enumerate() {
        let _ = client.join_with("lobby", json!({ "nick": format!("user{i}") }));
    }
    let joiners = [
        hub.clients[MEMBERS].clone(),
        hub.clients[MEMBERS + 1].clone(),
    ];
    let rooms = [0, 1].map(|t| (0..64).map(|i| format!("t{t}-{i}")).collect::<Vec<_>>());
    let mut group = c.benchmark_group("rooms");
    group.sample_size(30);
    group.throughput(Throughput::Elements(1));
    group.bench_function("join_leave_2_threads", |b| {
        b.iter_custom(|iters| two_threads(&joiners, &rooms, iters))
    });

    let stop = Arc::new(AtomicBool::new(false));
    let fanout = {
        let stop = Arc::clone(&stop);
        let params = json!({ "room": "lobby", "text": nbio_ws_benches::filler_text(64) });
        std::thread::spawn(move || {
            let mut sends = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let n = hub.hub.to("lobby").notify("chat.message", &params).unwrap();
                assert_eq!(n, MEMBERS);
                hub.drain();
                sends += 1;
            }
            sends
        })
    };
    let started = Instant::now();
    group.bench_function("join_leave_2_threads_during_fanout", |b| {
        b.iter_custom(|iters| two_threads(&joiners, &rooms, iters))
    });
    stop.store(true, Ordering::Relaxed);
    let sends = fanout.join().expect("fan-out thread");
    eprintln!(
        "fan-out meanwhile: {sends} sends to {MEMBERS} members in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    group.finish();
}

criterion_group!(benches, bench_rooms, bench_concurrent);
criterion_main!(benches);
