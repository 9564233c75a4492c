//! `stele mcp list|call|resources|pins|unpin` and `stele bench mcp`: the
//! MCP client of `stele_engine::mcp` driven from the command line. Every
//! discovery, verification, pin, policy decision, call and result goes to
//! the journal (streams `mcp:<server>` and `mcp`); `pins` only reads.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use clap::Subcommand;
use serde_json::{Value, json};
use stele_engine::mcp::{Approval, Caller, McpHub};
use stele_engine::policy::PolicyGate;

use crate::journal_cmd::{open_reader, open_writer, runtime};

#[derive(Debug, Subcommand)]
pub enum McpCmd {
    /// The configured servers and their tools with SchemaPin status
    /// (connects to each server; the discovery and verification are
    /// journaled, first keys pinned).
    List {
        /// Only this server.
        #[arg(long)]
        server: Option<String>,
        /// The Cedar policies (the hub's gate).
        #[arg(long, default_value = "fixtures/policies")]
        policies: PathBuf,
        /// One JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Call one tool: SchemaPin first (strict refuses an unverified
    /// tool), then the Cedar gate (`invoke_tool` on
    /// `Tool::"mcp__SERVER__TOOL"`), then the call; all journaled. Exit 1
    /// when the tool failed or was refused.
    Call {
        /// The server (its name in `[mcp] servers`).
        server: String,
        /// The tool (its MCP name).
        tool: String,
        /// The arguments, a JSON object.
        #[arg(long, default_value = "{}")]
        args: String,
        /// The agent the call is made as (the policy principal).
        #[arg(long, default_value = "cli")]
        agent: String,
        /// That agent's priority (a policy attribute).
        #[arg(long, default_value = "normal")]
        priority: String,
        /// The Cedar policies.
        #[arg(long, default_value = "fixtures/policies")]
        policies: PathBuf,
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
    /// A server's resources (`resources/list`), or one read
    /// (`resources/read`), journaled.
    Resources {
        /// The server.
        server: String,
        /// Read this URI instead of listing.
        #[arg(long)]
        read: Option<String>,
        /// The Cedar policies.
        #[arg(long, default_value = "fixtures/policies")]
        policies: PathBuf,
    },
    /// The pinned keys, per tool domain (read from the journal).
    Pins {
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Remove a domain's pin (journaled as `McpKeyUnpinned`): the next key
    /// seen for it is pinned anew.
    Unpin {
        /// The tool domain.
        domain: String,
        /// Why (journaled).
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, clap::Args)]
pub struct BenchMcpArgs {
    /// Measured calls (after 20 unmeasured ones).
    #[arg(long, default_value_t = 500)]
    pub calls: usize,
    /// The test server to measure (speaks MCP on stdio; reports its own
    /// time in `_meta.server_ns`).
    #[arg(long, default_value = "fixtures/mcp/signed_server.py")]
    pub server: PathBuf,
    /// One JSON object.
    #[arg(long)]
    pub json: bool,
}

fn hub(data: &Path, policies: &Path) -> Result<(stele_journal::Journal, McpHub)> {
    let config = crate::cli::config();
    if config.mcp.servers.is_empty() {
        bail!(
            "no MCP servers are configured; add [[mcp.servers]] entries (name, command or url) to stele.toml"
        );
    }
    let journal = open_writer(data)?;
    let gate =
        Arc::new(PolicyGate::load(policies).with_context(|| format!("policies {}", policies.display()))?);
    let hub = McpHub::new(&config.mcp, journal.clone(), gate)?;
    Ok((journal, hub))
}

pub fn run(data: &Path, cmd: &McpCmd) -> Result<ExitCode> {
    match cmd {
        McpCmd::List {
            server,
            policies,
            json,
        } => list(data, server.as_deref(), policies, *json),
        McpCmd::Call {
            server,
            tool,
            args,
            agent,
            priority,
            policies,
            json,
        } => {
            let caller = Caller {
                agent: agent.clone(),
                priority: priority.clone(),
                correlation: "cli".into(),
            };
            call(data, policies, &caller, server, tool, args, *json)
        }
        McpCmd::Resources {
            server,
            read,
            policies,
        } => resources(data, policies, server, read.as_deref()),
        McpCmd::Pins { json } => pins(data, *json),
        McpCmd::Unpin { domain, reason } => unpin(data, domain, reason),
    }
}

fn list(data: &Path, only: Option<&str>, policies: &Path, json: bool) -> Result<ExitCode> {
    let (journal, hub) = hub(data, policies)?;
    let rt = runtime()?;
    let found = rt.block_on(async {
        let found = match only {
            Some(s) => vec![(s.to_owned(), hub.discover(s).await)],
            None => hub.discover_all().await,
        };
        hub.close().await;
        found
    });
    journal.close();
    let mut failed = false;
    let mut out = Vec::new();
    for (name, result) in found {
        match result {
            Ok(t) => {
                if json {
                    out.push(serde_json::to_value(&t)?);
                } else {
                    println!(
                        "{name} ({}, domain {}): {} tools",
                        t.server_info,
                        t.domain,
                        t.tools.len()
                    );
                    for tool in &t.tools {
                        let mark = if tool.accepted { "offered" } else { "REFUSED" };
                        println!(
                            "  {:<40} {:<18} {mark:<8} {}",
                            tool.qualified,
                            tool.status.name(),
                            tool.detail
                        );
                    }
                }
            }
            Err(e) => {
                failed = true;
                if json {
                    out.push(json!({"server": name, "error": e.to_string()}));
                } else {
                    println!("{name}: error: {e}");
                }
            }
        }
    }
    if json {
        println!("{}", Value::Array(out));
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn call(
    data: &Path,
    policies: &Path,
    caller: &Caller,
    server: &str,
    tool: &str,
    args: &str,
    json: bool,
) -> Result<ExitCode> {
    let parsed: Value = serde_json::from_str(args).with_context(|| format!("--args {args:?} is not JSON"))?;
    if !parsed.is_object() {
        bail!("--args must be a JSON object, found {parsed}");
    }
    let (journal, hub) = hub(data, policies)?;
    let rt = runtime()?;
    let result = rt.block_on(async {
        let r = hub.call(caller, Approval::Unavailable, server, tool, args).await;
        hub.close().await;
        r
    });
    journal.close();
    let result = result?;
    let (ok, output) = match &result {
        Ok(t) => (true, t.as_str()),
        Err(t) => (false, t.as_str()),
    };
    if json {
        println!(
            "{}",
            json!({"server": server, "tool": tool, "ok": ok, "output": output})
        );
    } else if ok {
        println!("{output}");
    } else {
        eprintln!("error: {output}");
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn resources(data: &Path, policies: &Path, server: &str, read: Option<&str>) -> Result<ExitCode> {
    let (journal, hub) = hub(data, policies)?;
    let rt = runtime()?;
    let result = rt.block_on(async {
        let r = hub.resources(server, read).await;
        hub.close().await;
        r
    });
    journal.close();
    println!("{}", serde_json::to_string_pretty(&result?)?);
    Ok(ExitCode::SUCCESS)
}

fn pins(data: &Path, json: bool) -> Result<ExitCode> {
    let reader = open_reader(data)?;
    let pins = McpHub::read_pins(&reader)?;
    if json {
        println!("{}", serde_json::to_string(&pins)?);
    } else if pins.domains.is_empty() {
        println!("no keys are pinned");
    } else {
        for (domain, pin) in &pins.domains {
            println!(
                "{domain:<24} {} (pinned at seq {}, first seen on {})",
                pin.fingerprint, pin.seq, pin.server
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn unpin(data: &Path, domain: &str, reason: &str) -> Result<ExitCode> {
    if reason.trim().is_empty() {
        bail!("--reason must say why the pin is removed (it is journaled)");
    }
    let journal = open_writer(data)?;
    let fingerprint = runtime()?.block_on(McpHub::unpin_in(&journal, domain, reason));
    journal.close();
    println!("unpinned {domain} (was {})", fingerprint?);
    Ok(ExitCode::SUCCESS)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summary(mut ns: Vec<u64>) -> Value {
    ns.sort_unstable();
    json!({"median_us": percentile(&ns, 0.5) as f64 / 1000.0, "p95_us": percentile(&ns, 0.95) as f64 / 1000.0})
}

/// `stele bench mcp`: a trivial tool call (`noop`) of the signed test
/// server over stdio, three ways in the same run — the server's own time
/// (`_meta.server_ns`), the client's round trip through rmcp (no gate, no
/// journal), and the full journaled call (`McpHub::call`: Cedar decision,
/// `PolicyDecided`, `McpToolCalled`, the call, `McpToolReturned`, each
/// appended durably) — in a temporary journal.
#[allow(clippy::cast_precision_loss)] // µs figures for a report
pub fn bench(args: &BenchMcpArgs) -> Result<ExitCode> {
    if args.calls == 0 {
        bail!("--calls must be at least 1");
    }
    if !args.server.is_file() {
        bail!(
            "--server {}: no such file (the test server is fixtures/mcp/signed_server.py)",
            args.server.display()
        );
    }
    let tmp = tempfile::tempdir()?;
    let journal = open_writer(tmp.path())?;
    let mut config = crate::cli::config().mcp.clone();
    config.servers = vec![toml::from_str(&format!(
        "name = \"bench\"\ncommand = \"python3\"\nargs = [{:?}]",
        args.server.display().to_string()
    ))?];
    let policies = tmp.path().join("policies");
    std::fs::create_dir_all(&policies)?;
    std::fs::write(
        policies.join("mcp.cedar"),
        "@id(\"bench\")\npermit (principal, action == Action::\"invoke_tool\", resource) when { context has mcp_server };\n",
    )?;
    let gate = Arc::new(PolicyGate::load(&policies)?);
    let hub = McpHub::new(&config, journal.clone(), gate)?;
    let caller = Caller {
        agent: "bench".into(),
        priority: "normal".into(),
        correlation: "bench".into(),
    };
    let rt = runtime()?;
    let (server_ns, probe_ns, full_ns) = rt.block_on(async {
        let mut server_ns = Vec::with_capacity(args.calls);
        let mut probe_ns = Vec::with_capacity(args.calls);
        let mut full_ns = Vec::with_capacity(args.calls);
        for i in 0..args.calls + 20 {
            let (rtt, own) = hub.probe("bench", "noop", serde_json::Map::new()).await?;
            #[allow(clippy::disallowed_methods)] // a bench measures
            let started = std::time::Instant::now();
            let r = hub
                .call(&caller, Approval::Unavailable, "bench", "noop", "{}")
                .await?;
            let full = started.elapsed();
            if let Err(e) = r {
                bail!("the bench call failed: {e}");
            }
            if i >= 20 {
                let own = own.context("the server reported no _meta.server_ns")?;
                server_ns.push(own);
                probe_ns.push(u64::try_from(rtt.as_nanos()).unwrap_or(u64::MAX));
                full_ns.push(u64::try_from(full.as_nanos()).unwrap_or(u64::MAX));
            }
        }
        hub.close().await;
        Ok((server_ns, probe_ns, full_ns))
    })?;
    journal.close();
    let med = |v: &[u64]| {
        let mut s = v.to_vec();
        s.sort_unstable();
        percentile(&s, 0.5) as f64
    };
    let report = json!({
        "calls": args.calls,
        "server": args.server.display().to_string(),
        "durability": format!("{:?}", crate::cli::config().journal.durability).to_lowercase(),
        "server_own": summary(server_ns.clone()),
        "stdio_round_trip": summary(probe_ns.clone()),
        "journaled_call": summary(full_ns.clone()),
        "round_trip_over_server_median": med(&probe_ns) / med(&server_ns).max(1.0),
        "journaled_over_round_trip_median": med(&full_ns) / med(&probe_ns).max(1.0),
    });
    if args.json {
        println!("{report}");
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(ExitCode::SUCCESS)
}

/// Offers a reasoning run its agent's MCP tools (`stele run`, and runs of
/// `stele up`): a hub over `[mcp] servers` journaling to `journal` and
/// deciding with the run's gate, the accepted tools of the profile added
/// to `spec`, the driver's tools behind an `McpTools`. A server that fails
/// is reported on stderr and left out; no servers configured: unchanged.
pub(crate) async fn bridge(
    journal: &stele_journal::Journal,
    def: &stele_engine::AgentDefinition,
    mut driver: stele_engine::reasoning::Driver,
    mut spec: stele_engine::orga::RunSpec,
) -> Result<(stele_engine::reasoning::Driver, stele_engine::orga::RunSpec)> {
    let config = &crate::cli::config().mcp;
    if config.servers.is_empty() {
        return Ok((driver, spec));
    }
    let hub = Arc::new(McpHub::new(config, journal.clone(), driver.gate.current())?);
    let (tools, failed) = stele_engine::mcp::runner::attach(hub, def, &mut spec, driver.tools.clone()).await;
    for e in failed {
        eprintln!("warning: {}: MCP tools left out: {e}", spec.run);
    }
    driver.tools = tools;
    Ok((driver, spec))
}
