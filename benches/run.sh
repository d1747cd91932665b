#!/usr/bin/env bash
# Runs the BENCHMARKS.md measurements: the nbio-ws example server and the
# `bare` baseline, same machine, same session, same load generator.
#
#   bash benches/run.sh                 # everything (~7 minutes on an idle machine)
#   SCENARIOS="reply" REPS=1 bash benches/run.sh
#
# Environment:
#   CARGO_TARGET_DIR  build dir (default /work/target-benches)
#   OUT               where the JSON reports go (default benches/results)
#   SCENARIOS         any of "idle reply fanout" (default all three)
#   REPS              reply/fanout repetitions per server, interleaved (default 3)
#   SERVERS           any of "bare nbio before" (default "bare nbio"); "before"
#                     runs BEFORE_BIN, an example server built from another
#                     commit, exactly as "nbio" is run (for before/after figures)
#   BEFORE_BIN        the server binary "before" runs
#
# Needs curl and jq. Every run is bounded (<= 20 s of load); only 127.0.0.1 is used; every
# server started here is stopped here (trap on exit).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/target-benches}"
OUT="${OUT:-$ROOT/benches/results}"
SCENARIOS="${SCENARIOS:-idle reply fanout}"
REPS="${REPS:-3}"
SERVERS="${SERVERS:-bare nbio}"
BIN="$CARGO_TARGET_DIR/release"
PORT_BARE=9100
PORT_NBIO=9200
PORT_BEFORE=9300
mkdir -p "$OUT"

cd "$ROOT"
cargo build --release -p nbio-ws-benches --bins
if [[ " $SERVERS " == *" nbio "* ]]; then
    cargo build --release -p nbio-ws-examples --bin server
fi

SERVER_PID=""
stop_server() {
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=""
}
trap stop_server EXIT

# start_server KIND: starts a fresh server with the soft fd limit raised to
# the hard limit (10k connections need > 10k descriptors), waits for /health.
start_server() {
    local kind=$1 port
    stop_server
    if [[ $kind == bare ]]; then
        port=$PORT_BARE
        (ulimit -n "$(ulimit -Hn)"; exec "$BIN/bare" --host 127.0.0.1 --port "$port" --path /ws) \
            >"$OUT/$kind.server.log" 2>&1 &
    else
        local bin=$BIN/server
        port=$PORT_NBIO
        if [[ $kind == before ]]; then
            bin=${BEFORE_BIN:?SERVERS has before: set BEFORE_BIN to a server binary}
            port=$PORT_BEFORE
        fi
        (ulimit -n "$(ulimit -Hn)"; WS_HOST=127.0.0.1 WS_PORT=$port WS_LOG_LEVEL=warn exec "$bin") \
            >"$OUT/$kind.server.log" 2>&1 &
    fi
    SERVER_PID=$!
    URL="ws://127.0.0.1:$port/ws"
    for _ in $(seq 100); do
        curl -sf "http://127.0.0.1:$port/health" >/dev/null && return 0
        sleep 0.1
    done
    echo "server $kind did not come up" >&2
    cat "$OUT/$kind.server.log" >&2
    return 1
}

# busy_cores SECONDS: average busy cores of the whole machine over SECONDS.
busy_cores() {
    local a b
    a=$(awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat)
    sleep "$1"
    b=$(awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat)
    awk -v a="$a" -v b="$b" 'BEGIN{split(a,x," ");split(b,y," ");
        busy=y[1]-x[1]; tot=busy+y[2]-x[2]; n='"$(nproc)"';
        printf "%.2f", (tot>0 ? busy/tot*n : 0)}'
}

# wait_quiet: other work on the machine (builds) skews every figure; wait
# until the machine is idle (< 0.2 busy cores), at most QUIET_WAIT seconds.
wait_quiet() {
    local deadline=$((SECONDS + ${QUIET_WAIT:-600})) busy
    while :; do
        busy=$(busy_cores 2)
        awk -v b="$busy" 'BEGIN{exit !(b < 0.2)}' && return 0
        if ((SECONDS >= deadline)); then
            echo "WARNING: machine still busy ($busy cores) - measuring anyway" >&2
            return 0
        fi
        echo "machine busy ($busy cores), waiting..." >&2
        sleep 5
    done
}

# lg OUT.json ARGS...: one loadgen run into OUT.json; a run during which
# other processes used >= 0.15 cores (`others_cores`) is repeated, up to 3
# attempts.
lg() {
    local out=$1 noise attempt
    shift
    for attempt in 1 2 3; do
        wait_quiet
        "$BIN/loadgen" --json "$@" >"$out"
        noise=$(jq -r '.others_cores // 0' "$out")
        awk -v n="$noise" 'BEGIN{exit !(n < 0.15)}' && return 0
        echo "noisy run (others used $noise cores), attempt $attempt" >&2
    done
    echo "WARNING: $out measured on a busy machine" >&2
}

for scenario in $SCENARIOS; do
    case $scenario in
    idle)
        for kind in $SERVERS; do
            start_server "$kind"
            sleep 1
            echo "== idle $kind" >&2
            lg "$OUT/idle.$kind.json" idle --url "$URL" --connections 10000 \
                --pid "$SERVER_PID" --hold 5s
        done
        ;;
    reply)
        for rep in $(seq "$REPS"); do
            for kind in $SERVERS; do
                start_server "$kind"
                echo "== reply $kind #$rep" >&2
                lg "$OUT/reply.$kind.$rep.json" reply --url "$URL" --connections 50 \
                    --inflight 8 --text-size 64 --duration 10s --warmup 2s --pid "$SERVER_PID"
            done
        done
        ;;
    fanout)
        for rep in $(seq "$REPS"); do
            for kind in $SERVERS; do
                start_server "$kind"
                echo "== fanout $kind #$rep" >&2
                lg "$OUT/fanout.$kind.$rep.json" fanout --url "$URL" --clients 2000 --rate 20 \
                    --duration 10s --grace 5s --pid "$SERVER_PID"
            done
        done
        ;;
    *) echo "unknown scenario $scenario" >&2; exit 2 ;;
    esac
done
stop_server

# Summary.
{
    for f in "$OUT"/reply.*.json; do
        [[ -e $f ]] || continue
        jq -r '"\(input_filename | split("/") | last): \(.requests_per_sec | floor) req/s, p50 \(.latency.p50_us)µs p99 \(.latency.p99_us)µs, errors \(.errors.total), server \(.server_cpu.us_per_op)µs CPU/req"' "$f"
    done
    for f in "$OUT"/idle.*.json; do
        [[ -e $f ]] || continue
        jq -r '"\(input_filename | split("/") | last): \(.connected)/\(.connections) conns, \(.kib_per_connection) KiB/conn (RSS \(.rss_before_kib) -> \(.rss_held_kib) KiB)"' "$f"
    done
    for f in "$OUT"/fanout.*.json; do
        [[ -e $f ]] || continue
        jq -r '"\(input_filename | split("/") | last): \(.deliveries)/\(.expected_deliveries) delivered, missing \(.missing), dup \(.duplicates), p50 \(.latency.p50_us)µs p99 \(.latency.p99_us)µs max \(.latency.max_us)µs"' "$f"
    done
} | tee "$OUT/summary.txt"
