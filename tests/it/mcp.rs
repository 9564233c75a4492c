//! The MCP client through the binary, against real servers: the reference
//! servers from the npm registry (`server-everything`, `server-filesystem`,
//! run with node; `scripts/test.sh` installs them and exports
//! `STELE_TEST_MCP_BIN`) and our signed test server
//! (`fixtures/mcp/signed_server.py`) for the SchemaPin cases — pinned key
//! ok, key changed, schema tampered, unsigned under strict and warn — the
//! Cedar gate on each call, a reasoning run calling an MCP tool and its
//! replay, and every step in the journal. Over streamable HTTP: the
//! reference server (`server-everything streamableHttp`) and our signed
//! server (`--http`), a scripted run through it, clear errors for an
//! unreachable URL, a non-MCP endpoint and malformed answers, and SchemaPin
//! keys discovered at the provider's `/.well-known/schemapin.json`
//! (pinned on first use, a different or revoked key refused).

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::kill_on_drop::KillOnDrop;
use crate::{Run, run_bounded};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The npm servers' bin directory; fails loudly when absent.
fn npm_bin(name: &str) -> String {
    let dir = std::env::var("STELE_TEST_MCP_BIN").unwrap_or_else(|_| {
        panic!(
            "STELE_TEST_MCP_BIN is not set: run scripts/test.sh, or install the MCP servers with \
             `npm install --prefix /var/tmp/stele-mcp @modelcontextprotocol/server-filesystem@2026.8.31 \
             @modelcontextprotocol/server-everything@2026.8.31` and export \
             STELE_TEST_MCP_BIN=/var/tmp/stele-mcp/node_modules/.bin"
        )
    });
    let path = Path::new(&dir).join(name);
    assert!(
        path.exists(),
        "{} is missing (STELE_TEST_MCP_BIN={dir})",
        path.display()
    );
    path.display().to_string()
}

fn signed_server(key: &str, mode: &str) -> String {
    format!(
        "[[mcp.servers]]\nname = \"signed\"\ncommand = \"python3\"\nargs = [{:?}]\ndomain = \"tools.example\"\nenv = {{ SCHEMAPIN_KEY = {key:?}, SCHEMAPIN_MODE = {mode:?} }}\n",
        root().join("fixtures/mcp/signed_server.py").display().to_string()
    )
}

struct Setup {
    dir: tempfile::TempDir,
    data: PathBuf,
    config: PathBuf,
}

impl Setup {
    fn new(verification: &str, servers: &str) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Setup {
            data: dir.path().join("data"),
            config: dir.path().join("stele.toml"),
            dir,
        };
        s.configure(verification, servers);
        s
    }

    fn configure(&self, verification: &str, servers: &str) {
        std::fs::write(
            &self.config,
            format!("[mcp]\ntool_verification = {verification:?}\nconnection_timeout_s = 15\ncall_timeout_s = 15\n\n{servers}"),
        )
        .expect("config");
    }

    fn stele(&self, args: &[&str]) -> Run {
        let mut all = vec![
            "--data",
            self.data.to_str().expect("utf8"),
            "--config",
            self.config.to_str().expect("utf8"),
        ];
        all.extend_from_slice(args);
        let r = run_bounded(&all);
        r.no_panic(&args.join(" "));
        r
    }

    fn policies(&self) -> String {
        root().join("fixtures/mcp/policies").display().to_string()
    }

    /// `stele mcp list --json`: each server's JSON.
    fn list(&self) -> Vec<Value> {
        let p = self.policies();
        let r = self.stele(&["mcp", "list", "--json", "--policies", &p]);
        serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("list JSON ({e}): {r:?}"))
    }

    fn call(&self, server: &str, tool: &str, args: &str, priority: &str) -> Run {
        let p = self.policies();
        self.stele(&[
            "mcp",
            "call",
            server,
            tool,
            "--args",
            args,
            "--priority",
            priority,
            "--json",
            "--policies",
            &p,
        ])
    }

    fn events(&self) -> Vec<Value> {
        let r = self.ok(&["events", "--json"]);
        r.stdout
            .lines()
            .map(|l| serde_json::from_str(l).expect("event JSON"))
            .collect()
    }

    /// [`Setup::stele`], which must succeed.
    fn ok(&self, args: &[&str]) -> Run {
        let r = self.stele(args);
        assert_eq!(r.code, Some(0), "{r:?}");
        r
    }

    /// `stele mcp call … --json` exiting with `code`.
    fn call_exits(&self, server: &str, tool: &str, args: &str, priority: &str, code: i32) -> Run {
        let r = self.call(server, tool, args, priority);
        assert_eq!(r.code, Some(code), "{r:?}");
        r
    }

    /// `stele mcp call … --json`, which must succeed: its JSON.
    fn call_ok(&self, server: &str, tool: &str, args: &str, priority: &str) -> Value {
        call_json(&self.call_exits(server, tool, args, priority, 0))
    }

    /// `stele mcp call … --json`, which must exit 1: why, as it says.
    fn call_refused(&self, server: &str, tool: &str, args: &str, priority: &str) -> String {
        let out = call_json(&self.call_exits(server, tool, args, priority, 1));
        out["output"]
            .as_str()
            .unwrap_or_else(|| panic!("no reason in {out}"))
            .to_owned()
    }

    /// Server `signed`'s `add`, called at `priority`, returns `a + b`.
    fn assert_adds(&self, priority: &str, a: u32, b: u32) {
        let args = serde_json::json!({ "a": a, "b": b }).to_string();
        let out = self.call_ok("signed", "add", &args, priority);
        assert_eq!(out["output"], (a + b).to_string(), "{out}");
    }

    /// `stele mcp list` (not JSON), which must fail: what it printed.
    fn list_fails(&self) -> String {
        let r = self.stele(&["mcp", "list", "--policies", &self.policies()]);
        assert_eq!(r.code, Some(1), "{r:?}");
        r.stdout
    }

    /// `stele mcp resources SERVER`, which must succeed: its JSON.
    fn resources(&self, server: &str) -> Value {
        let r = self.ok(&["mcp", "resources", server, "--policies", &self.policies()]);
        serde_json::from_str(&r.stdout).expect("resources JSON")
    }

    /// `fixtures/mcp/adder.toml` (a reasoning agent adding with the signed
    /// server's `add`) working in this setup's directory.
    fn adder_agent(&self) -> PathBuf {
        let workspace = self.dir.path().join("ws");
        let agent = self.dir.path().join("adder.toml");
        let text = std::fs::read_to_string(root().join("fixtures/mcp/adder.toml"))
            .expect("fixture")
            .replace(
                "workspace = \"stele-workspace\"",
                &format!("workspace = {:?}", workspace.display().to_string()),
            )
            .replace(
                "script = \"fixtures/mcp/adder.json\"",
                &format!(
                    "script = {:?}",
                    root().join("fixtures/mcp/adder.json").display().to_string()
                ),
            );
        std::fs::write(&agent, text).expect("agent");
        agent
    }

    /// `stele run AGENT --input "add 2 and 3" --json` under `policies`,
    /// exiting with `code` (`what` says why): its JSON report.
    fn run_adder(&self, agent: &Path, policies: &str, code: i32, what: &str) -> Value {
        let r = self.stele(&[
            "run",
            agent.to_str().expect("utf8"),
            "--input",
            "add 2 and 3",
            "--json",
            "--policies",
            policies,
        ]);
        assert_eq!(r.code, Some(code), "{what}: {r:?}");
        serde_json::from_str(&r.stdout).expect("run JSON")
    }

    /// Points server `signed` at a command that does not exist, then
    /// replays `run`: it must succeed without the server.
    fn replay_without_server(&self, run: &str, policies: &str) {
        self.configure(
            "strict",
            "[[mcp.servers]]\nname = \"signed\"\ncommand = \"/nonexistent/server\"\n",
        );
        self.ok(&["replay", run, "--policies", policies]);
    }
}

fn kind<'a>(ev: &'a [Value], k: &str) -> Vec<&'a Value> {
    ev.iter().filter(|e| e["body"]["kind"] == k).collect()
}

fn tool<'a>(server: &'a Value, name: &str) -> &'a Value {
    server["tools"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["name"] == name))
        .unwrap_or_else(|| panic!("no tool {name} in {server}"))
}

fn call_json(r: &Run) -> Value {
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("call JSON ({e}): {r:?}"))
}

/// The string `field` of the body of event `e`.
fn body_str<'a>(e: &'a Value, field: &str) -> &'a str {
    e["body"][field]
        .as_str()
        .unwrap_or_else(|| panic!("no string {field} in {e}"))
}

/// Lists `s`'s one server, asserting that its first tool pins the domain's
/// key and the others verify against it: the listing.
fn pinned_on_first_use(s: &Setup) -> Vec<Value> {
    let list = s.list();
    assert_eq!(
        statuses(&list[0]),
        ["first_use", "verified", "verified"],
        "{list:?}"
    );
    list
}

/// The verification status of each of `server`'s tools, in order.
fn statuses(server: &Value) -> Vec<&str> {
    server["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .map(|t| t["status"].as_str().expect("status"))
        .collect()
}

/// The reference `everything` server offers its unsigned `echo` (accepted
/// under warn), and `echo` returns `message`.
fn echo_through_everything(s: &Setup, message: &str) {
    let list = s.list();
    assert_eq!(list.len(), 1, "{list:?}");
    assert!(list[0].get("error").is_none(), "{list:?}");
    let echo = tool(&list[0], "echo");
    assert_eq!(echo["qualified"], "mcp__everything__echo");
    // The reference servers do not sign their schemas: offered under warn.
    assert_eq!(echo["status"], "unsigned");
    assert_eq!(echo["accepted"], true);

    let args = serde_json::json!({ "message": message }).to_string();
    let out = s.call_ok("everything", "echo", &args, "normal");
    assert_eq!(out["ok"], true, "{out}");
    assert!(out["output"].as_str().expect("text").contains(message), "{out}");
}

#[test]
fn everything_server_lists_calls_and_reads_resources_all_journaled() {
    let s = Setup::new(
        "warn",
        &format!(
            "[[mcp.servers]]\nname = \"everything\"\ncommand = {:?}\n",
            npm_bin("mcp-server-everything")
        ),
    );
    echo_through_everything(&s, "hello from stele");

    let resources = s.resources("everything");
    let first = resources.as_array().and_then(|a| a.first()).expect("a resource")["uri"]
        .as_str()
        .expect("uri")
        .to_owned();
    let r = s.ok(&[
        "mcp",
        "resources",
        "everything",
        "--read",
        &first,
        "--policies",
        &s.policies(),
    ]);
    assert!(r.stdout.contains(&first), "{}", r.stdout);

    let ev = s.events();
    assert_eq!(
        kind(&ev, "mcp_server_connected").len(),
        4,
        "one connection per command"
    );
    let listed = kind(&ev, "mcp_tools_listed");
    assert!(body_str(listed[0], "tools").contains("\"echo\""));
    assert!(
        kind(&ev, "mcp_tool_verified")
            .iter()
            .any(|e| e["body"]["tool"] == "echo"
                && e["body"]["status"] == "unsigned"
                && e["body"]["accepted"] == true)
    );
    let decided = kind(&ev, "policy_decided");
    assert_eq!(decided.len(), 1);
    assert_eq!(decided[0]["body"]["verdict"], "allow");
    assert!(body_str(decided[0], "request").contains("\"mcp_verification\":\"unsigned\""));
    let called = kind(&ev, "mcp_tool_called");
    assert_eq!(called[0]["body"]["tool"], "echo");
    let returned = kind(&ev, "mcp_tool_returned");
    assert_eq!(returned[0]["body"]["ok"], true);
    assert!(body_str(returned[0], "output").contains("hello from stele"));
    let reads = kind(&ev, "mcp_resource_read");
    assert_eq!(reads.len(), 2);
    assert_eq!(reads[1]["body"]["uri"], first.as_str());
    for e in &ev {
        if e["body"]["kind"]
            .as_str()
            .is_some_and(|k| k.starts_with("mcp_") && k != "mcp_key_pinned")
        {
            assert_eq!(e["stream"], "mcp:everything", "{e}");
        }
    }
    s.ok(&["journal", "verify"]);
}

#[test]
fn filesystem_server_is_refused_under_strict_and_reads_files_under_warn() {
    let s = Setup::new("strict", "");
    let shared = s.dir.path().join("shared");
    std::fs::create_dir_all(&shared).expect("shared dir");
    std::fs::write(shared.join("note.txt"), "a note for the MCP test\n").expect("note");
    let servers = format!(
        "[[mcp.servers]]\nname = \"files\"\ncommand = {:?}\nargs = [{:?}]\n",
        npm_bin("mcp-server-filesystem"),
        shared.display().to_string()
    );
    s.configure("strict", &servers);
    let list = s.list();
    let read = tool(&list[0], "read_text_file");
    assert_eq!(read["status"], "unsigned");
    assert_eq!(read["accepted"], false, "strict refuses unsigned schemas");
    let path = shared.join("note.txt").display().to_string();
    let args = serde_json::json!({ "path": path }).to_string();
    let why = s.call_refused("files", "read_text_file", &args, "normal");
    assert!(why.contains("refused"), "{why}");
    assert!(
        kind(&s.events(), "mcp_tool_called").is_empty(),
        "a refused tool is never called"
    );

    s.configure("warn", &servers);
    assert!(
        s.call_ok("files", "read_text_file", &args, "normal")["output"]
            .as_str()
            .expect("text")
            .contains("a note for the MCP test")
    );
    // The server's own confinement: outside its directory is an error result.
    let r = s.call_exits(
        "files",
        "read_text_file",
        r#"{"path":"/etc/hostname"}"#,
        "normal",
        1,
    );
    assert_eq!(call_json(&r)["ok"], false);
    let ev = s.events();
    assert!(
        kind(&ev, "mcp_tool_returned")
            .iter()
            .any(|e| e["body"]["ok"] == false)
    );
}

#[test]
fn a_signed_schema_pins_its_key_on_first_use_and_verifies_after() {
    let s = Setup::new("strict", &signed_server("a", "signed"));
    let first = pinned_on_first_use(&s);
    assert!(
        first[0]["tools"]
            .as_array()
            .expect("tools")
            .iter()
            .all(|t| t["accepted"] == true)
    );
    let key = tool(&first[0], "add")["key"].as_str().expect("key").to_owned();
    assert!(key.starts_with("sha256:") && key.len() == 7 + 64, "{key}");
    let r = s.stele(&["mcp", "pins", "--json"]);
    let pins: Value = serde_json::from_str(&r.stdout).expect("pins JSON");
    assert_eq!(pins["domains"]["tools.example"]["fingerprint"], key.as_str());

    let second = s.list();
    assert_eq!(tool(&second[0], "add")["status"], "verified");
    s.assert_adds("low", 2, 3);

    let ev = s.events();
    let pinned = kind(&ev, "mcp_key_pinned");
    assert_eq!(pinned.len(), 1, "one pin per domain, however many tools");
    assert_eq!(pinned[0]["stream"], "mcp");
    assert!(body_str(pinned[0], "public_key_pem").contains("BEGIN PUBLIC KEY"));
}

#[test]
fn a_changed_key_is_refused_under_strict_warned_under_warn_until_unpinned() {
    let s = Setup::new("strict", &signed_server("a", "signed"));
    let old = tool(&s.list()[0], "add")["key"].as_str().expect("key").to_owned();

    s.configure("strict", &signed_server("b", "signed"));
    let list = s.list();
    let add = tool(&list[0], "add");
    assert_eq!(add["status"], "key_changed");
    assert_eq!(add["accepted"], false);
    assert!(add["detail"].as_str().expect("detail").contains(&old), "{add}");
    let why = s.call_refused("signed", "add", r#"{"a":1,"b":1}"#, "normal");
    assert!(why.contains("key_changed"), "{why}");

    // warn: offered, the status journaled, the pin kept; a low-priority
    // agent is still denied by policy.
    s.configure("warn", &signed_server("b", "signed"));
    s.call_exits("signed", "add", r#"{"a":1,"b":1}"#, "normal", 0);
    let why = s.call_refused("signed", "add", r#"{"a":1,"b":1}"#, "low");
    assert!(why.contains("denied by policy"), "{why}");
    let ev = s.events();
    assert!(
        kind(&ev, "policy_decided")
            .iter()
            .any(|e| e["body"]["verdict"] == "deny")
    );
    assert_eq!(
        kind(&ev, "mcp_key_pinned").len(),
        1,
        "a changed key is never pinned by itself"
    );

    // An operator unpins; the next key seen is pinned.
    s.ok(&[
        "mcp",
        "unpin",
        "tools.example",
        "--reason",
        "the provider rotated its key",
    ]);
    s.configure("strict", &signed_server("b", "signed"));
    assert_eq!(tool(&s.list()[0], "add")["status"], "first_use");
    let ev = s.events();
    let unpinned = kind(&ev, "mcp_key_unpinned");
    assert_eq!(unpinned[0]["body"]["fingerprint"], old.as_str());
    assert_eq!(unpinned[0]["body"]["reason"], "the provider rotated its key");
    assert_eq!(kind(&ev, "mcp_key_pinned").len(), 2);
    let r = s.stele(&["mcp", "unpin", "nowhere.example", "--reason", "x"]);
    assert_ne!(r.code, Some(0), "{r:?}");
    assert!(
        r.stderr
            .contains("no key is pinned for domain \"nowhere.example\""),
        "{}",
        r.stderr
    );
}

#[test]
fn a_tampered_schema_is_refused_under_strict() {
    let s = Setup::new("strict", &signed_server("a", "signed"));
    let pinned = s.list();
    assert_eq!(tool(&pinned[0], "add")["status"], "first_use");
    assert_eq!(tool(&pinned[0], "echo")["status"], "verified");
    s.configure("strict", &signed_server("a", "tampered"));
    let list = s.list();
    let echo = tool(&list[0], "echo");
    assert_eq!(echo["status"], "invalid_signature", "{echo}");
    assert_eq!(echo["accepted"], false);
    s.call_exits("signed", "echo", r#"{"text":"x"}"#, "normal", 1);
    // Tampered from the start: nothing is pinned from a bad signature.
    let fresh = Setup::new("strict", &signed_server("a", "tampered"));
    assert_eq!(tool(&fresh.list()[0], "echo")["status"], "invalid_signature");
    assert!(kind(&fresh.events(), "mcp_key_pinned").is_empty());
}

#[test]
fn an_unsigned_tool_is_refused_under_strict_and_offered_under_warn() {
    let s = Setup::new("strict", &signed_server("a", "unsigned"));
    let add = tool(&s.list()[0], "add").clone();
    assert_eq!(add["status"], "unsigned");
    assert_eq!(add["accepted"], false);
    assert_eq!(
        s.call("signed", "add", r#"{"a":1,"b":2}"#, "normal").code,
        Some(1)
    );

    s.configure("warn", &signed_server("a", "unsigned"));
    s.assert_adds("normal", 1, 2);
    let ev = s.events();
    let verified = kind(&ev, "mcp_tool_verified");
    assert!(
        verified
            .iter()
            .any(|e| e["body"]["status"] == "unsigned" && e["body"]["accepted"] == false)
    );
    assert!(
        verified
            .iter()
            .any(|e| e["body"]["status"] == "unsigned" && e["body"]["accepted"] == true)
    );
}

#[test]
fn bad_configuration_and_dead_servers_get_clear_errors() {
    let s = Setup::new(
        "strict",
        "[[mcp.servers]]\nname = \"both\"\ncommand = \"x\"\nurl = \"http://127.0.0.1:9/mcp\"\n",
    );
    let r = s.stele(&["mcp", "pins"]);
    assert_ne!(r.code, Some(0));
    assert!(
        r.stderr
            .contains("mcp server both: give either command or url, not both"),
        "{}",
        r.stderr
    );

    s.configure(
        "strict",
        "[[mcp.servers]]\nname = \"Bad_Name\"\ncommand = \"x\"\n",
    );
    let r = s.stele(&["mcp", "pins"]);
    assert!(
        r.stderr.contains("mcp server name \"Bad_Name\" is invalid"),
        "{}",
        r.stderr
    );

    s.configure(
        "strict",
        "[[mcp.servers]]\nname = \"ghost\"\ncommand = \"/nonexistent/mcp-server\"\n",
    );
    let listed = s.list_fails();
    assert!(
        listed.contains("ghost: error: MCP server ghost: cannot connect to /nonexistent/mcp-server"),
        "{listed}"
    );

    // A server that exits at once: its stderr is in the error.
    s.configure(
        "strict",
        "[[mcp.servers]]\nname = \"dies\"\ncommand = \"sh\"\nargs = [\"-c\", \"echo broken server >&2; exit 3\"]\n",
    );
    let listed = s.list_fails();
    assert!(
        listed.contains("cannot connect") && listed.contains("broken server"),
        "{listed}"
    );

    let r = s.stele(&["mcp", "call", "nope", "x", "--policies", &s.policies()]);
    assert_ne!(r.code, Some(0), "{r:?}");
    assert!(r.stderr.contains("no MCP server named \"nope\""), "{}", r.stderr);
}

#[test]
fn a_reasoning_run_calls_an_mcp_tool_and_replays_without_the_server() {
    let s = Setup::new("strict", &signed_server("a", "signed"));
    let p = s.policies();
    let out = s.run_adder(&s.adder_agent(), &p, 0, "the run completes");
    assert_eq!(out["outcome"], "completed", "{out}");
    let run = out["run"].as_str().expect("run id").to_owned();

    let ev = s.events();
    let returned: Vec<_> = kind(&ev, "tool_returned");
    assert_eq!(returned.len(), 1);
    assert_eq!(returned[0]["body"]["output"], "5");
    assert_eq!(returned[0]["body"]["ok"], true);
    let called = kind(&ev, "mcp_tool_called");
    assert_eq!(
        body_str(called[0], "correlation"),
        format!("{run}/{}", returned[0]["body"]["call_id"].as_str().expect("id"))
    );
    // Two decisions: the driver's (in the run) and the MCP client's own.
    let decided: Vec<_> = kind(&ev, "policy_decided")
        .into_iter()
        .filter(|d| d["body"]["point"] == "tool_invocation")
        .collect();
    assert_eq!(decided.len(), 2, "{decided:?}");
    assert_eq!(decided[0]["stream"], format!("run:{run}").as_str());
    assert_eq!(decided[1]["stream"], "mcp:signed");
    assert!(decided.iter().all(|d| d["body"]["verdict"] == "allow"));

    // The replay serves the journaled result: with the server gone it
    // still reproduces the run.
    s.replay_without_server(&run, &p);
    assert!(
        kind(&s.events(), "mcp_server_connected").len() == 1,
        "replay started no server"
    );
}

#[test]
fn a_run_continued_after_an_approval_calls_an_mcp_tool_and_replays() {
    let s = Setup::new("strict", &signed_server("a", "signed"));
    // The MCP policies, and writing a file needs an operator's approval.
    let policies = s.dir.path().join("policies");
    std::fs::create_dir_all(&policies).expect("policies dir");
    std::fs::copy(
        root().join("fixtures/mcp/policies/mcp.cedar"),
        policies.join("mcp.cedar"),
    )
    .expect("copy policy");
    std::fs::write(
        policies.join("write.cedar"),
        "@id(\"write-needs-approval\")\n@approval(\"writing a file needs an operator's approval\")\npermit (principal, action == Action::\"invoke_tool\", resource == Tool::\"write_file\");\n",
    )
    .expect("write policy");
    let script = s.dir.path().join("script.json");
    std::fs::write(
        &script,
        r#"{"model": "scripted", "answers": [
  {"content": "I'll note the task first.", "tool_calls": [{"name": "write_file", "arguments": {"path": "task.txt", "content": "add 2 and 3"}}]},
  {"content": "Now the sum.", "tool_calls": [{"name": "mcp__signed__add", "arguments": {"a": 2, "b": 3}}]},
  {"content": "2 + 3 = 5."}
]}"#,
    )
    .expect("script");
    let agent = s.dir.path().join("adder.toml");
    std::fs::write(
        &agent,
        format!(
            "name = \"adder\"\npriority = \"normal\"\n[mode]\nkind = \"ephemeral\"\n[limits]\nmemory_mb = 64\ncpu_cores = 0.5\nexecution_timeout = \"60s\"\n[runs]\nkind = \"reasoning\"\nsystem = \"You add numbers.\"\ntools = [\"write_file\", \"mcp__signed__*\"]\nworkspace = {:?}\nscript = {:?}\nmax_steps = 6\n",
            s.dir.path().join("ws").display().to_string(),
            script.display().to_string()
        ),
    )
    .expect("agent");
    let p = policies.display().to_string();
    let out = s.run_adder(&agent, &p, 3, "the run parks");
    assert_eq!(out["outcome"], "awaiting_approval", "{out}");
    let run = out["run"].as_str().expect("run id").to_owned();
    let call = out["awaiting"][0]["call"].as_str().expect("call").to_owned();

    let r = s.ok(&["approve", &run, &call, "--json", "--policies", &p]);
    let out: Value = serde_json::from_str(&r.stdout).expect("approve JSON");
    assert_eq!(out["outcome"], "completed", "{out}");
    assert_eq!(out["answer"], "2 + 3 = 5.", "{out}");

    let ev = s.events();
    let returned = kind(&ev, "tool_returned");
    assert_eq!(returned.len(), 2, "{returned:?}");
    assert_eq!(returned[0]["body"]["ok"], true, "{:?}", returned[0]);
    // The MCP tool, offered again after the run was rebuilt, served the call.
    assert_eq!(returned[1]["body"]["ok"], true, "{:?}", returned[1]);
    assert_eq!(returned[1]["body"]["output"], "5");
    let called = kind(&ev, "mcp_tool_called");
    assert_eq!(called.len(), 1, "{called:?}");
    assert_eq!(
        body_str(called[0], "correlation"),
        format!("{run}/{}", returned[1]["body"]["call_id"].as_str().expect("id"))
    );

    // The replay reproduces the whole run, the approval included, without
    // the server.
    s.replay_without_server(&run, &p);
    assert_eq!(
        kind(&s.events(), "mcp_tool_called").len(),
        1,
        "replay called no server"
    );
}

/// An MCP server over streamable HTTP run for one test, stopped on drop.
struct HttpServer {
    child: KillOnDrop,
    port: u16,
}

impl HttpServer {
    /// Our signed server with `--http 0`, its environment `env`; the port is
    /// the one it prints.
    fn signed(env: &[(&str, &str)]) -> HttpServer {
        let mut child = Command::new("python3")
            .arg(root().join("fixtures/mcp/signed_server.py"))
            .args(["--http", "0"])
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start python3 signed_server.py --http 0");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read the server's port");
        let port = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("signed_server.py --http said {line:?}"));
        HttpServer {
            child: KillOnDrop(child),
            port,
        }
    }

    /// `mcp-server-everything streamableHttp` on a free port, once it
    /// accepts connections.
    fn everything() -> HttpServer {
        let port = free_port();
        let child = Command::new(npm_bin("mcp-server-everything"))
            .arg("streamableHttp")
            .env("PORT", port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mcp-server-everything streamableHttp");
        let mut server = HttpServer {
            child: KillOnDrop(child),
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                server.child.try_wait().expect("poll").is_none(),
                "mcp-server-everything streamableHttp exited before listening on {port}"
            );
            assert!(
                Instant::now() < deadline,
                "mcp-server-everything did not listen on {port} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn url(&self) -> String {
        format!("{}/mcp", self.origin())
    }
}

/// A port nothing listens on (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn http_server(name: &str, url: &str, extra: &str) -> String {
    format!("[[mcp.servers]]\nname = {name:?}\nurl = {url:?}\n{extra}")
}

/// Server `signed` at `server`, of domain `tools.example`, its key
/// discovered at the server's own `/.well-known/schemapin.json`.
fn well_known_server(server: &HttpServer) -> String {
    http_server(
        "signed",
        &server.url(),
        &format!("domain = \"tools.example\"\nwell_known = {:?}\n", server.origin()),
    )
}

#[test]
fn everything_server_over_streamable_http_lists_calls_and_reads_resources() {
    let server = HttpServer::everything();
    let s = Setup::new("warn", &http_server("everything", &server.url(), ""));
    echo_through_everything(&s, "over HTTP");

    let resources = s.resources("everything");
    assert!(resources.as_array().is_some_and(|a| !a.is_empty()), "{resources}");

    let ev = s.events();
    let connected = kind(&ev, "mcp_server_connected");
    assert_eq!(connected.len(), 3, "one connection per command");
    assert!(
        connected
            .iter()
            .all(|e| e["body"]["endpoint"] == server.url().as_str()),
        "{connected:?}"
    );
    let returned = kind(&ev, "mcp_tool_returned");
    assert_eq!(returned.len(), 1);
    assert!(body_str(returned[0], "output").contains("over HTTP"));
    assert_eq!(kind(&ev, "mcp_resource_read").len(), 1);
}

#[test]
fn a_reasoning_run_calls_a_signed_tool_over_http_and_replays_without_it() {
    let server = HttpServer::signed(&[]);
    let s = Setup::new(
        "strict",
        &http_server("signed", &server.url(), "domain = \"tools.example\"\n"),
    );
    pinned_on_first_use(&s);
    s.assert_adds("normal", 20, 22);

    let p = s.policies();
    let out = s.run_adder(&s.adder_agent(), &p, 0, "the run completes");
    assert_eq!(out["outcome"], "completed", "{out}");
    let run = out["run"].as_str().expect("run id").to_owned();
    let ev = s.events();
    let returned = kind(&ev, "tool_returned");
    assert_eq!(returned.len(), 1);
    assert_eq!(returned[0]["body"]["output"], "5");
    assert_eq!(kind(&ev, "mcp_tool_called").len(), 2);

    // The server goes away; the replay serves the journaled result.
    drop(server);
    s.ok(&["replay", &run, "--policies", &p]);
    assert_eq!(
        kind(&s.events(), "mcp_server_connected").len(),
        3,
        "replay connected to no server"
    );
}

#[test]
fn http_servers_that_are_unreachable_not_mcp_or_malformed_get_clear_errors() {
    let s = Setup::new("strict", "");
    let p = s.policies();
    // Nothing listens.
    let dead = format!("http://127.0.0.1:{}/mcp", free_port());
    s.configure("strict", &http_server("gone", &dead, ""));
    let listed = s.list_fails();
    assert!(
        listed.contains(&format!("gone: error: MCP server gone: cannot connect to {dead}")),
        "{listed}"
    );
    // The cause, not only that it failed; no Rust type names.
    assert!(listed.contains("Connection refused"), "{listed}");
    assert!(!listed.contains("rmcp::"), "{listed}");

    // An HTTP server, but no MCP endpoint at that path.
    let web = HttpServer::signed(&[]);
    let not_mcp = format!("{}/not-mcp", web.origin());
    s.configure("strict", &http_server("web", &not_mcp, ""));
    let listed = s.list_fails();
    assert!(
        listed.contains(&format!("cannot connect to {not_mcp}")) && listed.contains("404"),
        "{listed}"
    );
    assert!(listed.contains("streamable-HTTP MCP endpoint"), "{listed}");

    // An endpoint answering JSON that is not JSON-RPC.
    let garbage = HttpServer::signed(&[("SCHEMAPIN_HTTP_MODE", "garbage")]);
    s.configure("strict", &http_server("garbage", &garbage.url(), ""));
    let r = s.stele(&[
        "mcp",
        "call",
        "garbage",
        "add",
        "--args",
        r#"{"a":1,"b":2}"#,
        "--policies",
        &p,
    ]);
    assert_ne!(r.code, Some(0), "{r:?}");
    assert!(
        r.stderr.contains(&format!(
            "MCP server garbage: cannot connect to {}",
            garbage.url()
        )),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("initialize"), "{}", r.stderr);
    let ev = s.events();
    assert!(
        kind(&ev, "mcp_server_connected").is_empty(),
        "no failed server counts as connected"
    );
    assert!(kind(&ev, "mcp_tool_called").is_empty());
}

#[test]
fn a_key_discovered_at_well_known_is_pinned_and_checks_every_signature() {
    let server = HttpServer::signed(&[("SCHEMAPIN_KEY", "a")]);
    let s = Setup::new("strict", &well_known_server(&server));
    pinned_on_first_use(&s);
    s.assert_adds("low", 1, 2);

    let ev = s.events();
    let discovered = kind(&ev, "mcp_key_discovered");
    assert_eq!(discovered.len(), 2, "one discovery per connection");
    let d = &discovered[0]["body"];
    assert_eq!(
        d["url"],
        format!("{}/.well-known/schemapin.json", server.origin()).as_str()
    );
    assert_eq!(d["domain"], "tools.example");
    assert_eq!(d["revoked_keys"], "");
    let pinned = kind(&ev, "mcp_key_pinned");
    assert_eq!(pinned.len(), 1);
    assert_eq!(pinned[0]["body"]["fingerprint"], d["fingerprint"]);
    assert_eq!(pinned[0]["body"]["public_key_pem"], d["public_key_pem"]);
    // The discovery is in the batch of the listing, before the pin.
    assert!(discovered[0]["seq"].as_u64() < pinned[0]["seq"].as_u64());
    s.ok(&["journal", "verify"]);
}

#[test]
fn a_tool_signed_by_another_key_than_the_published_one_is_refused() {
    // The tools carry key a in their _meta and are signed by it, but the
    // provider publishes key b: the _meta key is not trusted.
    let server = HttpServer::signed(&[("SCHEMAPIN_KEY", "a"), ("SCHEMAPIN_WELL_KNOWN_KEY", "b")]);
    let s = Setup::new(
        "strict",
        &http_server(
            "signed",
            &server.url(),
            &format!(
                "well_known = \"{}/.well-known/schemapin.json\"\n",
                server.origin()
            ),
        ),
    );
    let add = tool(&s.list()[0], "add").clone();
    assert_eq!(add["status"], "invalid_signature", "{add}");
    assert_eq!(add["accepted"], false);
    assert!(
        add["detail"]
            .as_str()
            .expect("detail")
            .contains("/.well-known/schemapin.json"),
        "{add}"
    );
    s.call_exits("signed", "add", r#"{"a":1,"b":2}"#, "normal", 1);
    assert!(kind(&s.events(), "mcp_key_pinned").is_empty(), "nothing pinned");
}

#[test]
fn a_revoked_key_is_refused_whether_published_or_pinned() {
    // The published key itself is revoked.
    let server = HttpServer::signed(&[("SCHEMAPIN_KEY", "a"), ("SCHEMAPIN_REVOKED", "a")]);
    let s = Setup::new("strict", &well_known_server(&server));
    let add = tool(&s.list()[0], "add").clone();
    assert_eq!(add["status"], "revoked", "{add}");
    assert_eq!(add["accepted"], false);
    assert!(kind(&s.events(), "mcp_key_pinned").is_empty());
    drop(server);

    // Key a pinned; the provider rotates to b and revokes a: the pin is
    // refused until an operator unpins it.
    let a = HttpServer::signed(&[("SCHEMAPIN_KEY", "a")]);
    s.configure("strict", &well_known_server(&a));
    assert_eq!(tool(&s.list()[0], "add")["status"], "first_use");
    let b = HttpServer::signed(&[("SCHEMAPIN_KEY", "b"), ("SCHEMAPIN_REVOKED", "a")]);
    s.configure("strict", &well_known_server(&b));
    let add = tool(&s.list()[0], "add").clone();
    assert_eq!(add["status"], "revoked", "{add}");
    assert!(add["detail"].as_str().expect("detail").contains("unpin"), "{add}");
    s.ok(&["mcp", "unpin", "tools.example", "--reason", "key a revoked"]);
    assert_eq!(tool(&s.list()[0], "add")["status"], "first_use");
    let ev = s.events();
    let last = kind(&ev, "mcp_key_discovered");
    let last = last.last().expect("a discovery");
    assert!(body_str(last, "revoked_keys").starts_with("sha256:"), "{last}");
    assert_eq!(kind(&ev, "mcp_key_pinned").len(), 2);
}

#[test]
fn a_discovery_document_that_cannot_be_had_fails_the_connection_clearly() {
    let server = HttpServer::signed(&[]);
    let s = Setup::new("strict", "");
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    s.configure(
        "warn",
        &http_server("signed", &server.url(), &format!("well_known = {nowhere:?}\n")),
    );
    let listed = s.list_fails();
    assert!(
        listed.contains(&format!(
            "SchemaPin key discovery at {nowhere}/.well-known/schemapin.json: cannot fetch it"
        )),
        "{listed}"
    );
    // A document that is not there: the status is named.
    s.configure(
        "warn",
        &http_server(
            "signed",
            &server.url(),
            &format!(
                "well_known = \"{}/other/.well-known/schemapin.json\"\n",
                server.origin()
            ),
        ),
    );
    let listed = s.list_fails();
    assert!(
        listed.contains("/other/.well-known/schemapin.json: it answered HTTP 404"),
        "{listed}"
    );
    assert!(kind(&s.events(), "mcp_tool_verified").is_empty());
    // A bad value in the configuration names the field.
    s.configure(
        "strict",
        &http_server("signed", &server.url(), "well_known = \"tools.example\"\n"),
    );
    let r = s.stele(&["mcp", "pins"]);
    assert_ne!(r.code, Some(0), "{r:?}");
    assert!(
        r.stderr
            .contains("mcp server signed: well_known: \"tools.example\" is not an http:// or https:// URL"),
        "{}",
        r.stderr
    );
}
