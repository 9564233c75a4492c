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
# the engine, NATS and sandbox issues add theirs here).
need_pkgs=()
for pkg in ${STELE_TEST_PKGS:-}; do
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

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
echo "== all tests passed"
