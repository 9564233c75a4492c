#!/usr/bin/env bash
# Regenerates fixtures/runs/: the recorded reasoning runs the determinism
# guard (tests/it/replay.rs) replays on every test run, made by the real
# binary on the scripted provider. Run it from the repository root after a
# deliberate change of the deciders' facts (then review the diff of
# fixtures/runs/expected.json):
#
#     scripts/record-fixture-runs.sh [path/to/stele]
#
# It records, in a fresh journal:
#   run-1  the demo agent (fixtures/reasoning/assistant.toml): a read, a
#          command denied by policy, a write that needs approval — approved
#          by `alice` — with its saga step, then the answer;
#   run-2  the same, the write rejected by `bob`;
#   run-3  fixtures/runs/checker.toml: a rate-limited attempt, a tool error,
#          a listing, two 503s retried, then the answer;
#   run-4  a fork of run-1 at the end of its step 1 with the completion of
#          fixtures/runs/edit.json: it answers at step 2.
# and copies the journal (without its private keys) to fixtures/runs/journal,
# the policy set it was decided with to fixtures/runs/policies, and what each
# run is expected to replay to into fixtures/runs/expected.json.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
stele=${1:-"${CARGO_TARGET_DIR:-$root/target}/debug/stele"}
[ -x "$stele" ] || { echo "no stele binary at $stele (cargo build -p stele first, or pass its path)" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
ln -s "$root/fixtures" fixtures
mkdir stele-workspace
printf 'Please summarise this workspace.\n' > stele-workspace/notes.txt
# Defaults only: no stele.toml here, no STELE_* overrides.
for v in $(env | grep -o '^STELE_[A-Z_]*' || true); do unset "$v"; done
s() { "$stele" --data "$work/data" "$@"; }
s run fixtures/reasoning/assistant.toml --input "summarise the notes" >/dev/null || [ $? -eq 3 ]
s approve run-1 call-2-0 --as alice --reason "looks right" >/dev/null
rm -f stele-workspace/summary.md
s run assistant --input "summarise the notes, please" >/dev/null || [ $? -eq 3 ]
s reject run-2 call-2-0 --as bob --reason "not now" >/dev/null || true
s run fixtures/runs/checker.toml --input "check missing.txt" >/dev/null
at=$(s events --run run-1 --json | python3 -c '
import json, sys
for line in sys.stdin:
    e = json.loads(line)
    if e["body"]["kind"] == "phase_entered" and e["body"]["phase"] == "observing":
        print(e["seq"]); break')
s fork run-1 --at "$at" --edit fixtures/runs/edit.json >/dev/null
s journal verify >/dev/null
out="$root/fixtures/runs"
rm -rf "$out/journal" "$out/policies"
mkdir -p "$out/journal"
cp -r "$work/data/." "$out/journal/"
rm -rf "$out/journal/keys" "$out/journal/snapshots" "$out/journal/"*.lock "$out/journal/control.sock" 2>/dev/null || true
cp -r "$root/fixtures/policies" "$out/policies"
{
  echo '{'
  echo '  "fork_at": '"$at"','
  echo '  "runs": {'
  first=1
  for r in run-1 run-2 run-3 run-4; do
    rep=$(s replay "$r" --policies "$out/policies" --json)
    [ $first -eq 1 ] || echo ','
    first=0
    printf '    "%s": %s' "$r" "$(printf '%s' "$rep" | python3 -c 'import json,sys; r=json.load(sys.stdin); assert r["divergence"] is None, r; print(json.dumps({"facts": r["recorded"], "awaiting": r["awaiting"]}))')"
  done
  echo
  echo '  }'
  echo '}'
} > "$out/expected.json"
echo "recorded $(s journal verify --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["events"])') events into $out"
