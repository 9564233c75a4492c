//! The architecture as tests: crates depend downward only (journal ←
//! projections ← engine ← replay ← vectors ← api), and every source file says what
//! lives in it with a `//!` comment.

use std::path::{Path, PathBuf};

const LAYERS: [(&str, &str); 6] = [
    ("journal", "stele-journal"),
    ("projections", "stele-projections"),
    ("engine", "stele-engine"),
    ("replay", "stele-replay"),
    // An adapter of the engine's vector index trait (LanceDB), used by api
    // only.
    ("vectors", "stele-vectors"),
    ("api", "stele"),
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn dependencies_point_down_only() {
    for (i, (dir, _)) in LAYERS.iter().enumerate() {
        let manifest = std::fs::read_to_string(root().join(dir).join("Cargo.toml")).expect("manifest");
        // Only the [dependencies] section counts as the layering.
        let deps: String = manifest
            .split("\n[")
            .filter(|section| section.starts_with("dependencies]"))
            .collect();
        for (j, (_, upper)) in LAYERS.iter().enumerate().skip(i + 1) {
            let needle = format!("\n{upper}.");
            let needle2 = format!("\n{upper} ");
            assert!(
                !deps.contains(&needle) && !deps.contains(&needle2),
                "{dir} depends on {upper} (layer {j} above it); dependencies must point down"
            );
        }
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let p = entry.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn every_source_file_starts_with_a_module_doc() {
    let mut files = Vec::new();
    for dir in [
        "journal/src",
        "projections/src",
        "engine/src",
        "replay/src",
        "vectors/src",
        "api/src",
        "tests/it",
        "benches",
    ] {
        let d = root().join(dir);
        if d.exists() {
            rust_files(&d, &mut files);
        }
    }
    assert!(files.len() > 10, "found the sources");
    let missing: Vec<_> = files
        .iter()
        .filter(|f| {
            let text = std::fs::read_to_string(f).expect("read source");
            !text.trim_start().starts_with("//!")
        })
        .collect();
    assert!(missing.is_empty(), "files without a //! doc comment: {missing:?}");
}
