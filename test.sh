#!/usr/bin/env bash
# Every test, one command (the README's, and what .ci/run runs): the Rust
# workspace, then the browser end-to-end suite (e2e/: Debian's chromium
# driven by playwright-core, against the debug `switchboard` binary).
# Installs what the e2e suite needs on a fresh machine when it is missing.
set -euo pipefail
cd "$(dirname "$0")"

# The TLS tests make an RSA key with the openssl CLI (ring cannot).
if ! command -v openssl >/dev/null; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update
  $sudo apt-get install -y openssl
fi

echo "== cargo test --workspace"
cargo test --workspace

echo "== e2e: the server binary"
cargo build --bin switchboard

echo "== e2e: chromium and the node packages"
if ! command -v "${CHROMIUM:-chromium}" >/dev/null; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update
  $sudo apt-get install -y chromium
fi
command -v node >/dev/null || { echo "node (20+) and npm are needed for e2e/" >&2; exit 1; }
(cd e2e && npm ci --no-audit --no-fund)

echo "== e2e: real-browser tests"
cd e2e
exec node --test --test-concurrency=1 --test-timeout=180000 tests/
