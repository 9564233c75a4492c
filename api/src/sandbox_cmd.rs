//! `stele sandbox …`: the base image (`image build`, `image list`), one
//! command in a sandbox for operators and tests (`run`, journaled), and
//! `stele bench sandbox` (start-to-exit overhead of each tier).
//!
//! The sandboxes themselves are `stele_engine::sandbox`; this file parses
//! arguments, journals what the executors report and prints it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use serde_json::json;
use stele_engine::config::SandboxTier;
use stele_engine::process::{Launcher, detect_confinement};
use stele_engine::sandbox::{
    self, ContainerOptions, DockerHost, ExecEvent, NativeExecutor, Sandboxes, TaskSpec, image, parse_tier,
    tier_name,
};
use stele_journal::{Append, EventBody, Journal, ProcessExit, Receipt, Seq, StreamId};
use tokio::sync::mpsc;

use crate::journal_cmd::{open_writer, runtime};

/// The stream `stele sandbox run` journals on.
pub const SANDBOX_STREAM: &str = "sandbox";

/// The exit status `stele sandbox run` gives a command that timed out (as
/// timeout(1) does).
const TIMED_OUT_EXIT: u8 = 124;

#[derive(Debug, Subcommand)]
pub enum SandboxCmd {
    /// The sandbox base image (built locally, never pulled).
    #[command(subcommand)]
    Image(ImageCmd),
    /// Run one command in a sandbox and print its output; the start, samples
    /// and exit are journaled on stream `sandbox` (the data directory must
    /// not be owned by a running `stele up`).
    Run(RunArgs),
}

#[derive(Debug, Subcommand)]
pub enum ImageCmd {
    /// Build the base image from Debian's busybox-static and import it into
    /// dockerd, tagged `stele-sandbox:<BLAKE3 prefix of its root fs>`.
    Build {
        /// The statically linked busybox binary.
        #[arg(long, default_value = image::DEFAULT_BUSYBOX)]
        busybox: PathBuf,
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
    /// The images built, newest first (the newest is the default image).
    List {
        /// One JSON array.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// native, docker (runc) or gvisor (runsc); default `[security]
    /// default_sandbox_tier`.
    #[arg(long, value_parser = parse_tier)]
    pub tier: Option<SandboxTier>,
    /// Memory limit, MiB.
    #[arg(long, default_value_t = 256)]
    pub memory_mb: u64,
    /// CPU limit, cores.
    #[arg(long, default_value_t = 1.0)]
    pub cpus: f64,
    /// Wall-clock limit (`30s`, `2m`).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Most processes and threads (container tiers).
    #[arg(long)]
    pub pids: Option<u64>,
    /// Size of the `/work` and `/tmp` tmpfs, MiB (container tiers).
    #[arg(long)]
    pub tmpfs_mb: Option<u64>,
    /// The image (container tiers; default: the newest `stele-sandbox`).
    #[arg(long)]
    pub image: Option<String>,
    /// Bytes of stdout and of stderr kept.
    #[arg(long, default_value_t = 64 * 1024)]
    pub output_limit: usize,
    /// One JSON object instead of the output.
    #[arg(long)]
    pub json: bool,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct BenchSandboxArgs {
    /// Measured runs of `true` per tier (after 2 unmeasured ones).
    #[arg(long, default_value_t = 20)]
    pub runs: usize,
    /// Tiers to measure; native is always measured (the baseline).
    #[arg(long, value_delimiter = ',', default_value = "docker,gvisor", value_parser = parse_tier)]
    pub tiers: Vec<SandboxTier>,
    /// One JSON object.
    #[arg(long)]
    pub json: bool,
}

pub fn run(data: &Path, cmd: &SandboxCmd) -> Result<ExitCode> {
    match cmd {
        SandboxCmd::Image(ImageCmd::Build { busybox, json }) => image_build(busybox, *json),
        SandboxCmd::Image(ImageCmd::List { json }) => image_list(*json),
        SandboxCmd::Run(args) => run_one(data, args),
    }
}

fn image_build(busybox: &Path, json: bool) -> Result<ExitCode> {
    let rt = runtime()?;
    let host = DockerHost::from_env();
    let built = rt.block_on(image::build_base_image(&host, busybox))?;
    let i = &built.image;
    if json {
        println!(
            "{}",
            json!({
                "tag": i.tag, "id": i.id, "hash": i.hash, "size_bytes": i.size_bytes,
                "imported": built.imported, "applets": built.applets, "archive_bytes": built.archive_bytes,
            })
        );
    } else {
        let what = if built.imported {
            "imported"
        } else {
            "already present"
        };
        println!(
            "{} ({what}): {} applets, root fs archive {} bytes, blake3 {}",
            i.tag, built.applets, built.archive_bytes, i.hash
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn image_list(json: bool) -> Result<ExitCode> {
    let rt = runtime()?;
    let host = DockerHost::from_env();
    let images = rt.block_on(sandbox::list_images(&host))?;
    if json {
        let list: Vec<_> = images
            .iter()
            .map(|i| json!({"tag": i.tag, "id": i.id, "hash": i.hash, "created": i.created, "size_bytes": i.size_bytes}))
            .collect();
        println!("{}", serde_json::Value::Array(list));
    } else if images.is_empty() {
        println!("no sandbox image; build one with `stele sandbox image build`");
    } else {
        for i in &images {
            println!("{}  blake3 {}  {} bytes", i.tag, i.hash, i.size_bytes);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The three executors, with the running binary as the native launcher.
fn sandboxes() -> Result<Sandboxes> {
    let launcher = Launcher::current().context("finding the stele binary (the process launcher)")?;
    let native = NativeExecutor {
        launcher,
        confinement: detect_confinement(),
    };
    Ok(Sandboxes::new(native, DockerHost::from_env()))
}

/// The container label naming this journal's owner.
pub fn journal_owner(journal: &Journal) -> Result<String> {
    let first = journal
        .reader()
        .get(Seq(1))?
        .context("the journal has no first event")?;
    Ok(sandbox::owner_id(&first.hash().0))
}

/// Removes the containers a crashed predecessor of this journal left, and
/// journals each as `SandboxReaped` on `stream`.
pub async fn reap_and_record(
    host: &DockerHost,
    journal: &Journal,
    owner: &str,
    stream: &StreamId,
) -> Result<Vec<sandbox::Reaped>> {
    let reaped = sandbox::docker::reap(host, owner).await?;
    if !reaped.is_empty() {
        let appends = reaped
            .iter()
            .map(|r| Append {
                stream: stream.clone(),
                cause: None,
                body: EventBody::SandboxReaped {
                    task: if r.task.is_empty() {
                        "unknown".into()
                    } else {
                        r.task.clone()
                    },
                    container: r.container.clone(),
                    detail: r.detail.clone(),
                },
            })
            .collect();
        journal
            .append_many(appends)
            .await
            .context("journaling reaped containers")?;
    }
    Ok(reaped)
}

fn run_one(data: &Path, args: &RunArgs) -> Result<ExitCode> {
    let tier = args
        .tier
        .unwrap_or(crate::cli::config().security.default_sandbox_tier);
    let journal = open_writer(data).map_err(|e| {
        let locked = matches!(
            e.downcast_ref::<stele_journal::Error>(),
            Some(stele_journal::Error::Locked { .. })
        );
        if locked {
            e.context(format!(
                "`stele sandbox run` journals typed events and needs the data directory {} to itself; \
                 stop the process that owns it or give another --data",
                data.display()
            ))
        } else {
            e
        }
    })?;
    let owner = journal_owner(&journal)?;
    let task = format!("sandbox-{}", journal.reader().head().seq.0 + 1);
    let stream = StreamId::new(SANDBOX_STREAM)?;
    let sandboxes = sandboxes()?;
    let rt = runtime()?;
    let result = rt.block_on(async {
        if tier != SandboxTier::Native {
            for r in reap_and_record(sandboxes.host(), &journal, &owner, &stream).await? {
                eprintln!("stele sandbox: {} (task {})", r.detail, r.task);
            }
        }
        let spec = TaskSpec {
            task: task.clone(),
            agent: String::new(),
            command: args.command[0].clone(),
            args: args.command[1..].to_vec(),
            env: std::collections::BTreeMap::new(),
            workdir: None,
            memory_mb: args.memory_mb,
            cpu_cores: args.cpus,
            timeout: args.timeout,
            output_limit: args.output_limit,
            sample_every: Duration::from_secs(1),
            container: ContainerOptions {
                image: args.image.clone(),
                network: None,
                pids_limit: args.pids,
                tmpfs_mb: args.tmpfs_mb,
                owner: owner.clone(),
                ..ContainerOptions::default()
            },
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let handle = sandboxes.executor(tier).start(spec, tx)?;
        let mut seqs: Vec<u64> = Vec::new();
        let mut started: Option<serde_json::Value> = None;
        let append = |body: EventBody| {
            let journal = journal.clone();
            let stream = stream.clone();
            async move {
                journal
                    .append(Append {
                        stream,
                        cause: None,
                        body,
                    })
                    .await
                    .map(|r: Receipt| r.seq.0)
                    .context("journaling the sandbox's report")
            }
        };
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        let mut interrupted = false;
        loop {
            let ev = tokio::select! {
                ev = rx.recv() => ev,
                _ = &mut ctrl_c, if !interrupted => {
                    interrupted = true;
                    handle.stop(Duration::from_secs(2));
                    continue;
                }
            };
            let Some(ev) = ev else {
                bail!(
                    "task {task}: the {} executor ended without a report",
                    tier_name(tier)
                );
            };
            match ev {
                ExecEvent::Failed(e) => bail!("{e}"),
                ExecEvent::Started {
                    pid,
                    confinement,
                    sandbox,
                } => {
                    let body = match sandbox {
                        Some(s) => {
                            started = Some(json!({
                                "container": s.container, "image": s.image, "image_hash": s.image_hash,
                                "runtime": s.runtime,
                            }));
                            EventBody::SandboxStarted {
                                task: task.clone(),
                                sandbox: s,
                            }
                        }
                        None => EventBody::ProcessStarted {
                            task: task.clone(),
                            agent: String::new(),
                            pid,
                            start_ticks: start_ticks(pid).unwrap_or(0),
                            confinement,
                        },
                    };
                    seqs.push(append(body).await?);
                }
                ExecEvent::Sampled { rss_kb, cpu_ms } => {
                    seqs.push(
                        append(EventBody::ResourcesSampled {
                            task: task.clone(),
                            rss_kb,
                            cpu_ms,
                        })
                        .await?,
                    );
                }
                ExecEvent::Exited { report, sandbox } => {
                    let oom_killed = sandbox.as_ref().is_some_and(|s| s.oom_killed);
                    let body = match sandbox {
                        Some(s) => EventBody::SandboxExited {
                            task: task.clone(),
                            exit: s,
                        },
                        None => EventBody::ProcessExited {
                            task: task.clone(),
                            exit: Box::new(ProcessExit {
                                code: report.code,
                                signal: report.signal,
                                timed_out: report.timed_out,
                                stopped: report.stopped,
                                stdout: report.stdout.clone(),
                                stderr: report.stderr.clone(),
                                output_dropped: report.stdout_dropped + report.stderr_dropped,
                                wall_ms: report.wall_ms,
                                cpu_ms: report.cpu_ms,
                                max_rss_kb: report.max_rss_kb,
                            }),
                        },
                    };
                    seqs.push(append(body).await?);
                    return Ok((report, oom_killed, started, seqs));
                }
            }
        }
    });
    journal.close();
    let (report, oom_killed, started, seqs) = result?;
    let code = if report.timed_out {
        TIMED_OUT_EXIT
    } else {
        match (report.code, report.signal) {
            (Some(c), _) => u8::try_from(c).unwrap_or(1),
            (None, Some(s)) => u8::try_from(128 + s).unwrap_or(1),
            (None, None) => 1,
        }
    };
    if args.json {
        println!(
            "{}",
            json!({
                "task": task, "tier": tier_name(tier), "sandbox": started,
                "code": report.code, "signal": report.signal, "oom_killed": oom_killed,
                "timed_out": report.timed_out, "stopped": report.stopped,
                "stdout": report.stdout, "stderr": report.stderr,
                "output_dropped": report.stdout_dropped + report.stderr_dropped,
                "wall_ms": report.wall_ms, "cpu_ms": report.cpu_ms, "max_memory_kb": report.max_rss_kb,
                "seqs": seqs,
            })
        );
    } else {
        print!("{}", report.stdout);
        eprint!("{}", report.stderr);
        let mut summary = report.summary();
        if oom_killed {
            summary += "; OOM-killed (memory limit reached)";
        }
        let seq_range = match (seqs.first(), seqs.last()) {
            (Some(a), Some(b)) => format!("seqs {a}..{b}"),
            _ => String::new(),
        };
        eprintln!(
            "stele sandbox: {task} ({}): {summary}; {seq_range}",
            tier_name(tier)
        );
    }
    Ok(ExitCode::from(code))
}

/// The start time (clock ticks since boot) of a live process.
fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// `stele bench sandbox`: start-to-exit of `true` per tier.
pub fn bench(args: &BenchSandboxArgs) -> Result<ExitCode> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let sandboxes = sandboxes()?;
    let owner = format!("bench-{}", std::process::id());
    let rt = runtime()?;
    let mut tiers = vec![SandboxTier::Native];
    tiers.extend(args.tiers.iter().copied().filter(|t| *t != SandboxTier::Native));
    let mut results = Vec::new();
    rt.block_on(async {
        for &tier in &tiers {
            let mut samples_us: Vec<u64> = Vec::with_capacity(args.runs);
            for i in 0..args.runs + 2 {
                let spec = TaskSpec {
                    task: format!("bench-{}-{i}", tier_name(tier)),
                    agent: String::new(),
                    command: "/bin/true".to_owned(),
                    args: vec![],
                    env: std::collections::BTreeMap::new(),
                    workdir: None,
                    memory_mb: 64,
                    cpu_cores: 1.0,
                    timeout: Duration::from_secs(60),
                    output_limit: 1024,
                    sample_every: Duration::from_secs(60),
                    container: ContainerOptions {
                        owner: owner.clone(),
                        ..ContainerOptions::default()
                    },
                };
                let (tx, mut rx) = mpsc::unbounded_channel();
                let t0 = tokio::time::Instant::now();
                let _handle = sandboxes.executor(tier).start(spec, tx)?;
                loop {
                    match rx.recv().await {
                        Some(ExecEvent::Exited { report, .. }) => {
                            if report.code != Some(0) {
                                bail!("{}: `true` ended with {}", tier_name(tier), report.summary());
                            }
                            break;
                        }
                        Some(ExecEvent::Failed(e)) => bail!("{}: {e}", tier_name(tier)),
                        Some(_) => {}
                        None => bail!("{}: no report", tier_name(tier)),
                    }
                }
                if i >= 2 {
                    samples_us.push(u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX));
                }
            }
            samples_us.sort_unstable();
            results.push((tier, samples_us));
        }
        Ok(())
    })?;
    let pct = |v: &[u64], p: f64| -> u64 {
        // Nearest rank.
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
        v[rank - 1]
    };
    let base_median = results.first().map_or(1, |(_, v)| pct(v, 0.5).max(1));
    let rows: Vec<serde_json::Value> = results
        .iter()
        .map(|(tier, v)| {
            let (median, p95) = (pct(v, 0.5), pct(v, 0.95));
            #[allow(clippy::cast_precision_loss)]
            let ratio = median as f64 / base_median as f64;
            json!({
                "tier": tier_name(*tier),
                "runtime": match tier { SandboxTier::Native => "stele __confine", t => sandbox::docker::runtime_of(*t) },
                "runs": v.len(), "median_us": median, "p95_us": p95,
                "min_us": v.first(), "max_us": v.last(), "median_vs_native": (ratio * 10.0).round() / 10.0,
            })
        })
        .collect();
    if args.json {
        println!("{}", json!({"command": "true", "results": rows}));
    } else {
        println!(
            "start-to-exit of `true` ({} runs per tier, after 2 warm-ups):",
            args.runs
        );
        for r in &rows {
            println!(
                "  {:<7} median {:>9} us  p95 {:>9} us  ({}x native)",
                r["tier"].as_str().unwrap_or(""),
                r["median_us"],
                r["p95_us"],
                r["median_vs_native"]
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
