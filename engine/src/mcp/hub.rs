//! [`McpHub`]: the MCP effect runner. It owns the connections to the
//! configured servers, lists and verifies their tools, calls them through
//! the Cedar gate, reads their resources, and journals each of these
//! facts before it answers.
//!
//! Not here: the SchemaPin rules themselves (`schemapin`, pure) and the
//! reasoning loop's view of MCP tools (`runner`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rmcp::model::{CallToolRequestParams, ReadResourceRequestParams};
use rmcp::service::RunningService;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{RoleClient, ServiceExt as _};
use serde_json::{Map, Value};
use stele_journal::{Append, EventBody, Journal, Reader, StreamId};
use tokio::io::AsyncReadExt as _;
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};

use super::schemapin::{self, Discovered, Pins, Status};
use super::{MAX_OUTPUT_BYTES, MAX_TOOLS, MAX_TOOLS_JSON_BYTES, McpError, PIN_STREAM, bounded, tool_name};
use crate::config::{McpConfig, McpServerConfig, ToolVerification};
use crate::llm::{ToolCall, ToolSpec};
use crate::policy::{PolicyGate, Verdict};

/// How much of a server program's stderr is kept for error messages.
const STDERR_TAIL_BYTES: usize = 4096;

/// One tool of a server and what SchemaPin said of it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct OfferedTool {
    /// Its MCP name.
    pub name: String,
    /// Its name as the model sees it (`mcp__<server>__<tool>`).
    pub qualified: String,
    /// Its description.
    pub description: String,
    /// Its input schema (JSON).
    pub input_schema: Value,
    /// The SchemaPin status.
    #[serde(serialize_with = "ser_status")]
    pub status: Status,
    /// The signing key's fingerprint (empty: none).
    pub key: String,
    /// Whether it is offered (strict: verified or pinned now; warn: all).
    pub accepted: bool,
    /// Why, in words.
    pub detail: String,
}

fn ser_status<S: serde::Serializer>(s: &Status, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(s.name())
}

/// A connected server's tools.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ServerTools {
    /// The server.
    pub server: String,
    /// Its tool domain (pins are per domain).
    pub domain: String,
    /// `name version` of the server.
    pub server_info: String,
    /// Its tools, in the order served.
    pub tools: Vec<OfferedTool>,
}

/// Who calls a tool: the policy principal and the correlation journaled.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The agent (principal `Agent::"<agent>"`).
    pub agent: String,
    /// Its priority (a policy attribute).
    pub priority: String,
    /// `run-3/call_1` from a run, `cli` from the command line.
    pub correlation: String,
}

/// What a `require_approval` verdict of the MCP check means for a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Approval {
    /// The caller already obtained the approval (a reasoning run: the
    /// driver's own gate parked the call until a human decided).
    Obtained,
    /// Nobody can approve here (the command line): the call is refused.
    Unavailable,
}

struct Connection {
    service: RunningService<RoleClient, ()>,
    tools: ServerTools,
    _slot: OwnedSemaphorePermit,
}

/// The MCP effect runner (cheap to share behind an `Arc`).
pub struct McpHub {
    config: McpConfig,
    journal: Journal,
    gate: Arc<PolicyGate>,
    slots: Arc<Semaphore>,
    connections: Mutex<BTreeMap<String, Arc<Connection>>>,
    pins: Mutex<Pins>,
}

impl std::fmt::Debug for McpHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpHub")
            .field(
                "servers",
                &self.config.servers.iter().map(|s| &s.name).collect::<Vec<_>>(),
            )
            .field("tool_verification", &self.config.tool_verification)
            .finish_non_exhaustive()
    }
}

fn stream(name: &str) -> Result<StreamId, McpError> {
    Ok(StreamId::new(name.to_owned())?)
}

impl McpHub {
    /// A hub over `config`'s servers, journaling to `journal`, deciding
    /// calls with `gate`. The pins are folded from the journal's `mcp`
    /// stream now.
    ///
    /// # Errors
    /// Two servers share a name, or the journal cannot be read.
    pub fn new(config: &McpConfig, journal: Journal, gate: Arc<PolicyGate>) -> Result<McpHub, McpError> {
        let mut seen = std::collections::BTreeSet::new();
        for s in &config.servers {
            if !seen.insert(&s.name) {
                return Err(McpError::Config(format!("two servers are named {:?}", s.name)));
            }
        }
        if config.max_concurrent_connections == 0 {
            return Err(McpError::Config(
                "max_concurrent_connections must be at least 1".into(),
            ));
        }
        let pins = Self::read_pins(&journal.reader())?;
        Ok(McpHub {
            config: config.clone(),
            journal,
            gate,
            slots: Arc::new(Semaphore::new(
                usize::try_from(config.max_concurrent_connections).unwrap_or(usize::MAX),
            )),
            connections: Mutex::new(BTreeMap::new()),
            pins: Mutex::new(pins),
        })
    }

    /// The pins as the journal has them.
    ///
    /// # Errors
    /// The journal cannot be read.
    pub fn read_pins(reader: &Reader) -> Result<Pins, McpError> {
        let mut pins = Pins::default();
        for e in reader.stream(&stream(PIN_STREAM)?, stele_journal::Seq(1)) {
            pins.apply(&e?);
        }
        Ok(pins)
    }

    /// The configured servers.
    #[must_use]
    pub fn servers(&self) -> &[McpServerConfig] {
        &self.config.servers
    }

    /// The pins now.
    pub async fn pins(&self) -> Pins {
        self.pins.lock().await.clone()
    }

    /// Removes the pin of `domain` (an `McpKeyUnpinned`); the next key seen
    /// for it is pinned anew.
    ///
    /// # Errors
    /// `domain` has no pin, or the journal refused the fact.
    pub async fn unpin(&self, domain: &str, reason: &str) -> Result<String, McpError> {
        let mut pins = self.pins.lock().await;
        let fingerprint = Self::unpin_from(&self.journal, &pins, domain, reason).await?;
        pins.domains.remove(domain);
        Ok(fingerprint)
    }

    /// [`unpin`](Self::unpin) without a hub: the pins are read from
    /// `journal` (for `stele mcp unpin`, which starts no server).
    ///
    /// # Errors
    /// As [`unpin`](Self::unpin).
    pub async fn unpin_in(journal: &Journal, domain: &str, reason: &str) -> Result<String, McpError> {
        let pins = Self::read_pins(&journal.reader())?;
        Self::unpin_from(journal, &pins, domain, reason).await
    }

    async fn unpin_from(
        journal: &Journal,
        pins: &Pins,
        domain: &str,
        reason: &str,
    ) -> Result<String, McpError> {
        let Some(pin) = pins.domains.get(domain).cloned() else {
            let known: Vec<&str> = pins.domains.keys().map(String::as_str).collect();
            return Err(McpError::Config(format!(
                "no key is pinned for domain {domain:?} (pinned: {})",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            )));
        };
        journal
            .append(Append {
                stream: stream(PIN_STREAM)?,
                cause: None,
                body: EventBody::McpKeyUnpinned {
                    domain: domain.to_owned(),
                    fingerprint: pin.fingerprint.clone(),
                    reason: reason.to_owned(),
                },
            })
            .await?;
        Ok(pin.fingerprint)
    }

    fn server(&self, name: &str) -> Result<&McpServerConfig, McpError> {
        self.config
            .servers
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| McpError::UnknownServer {
                name: name.to_owned(),
                known: if self.config.servers.is_empty() {
                    "none".to_owned()
                } else {
                    self.config
                        .servers
                        .iter()
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            })
    }

    fn call_timeout(&self) -> Duration {
        Duration::from_secs(self.config.call_timeout_s.max(1))
    }

    /// The tools of `server`, connecting (and listing and verifying) on
    /// first use.
    ///
    /// # Errors
    /// Unknown server, connection, listing or journal failure.
    pub async fn discover(&self, server: &str) -> Result<ServerTools, McpError> {
        Ok(self.connection(server).await?.tools.clone())
    }

    /// Every configured server's tools (each server's own failure beside it).
    pub async fn discover_all(&self) -> Vec<(String, Result<ServerTools, McpError>)> {
        let names: Vec<String> = self.config.servers.iter().map(|s| s.name.clone()).collect();
        let found = futures::future::join_all(names.iter().map(|n| self.discover(n))).await;
        names.into_iter().zip(found).collect()
    }

    /// The accepted tools of every server whose name matches one of the
    /// glob `patterns` (the agent's tool profile), as the model sees them.
    /// Servers that fail to connect are left out (their failure is
    /// returned beside).
    pub async fn specs(&self, patterns: &[String]) -> (Vec<ToolSpec>, Vec<McpError>) {
        let mut specs = Vec::new();
        let mut failed = Vec::new();
        let wanted: Vec<String> = self
            .config
            .servers
            .iter()
            .filter(|s| {
                let prefix = tool_name(&s.name, "");
                patterns.iter().any(|p| could_match(p, &prefix))
            })
            .map(|s| s.name.clone())
            .collect();
        for name in wanted {
            match self.discover(&name).await {
                Ok(t) => specs.extend(
                    t.tools
                        .iter()
                        .filter(|o| {
                            o.accepted && patterns.iter().any(|p| crate::tools::glob_match(p, &o.qualified))
                        })
                        .map(|o| ToolSpec {
                            name: o.qualified.clone(),
                            description: o.description.clone(),
                            parameters: o.input_schema.to_string(),
                        }),
                ),
                Err(e) => failed.push(e),
            }
        }
        (specs, failed)
    }

    async fn connection(&self, name: &str) -> Result<Arc<Connection>, McpError> {
        let config = self.server(name)?.clone();
        // One connect per server at a time: the map's lock is held across it.
        let mut conns = self.connections.lock().await;
        if let Some(c) = conns.get(name) {
            return Ok(c.clone());
        }
        let conn = Arc::new(self.connect(&config).await?);
        conns.insert(name.to_owned(), conn.clone());
        Ok(conn)
    }

    #[allow(clippy::too_many_lines)] // connect, list, verify, journal: one pass
    async fn connect(&self, config: &McpServerConfig) -> Result<Connection, McpError> {
        let server = config.name.clone();
        let connect_timeout = Duration::from_secs(self.config.connection_timeout_s.max(1));
        let slot = tokio::time::timeout(connect_timeout, self.slots.clone().acquire_owned())
            .await
            .map_err(|_| McpError::Busy {
                server: server.clone(),
                slots: self.config.max_concurrent_connections,
                waited_s: connect_timeout.as_secs(),
            })?
            .map_err(|_| McpError::Config("the connection slots were closed".into()))?;
        let (endpoint, stderr_tail) = match (&config.command, &config.url) {
            (Some(cmd), _) => (
                std::iter::once(cmd.as_str())
                    .chain(config.args.iter().map(String::as_str))
                    .collect::<Vec<_>>()
                    .join(" "),
                Some(Arc::new(std::sync::Mutex::new(Vec::new()))),
            ),
            (None, Some(url)) => (url.clone(), None),
            (None, None) => {
                return Err(McpError::Config(format!(
                    "server {server} has neither command nor url"
                )));
            }
        };
        let fail = |reason: String, tail: Option<&Arc<std::sync::Mutex<Vec<u8>>>>| {
            let mut reason = reason;
            if let Some(t) = tail.and_then(|t| {
                t.lock()
                    .ok()
                    .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
            }) && !t.is_empty()
            {
                reason = format!("{reason}; its stderr ends: {t}");
            }
            McpError::Connect {
                server: server.clone(),
                endpoint: endpoint.clone(),
                reason,
            }
        };
        let stderr_reader: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>> =
            std::sync::Mutex::new(None);
        let started = async {
            match (&config.command, &config.url) {
                (Some(cmd), _) => {
                    let mut command = tokio::process::Command::new(cmd);
                    command.args(&config.args).envs(&config.env).kill_on_drop(true);
                    let (transport, stderr) = TokioChildProcess::builder(command)
                        .stderr(std::process::Stdio::piped())
                        .spawn()
                        .map_err(|e| format!("starting {cmd}: {e}"))?;
                    if let (Some(mut err), Some(tail)) = (stderr, stderr_tail.clone()) {
                        let reader = tokio::spawn(async move {
                            let mut buf = [0u8; 1024];
                            while let Ok(n) = err.read(&mut buf).await {
                                if n == 0 {
                                    break;
                                }
                                if let Ok(mut t) = tail.lock() {
                                    t.extend_from_slice(&buf[..n]);
                                    let over = t.len().saturating_sub(STDERR_TAIL_BYTES);
                                    t.drain(..over);
                                }
                            }
                        });
                        if let Ok(mut r) = stderr_reader.lock() {
                            *r = Some(reader);
                        }
                    }
                    ().serve(transport).await.map_err(|e| format!("initialize: {e}"))
                }
                (None, Some(url)) => {
                    let client = http_client(url, connect_timeout)?;
                    let transport = StreamableHttpClientTransport::with_client(
                        client.clone(),
                        StreamableHttpClientTransportConfig::with_uri(url.as_str()),
                    );
                    match ().serve(transport).await {
                        Ok(service) => Ok(service),
                        Err(e) => {
                            let mut reason = tidy(&error_chain(&e));
                            // rmcp keeps only the transport error's text, not
                            // its cause: ask once more to name it (refused,
                            // no route, TLS, …).
                            if let Err(cause) = client.get(url.as_str()).send().await {
                                reason = format!("{reason} ({})", error_chain(&cause));
                            }
                            Err(format!(
                                "initialize: {reason}; is it a streamable-HTTP MCP endpoint (POST of JSON-RPC, answered with JSON or an event stream)?"
                            ))
                        }
                    }
                }
                (None, None) => Err("neither command nor url".to_owned()),
            }
        };
        let connected = match tokio::time::timeout(connect_timeout, started).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "no answer to initialize within {} s",
                connect_timeout.as_secs()
            )),
        };
        let service = match connected {
            Ok(service) => service,
            Err(reason) => {
                // What the program said before it failed: its stderr, read to
                // its end (bounded wait).
                let reader = stderr_reader.lock().ok().and_then(|mut r| r.take());
                if let Some(reader) = reader {
                    let _ = tokio::time::timeout(Duration::from_millis(500), reader).await;
                }
                return Err(fail(reason, stderr_tail.as_ref()));
            }
        };
        let info = service
            .peer_info()
            .and_then(|i| serde_json::to_value(&*i).ok())
            .unwrap_or(Value::Null);
        let text = |v: &Value| v.as_str().unwrap_or("").to_owned();
        let server_info = format!(
            "{} {}",
            text(&info["serverInfo"]["name"]),
            text(&info["serverInfo"]["version"])
        )
        .trim()
        .to_owned();
        let protocol = text(&info["protocolVersion"]);

        let listed = tokio::time::timeout(self.call_timeout(), service.list_all_tools())
            .await
            .map_err(|_| self.timed_out(&server, "tools/list"))?
            .map_err(|e| McpError::Request {
                server: server.clone(),
                request: "tools/list".into(),
                reason: e.to_string(),
            })?;
        if listed.len() > MAX_TOOLS {
            return Err(McpError::Limit {
                server,
                what: format!("it lists {} tools, over the limit of {MAX_TOOLS}", listed.len()),
            });
        }
        let tools_json: Vec<Value> = listed
            .iter()
            .map(|t| serde_json::to_value(t).unwrap_or(Value::Null))
            .collect();
        let listing = Value::Array(tools_json.clone()).to_string();
        if listing.len() > MAX_TOOLS_JSON_BYTES {
            return Err(McpError::Limit {
                server,
                what: format!(
                    "its tool listing is {} bytes, over the limit of {MAX_TOOLS_JSON_BYTES}",
                    listing.len()
                ),
            });
        }

        let domain = config.domain.clone().unwrap_or_else(|| server.clone());
        // The provider's published key, when the server names where.
        let discovered =
            match &config.well_known {
                Some(url) => Some(fetch_well_known(url, connect_timeout).await.map_err(|reason| {
                    McpError::Connect {
                        server: server.clone(),
                        endpoint: endpoint.clone(),
                        reason: format!("SchemaPin key discovery at {url}: {reason}"),
                    }
                })?),
                None => None,
            };
        let server_stream = stream(&format!("mcp:{server}"))?;
        let pin_stream = stream(PIN_STREAM)?;
        let mut facts = vec![
            Append {
                stream: server_stream.clone(),
                cause: None,
                body: EventBody::McpServerConnected {
                    server: server.clone(),
                    endpoint: endpoint.clone(),
                    server_info: server_info.clone(),
                    protocol,
                },
            },
            Append {
                stream: server_stream.clone(),
                cause: None,
                body: EventBody::McpToolsListed {
                    server: server.clone(),
                    tools: listing,
                    count: u32::try_from(tools_json.len()).unwrap_or(u32::MAX),
                },
            },
        ];
        if let Some(d) = &discovered {
            facts.push(Append {
                stream: server_stream.clone(),
                cause: None,
                body: EventBody::McpKeyDiscovered {
                    server: server.clone(),
                    domain: domain.clone(),
                    url: d.url.clone(),
                    fingerprint: d.key.fingerprint.clone(),
                    public_key_pem: d.key.pem.clone(),
                    revoked_keys: d.revoked.join(","),
                },
            });
        }
        let mut offered = Vec::with_capacity(tools_json.len());
        // The pins are held from assessment to the append, so two servers
        // of one domain cannot both pin a first key.
        let mut pins = self.pins.lock().await;
        let mut pinned_now = Pins::default();
        for tool in &tools_json {
            let name = text(&tool["name"]);
            let mut a = schemapin::assess(
                &pins,
                &domain,
                tool,
                self.config.tool_verification,
                discovered.as_ref(),
            );
            if !super::offerable_name(&server, &name) && a.accepted {
                a.accepted = false;
                a.detail = format!(
                    "{}; not offered: {name:?} is not a valid function name (ASCII letters, digits, _ and -, at most 64 with the mcp__{server}__ prefix)",
                    a.detail
                );
            }
            if a.status == Status::FirstUse
                && let Some(key) = &a.key
            {
                facts.push(Append {
                    stream: pin_stream.clone(),
                    cause: None,
                    body: EventBody::McpKeyPinned {
                        domain: domain.clone(),
                        fingerprint: key.fingerprint.clone(),
                        public_key_pem: key.pem.clone(),
                        server: server.clone(),
                    },
                });
                let pin = schemapin::Pin {
                    fingerprint: key.fingerprint.clone(),
                    public_key_pem: key.pem.clone(),
                    server: server.clone(),
                    seq: 0,
                };
                pins.domains.insert(domain.clone(), pin.clone());
                pinned_now.domains.insert(domain.clone(), pin);
            }
            let key = a.key.as_ref().map(|k| k.fingerprint.clone()).unwrap_or_default();
            facts.push(Append {
                stream: server_stream.clone(),
                cause: None,
                body: EventBody::McpToolVerified {
                    server: server.clone(),
                    tool: name.clone(),
                    domain: domain.clone(),
                    status: a.status.name().to_owned(),
                    key: key.clone(),
                    schema_hash: a.schema_hash.clone(),
                    accepted: a.accepted,
                },
            });
            offered.push(OfferedTool {
                qualified: tool_name(&server, &name),
                name,
                description: text(&tool["description"]),
                input_schema: tool.get("inputSchema").cloned().unwrap_or(Value::Null),
                status: a.status,
                key,
                accepted: a.accepted,
                detail: a.detail,
            });
        }
        match self.journal.append_many(facts).await {
            Ok(receipts) => {
                // The pins made now get their seqs.
                for (domain, pin) in &mut pins.domains {
                    if pinned_now.domains.contains_key(domain) && pin.seq == 0 {
                        pin.seq = receipts.first().map_or(0, |r| r.seq.0);
                    }
                }
            }
            Err(e) => {
                for domain in pinned_now.domains.keys() {
                    pins.domains.remove(domain);
                }
                return Err(e.into());
            }
        }
        drop(pins);
        Ok(Connection {
            service,
            tools: ServerTools {
                server,
                domain,
                server_info,
                tools: offered,
            },
            _slot: slot,
        })
    }

    fn timed_out(&self, server: &str, request: &str) -> McpError {
        McpError::Request {
            server: server.to_owned(),
            request: request.to_owned(),
            reason: format!(
                "no answer within {} s ([mcp] call_timeout_s)",
                self.call_timeout().as_secs()
            ),
        }
    }

    async fn append(&self, server: &str, body: EventBody) -> Result<(), McpError> {
        self.journal
            .append(Append {
                stream: stream(&format!("mcp:{server}"))?,
                cause: None,
                body,
            })
            .await?;
        Ok(())
    }

    /// Calls `tool` of `server` with JSON `arguments`: the tool must have
    /// been offered (verified under `strict`); the Cedar gate decides
    /// (`invoke_tool` on `Tool::"mcp__<server>__<tool>"` with
    /// `context.mcp_server` and `context.mcp_verification`), its decision
    /// is journaled, then `McpToolCalled`, the call, `McpToolReturned`.
    ///
    /// Returns the tool's result: `Ok(text)`, or `Err(text)` when it failed
    /// (refused, transport error, `isError`).
    ///
    /// # Errors
    /// The outer error is for what is not the tool's answer: unknown
    /// server, connection failure, or the journal refusing a fact.
    #[allow(clippy::disallowed_methods)] // an effect runner measures how long the effect took
    pub async fn call(
        &self,
        caller: &Caller,
        approval: Approval,
        server: &str,
        tool: &str,
        arguments: &str,
    ) -> Result<Result<String, String>, McpError> {
        let conn = self.connection(server).await?;
        let Some(offered) = conn.tools.tools.iter().find(|t| t.name == tool) else {
            let names: Vec<&str> = conn.tools.tools.iter().map(|t| t.name.as_str()).collect();
            return Ok(Err(format!(
                "MCP server {server} has no tool {tool:?} (it lists: {})",
                names.join(", ")
            )));
        };
        if !offered.accepted {
            return Ok(Err(format!(
                "MCP tool {tool} of {server} is refused: its schema is {} ({}) and [mcp] tool_verification is {}",
                offered.status,
                offered.detail,
                match self.config.tool_verification {
                    ToolVerification::Strict => "strict",
                    ToolVerification::Warn => "warn",
                }
            )));
        }
        // The gate.
        let qualified = tool_name(server, tool);
        let mut request = crate::reasoning::tool_request(
            &caller.agent,
            &caller.priority,
            &ToolCall {
                id: caller.correlation.clone(),
                name: qualified.clone(),
                arguments: arguments.to_owned(),
            },
        );
        if let Some(ctx) = request.context.as_object_mut() {
            ctx.insert("mcp_server".into(), Value::String(server.to_owned()));
            ctx.insert(
                "mcp_verification".into(),
                Value::String(offered.status.name().to_owned()),
            );
        }
        let decision = self.gate.decide(&request);
        let mut detail = decision.verdict.detail();
        if !decision.errors.is_empty() {
            detail = format!("{detail} (errors: {})", decision.errors.join("; "));
        }
        self.append(
            server,
            EventBody::PolicyDecided {
                run: None,
                point: request.point.name().to_owned(),
                request: request.canonical_json(),
                verdict: decision.verdict.name().to_owned(),
                detail: detail.clone(),
                policies: decision.policies.clone(),
                policy_set: self.gate.hash(),
            },
        )
        .await?;
        let arguments = match (&decision.verdict, approval) {
            (Verdict::Allow, _) | (Verdict::RequireApproval { .. }, Approval::Obtained) => {
                arguments.to_owned()
            }
            (Verdict::AllowWithConditions { conditions }, _) => {
                crate::reasoning::apply_conditions(arguments, conditions)
            }
            (Verdict::Deny { reason }, _) => {
                return Ok(Err(format!("denied by policy: {reason}")));
            }
            (Verdict::RequireApproval { reason, .. }, Approval::Unavailable) => {
                return Ok(Err(format!(
                    "policy requires an operator's approval ({reason}); call it from an agent's run, where a human can approve it"
                )));
            }
        };
        let args: Map<String, Value> = match serde_json::from_str::<Value>(&arguments) {
            Ok(Value::Object(m)) => m,
            Ok(other) => return Ok(Err(format!("arguments must be a JSON object, found {other}"))),
            Err(e) => return Ok(Err(format!("arguments are not JSON: {e}"))),
        };
        self.append(
            server,
            EventBody::McpToolCalled {
                server: server.to_owned(),
                tool: tool.to_owned(),
                arguments: arguments.clone(),
                correlation: caller.correlation.clone(),
            },
        )
        .await?;
        let started = std::time::Instant::now();
        let mut params = CallToolRequestParams::new(tool.to_owned());
        params.arguments = Some(args);
        let result = match tokio::time::timeout(self.call_timeout(), conn.service.call_tool(params)).await {
            Err(_) => Err(self.timed_out(server, &format!("tools/call {tool}")).to_string()),
            Ok(Err(e)) => Err(format!("tools/call {tool}: {e}")),
            Ok(Ok(r)) => {
                let value = serde_json::to_value(&r).unwrap_or(Value::Null);
                let text = result_text(&value);
                if value["isError"].as_bool() == Some(true) {
                    Err(text)
                } else {
                    Ok(text)
                }
            }
        };
        let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let result = result
            .map(|t| bounded(&t, MAX_OUTPUT_BYTES))
            .map_err(|t| bounded(&t, MAX_OUTPUT_BYTES));
        let (ok, output) = match &result {
            Ok(t) => (true, t.clone()),
            Err(t) => (false, t.clone()),
        };
        self.append(
            server,
            EventBody::McpToolReturned {
                server: server.to_owned(),
                tool: tool.to_owned(),
                correlation: caller.correlation.clone(),
                ok,
                output,
                duration_ms,
            },
        )
        .await?;
        Ok(result)
    }

    /// `resources/list` (`uri` `None`) or `resources/read` of one URI,
    /// journaled as `McpResourceRead`; returns the JSON answer.
    ///
    /// # Errors
    /// Unknown server, connection, request or journal failure.
    pub async fn resources(&self, server: &str, uri: Option<&str>) -> Result<Value, McpError> {
        let conn = self.connection(server).await?;
        let (request, answer) = match uri {
            None => (
                "resources/list".to_owned(),
                tokio::time::timeout(self.call_timeout(), conn.service.list_all_resources())
                    .await
                    .map(|r| r.map(|list| serde_json::to_value(list).unwrap_or(Value::Null))),
            ),
            Some(u) => (
                format!("resources/read {u}"),
                tokio::time::timeout(
                    self.call_timeout(),
                    conn.service.read_resource(ReadResourceRequestParams::new(u)),
                )
                .await
                .map(|r| r.map(|res| serde_json::to_value(res).unwrap_or(Value::Null))),
            ),
        };
        let result = match answer {
            Err(_) => Err(self.timed_out(server, &request)),
            Ok(Err(e)) => Err(McpError::Request {
                server: server.to_owned(),
                request,
                reason: e.to_string(),
            }),
            Ok(Ok(v)) => Ok(v),
        };
        let (ok, content) = match &result {
            Ok(v) => (true, bounded(&v.to_string(), MAX_OUTPUT_BYTES)),
            Err(e) => (false, e.to_string()),
        };
        self.append(
            server,
            EventBody::McpResourceRead {
                server: server.to_owned(),
                uri: uri.unwrap_or("").to_owned(),
                ok,
                content,
            },
        )
        .await?;
        result
    }

    /// One `tools/call` straight to the server — no gate, no journal —
    /// for benches: the round trip as the client sees it, and the
    /// server's own time when its answer's `_meta.server_ns` reports one.
    ///
    /// # Errors
    /// Unknown server, connection or request failure.
    #[allow(clippy::disallowed_methods)] // a bench probe measures the round trip
    pub async fn probe(
        &self,
        server: &str,
        tool: &str,
        arguments: Map<String, Value>,
    ) -> Result<(Duration, Option<u64>), McpError> {
        let conn = self.connection(server).await?;
        let mut params = CallToolRequestParams::new(tool.to_owned());
        params.arguments = Some(arguments);
        let started = std::time::Instant::now();
        let r = tokio::time::timeout(self.call_timeout(), conn.service.call_tool(params))
            .await
            .map_err(|_| self.timed_out(server, &format!("tools/call {tool}")))?
            .map_err(|e| McpError::Request {
                server: server.to_owned(),
                request: format!("tools/call {tool}"),
                reason: e.to_string(),
            })?;
        let rtt = started.elapsed();
        let value = serde_json::to_value(&r).unwrap_or(Value::Null);
        Ok((rtt, value["_meta"]["server_ns"].as_u64()))
    }

    /// Closes every connection (stops the server programs).
    pub async fn close(&self) {
        let conns = std::mem::take(&mut *self.connections.lock().await);
        for (_, c) in conns {
            if let Ok(c) = Arc::try_unwrap(c) {
                let _ = c.service.cancel().await;
            }
        }
    }
}

/// An HTTP client for one server's endpoint or discovery document: no
/// redirects (a POST redirected elsewhere would lose its body; a key must
/// come from where it was configured), no connection pool, no proxy for a
/// loopback address, connecting within `timeout`.
fn http_client(url: &str, timeout: Duration) -> Result<reqwest::Client, String> {
    // reqwest builds its TLS configuration with the process's default
    // rustls provider; install ring's unless one is installed (an error
    // here only means another thread won the race).
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    let host = parsed.host_str().unwrap_or("");
    let loopback = host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("stele/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(0)
        .connect_timeout(timeout);
    if loopback {
        builder = builder.no_proxy();
    }
    builder
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

/// Fetches and parses a provider's `.well-known/schemapin.json`, within
/// `timeout` and [`schemapin::MAX_WELL_KNOWN_BYTES`].
async fn fetch_well_known(url: &str, timeout: Duration) -> Result<Discovered, String> {
    let client = http_client(url, timeout)?;
    let fetch = async {
        let mut response = client
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| format!("cannot fetch it: {}", error_chain(&e)))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("it answered HTTP {status}, not the discovery document"));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("reading it: {}", error_chain(&e)))?
        {
            body.extend_from_slice(&chunk);
            if body.len() > schemapin::MAX_WELL_KNOWN_BYTES {
                return Err(format!(
                    "it is over the limit of {} bytes",
                    schemapin::MAX_WELL_KNOWN_BYTES
                ));
            }
        }
        Discovered::parse(url, &body)
    };
    tokio::time::timeout(timeout, fetch).await.unwrap_or_else(|_| {
        Err(format!(
            "no answer within {} s ([mcp] connection_timeout_s)",
            timeout.as_secs()
        ))
    })
}

/// An rmcp error message without the transport's Rust type name
/// (`Transport [rmcp::transport::worker::WorkerTransport<…>] error`), which
/// says nothing to a user.
fn tidy(message: &str) -> String {
    let Some(start) = message.find(" [rmcp::") else {
        return message.to_owned();
    };
    let mut depth = 0usize;
    for (i, c) in message[start + 1..].char_indices() {
        match c {
            '[' => depth += 1,
            ']' => {
                depth -= 1;
                if depth == 0 {
                    let end = start + 1 + i + 1;
                    return format!("{}{}", &message[..start], &message[end..]);
                }
            }
            _ => {}
        }
    }
    message.to_owned()
}

/// An error with its sources, `: `-separated (reqwest's own message hides
/// the cause: "error sending request" without "connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out = format!("{out}: {text}");
        }
        source = s.source();
    }
    out
}

/// The tools a run with the tool profile `patterns` was offered from
/// `server`, rebuilt from the server's journaled discovery before seq
/// `before` — its last `McpToolsListed` and the `McpToolVerified` facts that
/// assessed that listing — as [`McpHub::specs`] offered them: accepted,
/// matching the profile, in the listing's order. No server is contacted
/// (a replay's view of what discovery answered). Empty when the profile
/// cannot reach the server or it was not discovered before `before`.
///
/// # Errors
/// The journal cannot be read, or a listing is not the JSON array the hub
/// writes (names the seq).
pub fn journaled_specs(
    reader: &Reader,
    server: &str,
    patterns: &[String],
    before: stele_journal::Seq,
) -> Result<Vec<ToolSpec>, McpError> {
    let prefix = tool_name(server, "");
    if !patterns.iter().any(|p| could_match(p, &prefix)) {
        return Ok(Vec::new());
    }
    let mut listing: Vec<Value> = Vec::new();
    let mut accepted = std::collections::BTreeSet::new();
    for e in reader.stream(&stream(&format!("mcp:{server}"))?, stele_journal::Seq(1)) {
        let e = e?;
        if e.seq() >= before {
            break;
        }
        match e.body() {
            stele_journal::ArchivedEventBody::McpToolsListed { tools, .. } => {
                listing = serde_json::from_str(tools.as_str()).map_err(|err| {
                    McpError::Config(format!(
                        "seq {}: the tool listing of {server} is not a JSON array of tools: {err}",
                        e.seq()
                    ))
                })?;
                accepted.clear();
            }
            stele_journal::ArchivedEventBody::McpToolVerified {
                tool, accepted: true, ..
            } => {
                accepted.insert(tool.to_string());
            }
            _ => {}
        }
    }
    let text = |v: &Value| v.as_str().unwrap_or("").to_owned();
    Ok(listing
        .iter()
        .filter(|t| accepted.contains(t["name"].as_str().unwrap_or("")))
        .map(|t| ToolSpec {
            name: tool_name(server, &text(&t["name"])),
            description: text(&t["description"]),
            parameters: t.get("inputSchema").cloned().unwrap_or(Value::Null).to_string(),
        })
        .filter(|s| patterns.iter().any(|p| crate::tools::glob_match(p, &s.name)))
        .collect())
}

/// Whether a glob pattern could match some name starting with `prefix`
/// (so the server behind `prefix` is worth connecting to).
fn could_match(pattern: &str, prefix: &str) -> bool {
    // A pattern matches a name with this prefix iff, cut at its first `*`,
    // it agrees with the prefix as far as both go (`?` matches anything).
    let literal: String = pattern.chars().take_while(|c| *c != '*').collect();
    let agree = literal
        .chars()
        .zip(prefix.chars())
        .all(|(p, n)| p == '?' || p == n);
    agree && (literal.chars().count() >= prefix.chars().count() || pattern.contains('*'))
}

/// The text of a `tools/call` result: its text blocks, other blocks as
/// JSON, or the structured content when there is nothing else.
fn result_text(result: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(blocks) = result["content"].as_array() {
        for b in blocks {
            match (b["type"].as_str(), b["text"].as_str()) {
                (Some("text"), Some(t)) => parts.push(t.to_owned()),
                _ => parts.push(b.to_string()),
            }
        }
    }
    if parts.is_empty()
        && let Some(s) = result.get("structuredContent")
    {
        parts.push(s.to_string());
    }
    parts.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn could_match_selects_servers_by_profile() {
        assert!(could_match("*", "mcp__files__"));
        assert!(could_match("mcp__*", "mcp__files__"));
        assert!(could_match("mcp__files__*", "mcp__files__"));
        assert!(could_match("mcp__files__read_text_file", "mcp__files__"));
        assert!(!could_match("mcp__other__*", "mcp__files__"));
        assert!(!could_match("read_file", "mcp__files__"));
    }

    #[test]
    fn tidy_drops_the_transport_type_name() {
        assert_eq!(
            tidy(
                "Send message error Transport [rmcp::transport::worker::WorkerTransport<a::B<c::D>>] error: Client error"
            ),
            "Send message error Transport error: Client error"
        );
        assert_eq!(tidy("plain"), "plain");
    }

    #[test]
    fn result_text_takes_text_blocks_then_structured_content() {
        let v =
            serde_json::json!({"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]});
        assert_eq!(result_text(&v), "a\nb");
        let v = serde_json::json!({"content": [], "structuredContent": {"x": 1}});
        assert_eq!(result_text(&v), r#"{"x":1}"#);
    }
}
