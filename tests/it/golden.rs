//! Golden journals: a small journal per format version, checked in under
//! `fixtures/journals/`. This build must open and verify each one and read
//! its events exactly as they were written; a format change that breaks old
//! journals fails here.

use std::path::{Path, PathBuf};

use stele_journal::{EventBody, Reader, RunId, Seq, StreamId};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read fixture dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy fixture file");
        }
    }
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/journals")
        .join(name)
}

/// Opens a copy (fjall recovery writes to its directory).
fn open_copy(name: &str) -> (tempfile::TempDir, Reader) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("j");
    copy_dir(&fixture(name), &dir);
    let reader = Reader::open(&dir).expect("golden journal opens");
    (tmp, reader)
}

#[test]
fn golden_v1_verifies_and_reads_back() {
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("v1.expected.json")).expect("expected file"))
            .expect("expected json");
    let (_tmp, reader) = open_copy("v1");
    let report = stele_journal::verify(&reader, &|_, _| {});
    assert!(report.ok, "golden journal must verify: {:?}", report.error);
    assert_eq!(report.events, expected["events"].as_u64().expect("events"));
    assert_eq!(
        report.head_hash,
        expected["head_hash"].as_str().expect("head_hash")
    );
    assert_eq!(report.checkpoints, 2);
    assert_eq!(report.keys, 2, "the golden journal rotated its key once");

    let e = reader
        .get(Seq(9))
        .expect("read")
        .expect("event 9 exists")
        .to_event()
        .expect("decodes");
    assert_eq!(e.stream, StreamId::new("agent:alpha").expect("id"));
    assert_eq!(e.cause, Some(Seq(3)));
    assert_eq!(
        e.body,
        EventBody::Annotated {
            text: "after rotation".into(),
            run: Some("run-7".into())
        }
    );
    let run: Vec<u64> = reader
        .run(&RunId::new("demo-run-1").expect("id"), Seq(1))
        .map(|e| e.expect("read").seq().0)
        .collect();
    assert_eq!(run, vec![3, 4]);
    let first = reader
        .get(Seq(1))
        .expect("read")
        .expect("event 1")
        .to_event()
        .expect("decodes");
    assert!(matches!(
        first.body,
        EventBody::JournalOpened {
            recovered_head: 0,
            ..
        }
    ));
}

#[test]
fn golden_v1_needs_its_key_to_write() {
    // The fixture ships without private keys: reading and verifying need none,
    // writing must refuse with the missing key's path.
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("j");
    copy_dir(&fixture("v1"), &dir);
    let out = crate::stele()
        .args(["--data"])
        .arg(&dir)
        .args(["journal", "append", "--text", "x"])
        .output()
        .expect("run stele");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("keys/") && err.contains(".key"),
        "error names the key file: {err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one-line error: {err}");
}
