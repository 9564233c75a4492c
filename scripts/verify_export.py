#!/usr/bin/env python3
"""Independent verifier of a stele audit bundle, written from
docs/VERIFYING.md alone (it shares no code with stele).

    python3 scripts/verify_export.py BUNDLE_DIR [--json]

Exit 0 when the bundle verifies, 1 when it does not (the first failure is
printed), 3 when the needed packages are missing.

Needs Python 3.9+ with `cryptography` (`apt-get install -y
python3-cryptography`); BLAKE3 comes from the `blake3` package when it is
installed (fast), else from the pure-Python blake3_pure.py beside this file.
"""

import base64
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
try:
    try:
        import blake3
    except ImportError:  # no PyPI package: the pure-Python fallback
        import blake3_pure as blake3
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
except ImportError as e:  # pragma: no cover - environment check
    sys.stderr.write(
        "error: verify_export.py needs the Python package cryptography "
        f"({e}); install it with: apt-get install -y python3-cryptography\n"
    )
    sys.exit(3)

EVENT_DOMAIN = b"stele/event/v1"
KEY_DOMAIN = b"stele/key/v1"
ROOT_BYTES = 61  # section 5: the archived body's root object
HEADER_BYTES = 28
KINDS = [
    "journal_opened", "key_rotated", "checkpoint_signed", "annotated",
    "agent_registered", "agent_state_changed", "task_queued", "task_placed",
    "task_preempted", "task_finished", "runtime_started", "timer_fired",
    "agent_stop_requested", "process_started", "resources_sampled",
    "process_exited", "run_interrupted", "shutdown_step", "health_checked",
]
RECORD_FIELDS = ["seq", "at", "stream", "cause", "kind", "body", "prev",
                 "hash", "key", "sig", "canonical", "redacted"]
CORE_FILES = ["events.jsonl", "keys.json", "checkpoints.json", "proofs.json"]


class Fail(Exception):
    def __init__(self, where, reason):
        super().__init__(f"{where}: {reason}")


def b3(data):
    return blake3.blake3(data).digest()


def key_id(public_key):
    return b3(KEY_DOMAIN + public_key)[:8]


def event_hash(prev, canonical):
    return b3(EVENT_DOMAIN + prev + canonical)


def leaf(h):
    return b3(b"\x00" + h)


def node(left, right):
    return b3(b"\x01" + left + right)


def split(n):
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def unhex(where, field, value, size):
    try:
        raw = bytes.fromhex(value)
    except (TypeError, ValueError):
        raise Fail(where, f"{field} is not hex")
    if len(raw) != size:
        raise Fail(where, f"{field} is {len(raw)} bytes, expected {size}")
    return raw


def unb64(where, field, value):
    try:
        return base64.b64decode(value, validate=True)
    except (TypeError, ValueError):
        raise Fail(where, f"{field} is not base64")


def u64(b, at):
    return int.from_bytes(b[at:at + 8], "little")


def parse_header(where, b, exact):
    """Section 3: (seq, at, cause, stream, header length)."""
    if len(b) < HEADER_BYTES:
        raise Fail(where, "canonical header too short")
    if b[0] != 1:
        raise Fail(where, f"canonical version {b[0]}, expected 1")
    seq = u64(b, 1)
    at = int.from_bytes(b[9:17], "little", signed=True)
    if b[17] not in (0, 1):
        raise Fail(where, f"cause flag {b[17]}")
    cause = u64(b, 18) if b[17] == 1 else None
    n = int.from_bytes(b[26:28], "little")
    end = HEADER_BYTES + n
    if end > len(b) or (exact and end != len(b)):
        raise Fail(where, "stream length does not fit the header")
    stream = b[HEADER_BYTES:end].decode("ascii")
    return seq, at, cause, stream, end


def check_record(where, rec):
    """Section 4, checks 1-3. Returns the decoded record."""
    if not isinstance(rec, dict) or list(rec.keys()) != RECORD_FIELDS:
        raise Fail(where, f"record fields must be exactly {RECORD_FIELDS}")
    seq = rec["seq"]
    where = f"{where} (seq {seq})"
    prev = unhex(where, "prev", rec["prev"], 32)
    h = unhex(where, "hash", rec["hash"], 32)
    key = unhex(where, "key", rec["key"], 8)
    sig = unhex(where, "sig", rec["sig"], 64)
    canonical, redacted = rec["canonical"], rec["redacted"]
    if (canonical is None) == (redacted is None):
        raise Fail(where, "exactly one of canonical and redacted must be set")
    body = None
    if canonical is not None:
        canonical = unb64(where, "canonical", canonical)
        hseq, at, cause, stream, end = parse_header(where, canonical, exact=False)
        body = canonical[end:]
        if event_hash(prev, canonical) != h:
            raise Fail(where, "hash mismatch: the canonical bytes do not hash to `hash`")
        if len(body) < ROOT_BYTES:
            raise Fail(where, "body shorter than its root object")
        tag = body[len(body) - ROOT_BYTES]
        if tag < len(KINDS) and rec["kind"] != KINDS[tag]:
            raise Fail(where, f"kind is {rec['kind']!r}, the body's tag says {KINDS[tag]!r}")
        if rec["body"] is None:
            raise Fail(where, "body is null but the event is not redacted")
    else:
        header = unb64(where, "redacted.header", redacted.get("header"))
        hseq, at, cause, stream, _ = parse_header(where, header, exact=True)
        if rec["kind"] is not None or rec["body"] is not None:
            raise Fail(where, "a redacted record must have null kind and body")
        unhex(where, "redacted.body_blake3", redacted.get("body_blake3"), 32)
    if (hseq, at, cause, stream) != (seq, rec["at"], rec["cause"], rec["stream"]):
        raise Fail(where, "seq/at/cause/stream differ from the canonical header")
    return {"seq": seq, "prev": prev, "hash": h, "key": key, "sig": sig,
            "body": body, "stream": stream, "redacted": canonical is None}


def root_of(body):
    return len(body) - ROOT_BYTES


def check_sig(where, public_key, r):
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(r["sig"], r["hash"])
    except InvalidSignature:
        raise Fail(where, "signature does not verify")


def multiproof_root(leaves, size, hashes):
    """Section 8: leaves is a list of (index, event hash), increasing."""
    cursor = [0]

    def rec(lo, hi, chosen):
        if not chosen:
            if cursor[0] >= len(hashes):
                raise ValueError("proof too short")
            h = hashes[cursor[0]]
            cursor[0] += 1
            return h
        if hi - lo == 1:
            return leaf(chosen[0][1])
        mid = lo + split(hi - lo)
        left = [c for c in chosen if c[0] < mid]
        right = [c for c in chosen if c[0] >= mid]
        return node(rec(lo, mid, left), rec(mid, hi, right))

    root = rec(0, size, leaves)
    if cursor[0] != len(hashes):
        raise ValueError("proof too long")
    return root


def verify_consistency(first, second, first_root, second_root, proof):
    """RFC 9162 section 2.1.4.2."""
    if first == second:
        return not proof and first_root == second_root
    if first == 0 or first > second:
        return False
    if first & (first - 1) == 0:
        proof = [first_root] + proof
    if not proof:
        return False
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node(c, fr)
            sr = node(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == first_root and sr == second_root


def load_json(d, name):
    try:
        with open(os.path.join(d, name), "rb") as f:
            return json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        raise Fail(name, "missing")
    except ValueError as e:
        raise Fail(name, f"not JSON: {e}")


def hex_list(where, values):
    return [unhex(where, f"hash {i}", v, 32) for i, v in enumerate(values)]


def verify(d):
    if not os.path.isdir(d):
        raise Fail(d, "no such bundle directory")
    # Section 9: the manifest and its files.
    m = load_json(d, "manifest.json")
    if m.get("format") != "stele-audit-bundle-v1":
        raise Fail("manifest.json", f"unknown format {m.get('format')!r}")
    files = m["files"]
    expected = set(CORE_FILES) | set(m["attachments"].keys())
    if set(files.keys()) != expected:
        raise Fail("manifest.json", f"files must list exactly {sorted(expected)}")
    for name, entry in sorted(files.items()):
        if "/" in name or name in (".", ".."):
            raise Fail("manifest.json", f"bad file name {name!r}")
        try:
            with open(os.path.join(d, name), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise Fail(name, "missing")
        if len(data) != entry["bytes"] or blake3.blake3(data).hexdigest() != entry["blake3"]:
            raise Fail(name, "size or BLAKE3 differs from the manifest")

    # Section 6: the key history.
    k = load_json(d, "keys.json")
    if k.get("format") != "stele-audit-keys-v1":
        raise Fail("keys.json", "unknown format")
    history = []  # dicts like keys.json's entries, plus raw public key
    key_hashes = {}
    for i, raw in enumerate(k["events"]):
        r = check_record(f"keys.json event {i + 1}", raw)
        where = f"keys.json (seq {r['seq']})"
        if r["redacted"]:
            raise Fail(where, "a key event must not be redacted")
        body = r["body"]
        R = root_of(body)
        if i == 0:
            if r["seq"] != 1 or body[R] != 0:
                raise Fail(where, "the first key event must be journal_opened at seq 1")
            kid, pk = body[R + 13:R + 21], body[R + 21:R + 53]
            if kid != r["key"]:
                raise Fail(where, "journal_opened is not signed by the key it introduces")
            active_from = 1
        else:
            if body[R] != 1 or r["seq"] <= history[-1]["introduced_at"]:
                raise Fail(where, "expected a key_rotated event after the previous key event")
            active = bytes.fromhex(history[-1]["id"])
            if body[R + 1:R + 9] != active or r["key"] != active:
                raise Fail(where, "rotation not signed by the active key")
            kid, pk = body[R + 9:R + 17], body[R + 17:R + 49]
            history[-1]["active_to"] = r["seq"]
            active_from = r["seq"] + 1
        if key_id(pk) != kid:
            raise Fail(where, "key id does not match its public key")
        history.append({"id": kid.hex(), "public_key": pk.hex(), "introduced_at": r["seq"],
                        "active_from": active_from, "active_to": None})
        key_hashes[r["seq"]] = (r, where)
    if not history:
        raise Fail("keys.json", "no key events")
    if k["keys"] != history:
        raise Fail("keys.json", "keys differ from the history the key events make")

    def active_key(seq):
        chosen = None
        for e in history:
            if e["active_from"] <= seq:
                chosen = e
        return chosen

    def check_signed(where, r):
        e = active_key(r["seq"])
        if e is None or bytes.fromhex(e["id"]) != r["key"]:
            raise Fail(where, "not signed by the key active at its seq")
        check_sig(where, bytes.fromhex(e["public_key"]), r)

    for r, where in key_hashes.values():
        check_signed(where, r)

    # Section 7: the checkpoints.
    c = load_json(d, "checkpoints.json")
    if c.get("format") != "stele-audit-checkpoints-v1":
        raise Fail("checkpoints.json", "unknown format")
    cps = {}
    for label in ("covering", "latest"):
        cp = c[label]
        where = f"checkpoints.json {label}"
        r = check_record(where, cp["event"])
        if r["redacted"]:
            raise Fail(where, "a checkpoint event must not be redacted")
        body = r["body"]
        R = root_of(body)
        root = unhex(where, "root", cp["root"], 32)
        if body[R] != 2 or u64(body, R + 1) != cp["size"] or body[R + 9:R + 41] != root:
            raise Fail(where, "the signed event does not commit to this size and root")
        if any(body[R + 41:]):
            raise Fail(where, "checkpoint body padding is not zero")
        if r["seq"] != cp["size"] + 1:
            raise Fail(where, "a checkpoint of N events must be event N+1")
        check_signed(where, r)
        cps[label] = (cp["size"], root, r)
    (n, n_root, n_ev), (m_size, m_root, m_ev) = cps["covering"], cps["latest"]
    if m_size < n:
        raise Fail("checkpoints.json", "latest is older than covering")
    if m["checkpoint"] != {"size": n, "seq": n_ev["seq"]} or \
            m["latest_checkpoint"] != {"size": m_size, "seq": m_ev["seq"]}:
        raise Fail("manifest.json", "checkpoints differ from checkpoints.json")

    # Section 8: consistency and anchors.
    p = load_json(d, "proofs.json")
    if p.get("format") != "stele-audit-proofs-v1":
        raise Fail("proofs.json", "unknown format")
    if (p["events"]["size"], p["consistency"]["old_size"], p["consistency"]["new_size"],
            p["anchors"]["size"]) != (n, n, m_size, m_size):
        raise Fail("proofs.json", "tree sizes differ from the checkpoints")
    if not verify_consistency(n, m_size, n_root, m_root, hex_list("proofs.json", p["consistency"]["hashes"])):
        raise Fail("proofs.json", "consistency proof does not verify")
    anchors = {seq: r["hash"] for seq, (r, _) in key_hashes.items()}
    if n_ev["seq"] <= m_size:
        anchors[n_ev["seq"]] = n_ev["hash"]
    if p["anchors"]["seqs"] != sorted(anchors):
        raise Fail("proofs.json", "anchors.seqs differs from the key and checkpoint events")
    try:
        root = multiproof_root([(s - 1, anchors[s]) for s in sorted(anchors)], m_size,
                               hex_list("proofs.json", p["anchors"]["hashes"]))
    except ValueError as e:
        raise Fail("proofs.json", f"anchors proof: {e}")
    if root != m_root:
        raise Fail("proofs.json", "anchors proof does not give the latest root")

    # Section 4: the events.
    sel, redact = m["selection"], m["redact"]
    known = {s: r["hash"] for s, (r, _) in key_hashes.items()}
    known[n_ev["seq"]] = n_ev["hash"]
    known[m_ev["seq"]] = m_ev["hash"]
    leaves, last, redacted = [], None, 0
    with open(os.path.join(d, "events.jsonl"), "rb") as f:
        for no, line in enumerate(f, 1):
            where = f"events.jsonl line {no}"
            if not line.endswith(b"\n"):
                raise Fail(where, "no newline at the end")
            try:
                raw = json.loads(line.decode("utf-8"))
            except ValueError as e:
                raise Fail(where, f"not JSON: {e}")
            r = check_record(where, raw)
            where = f"{where} (seq {r['seq']})"
            check_signed(where, r)
            seq = r["seq"]
            if last is None:
                if sel["type"] == "range" and seq != sel["from"]:
                    raise Fail(where, "the range does not start here")
            else:
                if seq <= last["seq"]:
                    raise Fail(where, "seqs must increase")
                if sel["type"] == "range":
                    if seq != last["seq"] + 1:
                        raise Fail(where, "the range is not contiguous")
                    if r["prev"] != last["hash"]:
                        raise Fail(where, "prev is not the previous event's hash: the chain is broken")
            hidden = any(r["stream"].startswith(pfx) for pfx in redact)
            if hidden != r["redacted"]:
                raise Fail(where, "redaction does not follow the manifest's prefixes")
            redacted += r["redacted"]
            if seq > n:
                raise Fail(where, "not covered by the covering checkpoint")
            if seq in known and known[seq] != r["hash"]:
                raise Fail(where, "differs from the same event in keys.json/checkpoints.json")
            if not r["redacted"] and r["body"][root_of(r["body"])] == 1 and seq not in key_hashes:
                raise Fail(where, "a key rotation that keys.json does not hold")
            leaves.append((seq - 1, r["hash"]))
            last = r
    if last is None:
        raise Fail("events.jsonl", "no events")
    if sel["type"] == "range" and last["seq"] != sel["to"]:
        raise Fail("events.jsonl", "the range does not end at `to`: events are missing")
    try:
        root = multiproof_root(leaves, n, hex_list("proofs.json", p["events"]["hashes"]))
    except ValueError as e:
        raise Fail("proofs.json", f"events proof: {e}")
    if root != n_root:
        raise Fail("proofs.json", "events proof does not give the covering root")
    counts = {"count": len(leaves), "redacted": redacted,
              "first_seq": leaves[0][0] + 1, "last_seq": last["seq"]}
    if m["events"] != counts or m["keys"] != len(history):
        raise Fail("manifest.json", "counts differ from the files")
    return {"ok": True, "events": len(leaves), "redacted": redacted, "first_seq": counts["first_seq"],
            "last_seq": counts["last_seq"], "checkpoint_size": n, "latest_size": m_size,
            "root_key": history[0]["public_key"]}


def main(argv):
    args = [a for a in argv[1:] if not a.startswith("--")]
    as_json = "--json" in argv[1:]
    if len(args) != 1:
        sys.stderr.write(__doc__)
        return 2
    try:
        result = verify(args[0])
    except Fail as e:
        if as_json:
            print(json.dumps({"ok": False, "error": str(e)}))
        else:
            print(f"FAILED: {e}")
        return 1
    except (KeyError, TypeError, IndexError, UnicodeDecodeError, AttributeError) as e:
        msg = f"malformed bundle: {type(e).__name__}: {e}"
        print(json.dumps({"ok": False, "error": msg}) if as_json else f"FAILED: {msg}")
        return 1
    if as_json:
        print(json.dumps(result))
    else:
        print(f"ok: {result['events']} events ({result['redacted']} redacted), seqs "
              f"{result['first_seq']}..={result['last_seq']}, checkpoint {result['checkpoint_size']}, "
              f"latest {result['latest_size']}, first key {result['root_key'][:12]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
