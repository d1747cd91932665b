#!/usr/bin/env bash
# Broadcast fan-out, local vs through Redis vs through NATS, in one run
# (the "Scale-out" section of BENCHMARKS.md).
#
#   bash scripts/bench-scale-out.sh
#   REPS=1 LOADS="2000:20" bash scripts/bench-scale-out.sh
#
# For each load (CLIENTS:RATE) and mode, REPS interleaved runs of
#   loadgen fanout --clients CLIENTS --rate RATE --duration 10s
# against fresh example servers (release build, --features redis,nats):
#   local  one instance, no broker: every receiver on it;
#   redis  two instances sharing a redis-server started here: receivers
#          spread over both, the sender on the first, so half the
#          deliveries cross instances;
#   nats   the same through a nats-server started here.
# The report's per_target[1] is the cross-instance half.
#
# Environment: CARGO_TARGET_DIR (default /work/target-benches), OUT (default
# benches/results/scale-out), REPS (default 3), LOADS (default
# "2000:20 200:200"), DURATION (default 10s). Needs jq. Loopback only;
# every process started here is stopped here.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/target-benches}"
OUT="${OUT:-$ROOT/benches/results/scale-out}"
REPS="${REPS:-3}"
LOADS="${LOADS:-2000:20 200:200}"
DURATION="${DURATION:-10s}"
BIN="$CARGO_TARGET_DIR/release"
mkdir -p "$OUT"

cd "$ROOT"
cargo build --release -p nbio-ws-benches --bin loadgen
cargo build --release -p nbio-ws-examples --features redis,nats --bin server

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

PIDS=()
stop_all() {
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
}
BROKER_PIDS=()
cleanup() {
    stop_all
    for pid in "${BROKER_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

wait_health() { # port [expect-broker]
    for _ in $(seq 200); do
        if body=$(curl -fsS "http://127.0.0.1:$1/health" 2>/dev/null); then
            if [[ -z "${2:-}" ]] || [[ $(jq -r '.broker.connected' <<<"$body") == true ]]; then
                return 0
            fi
        fi
        sleep 0.05
    done
    echo "server on port $1 not ready" >&2
    return 1
}

REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no >"$OUT/redis.log" 2>&1 &
BROKER_PIDS+=($!)
NATS_PORT=$(free_port)
nats-server -a 127.0.0.1 -p "$NATS_PORT" >"$OUT/nats.log" 2>&1 &
BROKER_PIDS+=($!)
sleep 0.5

# busy_cores: cores busy over one second (all processes), from /proc/stat.
busy_cores() {
    local a b
    a=($(head -1 /proc/stat)); sleep 1; b=($(head -1 /proc/stat))
    local busy=$(( (b[1]+b[2]+b[3]+b[6]+b[7]+b[8]) - (a[1]+a[2]+a[3]+a[6]+a[7]+a[8]) ))
    echo "scale=2; $busy / $(getconf CLK_TCK)" | bc
}
# wait_idle: at most 1 minute for the machine to be quiet (< 0.2 cores).
wait_idle() {
    for _ in $(seq 60); do
        if (( $(echo "$(busy_cores) < 0.2" | bc) )); then return 0; fi
    done
    echo "   (machine still busy: figures are noisy)" >&2
}

# start_instance PORT MODE: one example server, fd limit raised.
start_instance() {
    local port=$1 mode=$2
    local env=(WS_HOST=127.0.0.1 WS_PORT="$port" WS_LOG_LEVEL=warn WS_SEND_BUFFER=1024)
    case $mode in
        redis) env+=(WS_PUBSUB_ENABLED=true WS_PUBSUB_ADAPTER=redis "WS_REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0") ;;
        nats) env+=(WS_PUBSUB_ENABLED=true WS_PUBSUB_ADAPTER=nats "WS_NATS_URL=nats://127.0.0.1:$NATS_PORT") ;;
    esac
    (ulimit -n "$(ulimit -Hn)"; exec env "${env[@]}" "$BIN/server") >>"$OUT/server.$mode.log" 2>&1 &
    PIDS+=($!)
}

for load in $LOADS; do
    clients=${load%%:*}
    rate=${load##*:}
    for rep in $(seq "$REPS"); do
        for mode in local redis nats; do
            stop_all
            wait_idle
            p1=$(free_port)
            start_instance "$p1" "$mode"
            pid1=${PIDS[-1]}
            args=(--url "ws://127.0.0.1:$p1/ws")
            if [[ $mode == local ]]; then
                wait_health "$p1"
            else
                p2=$(free_port)
                start_instance "$p2" "$mode"
                wait_health "$p1" broker
                wait_health "$p2" broker
                args+=(--url2 "ws://127.0.0.1:$p2/ws")
            fi
            out="$OUT/fanout.$mode.c$clients.r$rate.$rep.json"
            echo "== $mode clients=$clients rate=$rate rep=$rep"
            "$BIN/loadgen" --json fanout "${args[@]}" --clients "$clients" --rate "$rate" \
                --duration "$DURATION" --grace 5s --pid "$pid1" >"$out"
            jq -r '"   missing=\(.missing) duplicates=\(.duplicates) deliveries/s=\(.deliveries_per_sec|floor) others_cores=\(.others_cores*100|floor/100) "
                   + ([.per_target[] | "[\(.url|split(":")[2]|split("/")[0]): p50=\(.latency.p50_us/1000*100|floor/100)ms p99=\(.latency.p99_us/1000*100|floor/100)ms]"] | join(" "))' "$out"
        done
    done
done
stop_all

echo
echo "summary (median of $REPS runs; latency in ms; same = receivers on the sender's instance, cross = on the other)"
printf '%-8s %-12s %-22s %-22s %-8s %-8s\n' mode load "same p50/p99" "cross p50/p99" missing dups
for load in $LOADS; do
    clients=${load%%:*}
    rate=${load##*:}
    for mode in local redis nats; do
        files=("$OUT"/fanout.$mode.c$clients.r$rate.*.json)
        jq -s -r --arg mode "$mode" --arg load "$clients@$rate/s" '
            def med: sort | .[(length/2|floor)];
            def ms: . / 1000 * 100 | floor / 100;
            [ (map(.per_target[0].latency.p50_us) | med | ms),
              (map(.per_target[0].latency.p99_us) | med | ms),
              (if .[0].per_target | length > 1 then (map(.per_target[1].latency.p50_us) | med | ms) else "-" end),
              (if .[0].per_target | length > 1 then (map(.per_target[1].latency.p99_us) | med | ms) else "-" end),
              (map(.missing) | add), (map(.duplicates) | add) ] as $r
            | "\($mode)\t\($load)\t\($r[0]) / \($r[1])\t\($r[2]) / \($r[3])\t\($r[4])\t\($r[5])"' "${files[@]}"
    done
done | column -t -s $'\t'
