#!/usr/bin/env bash
# Runs the Autobahn WebSocket conformance cases (via kosoku, compression
# cases 12.* and 13.* excluded) against the raw-mode echo example.
# Exits non-zero on any failed case. Report: reports/clients/index.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT="${AUTOBAHN_PORT:-9001}"
cargo build --release -q -p nbio-ws-examples --bin echo
WS_PORT="$PORT" WS_LOG_LEVEL=warn target/release/echo &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break
  sleep 0.1
done
rm -rf reports/clients
status=0
timeout 900 kosoku -m fuzzingclient -x '12.*' -x '13.*' -p 4 "127.0.0.1:$PORT" || status=$?
python3 - <<'PY'
import json, collections
data = json.load(open("reports/clients/index.json"))
counts = collections.Counter()
bad = []
for agent, cases in data.items():
    for case, r in cases.items():
        counts[r["behavior"]] += 1
        if r["behavior"] not in ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED"):
            bad.append((case, r["behavior"]))
        if r.get("behaviorClose") not in (None, "OK", "INFORMATIONAL"):
            bad.append((case, "close:" + r["behaviorClose"]))
print("autobahn:", dict(counts))
for case, b in sorted(bad):
    print("  FAILED", case, b)
passed = sum(v for k, v in counts.items() if k in ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED"))
print(f"autobahn: {passed} passed, {len(bad)} failed")
PY
exit $status
