#!/usr/bin/env bash
# Sets up what the test suite needs on a fresh Debian machine with the Rust
# toolchain, then runs all of it: formatting, clippy, every test.
# Used by the README and by .ci/run. Safe to run again (warm runs reuse
# the target directory outside the clone).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/stele-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

# System packages the tests need (none beyond the toolchain for the journal;
# the engine, NATS and sandbox issues add theirs here). nats-server (2.9,
# with JetStream) for the NATS feed tests.
need_pkgs=()
# python3 + python3-cryptography run the independent audit-bundle verifier
# (scripts/verify_export.py; BLAKE3 from the `blake3` package when present,
# else scripts/blake3_pure.py).
for pkg in ${STELE_TEST_PKGS:-} nats-server python3 python3-cryptography; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_pkgs+=("$pkg")
done
if [ "${#need_pkgs[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq "${need_pkgs[@]}"
fi

rustup component add rustfmt clippy >/dev/null 2>&1 || true

# A JetStream server for the NATS tests (STELE_TEST_NATS), unless one already
# listens on 4222. Tests that kill and restart NATS start their own on
# another port. Stopped when this script exits.
export PATH="$PATH:/usr/sbin:/usr/local/sbin"
export STELE_TEST_NATS="${STELE_TEST_NATS:-nats://127.0.0.1:4222}"
nats_pid=""
nats_dir=""
cleanup() {
  if [ -n "$nats_pid" ]; then kill "$nats_pid" 2>/dev/null || true; wait "$nats_pid" 2>/dev/null || true; fi
  if [ -n "$nats_dir" ]; then rm -rf "$nats_dir"; fi
}
trap cleanup EXIT
if ! (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null; then
  nats_dir="$(mktemp -d)"
  nats-server -a 127.0.0.1 -p 4222 -js -sd "$nats_dir" >"$nats_dir/server.log" 2>&1 &
  nats_pid=$!
  for _ in $(seq 1 100); do
    (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null && break
    sleep 0.1
  done
  (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null || { echo "nats-server did not start:"; cat "$nats_dir/server.log"; exit 1; }
  echo "== nats-server on 127.0.0.1:4222 (JetStream in $nats_dir)"
fi

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
echo "== all tests passed"
