#!/usr/bin/env bash
# Installs what the test suite needs and the machine may lack. Idempotent:
# each tool is installed only when missing.
set -euo pipefail

missing_apt=()
need_cmd() { command -v "$1" >/dev/null 2>&1 || missing_apt+=("$2"); }
need_cmd redis-server redis-server
need_cmd nats-server nats-server
need_cmd nginx nginx
need_cmd chromium chromium   # the chat page's browser test (examples/tests/chat_browser.rs)
if [ ${#missing_apt[@]} -gt 0 ]; then
  echo "apt-get install ${missing_apt[*]}"
  sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "need root (or sudo) to apt-get install ${missing_apt[*]}" >&2; exit 1; }
    sudo=(sudo)
  fi
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing_apt[@]}" >/dev/null
fi

# Python websockets: the permessage-deflate interop test
# (nbio-ws/tests/compression.rs).
if ! python3 -c "import websockets" >/dev/null 2>&1; then
  echo "pip install websockets"
  python3 -m pip install --quiet websockets
fi

if ! command -v kosoku >/dev/null 2>&1; then
  echo "pip install kosoku"
  python3 -m pip install --quiet kosoku
fi

# playwright-core for that browser test; it drives Debian's chromium, so no
# browser download.
browser_test="$(cd "$(dirname "$0")/.." && pwd)/examples/chat/browser-test"
if [ ! -d "$browser_test/node_modules/playwright-core" ]; then
  echo "npm ci --prefix examples/chat/browser-test"
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --prefix "$browser_test" --no-audit --no-fund --silent
fi

# The JavaScript client's test devDependencies (ws, typescript): examples/tests/js_client.rs.
js_client="$(cd "$(dirname "$0")/.." && pwd)/clients/js"
if [ ! -d "$js_client/node_modules/ws" ] || [ ! -d "$js_client/node_modules/typescript" ]; then
  echo "npm ci --prefix clients/js"
  npm ci --prefix "$js_client" --no-audit --no-fund --silent
fi

# The OpenRPC checks (examples/tests/openrpc.rs): ajv and the official
# OpenRPC meta-schema.
openrpc_check="$(cd "$(dirname "$0")/.." && pwd)/examples/openrpc-check"
if [ ! -d "$openrpc_check/node_modules/@open-rpc/meta-schema" ]; then
  echo "npm ci --prefix examples/openrpc-check"
  npm ci --prefix "$openrpc_check" --no-audit --no-fund --silent
fi

# scripts/fuzz.sh (cargo-fuzz builds with nightly features: RUSTC_BOOTSTRAP=1).
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "cargo install cargo-fuzz"
  cargo install --quiet --locked cargo-fuzz
fi

for c in rustfmt clippy; do
  if ! cargo "${c/rustfmt/fmt}" --version >/dev/null 2>&1; then
    rustup component add "$c"
  fi
done
echo "tools ready"
