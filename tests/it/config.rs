//! `stele.toml`: the seed's example parses, unknown sections and keys are
//! errors with their position, `STELE_<SECTION>_<KEY>` overrides work and
//! are named when wrong, `[context.qdrant]` has its defaults, and the
//! `[journal]` section takes effect.

use std::path::Path;

use stele_engine::Config;
use stele_engine::config::{DurabilityConfig, SandboxTier, VectorBackend};

const SEED_EXAMPLE: &str = r#"
[runtime]
max_concurrent_agents = 10000
scheduler_threads = 8
message_buffer_size = 1048576
gc_interval_ms = 100

[security]
default_sandbox_tier = "gvisor"
enforce_policies = true
audit_enabled = true
crypto_provider = "ring"

[context]
vector_backend = "lancedb" # "lancedb" (default) or "qdrant"
vector_data_path = "./data/vectors" # LanceDB storage path
embedding_dimension = 1536
context_cache_size = "1GB"
knowledge_retention_days = 365

[mcp]
discovery_enabled = true
tool_verification = "strict"
connection_timeout_s = 30
max_concurrent_connections = 100
"#;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn the_seed_example_parses_and_defaults_fill_the_rest() {
    let c = Config::parse(Path::new("stele.toml"), SEED_EXAMPLE, &[]).expect("seed example");
    assert_eq!(c.security.default_sandbox_tier, SandboxTier::Gvisor);
    assert_eq!(c.context.vector_backend, VectorBackend::Lancedb);
    assert_eq!(c.context.context_cache_size, 1 << 30);
    assert_eq!(c.journal.durability, DurabilityConfig::Sync, "default");
    assert_eq!(
        Config::parse(Path::new("x"), "", &[]).expect("empty"),
        Config::default()
    );
    // What `config show` prints loads back to the same configuration.
    let shown = toml::to_string_pretty(&c).expect("toml");
    assert_eq!(
        Config::parse(Path::new("shown"), &shown, &[]).expect("round trip"),
        c
    );
}

#[test]
fn bad_files_and_overrides_are_named() {
    let cases = [
        ("[jornal]\n", "stele.toml:1:2: unknown field `jornal`"),
        (
            "[runtime]\nscheduler_threds = 2\n",
            "stele.toml:2:1: unknown field `scheduler_threds`",
        ),
        (
            "[security]\ndefault_sandbox_tier = \"vm\"\n",
            "stele.toml:2:24: unknown variant `vm`",
        ),
        (
            "[context]\ncontext_cache_size = \"lots\"\n",
            "stele.toml:2:22: \"lots\" is not a size",
        ),
        (
            "[journal]\ncheckpoint_interval = 1\n",
            "stele.toml:2:23: checkpoint_interval must be 0",
        ),
        ("[mcp\n", "stele.toml:1:5"),
    ];
    for (text, expected) in cases {
        let err = Config::parse(Path::new("stele.toml"), text, &[])
            .expect_err(text)
            .to_string();
        assert!(err.starts_with(expected), "{text:?}: {err}");
    }
    let c = Config::parse(
        Path::new("stele.toml"),
        SEED_EXAMPLE,
        &env(&[
            ("STELE_JOURNAL_DURABILITY", "buffered"),
            ("STELE_RUNTIME_SCHEDULER_THREADS", "2"),
            ("STELE_DATA", "/elsewhere"),
            ("PATH", "/bin"),
        ]),
    )
    .expect("overrides");
    assert_eq!(c.journal.durability, DurabilityConfig::Buffered);
    assert_eq!(c.runtime.scheduler_threads, 2);
    for (var, value, needle) in [
        ("STELE_JOURNAL_DURABILITY", "maybe", "unknown variant `maybe`"),
        (
            "STELE_RUNTIME_MAX_CONCURENT_AGENTS",
            "3",
            "unknown field `max_concurent_agents`",
        ),
        ("STELE_MCP_CONNECTION_TIMEOUT_S", "soon", "invalid type"),
    ] {
        let err = Config::parse(Path::new("stele.toml"), "", &env(&[(var, value)]))
            .expect_err(var)
            .to_string();
        assert!(
            err.starts_with(&format!("environment {var}: ")) && err.contains(needle),
            "{err}"
        );
    }
}

#[test]
fn the_qdrant_section_has_defaults_and_refuses_a_key_in_the_file() {
    let c = Config::parse(
        Path::new("stele.toml"),
        "[context]\nvector_backend = \"qdrant\"\n[context.qdrant]\nhost = \"q\"\nport = 6333\n",
        &[],
    )
    .expect("host and port suffice");
    let q = c.context.qdrant.as_ref().expect("[context.qdrant]");
    assert_eq!(
        (q.collection.as_str(), q.https, q.api_key_env.as_deref()),
        ("stele_context", false, None)
    );
    let shown = toml::to_string_pretty(&c).expect("toml");
    assert_eq!(
        Config::parse(Path::new("shown"), &shown, &[]).expect("round trip"),
        c
    );
    for (text, needle) in [
        ("api_key_env = \"sk-123 456\"", "NAME of the environment variable"),
        ("collection = \"a/b\"", "collection \"a/b\" must be"),
    ] {
        let err = Config::parse(
            Path::new("stele.toml"),
            &format!("[context.qdrant]\nhost = \"q\"\nport = 6333\n{text}\n"),
            &[],
        )
        .expect_err(text)
        .to_string();
        assert!(err.contains(needle), "{text}: {err}");
    }
}

#[test]
fn the_journal_section_takes_effect_through_the_binary() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path().join("data");
    let cfg = tmp.path().join("stele.toml");
    std::fs::write(&cfg, "[journal]\ncheckpoint_interval = 3\n").expect("write");
    for i in 0..4 {
        let o = crate::stele()
            .arg("--data")
            .arg(&d)
            .arg("--config")
            .arg(&cfg)
            .args(["journal", "append", "--text", &format!("n{i}")])
            .output()
            .expect("run");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let o = crate::stele()
        .arg("--data")
        .arg(&d)
        .args(["events", "--stream", "system", "--json"])
        .output()
        .expect("run");
    let checkpoints = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| l.contains("\"checkpoint_signed\""))
        .count();
    assert!(checkpoints >= 2, "a checkpoint every 3 events: {checkpoints}");
    let o = crate::stele()
        .env("STELE_JOURNAL_DURABILITY", "often")
        .arg("--data")
        .arg(&d)
        .args(["journal", "append", "--text", "x"])
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("environment STELE_JOURNAL_DURABILITY"));
}
