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
# docker.io (dockerd, runc), runsc (gVisor) and busybox-static (the sandbox
# image's root fs) for the sandbox tests (tests/it/sandbox.rs).
# STELE_TEST_LANCEDB=1 also builds and tests the LanceDB vector index
# (feature `lancedb`; needs protobuf-compiler; ~600 more crates, so it is
# opt-in: a cold build of it alone takes longer than the rest together).
lance_pkgs=""
[ "${STELE_TEST_LANCEDB:-0}" = "1" ] && lance_pkgs="protobuf-compiler"
for pkg in ${STELE_TEST_PKGS:-} $lance_pkgs nats-server python3 python3-cryptography docker.io runsc busybox-static; do
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
dockerd_pid=""
cleanup() {
  if [ -n "${dockerd_pid:-}" ]; then kill "$dockerd_pid" 2>/dev/null || true; wait "$dockerd_pid" 2>/dev/null || true; fi
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

# dockerd for the sandbox tests, with gVisor's runsc registered (network off
# inside gVisor too). The runtime is merged into an existing daemon.json.
# dockerd is started unless it answers already (then it must list runsc),
# and stopped at exit only if started here. If it cannot start with its
# defaults (overlay2 on an unsupported file system, no iptables), it is
# started again with the vfs storage driver and without a bridge: the
# sandboxes run without network anyway.
sudo_cmd=""
[ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
$sudo_cmd mkdir -p /etc/docker
$sudo_cmd python3 - /etc/docker/daemon.json <<'PY'
import json, os, sys
path = sys.argv[1]
cfg = {}
if os.path.exists(path):
    with open(path) as f:
        text = f.read().strip()
    cfg = json.loads(text) if text else {}
want = {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=none"]}
if cfg.get("runtimes", {}).get("runsc") != want:
    cfg.setdefault("runtimes", {})["runsc"] = want
    with open(path + ".tmp", "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    os.replace(path + ".tmp", path)
PY
docker_up() { docker info >/dev/null 2>&1; }
if ! docker_up; then
  dockerd_log="$(mktemp)"
  for attempt in default fallback; do
    if [ "$attempt" = default ]; then
      $sudo_cmd dockerd >"$dockerd_log" 2>&1 &
    else
      $sudo_cmd dockerd --storage-driver=vfs --iptables=false --bridge=none >"$dockerd_log" 2>&1 &
    fi
    dockerd_pid=$!
    for _ in $(seq 1 150); do
      docker_up && break
      kill -0 "$dockerd_pid" 2>/dev/null || break
      sleep 0.2
    done
    docker_up && break
    echo "dockerd did not start ($attempt):"; tail -n 20 "$dockerd_log"
    kill "$dockerd_pid" 2>/dev/null || true; wait "$dockerd_pid" 2>/dev/null || true
    dockerd_pid=""
  done
  docker_up || { echo "dockerd did not start; the sandbox tests need it"; exit 1; }
  echo "== dockerd ($attempt; log in $dockerd_log)"
fi
docker info --format '{{json .Runtimes}}' | grep -q '"runsc"' \
  || { echo "the running dockerd has no runsc runtime; restart it to load /etc/docker/daemon.json"; exit 1; }

# The reference MCP servers from the npm registry for the MCP tests
# (tests/it/mcp.rs), run with Debian's node: pinned versions installed
# outside the clone, found by the tests through STELE_TEST_MCP_BIN.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq nodejs npm
fi
export STELE_TEST_MCP_DIR="${STELE_TEST_MCP_DIR:-/var/tmp/stele-mcp}"
mcp_pkgs=(@modelcontextprotocol/server-filesystem@2026.8.31 @modelcontextprotocol/server-everything@2026.8.31)
if [ ! -x "$STELE_TEST_MCP_DIR/node_modules/.bin/mcp-server-everything" ] \
   || [ ! -x "$STELE_TEST_MCP_DIR/node_modules/.bin/mcp-server-filesystem" ]; then
  mkdir -p "$STELE_TEST_MCP_DIR"
  npm install --prefix "$STELE_TEST_MCP_DIR" --no-audit --no-fund --silent "${mcp_pkgs[@]}"
fi
export STELE_TEST_MCP_BIN="$STELE_TEST_MCP_DIR/node_modules/.bin"
echo "== MCP servers in $STELE_TEST_MCP_BIN"

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== sandbox image (stele sandbox image build)"
cargo build -q -p stele --locked
"$CARGO_TARGET_DIR/debug/stele" sandbox image build
echo "== cargo test"
cargo test --workspace --locked
if [ "${STELE_TEST_LANCEDB:-0}" = "1" ]; then
  echo "== LanceDB (feature lancedb)"
  cargo clippy -p stele-vectors -p stele --features stele/lancedb,stele-vectors/lancedb --all-targets --locked -- -D warnings
  cargo test -p stele-vectors --features lancedb --locked
  cargo test -p stele --features lancedb --locked --test it vectors::
fi
echo "== all tests passed"
