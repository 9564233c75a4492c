//! The NATS feed against a secured `nats-server`: TLS with a server
//! certificate signed by a CA made here (`openssl`), client certificates
//! required (mutual TLS), and authentication by NKey user or by user and
//! password (the password from the environment). `stele publish` and
//! `stele subscribe` work through it; a wrong CA, a missing client
//! certificate, missing or wrong credentials and an unset password
//! variable each give an error naming what failed; `stele up` with a feed
//! that cannot sign in keeps running and reports NATS not ready in
//! `/ready`. The bus's link to peer instances (`[bus] nats = true`) uses the
//! same `[nats]` settings: two `stele up` instances exchange a direct
//! message, a request and its response and a receipt through the secured
//! server (one signed in with the NKey, the other with the password), and
//! refused credentials stop `stele up` with an error naming them.
//!
//! Each test starts its own server on a free port with a config file
//! written here, and makes its own CA and keys, so nothing is shared.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use serde_json::Value;

use crate::nats::{PATIENCE, Proc, journal_events, nats_server_bin, spawn, wait_until};
use crate::stele;

/// The password of the `alice` user, passed to stele in this variable only.
const PASSWORD_VAR: &str = "STELE_TEST_NATS_PASSWORD";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn openssl(dir: &Path, args: &[&str]) {
    let o = std::process::Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl is installed");
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate
/// signed by it, and a second CA that signed nothing here.
struct Pki {
    ca: PathBuf,
    other_ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

impl Pki {
    fn make(dir: &Path) -> Pki {
        std::fs::create_dir_all(dir).expect("pki dir");
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        for (name, cn) in [("ca", "stele test CA"), ("other-ca", "another CA")] {
            let mut args = vec!["req", "-x509"];
            args.extend(ec);
            let (key, pem, subj) = (format!("{name}.key"), format!("{name}.pem"), format!("/CN={cn}"));
            args.extend([
                "-keyout",
                &key,
                "-out",
                &pem,
                "-days",
                "2",
                "-subj",
                &subj,
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ]);
            openssl(dir, &args);
        }
        for (name, usage, serial) in [("server", "serverAuth", "1001"), ("client", "clientAuth", "1002")] {
            let ext = format!("{name}.ext");
            std::fs::write(
                dir.join(&ext),
                format!(
                    "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage={usage}\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
                ),
            )
            .expect("ext file");
            let (key, csr, pem, subj) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.pem"),
                format!("/CN=stele test {name}"),
            );
            let mut args = vec!["req"];
            args.extend(ec);
            args.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
            openssl(dir, &args);
            openssl(
                dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-set_serial",
                    serial,
                    "-days",
                    "2",
                    "-out",
                    &pem,
                    "-extfile",
                    &ext,
                ],
            );
        }
        Pki {
            ca: dir.join("ca.pem"),
            other_ca: dir.join("other-ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        }
    }
}

/// A JetStream `nats-server` that speaks only TLS, requires a client
/// certificate signed by the test CA, and knows two users: an NKey user
/// and `alice` with a password.
struct SecureServer {
    proc: Proc,
    port: u16,
    pki: Pki,
    /// The seed of the NKey user the server knows.
    user_seed: String,
    password: String,
}

impl SecureServer {
    fn start(dir: &Path) -> SecureServer {
        let pki = Pki::make(&dir.join("pki"));
        let user = nkeys::KeyPair::new_user();
        let password = format!("pw-{}", nkeys::KeyPair::new_user().public_key());
        let port = free_port();
        let conf = dir.join("server.conf");
        std::fs::write(
            &conf,
            format!(
                r#"host: "127.0.0.1"
port: {port}
jetstream {{ store_dir: "{store}" }}
tls {{
  cert_file: "{cert}"
  key_file: "{key}"
  ca_file: "{ca}"
  verify: true
  timeout: 5
}}
authorization {{
  users = [
    {{ nkey: "{nkey}" }}
    {{ user: "alice", password: "{password}" }}
  ]
}}
"#,
                store = dir.join("js").display(),
                cert = pki.server_cert.display(),
                key = pki.server_key.display(),
                ca = pki.ca.display(),
                nkey = user.public_key(),
            ),
        )
        .expect("server config");
        let proc = spawn(
            std::process::Command::new(nats_server_bin()).arg("-c").arg(&conf),
            dir,
            "nats-server",
        );
        let s = SecureServer {
            proc,
            port,
            pki,
            user_seed: user.seed().expect("seed"),
            password,
        };
        let t = Instant::now();
        while crate::nats::rt().block_on(s.client(&s.user_seed)).is_err() {
            assert!(
                t.elapsed() < PATIENCE,
                "the secured nats-server did not come up: {}",
                s.proc.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    fn url(&self) -> String {
        format!("tls://127.0.0.1:{}", self.port)
    }

    /// A JetStream context of the test's own (mutual TLS, NKey `seed`).
    async fn client(&self, seed: &str) -> Result<async_nats::jetstream::Context, String> {
        let c = async_nats::ConnectOptions::new()
            .require_tls(true)
            .add_root_certificates(self.pki.ca.clone())
            .add_client_certificate(self.pki.client_cert.clone(), self.pki.client_key.clone())
            .nkey(seed.to_owned())
            .connection_timeout(Duration::from_secs(3))
            .connect(self.url())
            .await
            .map_err(|e| e.to_string())?;
        Ok(async_nats::jetstream::new(c))
    }

    /// `hash` of each message of `stream`, in stream order.
    fn stream_ids(&self, stream: &str) -> Vec<String> {
        crate::nats::rt().block_on(async {
            let js = self.client(&self.user_seed).await.expect("connect");
            let Ok(mut s) = js.get_stream(stream).await else {
                return Vec::new();
            };
            let n = s.info().await.expect("info").state.messages;
            let consumer = s
                .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
                    deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::All,
                    ..Default::default()
                })
                .await
                .expect("consumer");
            let mut msgs = consumer.messages().await.expect("messages");
            let mut ids = Vec::new();
            while (ids.len() as u64) < n {
                let m = tokio::time::timeout(Duration::from_secs(30), msgs.next())
                    .await
                    .expect("delivered")
                    .expect("not ended")
                    .expect("message");
                let v: Value = serde_json::from_slice(&m.payload).expect("json");
                ids.push(v["id"].as_str().expect("id").to_owned());
            }
            ids
        })
    }
}

/// The `[nats]` section reaching `server`: `auth` lines, then the TLS
/// table with `ca` and, if `client_cert`, the client certificate.
fn nats_section(server: &SecureServer, stream: &str, auth: &str, ca: &Path, client_cert: bool) -> String {
    let client = if client_cert {
        format!(
            ", cert = \"{}\", key = \"{}\"",
            server.pki.client_cert.display(),
            server.pki.client_key.display()
        )
    } else {
        String::new()
    };
    format!(
        "[nats]\nurl = \"{}\"\nstream = \"{stream}\"\nsubject_prefix = \"{}\"\n{auth}\ntls = {{ ca = \"{}\"{client} }}\n",
        server.url(),
        stream.to_lowercase(),
        ca.display()
    )
}

fn write_config(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("config");
    p
}

fn small_journal(data: &Path) {
    for t in ["one", "two"] {
        let o = stele()
            .arg("--data")
            .arg(data)
            .args(["journal", "append", "--stream", "ops", "--text", t])
            .output()
            .expect("append");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
}

/// `stele subscribe` with `config` (and `env`): exit 2 and its one-line
/// error, which must hold every `want`.
fn subscribe_refused(config: &Path, env: &[(&str, &str)], want: &[&str]) {
    let mut cmd = stele();
    cmd.arg("--config")
        .arg(config)
        .args(["subscribe", "--from", "1"])
        .env_remove(PASSWORD_VAR);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let o = cmd.output().expect("stele subscribe");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(o.status.code(), Some(2), "{}: {err}", config.display());
    for w in want {
        assert!(err.contains(w), "want {w:?} in: {err}");
    }
}

/// Reads `stele subscribe` lines until `n` have come.
fn subscribe_lines(config: &Path, env: &[(&str, &str)], n: usize) -> Vec<String> {
    let mut cmd = stele();
    cmd.arg("--config")
        .arg(config)
        .args(["subscribe", "--from", "1", "--json"])
        .env_remove(PASSWORD_VAR)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("subscribe");
    let stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .take(n)
            .map(|l| l.expect("read"))
            .collect::<Vec<_>>()
    });
    let t = Instant::now();
    while !reader.is_finished() {
        if let Some(s) = child.try_wait().expect("poll") {
            let mut err = String::new();
            let _ = std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err);
            panic!("subscribe ended ({s}) before {n} lines: {err}");
        }
        assert!(t.elapsed() < PATIENCE, "subscribe printed fewer than {n} lines");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    reader.join().expect("reader")
}

#[test]
fn publish_and_subscribe_over_mutual_tls_with_nkey_or_password() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = SecureServer::start(tmp.path());
    let data = tmp.path().join("data");
    small_journal(&data);
    let journal = journal_events(&data);
    let hashes: Vec<String> = journal.iter().map(|(_, h, _)| h.clone()).collect();
    let seed_file = tmp.path().join("user.nk");
    std::fs::write(&seed_file, format!("{}\n", server.user_seed)).expect("seed file");
    let nkey_auth = format!("nkey = \"{}\"", seed_file.display());
    let config = write_config(
        tmp.path(),
        "nkey.toml",
        &nats_section(&server, "SECURE", &nkey_auth, &server.pki.ca, true),
    );

    // The publisher over TLS with the NKey user: the whole journal, once.
    let mut publ = spawn(
        stele()
            .arg("--data")
            .arg(&data)
            .arg("--config")
            .arg(&config)
            .arg("publish"),
        tmp.path(),
        "publish",
    );
    wait_until("the journal in the secured stream", || {
        server.stream_ids("SECURE").len() >= hashes.len()
    });
    assert_eq!(server.stream_ids("SECURE"), hashes, "{}", publ.stderr());
    assert!(publ.terminate().success(), "{}", publ.stderr());
    assert!(
        publ.stderr()
            .contains(&format!("connected to NATS at {}", server.url()))
            || publ.stdout().contains(&format!("through seq {}", journal.len())),
        "{}",
        publ.stderr()
    );

    // Subscribers: with the NKey user, and as alice with the password from
    // the environment (the file names only the variable).
    let lines = subscribe_lines(&config, &[], hashes.len());
    let seen: Vec<String> = lines
        .iter()
        .map(|l| {
            serde_json::from_str::<Value>(l).expect("json")["hash"]
                .as_str()
                .expect("hash")
                .to_owned()
        })
        .collect();
    assert_eq!(seen, hashes);
    let alice = write_config(
        tmp.path(),
        "alice.toml",
        &nats_section(
            &server,
            "SECURE",
            &format!("user = \"alice\"\npassword_env = \"{PASSWORD_VAR}\""),
            &server.pki.ca,
            true,
        ),
    );
    let text = std::fs::read_to_string(&alice).expect("read");
    assert!(!text.contains(&server.password), "no secret in the file");
    let lines = subscribe_lines(&alice, &[(PASSWORD_VAR, &server.password)], hashes.len());
    assert_eq!(lines.len(), hashes.len());
}

#[test]
fn tls_and_credential_failures_say_what_failed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = SecureServer::start(tmp.path());
    let seed_file = tmp.path().join("user.nk");
    std::fs::write(&seed_file, &server.user_seed).expect("seed file");
    let stranger = tmp.path().join("stranger.nk");
    std::fs::write(&stranger, nkeys::KeyPair::new_user().seed().expect("seed")).expect("seed file");
    let nkey_auth = format!("nkey = \"{}\"", seed_file.display());
    let cfg = |name: &str, auth: &str, ca: &Path, client_cert: bool| {
        write_config(
            tmp.path(),
            name,
            &nats_section(&server, "SECURE_F", auth, ca, client_cert),
        )
    };
    let url = server.url();

    // A CA that did not sign the server's certificate.
    let wrong_ca = cfg("wrong-ca.toml", &nkey_auth, &server.pki.other_ca, true);
    subscribe_refused(
        &wrong_ca,
        &[],
        &[
            &format!("TLS with NATS at {url} failed"),
            "UnknownIssuer",
            &format!(
                "signed by the CA of [nats.tls] ca ({})",
                server.pki.other_ca.display()
            ),
        ],
    );
    // No client certificate where the server requires one.
    let no_client = cfg("no-client.toml", &nkey_auth, &server.pki.ca, false);
    subscribe_refused(&no_client, &[], &[&format!("NATS at {url}"), "certificate"]);
    // No credentials, and an NKey the server does not know.
    let anonymous = cfg("anonymous.toml", "", &server.pki.ca, true);
    subscribe_refused(
        &anonymous,
        &[],
        &[
            &format!("NATS at {url} refused to authorize no credentials"),
            "authorization violation",
        ],
    );
    let bad_key = cfg(
        "stranger.toml",
        &format!("nkey = \"{}\"", stranger.display()),
        &server.pki.ca,
        true,
    );
    subscribe_refused(
        &bad_key,
        &[],
        &[&format!(
            "refused to authorize the NKey seed in {}",
            stranger.display()
        )],
    );
    // A wrong password, and its variable unset.
    let alice = cfg(
        "alice.toml",
        &format!("user = \"alice\"\npassword_env = \"{PASSWORD_VAR}\""),
        &server.pki.ca,
        true,
    );
    subscribe_refused(
        &alice,
        &[(PASSWORD_VAR, "not-the-password")],
        &[&format!(
            "refused to authorize user \"alice\" (password from ${PASSWORD_VAR})"
        )],
    );
    subscribe_refused(
        &alice,
        &[],
        &[&format!(
            "[nats] password_env: the environment variable {PASSWORD_VAR} is not set"
        )],
    );
    // Files that are not there, or not seeds.
    let missing = cfg(
        "missing.toml",
        &format!("nkey = \"{}\"", tmp.path().join("nope.nk").display()),
        &server.pki.ca,
        true,
    );
    subscribe_refused(
        &missing,
        &[],
        &["[nats] nkey: cannot read the NKey seed file", "nope.nk"],
    );
    let not_seed = cfg(
        "not-seed.toml",
        &format!("nkey = \"{}\"", server.pki.ca.display()),
        &server.pki.ca,
        true,
    );
    subscribe_refused(&not_seed, &[], &["does not hold an NKey user seed"]);
    let no_ca = cfg("no-ca.toml", &nkey_auth, &tmp.path().join("nope.pem"), true);
    subscribe_refused(&no_ca, &[], &["[nats.tls] ca: cannot read", "nope.pem"]);

    // The publisher keeps retrying and says why each time.
    let data = tmp.path().join("data");
    small_journal(&data);
    let mut publ = spawn(
        stele()
            .arg("--data")
            .arg(&data)
            .arg("--config")
            .arg(&bad_key)
            .arg("publish"),
        tmp.path(),
        "publish",
    );
    wait_until("two refused attempts", || {
        publ.stderr().matches("refused to authorize").count() >= 2
    });
    assert!(publ.child.try_wait().expect("poll").is_none(), "still running");
    assert!(publ.terminate().success(), "{}", publ.stderr());
    assert!(!data.join("nats.cursor").exists(), "nothing was published");
}

#[test]
fn stele_up_with_refused_nats_credentials_runs_and_is_not_ready() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = SecureServer::start(tmp.path());
    let stranger = tmp.path().join("stranger.nk");
    std::fs::write(&stranger, nkeys::KeyPair::new_user().seed().expect("seed")).expect("seed file");
    let data = tmp.path().join("data");
    let config = write_config(
        tmp.path(),
        "up.toml",
        &format!(
            "[runtime]\nhttp_port = 0\nstop_grace = \"2s\"\n\n[security]\ndefault_sandbox_tier = \"native\"\n\n{}enabled = true\n",
            nats_section(
                &server,
                "SECURE_UP",
                &format!("nkey = \"{}\"", stranger.display()),
                &server.pki.ca,
                true
            )
        ),
    );
    let mut up = spawn(
        stele()
            .arg("--data")
            .arg(&data)
            .arg("--config")
            .arg(&config)
            .arg("up"),
        tmp.path(),
        "up",
    );
    let mut addr = String::new();
    wait_until("stele up to serve HTTP", || {
        if let Some(s) = up.child.try_wait().expect("poll") {
            panic!("stele up exited ({s}): {}", up.stderr());
        }
        if let Ok(text) = std::fs::read_to_string(data.join("up.json"))
            && let Ok(v) = serde_json::from_str::<Value>(&text)
            && let Some(a) = v["http"].as_str()
        {
            addr = a.to_owned();
            return true;
        }
        false
    });
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into();
    let get = |path: &str| -> (u16, Value) {
        let mut r = agent.get(&format!("http://{addr}{path}")).call().expect("HTTP");
        let status = r.status().as_u16();
        let body = r.body_mut().read_to_string().expect("body");
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    };
    let mut last = Value::Null;
    wait_until("/ready to name the refused credentials", || {
        let (status, v) = get("/ready");
        let says = v["component_health"]["nats"]["message"]
            .as_str()
            .or_else(|| v["component_health"]["nats"]["details"].as_str())
            .map(str::to_owned)
            .unwrap_or_else(|| v["component_health"]["nats"].to_string());
        last = v;
        status == 503 && says.contains("refused to authorize the NKey seed in")
    });
    assert_eq!(last["component_health"]["nats"]["status"], "unhealthy", "{last}");
    let (health, _) = get("/health");
    assert_eq!(health, 200, "the runtime stays alive");
    assert!(up.child.try_wait().expect("poll").is_none(), "still running");
    assert!(up.terminate().success(), "{}", up.stderr());
}

// ------------------------------------------------ the bus over the same link

/// An agent definition the bus tests register (the bus needs only a name).
fn bus_agent(name: &str) -> String {
    format!(
        "name = \"{name}\"\npriority = \"normal\"\n[mode]\nkind = \"ephemeral\"\n[limits]\nmemory_mb = 32\ncpu_cores = 0.25\nexecution_timeout = \"10s\"\n[runs]\nkind = \"process\"\ntier = \"native\"\ncommand = \"/bin/true\"\n"
    )
}

/// The bus identity of the instance whose data directory is `data`
/// (`stele bus key`, made before the instance starts).
fn bus_key(data: &Path) -> String {
    let r = crate::run_bounded(&["--data", data.to_str().expect("utf-8"), "bus", "key"]);
    assert_eq!(r.code, Some(0), "bus key: {r:?}");
    r.stdout.trim().to_owned()
}

/// The config of bus instance `name` linked through `server` with the
/// `[nats]` settings `auth` and mutual TLS, pinning `peer`'s key.
fn bus_config(
    root: &Path,
    server: &SecureServer,
    name: &str,
    auth: &str,
    peer: &str,
    peer_key: &str,
) -> PathBuf {
    let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/policies");
    write_config(
        root,
        &format!("{name}.toml"),
        &format!(
            "[runtime]\nhttp_port = 0\nstop_grace = \"2s\"\n\n[security]\ndefault_sandbox_tier = \"native\"\n\n{}\n[bus]\nname = \"{name}\"\nnats = true\npolicies = \"{}\"\n\n[bus.peers]\n{peer} = \"{peer_key}\"\n",
            nats_section(server, "SECURE_UNUSED", auth, &server.pki.ca, true),
            policies.display()
        ),
    )
}

/// `stele up` with `config` and `env`, an agent `agent` registered.
fn bus_up(root: &Path, name: &str, config: &Path, env: &[(&str, &str)], agent: &str) -> Proc {
    let agents = root.join(format!("{name}-agents"));
    std::fs::create_dir_all(&agents).expect("mkdir");
    std::fs::write(agents.join(format!("{agent}.toml")), bus_agent(agent)).expect("agent");
    let mut cmd = stele();
    cmd.arg("--data")
        .arg(root.join(name))
        .arg("--config")
        .arg(config)
        .args(["up", "--port", "0", "--agents"])
        .arg(&agents)
        .env_remove(PASSWORD_VAR);
    for (k, v) in env {
        cmd.env(k, v);
    }
    spawn(&mut cmd, root, &format!("up-{name}"))
}

/// Waits for `up`'s bus (its socket); fails with its log if it exits.
fn wait_for_bus(up: &mut Proc, data: &Path) {
    wait_until("the bus of stele up", || {
        if let Some(s) = up.child.try_wait().expect("poll") {
            panic!("stele up exited ({s}): {}", up.stderr());
        }
        data.join("bus.sock").exists()
    });
}

/// `stele bus …` against the instance of `data` (through its socket).
fn bus_cli(data: &Path, config: &Path, args: &[&str]) -> Value {
    let mut all = vec![
        "--data",
        data.to_str().expect("utf-8"),
        "--config",
        config.to_str().expect("utf-8"),
        "bus",
    ];
    all.extend_from_slice(args);
    all.push("--json");
    let r = crate::run_bounded(&all);
    assert_eq!(r.code, Some(0), "bus {args:?}: {r:?}");
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("bus {args:?}: {e}: {r:?}"))
}

#[test]
fn the_bus_links_two_instances_over_mutual_tls_with_nkey_and_password() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let server = SecureServer::start(root);
    let (east, west) = ("east", "west");
    let (east_data, west_data) = (root.join(east), root.join(west));
    let (east_key, west_key) = (bus_key(&east_data), bus_key(&west_data));
    // east signs in with the NKey user, west as alice with the password
    // from the environment; both with the client certificate.
    let seed_file = root.join("user.nk");
    std::fs::write(&seed_file, &server.user_seed).expect("seed file");
    let east_cfg = bus_config(
        root,
        &server,
        east,
        &format!("nkey = \"{}\"", seed_file.display()),
        west,
        &west_key,
    );
    let west_cfg = bus_config(
        root,
        &server,
        west,
        &format!("user = \"alice\"\npassword_env = \"{PASSWORD_VAR}\""),
        east,
        &east_key,
    );
    let mut east_up = bus_up(root, east, &east_cfg, &[], "alice");
    let mut west_up = bus_up(root, west, &west_cfg, &[(PASSWORD_VAR, &server.password)], "bob");
    wait_for_bus(&mut east_up, &east_data);
    wait_for_bus(&mut west_up, &west_data);

    // A direct message east → west, durable through JetStream.
    let sent = bus_cli(
        &east_data,
        &east_cfg,
        &["send", "--from", "alice", "--to", "bob@west", "hello over tls"],
    );
    let got = bus_cli(
        &west_data,
        &west_cfg,
        &["recv", "--agent", "bob", "--wait", "15s", "--ack"],
    );
    assert_eq!(got[0]["text"], "hello over tls", "sent {sent}, got {got}");
    assert_eq!(got[0]["from"], "alice@east", "{got}");
    assert!(
        got[0]["remote_hash"].as_str().is_some_and(|h| h.len() == 64),
        "{got}"
    );

    // A request west → east over request/reply, answered on east.
    let asker = {
        let (data, cfg) = (west_data.clone(), west_cfg.clone());
        std::thread::spawn(move || {
            bus_cli(
                &data,
                &cfg,
                &[
                    "ask",
                    "--from",
                    "bob",
                    "--to",
                    "alice@east",
                    "--timeout",
                    "15s",
                    "who signs?",
                ],
            )
        })
    };
    let req = bus_cli(
        &east_data,
        &east_cfg,
        &["recv", "--agent", "alice", "--wait", "15s"],
    );
    assert_eq!(req[0]["pattern"], "request", "{req}");
    let request = req[0]["id"].as_str().expect("request id").to_owned();
    bus_cli(
        &east_data,
        &east_cfg,
        &["reply", "--agent", "alice", "--request", &request, "an nkey"],
    );
    let answer = asker.join().expect("asker");
    assert_eq!(answer["text"], "an nkey", "{answer}");

    // west's receipt of the direct message crosses back to east.
    wait_until("west's receipt in east's journal", || {
        journal_events(&east_data).iter().any(|(_, _, line)| {
            let v: Value = serde_json::from_str(line).expect("json");
            v["body"]["kind"] == "message_delivered"
                && v["body"]["remote"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("west:"))
        })
    });
    for (up, data) in [(&mut east_up, &east_data), (&mut west_up, &west_data)] {
        assert!(up.terminate().success(), "{}", up.stderr());
        let r = crate::run_bounded(&["--data", data.to_str().expect("utf-8"), "journal", "verify"]);
        assert_eq!(r.code, Some(0), "verify {}: {r:?}", data.display());
    }
}

/// A `[nats]` sign-in the server refuses, and what `stele up` must say.
struct Refused {
    name: &'static str,
    auth: String,
    env: &'static [(&'static str, &'static str)],
    want: String,
}

#[test]
fn the_bus_link_with_refused_credentials_stops_stele_up_and_says_why() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let server = SecureServer::start(root);
    let stranger = root.join("stranger.nk");
    std::fs::write(&stranger, nkeys::KeyPair::new_user().seed().expect("seed")).expect("seed file");
    let peer_key = bus_key(&root.join("peer"));
    let url = server.url();
    let alice = format!("user = \"alice\"\npassword_env = \"{PASSWORD_VAR}\"");
    let cases = [
        Refused {
            name: "stranger",
            auth: format!("nkey = \"{}\"", stranger.display()),
            env: &[],
            want: format!(
                "NATS at {url} refused to authorize the NKey seed in {}",
                stranger.display()
            ),
        },
        Refused {
            name: "wrongpw",
            auth: alice.clone(),
            env: &[(PASSWORD_VAR, "not-the-password")],
            want: format!(
                "NATS at {url} refused to authorize user \"alice\" (password from ${PASSWORD_VAR})"
            ),
        },
        Refused {
            name: "nopw",
            auth: alice,
            env: &[],
            want: format!("[nats] password_env: the environment variable {PASSWORD_VAR} is not set"),
        },
    ];
    for Refused {
        name,
        auth,
        env,
        want,
    } in cases
    {
        let config = bus_config(root, &server, name, &auth, "peer", &peer_key);
        let mut up = bus_up(root, name, &config, env, "alice");
        let t = Instant::now();
        let status = loop {
            if let Some(s) = up.child.try_wait().expect("poll") {
                break s;
            }
            assert!(
                t.elapsed() < PATIENCE,
                "stele up {name} kept running: {}",
                up.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let err = up.stderr();
        assert_eq!(status.code(), Some(2), "{name}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(
            err.contains(&format!("[bus] nats = true: linking the bus to NATS at {url}")),
            "{name}: {err}"
        );
        assert!(err.contains(&want), "{name}: want {want:?} in: {err}");
        assert!(!err.contains(&server.password), "no secret in the error");
        assert!(
            !root.join(name).join("bus.sock").exists(),
            "{name}: no bus without its link"
        );
    }
}
