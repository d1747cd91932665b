#!/usr/bin/env bash
# The whole test suite, as the README gives it: installs what the tests
# need and the machine lacks (scripts/install-test-deps.sh: redis-server,
# nats-server, nginx, chromium, Python websockets, kosoku, the npm test
# dependencies), then runs every test of the workspace with every feature.
# Extra arguments go to `cargo test` (e.g. `scripts/test.sh -p nbio-ws`).
#
# A test whose tool is still missing fails and names the tool; it never
# passes without running (NBIO_WS_SKIP_MISSING_TOOLS=1 turns that into a
# printed SKIP, for machines where a tool cannot be had).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh
exec cargo test --workspace --all-features "$@"
