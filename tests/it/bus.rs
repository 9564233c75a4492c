//! The bus on real parts: a journal in a tempdir, the Cedar gate with the
//! policies of `fixtures/policies`, and for the cross-instance test two
//! `stele up` daemons on the shared `nats-server` (`STELE_TEST_NATS`,
//! default `nats://127.0.0.1:4222`; `scripts/test.sh` starts one) — it
//! fails loudly when that is unreachable.
//!
//! Delivery across a restart of the receiver, request timeout, policy deny
//! of each builtin, tampered / wrongly signed / replayed / mis-addressed /
//! oversize / rate-limited messages (each rejected and journaled),
//! `parallel` and `race`, topic wildcards, senders waiting for room in a
//! full mailbox (first come, first served; refused at the deadline), the
//! bus view restored from its snapshot plus the tail, and two instances
//! exchanging signed, encrypted messages (direct, request, and a publish
//! to the peer's topic) with both journals verifying, and a peer's messages
//! to a full mailbox held back on NATS and delivered in order as room
//! appears (refused, journaled, only when they would expire).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use stele_engine::bus::crypto::Header;
use stele_engine::bus::{Bus, BusError, BusKeys, BusTools, Frame, Outgoing, Pattern, RejectCode, RequestId};
use stele_engine::config::BusConfig;
use stele_engine::llm::ToolCall;
use stele_engine::policy::PolicyGate;
use stele_journal::{Append, ArchivedEventBody, EventBody, Journal, Options, Reader, Seq, StreamId};

use crate::kill_on_drop::KillOnDrop;
use crate::{TIMEOUT, run_bounded, stele};

fn definition(name: &str, limits: &str) -> String {
    format!(
        "name = \"{name}\"\npriority = \"normal\"\n[mode]\nkind = \"ephemeral\"\n[limits]\nmemory_mb = 32\ncpu_cores = 0.25\nexecution_timeout = \"10s\"\n{limits}\n[runs]\nkind = \"process\"\ntier = \"native\"\ncommand = \"/bin/true\"\n"
    )
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn policies() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/policies")
}

fn gate() -> Arc<PolicyGate> {
    Arc::new(PolicyGate::load(&policies()).expect("fixtures/policies load"))
}

async fn register(journal: &Journal, agents: &[(&str, &str)]) {
    let mut appends = Vec::new();
    for (name, limits) in agents {
        let def = definition(name, limits);
        appends.push(Append {
            stream: StreamId::new(format!("agent:{name}")).expect("stream"),
            cause: None,
            body: EventBody::AgentRegistered {
                agent: (*name).to_owned(),
                definition_hash: *blake3::hash(def.as_bytes()).as_bytes(),
                definition: def,
            },
        });
    }
    journal.append_many(appends).await.expect("register");
}

fn open(dir: &Path) -> Journal {
    Journal::open(dir, Options::default()).expect("open journal")
}

fn config(name: &str) -> BusConfig {
    BusConfig {
        name: name.into(),
        ..BusConfig::default()
    }
}

fn out(from: &str, to: &str, pattern: Pattern, text: &str) -> Outgoing {
    Outgoing {
        from: from.into(),
        to: to.into(),
        pattern,
        builtin: String::new(),
        context: "test".into(),
        payload: text.as_bytes().to_vec(),
        ttl: None,
    }
}

/// (kind, rendered JSON) of every event.
fn events(reader: &Reader) -> Vec<(String, serde_json::Value)> {
    reader
        .range(Seq(1), reader.head().seq)
        .map(|e| {
            let e = e.expect("read");
            let ev = e.to_event().expect("decode");
            (
                e.body().kind().to_owned(),
                serde_json::to_value(&ev.body).expect("json"),
            )
        })
        .collect()
}

fn rejected_codes(reader: &Reader) -> Vec<String> {
    events(reader)
        .into_iter()
        .filter(|(k, _)| k == "message_rejected")
        .map(|(_, v)| v["code"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// The other tools of a run: none here (only builtins are called).
#[derive(Debug)]
struct NoTools;

impl stele_engine::tools::ToolRunner for NoTools {
    fn run<'a>(
        &'a self,
        call: &'a ToolCall,
        _ctx: &'a stele_engine::tools::CallContext,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = stele_engine::orga::ToolOutcome> + Send + 'a>>
    {
        Box::pin(async move {
            panic!("only builtins are called here, not {}", call.name);
        })
    }
}

fn verify(dir: &Path) {
    let r = run_bounded(&["--data", dir.to_str().expect("utf-8"), "journal", "verify"]);
    assert_eq!(r.code, Some(0), "journal verify: {r:?}");
}

async fn stop(bus: Bus, task: tokio::task::JoinHandle<()>) {
    drop(bus);
    task.await.expect("bus task");
}

/// The bus of instance `one` on `journal`, its keys in `dir`, under the
/// fixture policies.
async fn start_one(journal: &Journal, dir: &Path) -> (Bus, tokio::task::JoinHandle<()>) {
    Bus::start(journal.clone(), dir, gate(), config("one"))
        .await
        .expect("start the bus")
}

/// Asserts that `e` is a rejection with `code`.
fn assert_rejected(e: &BusError, code: RejectCode) {
    assert!(
        matches!(e, BusError::Rejected { code: c, .. } if *c == code),
        "expected a rejection ({code:?}), got {e}"
    );
}

/// The bus builtins of run `run` of `agent` (no other tools).
fn bus_tools(bus: &Bus, agent: &str, run: &str) -> BusTools {
    BusTools {
        bus: bus.clone(),
        agent: agent.into(),
        run: run.into(),
        inner: Arc::new(NoTools),
    }
}

fn tool_call(id: String, name: &str, arguments: &str) -> ToolCall {
    ToolCall {
        id,
        name: name.into(),
        arguments: arguments.into(),
    }
}

/// A copy of the policies of `fixtures/policies` in `dir/policies`.
fn fixture_policies_in(dir: &Path) -> PathBuf {
    let out = dir.join("policies");
    std::fs::create_dir_all(&out).expect("policies dir");
    for f in std::fs::read_dir(policies()).expect("fixtures/policies") {
        let f = f.expect("entry").path();
        if f.extension().is_some_and(|e| e == "cedar" || e == "cedarschema") {
            std::fs::copy(&f, out.join(f.file_name().expect("name"))).expect("copy policy");
        }
    }
    out
}

#[test]
fn delivery_survives_a_restart_of_the_receiver_and_acks_are_final() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = rt();
    let journal = open(dir.path());
    rt.block_on(async {
        register(&journal, &[("alice", ""), ("bob", "")]).await;
        let (bus, task) = start_one(&journal, dir.path()).await;
        let mut ids = Vec::new();
        for i in 0..3 {
            let sent = bus
                .send(out("alice", "bob", Pattern::Direct, &format!("m{i}")))
                .await
                .expect("send");
            assert_eq!(sent.delivered, vec!["bob".to_owned()]);
            ids.push(sent.id);
        }
        stop(bus, task).await;
        drop(journal);
    });
    let journal = open(dir.path());
    rt.block_on(async {
        let (bus, task) = start_one(&journal, dir.path()).await;
        let got = bus.receive("bob", 10).await.expect("receive");
        let texts: Vec<&str> = got.iter().map(|m| m.text.as_str()).collect();
        assert_eq!(texts, ["m0", "m1", "m2"], "everything delivered is still there");
        bus.ack("bob", vec![got[0].id.clone(), got[1].id.clone()])
            .await
            .expect("ack");
        assert!(
            bus.ack("bob", vec![got[0].id.clone()]).await.is_err(),
            "an acknowledged message cannot be acknowledged again"
        );
        // The nonce counter resumes after the journaled ones.
        let next = bus
            .send(out("alice", "bob", Pattern::Direct, "m3"))
            .await
            .expect("send");
        assert_eq!(next.id, "m:one:alice:0:3");
        stop(bus, task).await;
        drop(journal);
    });
    let journal = open(dir.path());
    rt.block_on(async {
        let (bus, task) = start_one(&journal, dir.path()).await;
        let texts: Vec<String> = bus
            .receive("bob", 10)
            .await
            .expect("receive")
            .into_iter()
            .map(|m| m.text)
            .collect();
        assert_eq!(texts, ["m2", "m3"], "acknowledged messages never come back");
        stop(bus, task).await;
        let kinds: Vec<String> = events(&journal.reader()).into_iter().map(|(k, _)| k).collect();
        assert_eq!(kinds.iter().filter(|k| *k == "message_sent").count(), 4);
        assert_eq!(kinds.iter().filter(|k| *k == "message_acknowledged").count(), 2);
    });
    drop(journal);
    verify(dir.path());
}

#[test]
fn requests_answer_and_time_out_with_a_journaled_expiry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = open(dir.path());
    rt().block_on(async {
        register(&journal, &[("alice", ""), ("bob", "")]).await;
        let (bus, task) = start_one(&journal, dir.path()).await;
        // Answered.
        let responder = bus.clone();
        let answering = tokio::spawn(async move {
            let got = responder.receive_wait("bob", 1, TIMEOUT).await.expect("receive");
            let q = got.first().expect("a request arrives");
            assert_eq!(q.pattern, "request");
            responder
                .respond(
                    "bob",
                    &RequestId(q.id.clone()),
                    format!("re: {}", q.text).into_bytes(),
                )
                .await
                .expect("respond");
        });
        let answer = bus
            .request(
                out("alice", "bob", Pattern::Request, "ping"),
                Duration::from_secs(10),
            )
            .await
            .expect("answered");
        assert_eq!(answer.text, "re: ping");
        assert_eq!(answer.from, "bob");
        answering.await.expect("responder");
        // Not answered: a timeout, journaled; a late answer is refused.
        let err = bus
            .request(
                out("alice", "bob", Pattern::Request, "hello?"),
                Duration::from_millis(300),
            )
            .await
            .expect_err("nobody answers");
        let BusError::Timeout { request, .. } = err else {
            panic!("expected a timeout, got {err}");
        };
        let late = bus
            .respond("bob", &request, b"too late".to_vec())
            .await
            .expect_err("the request is closed");
        assert_rejected(&late, RejectCode::Expired);
        stop(bus, task).await;
        let evs = events(&journal.reader());
        assert!(
            evs.iter().any(|(k, v)| k == "message_expired"
                && v["message"] == request.0.as_str()
                && v["reason"] == "request timed out"),
            "the timeout is journaled"
        );
        let response = evs
            .iter()
            .find(|(k, v)| k == "message_sent" && v["pattern"] == "response")
            .expect("the response is journaled");
        assert!(
            response.1["request"].as_str().is_some(),
            "a response names its request"
        );
        assert_eq!(rejected_codes(&journal.reader()), ["expired"]);
    });
}

#[test]
fn the_gate_denies_each_builtin_before_a_message_exists() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pol = fixture_policies_in(dir.path());
    let mut forbid = String::new();
    for b in stele_engine::bus::BUILTINS {
        forbid.push_str(&format!(
            "@id(\"no-{b}\")\n@reason(\"{b} is not allowed\")\nforbid (principal, action == Action::\"send_message\", resource)\nwhen {{ context has builtin && context.builtin == \"{b}\" }};\n"
        ));
    }
    std::fs::write(pol.join("no-builtins.cedar"), forbid).expect("write");
    let gate = Arc::new(PolicyGate::load(&pol).expect("policies load"));
    let journal = open(&dir.path().join("j"));
    rt().block_on(async {
        register(&journal, &[("alice", ""), ("bob", "")]).await;
        let (bus, task) = Bus::start(journal.clone(), &dir.path().join("j"), gate, config("one"))
            .await
            .expect("start");
        let tools = bus_tools(&bus, "alice", "run-1");
        let calls = [
            ("send_to", r#"{"agent":"bob","message":"hi"}"#),
            ("ask", r#"{"agent":"bob","question":"q","timeout_ms":500}"#),
            ("delegate", r#"{"agent":"bob","task":"t","timeout_ms":500}"#),
            (
                "parallel",
                r#"{"requests":[{"agent":"bob","question":"q"}],"timeout_ms":500}"#,
            ),
            (
                "race",
                r#"{"requests":[{"agent":"bob","question":"q"}],"timeout_ms":500}"#,
            ),
        ];
        for (name, arguments) in calls {
            let call = tool_call(format!("call-{name}"), name, arguments);
            let result = tools.call(&call).await;
            let text = match &result {
                Ok(t) | Err(t) => t.clone(),
            };
            assert!(
                text.contains("policy_denied") && text.contains(&format!("{name} is not allowed")),
                "{name}: {text}"
            );
            if name == "parallel" {
                assert!(text.contains("\"ok\":false"), "{text}");
            } else {
                assert!(result.is_err(), "{name}: {text}");
            }
        }
        drop(tools);
        stop(bus, task).await;
        let evs = events(&journal.reader());
        assert!(!evs.iter().any(|(k, _)| k == "message_sent"), "no message exists");
        let denials: Vec<&serde_json::Value> = evs
            .iter()
            .filter(|(k, v)| k == "policy_decided" && v["point"] == "message_send")
            .map(|(_, v)| v)
            .collect();
        assert_eq!(denials.len(), 5);
        for (d, (name, _)) in denials.iter().zip(calls) {
            assert_eq!(d["verdict"], "deny");
            let req: serde_json::Value =
                serde_json::from_str(d["request"].as_str().expect("request")).expect("json");
            assert_eq!(req["context"]["builtin"], name);
            assert_eq!(req["context"]["correlation"], format!("run-1/call-{name}"));
        }
        assert_eq!(rejected_codes(&journal.reader()), vec!["policy_denied"; 5]);
    });
}

/// A frame as instance `origin` (keys `keys`) seals it for `peer`.
fn frame(keys: &BusKeys, peer: &[u8; 32], origin: &str, recipient: &str, counter: u64, text: &[u8]) -> Frame {
    let header = Header {
        origin: origin.into(),
        sender: "alice".into(),
        recipient: recipient.into(),
        pattern: "direct".into(),
        request: None,
        epoch: 0,
        counter,
        expires_at_ms: u64::MAX / 2,
    };
    let ciphertext = keys
        .peer_key(peer, origin, "alice", 0)
        .expect("key")
        .seal(&header, text)
        .expect("seal");
    let signature = keys.sign(&header.signed_digest(&ciphertext));
    Frame {
        id: header.id(),
        origin: origin.into(),
        sender: "alice".into(),
        recipient: recipient.into(),
        pattern: "direct".into(),
        builtin: String::new(),
        request: None,
        context: "test".into(),
        epoch: 0,
        counter,
        expires_at_ms: header.expires_at_ms,
        ciphertext,
        signer: keys.public_key(),
        signature,
        event_hash: "00".repeat(32),
        event_seq: 1,
    }
}

#[test]
fn tampered_forged_replayed_misaddressed_oversize_and_flooding_messages_are_rejected_and_journaled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b, eve) = (BusKeys::generate(), BusKeys::generate(), BusKeys::generate());
    let journal = open(dir.path());
    rt().block_on(async {
        register(
            &journal,
            &[
                ("bob", ""),
                ("carol", ""),
                ("flood", "messages_per_second = 1\nmessage_burst = 3"),
            ],
        )
        .await;
        let mut cfg = config("b");
        cfg.peers.insert("a".into(), hex::encode(a.public_key()));
        cfg.max_payload_bytes = 64;
        let (bus, task) = Bus::start_with_keys(journal.clone(), b.clone(), gate(), cfg)
            .await
            .expect("start");
        let code = |r: Result<_, BusError>| match r {
            Err(BusError::Rejected { code, .. }) => code,
            Err(e) => panic!("expected a rejection, got {e}"),
            Ok(_) => panic!("expected a rejection, it was accepted"),
        };
        let bp = b.public_key();
        // A good one is accepted and opens.
        let good = frame(&a, &bp, "a", "bob@b", 0, b"hello");
        let sent = bus.accept(good.clone()).await.expect("accepted");
        assert_eq!(sent.delivered, ["bob"]);
        let got = bus.receive("bob", 5).await.expect("receive");
        assert_eq!((got[0].text.as_str(), got[0].from.as_str()), ("hello", "alice@a"));
        assert_eq!(got[0].remote_hash, "00".repeat(32));
        // Replayed.
        assert_eq!(code(bus.accept(good.clone()).await), RejectCode::Replayed);
        // Tampered ciphertext.
        let mut t = frame(&a, &bp, "a", "bob@b", 1, b"hello");
        t.ciphertext[0] ^= 1;
        assert_eq!(code(bus.accept(t).await), RejectCode::Tampered);
        // Tampered header (moved to another recipient).
        let mut moved = frame(&a, &bp, "a", "bob@b", 2, b"hello");
        moved.recipient = "carol@b".into();
        assert_eq!(code(bus.accept(moved).await), RejectCode::Tampered);
        // Signed by someone else, claiming a's key.
        let mut forged = frame(&a, &bp, "a", "bob@b", 3, b"hello");
        forged.signature = eve.sign(&[0; 32]);
        assert_eq!(code(bus.accept(forged).await), RejectCode::BadSignature);
        // Signed with another key than the pinned one.
        let other = frame(&eve, &bp, "a", "bob@b", 4, b"hello");
        assert_eq!(code(bus.accept(other).await), RejectCode::BadSignature);
        // From an instance nobody pinned.
        let stranger = frame(&eve, &bp, "x", "bob@b", 0, b"hello");
        assert_eq!(code(bus.accept(stranger).await), RejectCode::UnknownPeer);
        // Mis-addressed: another instance, or nobody here.
        let elsewhere = frame(&a, &bp, "a", "bob@c", 5, b"hello");
        assert_eq!(code(bus.accept(elsewhere).await), RejectCode::Misaddressed);
        let nobody = frame(&a, &bp, "a", "zed@b", 6, b"hello");
        assert_eq!(code(bus.accept(nobody).await), RejectCode::Misaddressed);
        // Oversize, from a peer and from here.
        let big = frame(&a, &bp, "a", "bob@b", 7, &[b'x'; 65]);
        assert_eq!(code(bus.accept(big).await), RejectCode::Oversize);
        assert_eq!(
            code(
                bus.send(out("carol", "bob", Pattern::Direct, &"y".repeat(65)))
                    .await
            ),
            RejectCode::Oversize
        );
        // A burst over the agent's limit (burst 3).
        for i in 0..3 {
            bus.send(out("flood", "bob", Pattern::Direct, &format!("f{i}")))
                .await
                .expect("within the burst");
        }
        assert_eq!(
            code(bus.send(out("flood", "bob", Pattern::Direct, "f3")).await),
            RejectCode::RateLimited
        );
        stop(bus, task).await;
        let mut codes = rejected_codes(&journal.reader());
        codes.sort();
        let mut expected = vec![
            "bad_signature",
            "bad_signature",
            "misaddressed",
            "misaddressed",
            "oversize",
            "oversize",
            "rate_limited",
            "replayed",
            "tampered",
            "tampered",
            "unknown_peer",
        ];
        expected.sort_unstable();
        assert_eq!(codes, expected);
    });
    drop(journal);
    verify(dir.path());
}

#[test]
fn parallel_returns_every_answer_and_race_the_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = open(dir.path());
    rt().block_on(async {
        register(&journal, &[("lead", ""), ("fast", ""), ("slow", ""), ("mute", "")]).await;
        let (bus, task) = start_one(&journal, dir.path()).await;
        let answer = |agent: &'static str, delay_ms: u64, rounds: usize| {
            let bus = bus.clone();
            tokio::spawn(async move {
                for _ in 0..rounds {
                    let got = bus.receive_wait(agent, 1, TIMEOUT).await.expect("receive");
                    let Some(q) = got.first() else { return };
                    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                    let _ = bus
                        .respond(agent, &RequestId(q.id.clone()), format!("{agent}: {}", q.text).into_bytes())
                        .await;
                }
            })
        };
        let fast = answer("fast", 0, 2);
        let slow = answer("slow", 300, 2);
        let tools = bus_tools(&bus, "lead", "run-9");
        let call = |name: &str, args: &str| tool_call(format!("c-{name}"), name, args);
        let requests = r#"[{"agent":"fast","question":"q"},{"agent":"slow","question":"q"},{"agent":"mute","question":"q"}]"#;
        let all = tools
            .call(&call("parallel", &format!(r#"{{"requests":{requests},"timeout_ms":1500}}"#)))
            .await
            .expect("parallel");
        let all: serde_json::Value = serde_json::from_str(&all).expect("json");
        assert_eq!(all[0]["answer"], "fast: q");
        assert_eq!(all[1]["answer"], "slow: q");
        assert_eq!(all[2]["ok"], false);
        assert!(all[2]["error"].as_str().expect("error").contains("timed out"), "{all}");
        // `mute` never acknowledged its request; clear it so the race sees a new one.
        let stale: Vec<String> = bus.receive("mute", 10).await.expect("receive").into_iter().map(|m| m.id).collect();
        bus.ack("mute", stale).await.expect("ack");
        let first = tools
            .call(&call("race", &format!(r#"{{"requests":{requests},"timeout_ms":3000}}"#)))
            .await
            .expect("race");
        let first: serde_json::Value = serde_json::from_str(&first).expect("json");
        assert_eq!(first["agent"], "fast");
        assert_eq!(first["answer"], "fast: q");
        fast.await.expect("fast");
        slow.await.expect("slow");
        drop(tools);
        stop(bus, task).await;
        let lost = events(&journal.reader())
            .into_iter()
            .filter(|(k, v)| k == "message_expired" && v["reason"] == "race lost")
            .count();
        assert_eq!(lost, 2, "the losers' waits end as race lost");
    });
}

#[test]
fn topics_deliver_by_wildcard() {
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = open(dir.path());
    rt().block_on(async {
        register(&journal, &[("pub", ""), ("bob", ""), ("carol", "")]).await;
        let (bus, task) = start_one(&journal, dir.path()).await;
        bus.subscribe("bob", "a.*.c", true).await.expect("subscribe");
        bus.subscribe("carol", "a.>", true).await.expect("subscribe");
        assert!(bus.subscribe("carol", "a.>.c", true).await.is_err());
        let s = bus
            .send(out("pub", "a.b.c", Pattern::Publish, "1"))
            .await
            .expect("publish");
        assert_eq!(s.delivered, ["bob", "carol"]);
        let s = bus
            .send(out("pub", "a.x", Pattern::Publish, "2"))
            .await
            .expect("publish");
        assert_eq!(s.delivered, ["carol"]);
        bus.subscribe("carol", "a.>", false).await.expect("unsubscribe");
        let s = bus
            .send(out("pub", "a.b.c", Pattern::Publish, "3"))
            .await
            .expect("publish");
        assert_eq!(s.delivered, ["bob"]);
        stop(bus, task).await;
    });
}

/// Polls the bus's stats until `key` is `n`.
async fn until_stat(bus: &Bus, key: &str, n: u64) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let s = bus.stats().await.expect("stats");
        if s[key].as_u64() == Some(n) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{key} never became {n}: {s}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn a_sender_waits_for_room_in_a_full_mailbox_first_come_first_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = open(dir.path());
    rt().block_on(async {
        register(
            &journal,
            &[("alice", ""), ("carol", ""), ("bob", ""), ("dave", "")],
        )
        .await;
        let cfg = BusConfig {
            mailbox_capacity: 1,
            ..config("one")
        };
        let (bus, task) = Bus::start(journal.clone(), dir.path(), gate(), cfg)
            .await
            .expect("start");
        let first = bus
            .send(out("alice", "bob", Pattern::Direct, "1"))
            .await
            .expect("send");
        // Without a wait: refused at once, as before.
        let e = bus
            .send(out("alice", "bob", Pattern::Direct, "refused"))
            .await
            .expect_err("full");
        assert_rejected(&e, RejectCode::MailboxFull);
        // Two waiting senders, alice's first.
        let wait = Duration::from_secs(60);
        let b2 = bus.clone();
        let second = tokio::spawn(async move {
            b2.send_wait(out("alice", "bob", Pattern::Direct, "2"), wait)
                .await
        });
        until_stat(&bus, "waiting", 1).await;
        let b3 = bus.clone();
        let third = tokio::spawn(async move {
            b3.send_wait(out("carol", "bob", Pattern::Direct, "3"), wait)
                .await
        });
        until_stat(&bus, "waiting", 2).await;
        // The bus goes on with other traffic meanwhile.
        bus.send(out("alice", "dave", Pattern::Direct, "other"))
            .await
            .expect("a send to another mailbox is not held up");
        // An ack makes room: the first waiting sender gets it, not the second.
        bus.ack("bob", vec![first.id.clone()]).await.expect("ack");
        let sent = second
            .await
            .expect("join")
            .expect("the waiting send went through");
        assert_eq!(sent.delivered, ["bob"]);
        until_stat(&bus, "waiting", 1).await;
        let got = bus.receive("bob", 10).await.expect("receive");
        let texts: Vec<&str> = got.iter().map(|m| m.text.as_str()).collect();
        assert_eq!(texts, ["2"], "first come, first served");
        assert!(!third.is_finished(), "carol still waits for room");
        bus.ack("bob", vec![got[0].id.clone()]).await.expect("ack");
        third.await.expect("join").expect("carol's send went through");
        // A deadline that passes while the mailbox stays full: refused and journaled.
        let e = bus
            .send_wait(
                out("alice", "bob", Pattern::Direct, "late"),
                Duration::from_millis(300),
            )
            .await
            .expect_err("still full at the deadline");
        assert_rejected(&e, RejectCode::MailboxFull);
        let s = bus.stats().await.expect("stats");
        assert_eq!(s["waiting"], 0, "{s}");
        stop(bus, task).await;
        let codes = rejected_codes(&journal.reader());
        assert_eq!(
            codes,
            ["mailbox_full", "mailbox_full"],
            "both refusals are journaled"
        );
    });
    drop(journal);
    verify(dir.path());
}

#[test]
fn the_cli_waits_for_room_until_its_deadline_then_the_refusal_is_journaled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let journal = open(&data);
    rt().block_on(register(&journal, &[("alice", ""), ("bob", "")]));
    drop(journal);
    let cfg = dir.path().join("stele.toml");
    std::fs::write(
        &cfg,
        format!(
            "[bus]\nmailbox_capacity = 1\npolicies = \"{}\"\n",
            policies().display()
        ),
    )
    .expect("write config");
    let send = |wait: &str| {
        cli(
            &data,
            &cfg,
            &[
                "bus", "send", "--from", "alice", "--to", "bob", "--wait", wait, "hi",
            ],
        )
    };
    let r = send("1s");
    assert_eq!(r.code, Some(0), "room for one: {r:?}");
    let r = send("1s");
    assert_ne!(r.code, Some(0), "still full at the deadline: {r:?}");
    assert!(r.stderr.contains("mailbox_full"), "{r:?}");
    let r = cli(
        &data,
        &cfg,
        &[
            "bus", "send", "--from", "alice", "--to", "bob", "--wait", "soon", "hi",
        ],
    );
    assert_ne!(r.code, Some(0), "{r:?}");
    assert!(r.stderr.contains("--wait"), "the bad duration is named: {r:?}");
    let reader = Reader::open(&data).expect("reader");
    assert_eq!(rejected_codes(&reader), ["mailbox_full"]);
    drop(reader);
    verify(&data);
}

#[test]
fn the_bus_view_restarts_from_its_snapshot_plus_the_tail() {
    use stele_projections::{BusView, Projection, SnapshotStore, state_at};
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = rt();
    let journal = open(dir.path());
    let keys = BusKeys::open(dir.path()).expect("keys");
    rt.block_on(async {
        register(&journal, &[("alice", ""), ("bob", "")]).await;
        let (bus, task) = Bus::start_snapshotted(journal.clone(), dir.path(), gate(), config("one"), 7)
            .await
            .expect("start");
        bus.subscribe("bob", "t.*", true).await.expect("subscribe");
        for i in 0..12 {
            let s = bus
                .send(out("alice", "bob", Pattern::Direct, &format!("m{i}")))
                .await
                .expect("send");
            if i % 3 == 0 {
                bus.ack("bob", vec![s.id]).await.expect("ack");
            }
        }
        bus.send(out("alice", "t.x", Pattern::Publish, "p"))
            .await
            .expect("publish");
        stop(bus, task).await;
    });
    let reader = journal.reader();
    let store = SnapshotStore::new(dir.path());
    assert!(
        !store.list::<BusView>().expect("list").is_empty(),
        "the bus wrote snapshots of its view"
    );
    // Snapshot + tail equals the full fold.
    let head = reader.head().seq;
    let restored = state_at::<BusView>(&reader, &store, head).expect("state_at");
    assert!(restored.from_snapshot.is_some(), "restored from a snapshot");
    let mut full = BusView::default();
    for e in reader.range(Seq(1), head) {
        full.apply(&e.expect("read"));
    }
    assert_eq!(restored.state, full);
    // A restarted bus starts from the snapshot and holds what the full fold holds.
    rt.block_on(async {
        let (bus, task) = Bus::start_snapshotted(journal.clone(), dir.path(), gate(), config("one"), 7)
            .await
            .expect("restart");
        let mut from_snapshot = bus.stats().await.expect("stats");
        assert!(from_snapshot["view_from_snapshot"].is_u64(), "{from_snapshot}");
        let got_snap = bus.receive("bob", 100).await.expect("receive");
        stop(bus, task).await;
        let (bus, task) = Bus::start_with_keys(journal.clone(), keys.clone(), gate(), config("one"))
            .await
            .expect("full fold");
        let mut folded = bus.stats().await.expect("stats");
        assert!(folded["view_from_snapshot"].is_null(), "{folded}");
        let got_full = bus.receive("bob", 100).await.expect("receive");
        stop(bus, task).await;
        from_snapshot["view_from_snapshot"] = serde_json::Value::Null;
        folded["view_from_snapshot"] = serde_json::Value::Null;
        assert_eq!(from_snapshot, folded);
        assert_eq!(got_snap, got_full);
        assert_eq!(got_snap.len(), 9, "12 sent, 4 acknowledged, 1 published");
    });
    drop(reader);
    drop(journal);
    verify(dir.path());
}

// ----------------------------------------------------------- two instances

fn nats_url() -> String {
    std::env::var("STELE_TEST_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// A `stele up` of instance `name`, its journal in `data`, its config `cfg`.
struct Daemon {
    /// `stele up`, stopped when the daemon is dropped.
    _child: KillOnDrop,
    name: String,
    data: PathBuf,
    cfg: PathBuf,
}

impl Daemon {
    /// A `stele` command against this daemon's data and config.
    fn cli(&self, args: &[&str]) -> crate::Run {
        cli(&self.data, &self.cfg, args)
    }

    /// `stele bus recv --agent bob --wait 15s --json` (with `--ack` if
    /// `ack`), which must succeed: the messages.
    fn recv_bob(&self, ack: bool) -> serde_json::Value {
        let mut args = vec!["bus", "recv", "--agent", "bob", "--wait", "15s", "--json"];
        if ack {
            args.push("--ack");
        }
        let r = self.cli(&args);
        assert_eq!(r.code, Some(0), "{r:?}");
        serde_json::from_str(&r.stdout).expect("json")
    }
}

/// Fails loudly unless the shared NATS server (`STELE_TEST_NATS`) answers.
fn require_nats() {
    let url = nats_url();
    if std::net::TcpStream::connect(url.trim_start_matches("nats://")).is_err() {
        panic!(
            "NATS at {url} is unreachable: this test needs `nats-server -js` \
             (scripts/test.sh starts one; or set STELE_TEST_NATS)"
        );
    }
}

/// Two `stele up` daemons on NATS in `root`, `{prefix_a}{pid}` with agent
/// alice and `{prefix_b}{pid}` with agent bob (and `b_extra` in its
/// `[bus]`), each pinning the other's bus key, made before they start.
fn two_daemons(root: &Path, prefix_a: &str, prefix_b: &str, b_extra: &str) -> (Daemon, Daemon) {
    require_nats();
    let (na, nb) = (
        format!("{prefix_a}{}", std::process::id()),
        format!("{prefix_b}{}", std::process::id()),
    );
    let key_of = |name: &str| {
        let r = run_bounded(&["--data", root.join(name).to_str().expect("utf-8"), "bus", "key"]);
        assert_eq!(r.code, Some(0), "bus key: {r:?}");
        r.stdout.trim().to_owned()
    };
    let (ka, kb) = (key_of(&na), key_of(&nb));
    let a = start_up(root, &na, &nb, &kb, "alice");
    let b = start_up_with(root, &nb, &na, &ka, "bob", b_extra);
    (a, b)
}

/// `stele down` of both daemons, then both journals verify.
fn down_and_verify(daemons: [Daemon; 2]) {
    for d in &daemons {
        let r = d.cli(&["down"]);
        assert_eq!(r.code, Some(0), "down: {r:?}");
    }
    let journals: Vec<(String, PathBuf)> = daemons.iter().map(|d| (d.name.clone(), d.data.clone())).collect();
    drop(daemons);
    for (name, data) in journals {
        let r = run_bounded(&["--data", data.to_str().expect("utf-8"), "journal", "verify"]);
        assert_eq!(r.code, Some(0), "verify {name}: {r:?}");
    }
}

fn cli(data: &Path, cfg: &Path, args: &[&str]) -> crate::Run {
    let mut all = vec![
        "--data",
        data.to_str().expect("utf-8"),
        "--config",
        cfg.to_str().expect("utf-8"),
    ];
    all.extend_from_slice(args);
    run_bounded(&all)
}

fn start_up(root: &Path, name: &str, peer: &str, peer_key: &str, agent: &str) -> Daemon {
    start_up_with(root, name, peer, peer_key, agent, "")
}

/// [`start_up`] with more `[bus]` settings (`bus_extra`, TOML lines).
fn start_up_with(
    root: &Path,
    name: &str,
    peer: &str,
    peer_key: &str,
    agent: &str,
    bus_extra: &str,
) -> Daemon {
    let data = root.join(name);
    let agents = root.join(format!("{name}-agents"));
    std::fs::create_dir_all(&agents).expect("mkdir");
    std::fs::write(agents.join(format!("{agent}.toml")), definition(agent, "")).expect("write");
    let cfg = root.join(format!("{name}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "[nats]\nurl = \"{}\"\n\n[bus]\nname = \"{name}\"\nnats = true\npolicies = \"{}\"\n{bus_extra}\n[bus.peers]\n{peer} = \"{peer_key}\"\n",
            nats_url(),
            policies().display()
        ),
    )
    .expect("write config");
    let child = stele()
        .args([
            "--data",
            data.to_str().expect("utf-8"),
            "--config",
            cfg.to_str().expect("utf-8"),
        ])
        .args(["up", "--port", "0", "--agents", agents.to_str().expect("utf-8")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("spawn stele up");
    let d = Daemon {
        _child: KillOnDrop(child),
        name: name.to_owned(),
        data: data.clone(),
        cfg,
    };
    let deadline = std::time::Instant::now() + TIMEOUT;
    while !data.join("bus.sock").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "stele up {name} did not start its bus"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    d
}

#[test]
fn two_instances_exchange_signed_encrypted_messages_over_nats() {
    let root = tempfile::tempdir().expect("tempdir");
    // Each instance's bus identity, made before it starts, pinned by the other.
    let (a, b) = two_daemons(root.path(), "a", "b", "");
    let (na, nb) = (a.name.clone(), b.name.clone());

    // A direct message, durable through JetStream.
    let bob = format!("bob@{nb}");
    let r = a.cli(&[
        "bus",
        "send",
        "--from",
        "alice",
        "--to",
        &bob,
        "hello bob",
        "--json",
    ]);
    assert_eq!(r.code, Some(0), "{r:?}");
    let got = b.recv_bob(true);
    assert_eq!(got[0]["text"], "hello bob", "{got}");
    assert_eq!(got[0]["from"], format!("alice@{na}"));
    let remote_hash = got[0]["remote_hash"].as_str().expect("hash").to_owned();

    // A request over request/reply, answered on b.
    let asker = {
        let (data, cfg, bob) = (a.data.clone(), a.cfg.clone(), bob.clone());
        std::thread::spawn(move || {
            cli(
                &data,
                &cfg,
                &[
                    "bus",
                    "ask",
                    "--from",
                    "alice",
                    "--to",
                    &bob,
                    "--timeout",
                    "15s",
                    "what time is it?",
                    "--json",
                ],
            )
        })
    };
    let got = b.recv_bob(false);
    assert_eq!(got[0]["pattern"], "request", "{got}");
    let request = got[0]["id"].as_str().expect("id").to_owned();
    let r = b.cli(&[
        "bus",
        "reply",
        "--agent",
        "bob",
        "--request",
        &request,
        "noon",
        "--json",
    ]);
    assert_eq!(r.code, Some(0), "{r:?}");
    let asked = asker.join().expect("asker");
    assert_eq!(asked.code, Some(0), "{asked:?}");
    let answer: serde_json::Value = serde_json::from_str(&asked.stdout).expect("json");
    assert_eq!(answer["text"], "noon");

    // A publish to b's topic: b verifies it, gates it, and delivers it to
    // its subscribers.
    let r = b.cli(&["bus", "subscribe", "--agent", "bob", "orders.*"]);
    assert_eq!(r.code, Some(0), "{r:?}");
    let topic = format!("orders.eu@{nb}");
    let r = a.cli(&[
        "bus", "publish", "--from", "alice", "--topic", &topic, "--wait", "2s", "order 42", "--json",
    ]);
    assert_eq!(r.code, Some(0), "{r:?}");
    let got = b.recv_bob(true);
    let published = got
        .as_array()
        .expect("array")
        .iter()
        .find(|m| m["pattern"] == "publish")
        .unwrap_or_else(|| panic!("b's subscriber got the publish: {got}"))
        .clone();
    assert_eq!(published["text"], "order 42", "{published}");
    assert_eq!(published["from"], format!("alice@{na}"));
    assert_eq!(published["to"], topic);
    let publish_hash = published["remote_hash"].as_str().expect("hash").to_owned();

    // The receipt of the direct message reaches a (its MessageDelivered names b's event).
    until_stats_say(&a, &format!("no receipt from {nb}"), |s| {
        s["delivered"].as_u64().unwrap_or(0) >= 3
    });
    down_and_verify([a, b]);
    // The hop is in both journals: b recorded a's event hash, a recorded b's.
    let ra = Reader::open(root.path().join(&na)).expect("reader a");
    let sent_hash = ra
        .range(Seq(1), ra.head().seq)
        .filter_map(Result::ok)
        .find(|e| matches!(e.body(), ArchivedEventBody::MessageSent { envelope, .. } if envelope.pattern == "direct"))
        .expect("a journaled its send")
        .hash()
        .to_hex();
    assert_eq!(remote_hash, sent_hash, "b journaled the hash of a's MessageSent");
    let published_hash = ra
        .range(Seq(1), ra.head().seq)
        .filter_map(Result::ok)
        .find(|e| matches!(e.body(), ArchivedEventBody::MessageSent { envelope, .. } if envelope.pattern == "publish"))
        .expect("a journaled its publish")
        .hash()
        .to_hex();
    assert_eq!(
        publish_hash, published_hash,
        "b journaled the hash of a's publish"
    );
    let rb = Reader::open(root.path().join(&nb)).expect("reader b");
    let gated = events(&rb).into_iter().any(|(k, v)| {
        k == "policy_decided"
            && v["request"]
                .as_str()
                .is_some_and(|r| r.contains(&format!("alice@{na}")) && r.contains("orders.eu"))
    });
    assert!(gated, "b's gate decided on the publish from a");
    let delivered_remote = events(&ra).into_iter().any(|(k, v)| {
        k == "message_delivered"
            && v["remote"]
                .as_str()
                .is_some_and(|r| r.starts_with(&format!("{nb}:")))
    });
    assert!(delivered_remote, "a journaled b's receipt");
}

/// `stele bus stats --json` of a daemon.
fn bus_stats(d: &Daemon) -> serde_json::Value {
    let r = d.cli(&["bus", "stats", "--json"]);
    assert_eq!(r.code, Some(0), "bus stats: {r:?}");
    serde_json::from_str(&r.stdout).expect("stats JSON")
}

/// Waits until `pick` of a daemon's bus stats is `n`.
fn until_stats(d: &Daemon, what: &str, pick: impl Fn(&serde_json::Value) -> u64, n: u64) {
    until_stats_say(d, &format!("{what} never became {n}"), |s| pick(s) == n);
}

/// Waits until a daemon's bus stats satisfy `done`; fails with `otherwise`
/// and the last stats after [`TIMEOUT`].
fn until_stats_say(d: &Daemon, otherwise: &str, done: impl Fn(&serde_json::Value) -> bool) {
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let s = bus_stats(d);
        if done(&s) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{otherwise}: {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_full_mailbox_holds_back_messages_from_a_peer_in_order_until_there_is_room() {
    let root = tempfile::tempdir().expect("tempdir");
    // Names of their own: the other two-instance test runs in this process.
    let (a, b) = two_daemons(root.path(), "fulla", "fullb", "mailbox_capacity = 1\n");
    let (na, nb) = (a.name.clone(), b.name.clone());
    let bob = format!("bob@{nb}");
    let send = |text: &str, ttl: Option<&str>| {
        let mut args = vec!["bus", "send", "--from", "alice", "--to", &bob, text, "--json"];
        if let Some(t) = ttl {
            args.extend(["--ttl", t]);
        }
        let r = a.cli(&args);
        assert_eq!(r.code, Some(0), "send {text}: {r:?}");
    };
    let depth = |s: &serde_json::Value| s["mailboxes"]["bob"].as_u64().unwrap_or(0);
    let field = |k: &'static str| move |s: &serde_json::Value| s[k].as_u64().unwrap_or(0);
    // Refusals by code: their sum.
    let rejected = |s: &serde_json::Value| {
        s["rejected"]
            .as_object()
            .map_or(0, |m| m.values().filter_map(serde_json::Value::as_u64).sum())
    };

    // Three messages for a mailbox of one: b takes the first and holds the
    // others back on NATS — refusing none.
    for text in ["one", "two", "three"] {
        send(text, None);
    }
    until_stats(&b, "bob's mailbox on b", depth, 1);
    until_stats(&a, "a's receipts", field("delivered"), 1);
    let (sa, sb) = (bus_stats(&a), bus_stats(&b));
    assert_eq!(depth(&sb), 1, "b holds the others back: {sb}");
    assert_eq!(sb["received_remote"], 1, "{sb}");
    assert_eq!(rejected(&sb), 0, "nothing is refused for a full mailbox: {sb}");
    // a shows them sent, one delivered: the others have no receipt yet.
    assert_eq!(sa["delivered"], 1, "{sa}");
    // As bob acknowledges, the next one comes, in the order they were sent.
    for text in ["one", "two", "three"] {
        let got = b.recv_bob(true);
        let texts: Vec<&str> = got
            .as_array()
            .expect("array")
            .iter()
            .filter_map(|m| m["text"].as_str())
            .collect();
        assert_eq!(texts, [text], "{got}");
    }
    until_stats(&a, "a's receipts", field("delivered"), 3);
    assert_eq!(rejected(&bus_stats(&b)), 0);

    // The bound: a message that would expire before its next delivery is
    // refused then, journaled as mailbox_full, saying it was held back.
    send("four", None);
    until_stats(&b, "bob's mailbox on b", depth, 1);
    send("five", Some("2s"));
    until_stats(&b, "refusals on b", rejected, 1);
    assert_eq!(depth(&bus_stats(&b)), 1);

    down_and_verify([a, b]);
    let rb = Reader::open(root.path().join(&nb)).expect("reader b");
    let refusals: Vec<serde_json::Value> = events(&rb)
        .into_iter()
        .filter(|(k, _)| k == "message_rejected")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert_eq!(refusals[0]["code"], "mailbox_full", "{refusals:?}");
    assert!(
        refusals[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("held back")),
        "{refusals:?}"
    );
    let ra = Reader::open(root.path().join(&na)).expect("reader a");
    assert!(
        !events(&ra).iter().any(|(k, _)| k == "message_rejected"),
        "a refused nothing"
    );
}

/// Policies of `fixtures/policies` plus one that lets reasoning runs call
/// the bus builtins, in `dir`.
fn policies_with_builtins(dir: &Path) -> PathBuf {
    let out = fixture_policies_in(dir);
    std::fs::write(
        out.join("builtins.cedar"),
        "@id(\"runs-message-agents\")\npermit (principal, action == Action::\"invoke_tool\", resource)\nwhen { resource == Tool::\"send_to\" || resource == Tool::\"ask\" };\n",
    )
    .expect("builtins policy");
    out
}

#[test]
fn a_reasoning_run_sends_through_the_bus_builtin_and_replays() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let policies = policies_with_builtins(dir.path());
    let cfg = dir.path().join("stele.toml");
    std::fs::write(
        &cfg,
        format!("[bus]\npolicies = {:?}\n", policies.display().to_string()),
    )
    .expect("config");
    let script = dir.path().join("script.json");
    std::fs::write(
        &script,
        r#"{"model": "scripted", "answers": [
  {"content": "I'll tell inbox.", "tool_calls": [{"name": "send_to", "arguments": {"agent": "inbox", "message": "the report is ready"}}]},
  {"content": "Told inbox."}
]}"#,
    )
    .expect("script");
    let sender = dir.path().join("sender.toml");
    std::fs::write(
        &sender,
        format!(
            "name = \"sender\"\npriority = \"normal\"\n[mode]\nkind = \"ephemeral\"\n[limits]\nmemory_mb = 64\ncpu_cores = 0.5\nexecution_timeout = \"10s\"\n[runs]\nkind = \"reasoning\"\nsystem = \"You tell others.\"\ntools = [\"send_to\", \"read_file\"]\nworkspace = {:?}\nscript = {:?}\nmax_steps = 4\n",
            dir.path().join("ws").display().to_string(),
            script.display().to_string()
        ),
    )
    .expect("sender");
    let inbox = dir.path().join("inbox.toml");
    std::fs::write(&inbox, definition("inbox", "")).expect("inbox");
    let p = policies.to_str().expect("utf-8");
    let r = cli(
        &data,
        &cfg,
        &["agent", "register", inbox.to_str().expect("utf-8")],
    );
    assert_eq!(r.code, Some(0), "{r:?}");
    let r = cli(
        &data,
        &cfg,
        &[
            "run",
            sender.to_str().expect("utf-8"),
            "--input",
            "tell inbox",
            "--json",
            "--policies",
            p,
        ],
    );
    assert_eq!(r.code, Some(0), "{r:?}");
    let out: serde_json::Value = serde_json::from_str(&r.stdout).expect("run JSON");
    assert_eq!(out["outcome"], "completed", "{out}");
    let run = out["run"].as_str().expect("run id").to_owned();

    let journal = open(&data);
    let evs = events(&journal.reader());
    drop(journal);
    let returned = evs
        .iter()
        .find(|(k, _)| k == "tool_returned")
        .map(|(_, v)| v.clone())
        .expect("the send_to call returned");
    assert_eq!(returned["ok"], true, "{returned}");
    assert!(
        returned["output"]
            .as_str()
            .is_some_and(|o| o.starts_with("sent ")),
        "{returned}"
    );
    let sent = evs
        .iter()
        .find(|(k, _)| k == "message_sent")
        .map(|(_, v)| v.clone())
        .expect("a journaled MessageSent");
    assert_eq!(sent["sender"], "sender", "{sent}");
    assert_eq!(sent["recipient"], "inbox", "{sent}");
    assert_eq!(sent["builtin"], "send_to", "{sent}");
    let call = returned["call_id"].as_str().expect("call id");
    assert_eq!(sent["context"], format!("{run}/{call}").as_str(), "{sent}");
    assert!(
        evs.iter().any(|(k, v)| k == "message_delivered"
            && v["recipient"] == "inbox"
            && v["message"] == sent["message"]),
        "a journaled MessageDelivered to inbox"
    );
    // The bus's own gate decided the message too.
    assert!(
        evs.iter()
            .any(|(k, v)| k == "policy_decided" && v["point"] == "message_send")
    );

    // The replay serves the journaled result: no message is sent again.
    let r = cli(&data, &cfg, &["replay", &run, "--policies", p]);
    assert_eq!(r.code, Some(0), "{r:?}");
    let journal = open(&data);
    let again = events(&journal.reader());
    assert_eq!(
        again.iter().filter(|(k, _)| k == "message_sent").count(),
        1,
        "replay sent nothing"
    );
    drop(journal);
    verify(&data);
}
