//! Fail-stop on storage faults: a real `stele` process whose `fdatasync`
//! starts failing (an LD_PRELOAD shim compiled here, so the fault comes from
//! the syscall boundary, not from a mock) must refuse every later append with
//! a clear "poisoned" error, and after a restart every acknowledged event is
//! there and verifies.

use std::path::Path;
use std::process::Command;

const SHIM: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <stdatomic.h>
static atomic_long calls;
static int fail_now(void) {
    const char *s = getenv("STELE_FAIL_SYNC_AFTER");
    long limit = s ? atol(s) : 1000000000L;
    return atomic_fetch_add(&calls, 1) >= limit;
}
int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    if (fail_now()) { errno = EIO; return -1; }
    return real(fd);
}
"#;

fn build_shim(dir: &Path) -> std::path::PathBuf {
    let src = dir.join("failsync.c");
    let so = dir.join("failsync.so");
    std::fs::write(&src, SHIM).expect("write shim");
    let status = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&so)
        .arg(&src)
        .arg("-ldl")
        .status()
        .expect("cc is needed to build the fault-injection shim");
    assert!(status.success(), "building the shim failed");
    so
}

#[test]
fn a_failed_fsync_poisons_the_journal_and_loses_nothing_acknowledged() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let shim = build_shim(tmp.path());
    let data = tmp.path().join("data");
    let acks = tmp.path().join("acks");
    let out = crate::stele()
        .arg("--data")
        .arg(&data)
        .args([
            "bench",
            "journal",
            "--events",
            "5000",
            "--writers",
            "8",
            "--ack-log",
        ])
        .arg(&acks)
        .env("LD_PRELOAD", &shim)
        .env("STELE_FAIL_SYNC_AFTER", "60")
        .output()
        .expect("run stele");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the bench must fail once fsync fails");
    assert!(!stderr.contains("panicked"), "no panic: {stderr}");
    assert!(
        stderr.contains("poisoned"),
        "says the journal is poisoned: {stderr}"
    );
    assert!(
        stderr.contains("error:") && stderr.trim().lines().count() == 1,
        "one line: {stderr}"
    );

    let acked: Vec<u64> = std::fs::read_to_string(&acks)
        .expect("ack log")
        .lines()
        .map(|l| l.parse().expect("seq"))
        .collect();
    assert!(
        acked.len() > 10,
        "some appends were acknowledged before the fault"
    );
    assert!(acked.len() < 5000, "the fault stopped the run");

    // Restart without the fault: everything acknowledged is there and verifies.
    let verify = crate::stele()
        .arg("--data")
        .arg(&data)
        .args(["journal", "verify", "--json"])
        .output()
        .expect("verify");
    let report: serde_json::Value = serde_json::from_slice(&verify.stdout).expect("verify json");
    assert_eq!(report["ok"], true, "{report}");
    let head = report["head_seq"].as_u64().expect("head");
    let max_acked = acked.iter().max().copied().unwrap_or(0);
    assert!(
        head >= max_acked,
        "acknowledged seq {max_acked} lost; head is {head}"
    );
    let events = crate::stele()
        .arg("--data")
        .arg(&data)
        .args(["events", "--json"])
        .output()
        .expect("events");
    let present: std::collections::BTreeSet<u64> = String::from_utf8_lossy(&events.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("json")["seq"]
                .as_u64()
                .expect("seq")
        })
        .collect();
    for seq in &acked {
        assert!(present.contains(seq), "acknowledged event {seq} is missing");
    }
}
