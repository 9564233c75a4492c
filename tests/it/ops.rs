//! Operations of `stele up` against real parts: OpenTelemetry spans
//! exported over OTLP/HTTP to a collector in this process (the ORGA phases
//! and journal commits of a reasoning run, with its run id; an unreachable
//! collector only warns), HTTPS with a certificate made here (a client
//! trusting the test CA gets 200; plain HTTP and untrusting clients fail; a
//! bad certificate path is a clear start-up error), and the Grafana
//! dashboard in `deploy/grafana/` querying only metrics a real `/metrics`
//! scrape exports (and every one of them).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use prost::Message as _;
use serde_json::Value;

use crate::up::{CONFIG, Up, WAIT};
use crate::up_runs::{assistant, policies, run_until_parked};
use crate::{run_bounded, stele};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// One exported span, as the collector decoded it.
#[derive(Debug, Clone)]
struct Got {
    name: String,
    span_id: Vec<u8>,
    parent: Vec<u8>,
    attrs: BTreeMap<String, String>,
    resource: BTreeMap<String, String>,
}

fn text(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Any::StringValue(s)) => s.clone(),
                Some(Any::IntValue(i)) => i.to_string(),
                Some(Any::BoolValue(b)) => b.to_string(),
                Some(Any::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), v)
        })
        .collect()
}

/// A minimal OTLP/HTTP collector: `POST /v1/traces` with a protobuf
/// `ExportTraceServiceRequest`, answered 200 with an empty response.
struct Collector {
    url: String,
    spans: Arc<Mutex<Vec<Got>>>,
    posts: Arc<Mutex<Vec<String>>>,
}

impl Collector {
    fn start() -> Collector {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let posts = Arc::new(Mutex::new(Vec::new()));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind collector");
        listener.set_nonblocking(true).expect("nonblocking");
        let url = format!("http://{}/v1/traces", listener.local_addr().expect("addr"));
        let (s, p) = (Arc::clone(&spans), Arc::clone(&posts));
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("collector runtime");
            rt.block_on(async move {
                let app = axum::Router::new().route(
                    "/v1/traces",
                    axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                        let (s, p) = (Arc::clone(&s), Arc::clone(&p));
                        async move {
                            let ct = headers
                                .get("content-type")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_owned();
                            p.lock().expect("posts").push(ct);
                            let req = match ExportTraceServiceRequest::decode(body) {
                                Ok(r) => r,
                                Err(e) => {
                                    return (
                                        axum::http::StatusCode::BAD_REQUEST,
                                        format!("not OTLP protobuf: {e}"),
                                    );
                                }
                            };
                            let mut got = s.lock().expect("spans");
                            for rs in req.resource_spans {
                                let resource = rs.resource.map(|r| text(&r.attributes)).unwrap_or_default();
                                for ss in rs.scope_spans {
                                    for sp in ss.spans {
                                        got.push(Got {
                                            name: sp.name.clone(),
                                            span_id: sp.span_id.clone(),
                                            parent: sp.parent_span_id.clone(),
                                            attrs: text(&sp.attributes),
                                            resource: resource.clone(),
                                        });
                                    }
                                }
                            }
                            (axum::http::StatusCode::OK, String::new())
                        }
                    }),
                );
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                axum::serve(listener, app).await.expect("collector serve");
            });
        });
        Collector { url, spans, posts }
    }

    fn spans(&self) -> Vec<Got> {
        self.spans.lock().expect("spans").clone()
    }
}

#[test]
fn spans_of_orga_phases_and_journal_commits_reach_an_otlp_collector() {
    let collector = Collector::start();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("stele.toml"),
        format!(
            "{CONFIG}\n[otel]\nendpoint = {:?}\nservice_name = \"stele-it\"\nbatch_delay = \"100ms\"\ntimeout = \"5s\"\n\n[otel.resource]\n\"deployment.environment\" = \"test\"\n",
            collector.url
        ),
    )
    .expect("config");
    let (agent, _ws) = assistant(dir.path());
    let mut up = Up::start_with(dir.path(), None, &["--policies", &policies()]);
    // Reason (a read), gate, act, observe, reason again (a denied command
    // and a write that needs approval): then the run parks.
    let (run, _call) = run_until_parked(&up, &agent);
    // The batch goes out while the daemon runs (batch_delay 100ms).
    let deadline = Instant::now() + WAIT;
    while !collector.spans().iter().any(|s| s.name == "orga.act") {
        assert!(
            Instant::now() < deadline,
            "no orga.act span within {WAIT:?}; got {:?}",
            collector
                .spans()
                .iter()
                .map(|s| s.name.clone())
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    up.signal(libc::SIGTERM);
    assert!(up.wait_exit().success(), "stele up exits cleanly with [otel] on");

    let spans = collector.spans();
    let names: BTreeSet<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    for want in [
        "orga.run",
        "orga.reason",
        "orga.gate",
        "orga.act",
        "orga.observe",
        "journal.commit",
    ] {
        assert!(names.contains(want), "no {want} span; got {names:?}");
    }
    // Every ORGA span carries the run id; the phases are children of the
    // run's span.
    let of_run: Vec<&Got> = spans.iter().filter(|s| s.name.starts_with("orga.")).collect();
    for s in &of_run {
        assert_eq!(s.attrs.get("run_id"), Some(&run), "{s:?}");
    }
    let root_span = of_run.iter().find(|s| s.name == "orga.run").expect("orga.run");
    assert_eq!(
        root_span.attrs.get("agent").map(String::as_str),
        Some("assistant")
    );
    // Knowledge recalled between steps is part of observing the step.
    let observes: Vec<&Vec<u8>> = of_run
        .iter()
        .filter(|s| s.name == "orga.observe")
        .map(|s| &s.span_id)
        .collect();
    for s in of_run.iter().filter(|s| s.name != "orga.run") {
        if s.name == "orga.knowledge" {
            assert!(
                observes.contains(&&s.parent),
                "{s:?} is a child of an orga.observe"
            );
        } else {
            assert_eq!(s.parent, root_span.span_id, "{} is a child of orga.run", s.name);
        }
    }
    let gate = of_run.iter().find(|s| s.name == "orga.gate").expect("gate");
    assert!(
        gate.attrs.contains_key("calls") && gate.attrs.contains_key("step"),
        "{gate:?}"
    );
    // Journal commits: seq range and size; the run's own groups name it.
    let commits: Vec<&Got> = spans.iter().filter(|s| s.name == "journal.commit").collect();
    for c in &commits {
        let first: u64 = c.attrs["first_seq"].parse().expect("first_seq");
        let last: u64 = c.attrs["last_seq"].parse().expect("last_seq");
        let events: u64 = c.attrs["events"].parse().expect("events");
        assert_eq!(last - first + 1, events, "{c:?}");
    }
    assert!(
        commits.iter().any(|c| c.attrs.get("run_id") == Some(&run)),
        "a commit of the run's facts names the run: {commits:?}"
    );
    // The resource: service name, version, instance, the configured extra.
    let r = &spans[0].resource;
    assert_eq!(
        r.get("service.name").map(String::as_str),
        Some("stele-it"),
        "{r:?}"
    );
    assert_eq!(
        r.get("deployment.environment").map(String::as_str),
        Some("test"),
        "{r:?}"
    );
    assert_eq!(
        r.get("service.version").map(String::as_str),
        Some(env!("CARGO_PKG_VERSION")),
        "{r:?}"
    );
    assert!(r.contains_key("service.instance.id"), "{r:?}");
    for ct in collector.posts.lock().expect("posts").iter() {
        assert_eq!(ct, "application/x-protobuf", "OTLP/HTTP protobuf");
    }
}

#[test]
fn an_unreachable_collector_warns_and_stele_goes_on() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("stele.toml");
    std::fs::write(
        &config,
        format!(
            "{CONFIG}\n[otel]\nendpoint = \"http://127.0.0.1:{port}/v1/traces\"\nbatch_delay = \"100ms\"\ntimeout = \"2s\"\n"
        ),
    )
    .expect("config");
    let (agent, _ws) = assistant(dir.path());
    let data = dir.path().join("data");
    // A run without a daemon: it parks as usual, and says the export failed.
    let r = run_bounded(&[
        "--data",
        data.to_str().expect("utf8"),
        "--config",
        config.to_str().expect("utf8"),
        "run",
        agent.to_str().expect("utf8"),
        "--policies",
        &policies(),
        "--input",
        "Summarise the workspace",
        "--json",
    ]);
    r.no_panic("stele run");
    assert_eq!(r.code, Some(3), "the run parks as without [otel]: {r:?}");
    assert!(
        r.stderr.contains(&format!(
            "OpenTelemetry export to http://127.0.0.1:{port}/v1/traces failed"
        )),
        "{r:?}"
    );
    // The daemon comes up, serves, and shuts down cleanly.
    let mut up = Up::start_with(dir.path(), None, &["--policies", &policies()]);
    let mut health = up
        .http()
        .get(format!("{}/health", up.http))
        .call()
        .expect("GET /health");
    assert_eq!(
        health.status(),
        200,
        "{}",
        health.body_mut().read_to_string().unwrap_or_default()
    );
    up.signal(libc::SIGTERM);
    assert!(up.wait_exit().success());
    // A malformed endpoint is refused before anything starts.
    std::fs::write(
        &config,
        format!("{CONFIG}\n[otel]\nendpoint = \"127.0.0.1:4318\"\n"),
    )
    .expect("config");
    let r = run_bounded(&[
        "--data",
        data.to_str().expect("utf8"),
        "--config",
        config.to_str().expect("utf8"),
        "status",
    ]);
    r.no_panic("bad endpoint");
    assert_eq!(r.code, Some(2), "{r:?}");
    assert!(
        r.stderr
            .contains("[otel] endpoint \"127.0.0.1:4318\" is not an http:// or https:// URL"),
        "{r:?}"
    );
}

/// A CA and a server certificate for 127.0.0.1 and localhost signed by it,
/// written as PEM; returns (ca.pem, cert.pem, key.pem).
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "stele test CA");
    let ca_cert = ca.self_signed(&ca_key).expect("CA cert");
    let issuer = rcgen::Issuer::new(ca, ca_key);
    // The server certificate names both; the test connects to the address.
    let key = KeyPair::generate().expect("server key");
    let params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).expect("server params");
    let cert = params.signed_by(&key, &issuer).expect("server cert");
    let (ca_pem, cert_pem, key_pem) = (dir.join("ca.pem"), dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&ca_pem, ca_cert.pem()).expect("ca.pem");
    std::fs::write(&cert_pem, cert.pem()).expect("cert.pem");
    std::fs::write(&key_pem, key.serialize_pem()).expect("key.pem");
    (ca_pem, cert_pem, key_pem)
}

fn tls_agent(ca: Option<&Path>) -> ureq::Agent {
    let mut tls = ureq::tls::TlsConfig::builder().provider(ureq::tls::TlsProvider::Rustls);
    if let Some(ca) = ca {
        let pem = std::fs::read(ca).expect("ca");
        let certs: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&pem)
            .filter_map(|p| match p.expect("PEM") {
                ureq::tls::PemItem::Certificate(c) => Some(c),
                _ => None,
            })
            .collect();
        tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&certs));
    }
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .tls_config(tls.build())
        .build()
        .into()
}

#[test]
fn https_end_to_end_with_a_test_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, cert, key) = certificates(dir.path());
    let tok = run_bounded(&["token", "create", "ops", "--scope", "read", "--json"]);
    tok.no_panic("token create");
    let v: Value = serde_json::from_str(tok.stdout.trim()).expect("token JSON");
    let token = v["token"].as_str().expect("token").to_owned();
    let line = v["config"].as_str().expect("config line").to_owned();
    std::fs::write(
        dir.path().join("stele.toml"),
        format!(
            "{CONFIG}\n[http]\ntls_cert = {:?}\ntls_key = {:?}\n\n{line}\n",
            cert.display().to_string(),
            key.display().to_string()
        ),
    )
    .expect("config");
    let mut up = Up::start_with(dir.path(), None, &[]);
    let addr = up.http.trim_start_matches("http://").to_owned();
    let port = addr.rsplit(':').next().expect("port").to_owned();
    let up_json: Value =
        serde_json::from_str(&std::fs::read_to_string(up.data.join("up.json")).expect("up.json"))
            .expect("json");
    assert_eq!(up_json["scheme"], "https", "{up_json}");

    let agent = tls_agent(Some(&ca));
    let mut r = agent
        .get(format!("https://127.0.0.1:{port}/health"))
        .call()
        .expect("GET /health over HTTPS");
    let body = r.body_mut().read_to_string().expect("body");
    assert_eq!(r.status(), 200, "{body}");
    let h: Value = serde_json::from_str(&body).expect("health JSON");
    assert!(h["overall_status"].is_string(), "{h}");
    let url = format!("https://127.0.0.1:{port}/v1/agents");
    let mut r = agent
        .get(&url)
        .header("authorization", format!("Bearer {token}"))
        .call()
        .expect("GET /v1/agents");
    let body = r.body_mut().read_to_string().expect("body");
    assert_eq!(r.status(), 200, "{body}");
    assert!(serde_json::from_str::<Value>(&body).is_ok(), "{body}");
    let r = agent.get(&url).call().expect("GET without a token");
    assert_eq!(r.status(), 401, "tokens are still checked over HTTPS");

    // A client that does not trust the test CA is refused by its own TLS.
    let e = tls_agent(None)
        .get(format!("https://127.0.0.1:{port}/health"))
        .call()
        .expect_err("an untrusted certificate must fail");
    let why = format!("{e:?}").to_lowercase();
    assert!(
        why.contains("unknownissuer") || why.contains("certificate"),
        "{why}"
    );
    // Plain HTTP to the TLS port gets no HTTP answer.
    let mut s = TcpStream::connect(&addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert!(
        !got.starts_with(b"HTTP/"),
        "plain HTTP must not be answered on the HTTPS port: {:?}",
        String::from_utf8_lossy(&got)
    );
    let plain = up.http().get(format!("http://{addr}/health")).call();
    assert!(plain.is_err(), "plain HTTP fails: {plain:?}");
    up.signal(libc::SIGTERM);
    assert!(up.wait_exit().success());

    // Bad certificate or key files are named at start-up.
    let config = dir.path().join("bad.toml");
    let missing = dir.path().join("missing.pem");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a PEM file\n").expect("garbage");
    for (c, k, named) in [(&missing, &key, &missing), (&cert, &garbage, &garbage)] {
        std::fs::write(
            &config,
            format!(
                "{CONFIG}\n[http]\ntls_cert = {:?}\ntls_key = {:?}\n",
                c.display().to_string(),
                k.display().to_string()
            ),
        )
        .expect("config");
        let mut child = stele()
            .arg("--data")
            .arg(dir.path().join("bad-data"))
            .arg("--config")
            .arg(&config)
            .arg("up")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait") {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("stele up with a bad TLS file did not exit");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        child
            .stderr
            .take()
            .expect("stderr")
            .read_to_string(&mut err)
            .expect("stderr");
        assert_eq!(status.code(), Some(2), "{err}");
        assert!(
            err.contains("[http] loading the TLS certificate") && err.contains(&named.display().to_string()),
            "the error names the file: {err}"
        );
    }
}

/// Every series name a scrape can hold: counters with `_total`, histograms
/// with `_bucket`/`_sum`/`_count`, gauges as they are.
fn exported_series(scrape: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut families = BTreeSet::new();
    let mut series = BTreeSet::new();
    for line in scrape.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut it = rest.split_whitespace();
        let (Some(name), Some(kind)) = (it.next(), it.next()) else {
            continue;
        };
        families.insert(name.to_owned());
        match kind {
            "counter" => {
                series.insert(format!("{name}_total"));
            }
            "histogram" => {
                for s in ["_bucket", "_sum", "_count"] {
                    series.insert(format!("{name}{s}"));
                }
            }
            _ => {
                series.insert(name.to_owned());
            }
        }
    }
    (families, series)
}

fn dashboard_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr" | "definition", Value::String(s)) => out.push(s.clone()),
                    ("query", Value::Object(q)) => {
                        if let Some(Value::String(s)) = q.get("query") {
                            out.push(s.clone());
                        }
                    }
                    _ => dashboard_exprs(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| dashboard_exprs(v, out)),
        _ => {}
    }
}

#[test]
fn the_grafana_dashboard_queries_only_exported_metrics() {
    let text = std::fs::read_to_string(root().join("deploy/grafana/stele.json")).expect("dashboard");
    let dash: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert_eq!(dash["uid"], "stele-runtime");
    let mut exprs = Vec::new();
    dashboard_exprs(&dash, &mut exprs);
    assert!(exprs.len() > 20, "{exprs:?}");
    let mut queried: BTreeMap<String, String> = BTreeMap::new();
    for e in &exprs {
        let mut rest = e.as_str();
        while let Some(i) = rest.find("stele_") {
            let name: String = rest[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[i + name.len()..];
            queried.entry(name).or_insert_with(|| e.clone());
        }
    }
    // A real scrape of a daemon that ran a reasoning run.
    let dir = tempfile::tempdir().expect("tempdir");
    let (agent, _ws) = assistant(dir.path());
    let up = Up::start_with(dir.path(), None, &["--policies", &policies()]);
    let _ = run_until_parked(&up, &agent);
    let mut r = up
        .http()
        .get(format!("{}/metrics", up.http))
        .call()
        .expect("GET /metrics");
    let scrape = r.body_mut().read_to_string().expect("scrape");
    let (families, series) = exported_series(&scrape);
    assert!(series.contains("stele_journal_appends_total"), "{scrape}");
    for (name, expr) in &queried {
        assert!(
            series.contains(name),
            "the dashboard queries {name} (in `{expr}`), which /metrics does not export; exported: {series:?}"
        );
    }
    // And the dashboard shows every family stele exports.
    for f in &families {
        assert!(
            queried.keys().any(|q| q == f
                || q.strip_prefix(f.as_str())
                    .is_some_and(|s| ["_total", "_bucket", "_sum", "_count"].contains(&s))),
            "/metrics exports {f}, which no dashboard panel shows; add a panel to deploy/grafana/stele.json"
        );
    }
}
