//! The container tiers: `docker` (runc) and `gvisor` (runsc), driven
//! through dockerd's API with bollard over its Unix socket.
//!
//! A task's container lives through: image resolution → create (every
//! confinement in the create request, see [`container_config`]) → attach
//! (before start, so no output is missed) → start → inspect (host pid) →
//! `Started` → samples (one-shot stats) until the wait returns, the timeout
//! fires (stop: SIGTERM, SIGKILL after [`KILL_GRACE_AFTER_TIMEOUT`]) or the
//! caller stops or kills it → inspect (exit code, OOM flag) → remove →
//! `Exited`. Output is read from the attach stream, bounded per stream like
//! the native runner's; dockerd keeps none (log driver `none`).
//!
//! This module performs effects and reads the clock; it decides nothing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig, Mount, MountType};
use bollard::query_parameters::{
    AttachContainerOptions, CreateContainerOptions, InspectContainerOptions, KillContainerOptions,
    ListContainersOptions, RemoveContainerOptions, StatsOptions, StopContainerOptions, WaitContainerOptions,
};
use futures::StreamExt;
use stele_journal::event::{SandboxExit, SandboxStart};
use tokio::sync::{OnceCell, mpsc, watch};

use super::image;
use super::{
    CONTAINER_WORKDIR, DEFAULT_PIDS_LIMIT, DEFAULT_TMPFS_MB, ExecEvent, ExecHandle, Executor, LABEL_AGENT,
    LABEL_CALL, LABEL_OWNER, LABEL_TASK, LABEL_TIER, SandboxError, SandboxTier, TaskSpec, tier_name,
};
use crate::process::{ExitReport, KILL_GRACE_AFTER_TIMEOUT, OUTPUT_DRAIN_LIMIT};

/// dockerd's socket when `DOCKER_HOST` does not name another `unix://` one.
pub const DEFAULT_DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// Longest a request to dockerd may take to answer (headers; a container's
/// wait is a stream and may last as long as the container).
pub const DOCKER_REQUEST_TIMEOUT_S: u64 = 60;

/// The user a container's processes run as: `nobody`, no file of the image
/// belongs to it.
pub const CONTAINER_USER: &str = "65534:65534";

/// Bytes read from the attach stream are kept up to the spec's limit; this
/// is the most one chunk may add beyond what is kept.
const MIB: u64 = 1024 * 1024;

/// A dockerd reached over a Unix socket, connected (and the API version
/// negotiated) on first use and shared by clones.
#[derive(Debug, Clone)]
pub struct DockerHost {
    socket: PathBuf,
    client: Arc<OnceCell<Docker>>,
}

impl DockerHost {
    /// dockerd at `socket`.
    #[must_use]
    pub fn new(socket: PathBuf) -> DockerHost {
        DockerHost {
            socket,
            client: Arc::new(OnceCell::new()),
        }
    }

    /// dockerd at `DOCKER_HOST` when it is a `unix://` address, else at
    /// [`DEFAULT_DOCKER_SOCKET`].
    #[must_use]
    pub fn from_env() -> DockerHost {
        let socket = std::env::var("DOCKER_HOST")
            .ok()
            .and_then(|h| h.strip_prefix("unix://").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DOCKER_SOCKET));
        DockerHost::new(socket)
    }

    /// The socket.
    #[must_use]
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The connected client.
    ///
    /// # Errors
    /// [`SandboxError::Docker`] naming the socket when dockerd does not
    /// answer.
    pub async fn client(&self) -> Result<Docker, SandboxError> {
        let socket = self.socket.clone();
        self.client
            .get_or_try_init(|| async move {
                let unreachable = |reason: String| SandboxError::Docker {
                    what: format!("connecting to dockerd at {}", socket.display()),
                    reason: format!(
                        "{reason}; start dockerd (scripts/test.sh shows how) or use tier \"native\""
                    ),
                };
                let path = socket
                    .to_str()
                    .ok_or_else(|| unreachable("the socket path is not UTF-8".into()))?;
                let docker =
                    Docker::connect_with_unix(path, DOCKER_REQUEST_TIMEOUT_S, bollard::API_DEFAULT_VERSION)
                        .map_err(|e| unreachable(e.to_string()))?;
                docker
                    .negotiate_version()
                    .await
                    .map_err(|e| unreachable(e.to_string()))
            })
            .await
            .cloned()
    }
}

/// An error of dockerd while doing `what`.
pub(crate) fn docker_error(what: impl Into<String>, e: &bollard::errors::Error) -> SandboxError {
    SandboxError::Docker {
        what: what.into(),
        reason: e.to_string(),
    }
}

/// The `docker` or `gvisor` tier.
#[derive(Debug, Clone)]
pub struct ContainerExecutor {
    host: DockerHost,
    tier: SandboxTier,
}

impl ContainerExecutor {
    /// The executor of `tier` (`Docker` or `Gvisor`) on `host`.
    ///
    /// # Panics
    /// If `tier` is `Native` (a programming error).
    #[must_use]
    pub fn new(host: DockerHost, tier: SandboxTier) -> ContainerExecutor {
        assert!(
            tier != SandboxTier::Native,
            "the native tier has no container runtime"
        );
        ContainerExecutor { host, tier }
    }

    /// Its dockerd.
    #[must_use]
    pub fn host(&self) -> &DockerHost {
        &self.host
    }

    /// The OCI runtime dockerd runs its containers with.
    #[must_use]
    pub fn runtime(&self) -> &'static str {
        runtime_of(self.tier)
    }
}

/// `runc` for `docker`, `runsc` for `gvisor` (as registered in
/// `/etc/docker/daemon.json`).
#[must_use]
pub fn runtime_of(tier: SandboxTier) -> &'static str {
    match tier {
        SandboxTier::Gvisor => "runsc",
        SandboxTier::Docker | SandboxTier::Native => "runc",
    }
}

/// What the caller asked of a running container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Control {
    Run,
    Stop(Duration),
    Kill,
}

/// A cheap, cloneable handle on a container task.
#[derive(Debug, Clone)]
pub struct ContainerHandle {
    control: Arc<watch::Sender<Control>>,
}

impl ContainerHandle {
    /// Stop: SIGTERM, SIGKILL after `grace` (dockerd's stop). Idempotent;
    /// the first grace holds.
    pub fn stop(&self, grace: Duration) {
        self.control.send_if_modified(|c| {
            if *c == Control::Run {
                *c = Control::Stop(grace);
                true
            } else {
                false
            }
        });
    }

    /// SIGKILL now. True (the request is always taken; the exit report
    /// says what happened).
    pub fn kill(&self) -> bool {
        self.control.send_if_modified(|c| {
            if *c == Control::Kill {
                false
            } else {
                *c = Control::Kill;
                true
            }
        });
        true
    }
}

/// Limits a container gets from a spec, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Limits {
    pub memory_bytes: i64,
    pub nano_cpus: i64,
    pub pids: u64,
    pub tmpfs_mb: u64,
}

pub(crate) fn limits(spec: &TaskSpec) -> Result<Limits, SandboxError> {
    let invalid = |reason: String| SandboxError::InvalidSpec {
        task: spec.task.clone(),
        reason,
    };
    if spec.memory_mb == 0 {
        return Err(invalid("memory_mb is 0; give the memory limit in MiB".into()));
    }
    let memory_bytes = spec
        .memory_mb
        .checked_mul(MIB)
        .and_then(|b| i64::try_from(b).ok())
        .ok_or_else(|| invalid(format!("memory_mb {} is too large", spec.memory_mb)))?;
    if !(spec.cpu_cores.is_finite() && spec.cpu_cores > 0.0 && spec.cpu_cores <= 1024.0) {
        return Err(invalid(format!(
            "cpu_cores is {}; give a positive number of cores (at most 1024)",
            spec.cpu_cores
        )));
    }
    // At least dockerd's minimum of 0.01 CPU; 1024 cores fit an i64 easily.
    #[allow(clippy::cast_possible_truncation)]
    let nano_cpus = ((spec.cpu_cores * 1e9).round() as i64).max(10_000_000);
    if spec.timeout.is_zero() {
        return Err(invalid("timeout is 0".into()));
    }
    if spec.sample_every.is_zero() {
        return Err(invalid("sample_every is 0".into()));
    }
    let pids = spec.container.pids_limit.unwrap_or(DEFAULT_PIDS_LIMIT);
    if pids == 0 || i64::try_from(pids).is_err() {
        return Err(invalid(format!("pids_limit {pids} must be a positive number")));
    }
    let tmpfs_mb = spec
        .container
        .tmpfs_mb
        .unwrap_or_else(|| DEFAULT_TMPFS_MB.min(spec.memory_mb));
    if tmpfs_mb == 0 {
        return Err(invalid("tmpfs_mb is 0".into()));
    }
    if spec.command.is_empty() {
        return Err(invalid("command is empty".into()));
    }
    if let Some(dir) = &spec.workdir
        && !dir.is_absolute()
    {
        return Err(invalid(format!(
            "workdir {} must be an absolute path inside the container",
            dir.display()
        )));
    }
    Ok(Limits {
        memory_bytes,
        nano_cpus,
        pids,
        tmpfs_mb,
    })
}

/// The create request: every confinement of the tier in one place.
pub(crate) fn container_config(
    spec: &TaskSpec,
    tier: SandboxTier,
    image: &str,
    limits: &Limits,
) -> ContainerCreateBody {
    let tmpfs_opts = format!("rw,nosuid,nodev,size={}m,mode=1777", limits.tmpfs_mb);
    let mut tmpfs = HashMap::from([("/tmp".to_owned(), tmpfs_opts.clone())]);
    // The workdir: the agent's workspace when it has one, else a tmpfs.
    let mounts = match &spec.container.workspace {
        Some(dir) => Some(vec![Mount {
            target: Some(CONTAINER_WORKDIR.to_owned()),
            source: Some(dir.display().to_string()),
            typ: Some(MountType::BIND),
            read_only: Some(false),
            ..Mount::default()
        }]),
        None => {
            tmpfs.insert(CONTAINER_WORKDIR.to_owned(), tmpfs_opts);
            None
        }
    };
    let mut labels = HashMap::from([
        (LABEL_OWNER.to_owned(), spec.container.owner.clone()),
        (LABEL_TASK.to_owned(), spec.task.clone()),
        (LABEL_AGENT.to_owned(), spec.agent.clone()),
        (LABEL_TIER.to_owned(), tier_name(tier).to_owned()),
    ]);
    if let Some(call) = &spec.container.call {
        labels.insert(LABEL_CALL.to_owned(), call.clone());
    }
    let mut env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if !spec.env.contains_key("PATH") {
        env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    }
    if !spec.env.contains_key("HOME") {
        env.push(format!("HOME={CONTAINER_WORKDIR}"));
    }
    let mut cmd = vec![spec.command.clone()];
    cmd.extend(spec.args.iter().cloned());
    let workdir = spec
        .workdir
        .as_ref()
        .map_or_else(|| CONTAINER_WORKDIR.to_owned(), |w| w.display().to_string());
    ContainerCreateBody {
        image: Some(image.to_owned()),
        entrypoint: Some(vec![]),
        cmd: Some(cmd),
        env: Some(env),
        working_dir: Some(workdir),
        user: Some(
            spec.container
                .user
                .clone()
                .unwrap_or_else(|| CONTAINER_USER.to_owned()),
        ),
        labels: Some(labels),
        attach_stdin: Some(false),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        open_stdin: Some(false),
        tty: Some(false),
        network_disabled: Some(spec.container.network.is_none()),
        host_config: Some(HostConfig {
            runtime: Some(runtime_of(tier).to_owned()),
            network_mode: Some(
                spec.container
                    .network
                    .clone()
                    .unwrap_or_else(|| "none".to_owned()),
            ),
            readonly_rootfs: Some(true),
            tmpfs: Some(tmpfs),
            mounts,
            cap_drop: Some(vec!["ALL".to_owned()]),
            security_opt: Some(vec!["no-new-privileges".to_owned()]),
            memory: Some(limits.memory_bytes),
            memory_swap: Some(limits.memory_bytes),
            nano_cpus: Some(limits.nano_cpus),
            pids_limit: i64::try_from(limits.pids).ok(),
            log_config: Some(HostConfigLogConfig {
                typ: Some("none".to_owned()),
                config: None,
            }),
            auto_remove: Some(false),
            privileged: Some(false),
            ..HostConfig::default()
        }),
        ..ContainerCreateBody::default()
    }
}

/// One line for the `ProcessStarted` event and logs.
fn describe(tier: SandboxTier, container: &str, network: &str, spec: &TaskSpec, limits: &Limits) -> String {
    let short = &container[..container.len().min(12)];
    let timeout = spec.timeout;
    let workspace = spec.container.workspace.as_ref();
    let user = spec
        .container
        .user
        .as_deref()
        .unwrap_or(CONTAINER_USER)
        .split(':')
        .next()
        .unwrap_or_default();
    #[allow(clippy::cast_precision_loss)]
    let cores = limits.nano_cpus as f64 / 1e9;
    format!(
        "{} ({}) container {short}: network {network}, read-only root, {} MiB, \
         cap-drop ALL, no-new-privileges, uid {user}, memory {} MiB, cpu {cores}, pids {}, timeout {}",
        tier_name(tier),
        runtime_of(tier),
        match workspace {
            Some(dir) => format!(
                "workspace {} at /work, tmpfs /tmp {}",
                dir.display(),
                limits.tmpfs_mb
            ),
            None => format!("tmpfs /work and /tmp {}", limits.tmpfs_mb),
        },
        limits.memory_bytes / 1024 / 1024,
        limits.pids,
        humantime::format_duration(timeout),
    )
}

impl Executor for ContainerExecutor {
    fn tier(&self) -> SandboxTier {
        self.tier
    }

    fn start(
        &self,
        spec: TaskSpec,
        events: mpsc::UnboundedSender<ExecEvent>,
    ) -> Result<ExecHandle, SandboxError> {
        self.start_after(spec, events, Box::pin(async { Ok(()) }))
    }
}

/// What must be done before a container is created (e.g. journaling the
/// policy decision that let it join a network); its error is the task's
/// `Failed` reason.
pub type BeforeCreate = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>;

impl ContainerExecutor {
    /// [`Executor::start`], with `before` awaited first: nothing is asked
    /// of dockerd until it succeeded.
    ///
    /// # Errors
    /// As [`Executor::start`].
    pub fn start_after(
        &self,
        spec: TaskSpec,
        events: mpsc::UnboundedSender<ExecEvent>,
        before: BeforeCreate,
    ) -> Result<ExecHandle, SandboxError> {
        let limits = limits(&spec)?;
        if spec.container.owner.is_empty() {
            return Err(SandboxError::InvalidSpec {
                task: spec.task,
                reason: "no owner label: orphans of this container could not be found".into(),
            });
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| SandboxError::InvalidSpec {
            task: spec.task.clone(),
            reason: "the container runner must be called inside a tokio runtime".into(),
        })?;
        let (control, control_rx) = watch::channel(Control::Run);
        let host = self.host.clone();
        let tier = self.tier;
        runtime.spawn(async move {
            if let Err(reason) = before.await {
                let _ = events.send(ExecEvent::Failed(reason));
                return;
            }
            let failed = events.clone();
            if let Err(e) = run_container(host, tier, spec, limits, control_rx, events).await {
                let _ = failed.send(ExecEvent::Failed(e.to_string()));
            }
        });
        Ok(ExecHandle::Container(ContainerHandle {
            control: Arc::new(control),
        }))
    }
}

/// Bytes kept from one stream and the count of those dropped.
#[derive(Debug, Default)]
struct Captured {
    kept: Vec<u8>,
    dropped: u64,
}

impl Captured {
    fn take(&mut self, bytes: &[u8], limit: usize) {
        let room = limit.saturating_sub(self.kept.len());
        let n = bytes.len().min(room);
        self.kept.extend_from_slice(&bytes[..n]);
        self.dropped += (bytes.len() - n) as u64;
    }
}

/// Creates, runs and removes one container; `Err` only before `Started`
/// was sent (the caller turns it into `Failed`).
// An effect runner: the wall time and the timeout run from the start.
#[allow(clippy::too_many_lines)]
async fn run_container(
    host: DockerHost,
    tier: SandboxTier,
    spec: TaskSpec,
    limits: Limits,
    mut control: watch::Receiver<Control>,
    events: mpsc::UnboundedSender<ExecEvent>,
) -> Result<(), SandboxError> {
    let docker = host.client().await?;
    let image = match &spec.container.image {
        Some(name) => image::inspect(&docker, name).await?,
        None => image::newest(&docker).await?,
    };
    let body = container_config(&spec, tier, &image.tag, &limits);
    let created = docker
        .create_container(None::<CreateContainerOptions>, body)
        .await
        .map_err(|e| {
            docker_error(
                format!("task {}: creating its {} container", spec.task, tier_name(tier)),
                &e,
            )
        })?;
    let id = created.id;
    let remove = |docker: Docker, id: String| async move {
        docker
            .remove_container(
                &id,
                Some(RemoveContainerOptions {
                    force: true,
                    v: true,
                    link: false,
                }),
            )
            .await
    };
    let attached = docker
        .attach_container(
            &id,
            Some(AttachContainerOptions {
                stream: true,
                stdout: true,
                stderr: true,
                stdin: false,
                logs: false,
                detach_keys: None,
            }),
        )
        .await;
    let attached = match attached {
        Ok(a) => a,
        Err(e) => {
            let _ = remove(docker.clone(), id.clone()).await;
            return Err(docker_error(
                format!("task {}: attaching to container {id}", spec.task),
                &e,
            ));
        }
    };
    let started_at = tokio::time::Instant::now();
    if let Err(e) = docker.start_container(&id, None).await {
        let _ = remove(docker.clone(), id.clone()).await;
        return Err(docker_error(
            format!("task {}: starting container {id}", spec.task),
            &e,
        ));
    }
    // Everything from here on ends in an `Exited` (and a removal).
    let output_limit = spec.output_limit;
    let (give_up_tx, mut give_up_rx) = watch::channel(false);
    let mut output = attached.output;
    let reader = tokio::spawn(async move {
        let (mut out, mut err) = (Captured::default(), Captured::default());
        loop {
            let item = tokio::select! {
                item = output.next() => item,
                _ = give_up_rx.wait_for(|g| *g) => break,
            };
            match item {
                Some(Ok(LogOutput::StdOut { message } | LogOutput::Console { message })) => {
                    out.take(&message, output_limit);
                }
                Some(Ok(LogOutput::StdErr { message })) => err.take(&message, output_limit),
                Some(Ok(LogOutput::StdIn { .. })) => {}
                Some(Err(_)) | None => break,
            }
        }
        (out, err)
    });
    let pid = docker
        .inspect_container(&id, None::<InspectContainerOptions>)
        .await
        .ok()
        .and_then(|i| i.state?.pid)
        .and_then(|p| u32::try_from(p).ok())
        .unwrap_or(0);
    let network = spec
        .container
        .network
        .clone()
        .unwrap_or_else(|| "none".to_owned());
    let start = SandboxStart {
        agent: spec.agent.clone(),
        tier: tier_name(tier).to_owned(),
        runtime: runtime_of(tier).to_owned(),
        container: id.clone(),
        image: image.tag.clone(),
        image_hash: image.hash.clone(),
        pid,
        network: network.clone(),
        memory_mb: spec.memory_mb,
        cpu_millis: u64::try_from(limits.nano_cpus / 1_000_000).unwrap_or(0),
        pids_limit: limits.pids,
        tmpfs_mb: limits.tmpfs_mb,
        timeout_ms: u64::try_from(spec.timeout.as_millis()).unwrap_or(u64::MAX),
    };
    let _ = events.send(ExecEvent::Started {
        pid,
        confinement: describe(tier, &id, &network, &spec, &limits),
        sandbox: Some(Box::new(start)),
    });

    let mut wait = docker.wait_container(
        &id,
        Some(WaitContainerOptions {
            condition: "not-running".to_owned(),
        }),
    );
    let deadline = tokio::time::sleep_until(started_at + spec.timeout);
    tokio::pin!(deadline);
    let mut sampler = tokio::time::interval(spec.sample_every);
    sampler.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    sampler.tick().await;
    let (mut timed_out, mut stopped, mut killed) = (false, false, false);
    let (mut max_memory_kb, mut cpu_ms) = (0u64, 0u64);
    let mut control_open = true;
    let stop = |docker: &Docker, id: &str, grace: Duration| {
        let (docker, id) = (docker.clone(), id.to_owned());
        // dockerd's stop: SIGTERM, then SIGKILL after t seconds.
        let t = i32::try_from(grace.as_secs().max(u64::from(grace.subsec_nanos() > 0))).unwrap_or(i32::MAX);
        tokio::spawn(async move {
            let _ = docker
                .stop_container(
                    &id,
                    Some(StopContainerOptions {
                        t: Some(t),
                        signal: None,
                    }),
                )
                .await;
        });
    };
    let kill = |docker: &Docker, id: &str| {
        let (docker, id) = (docker.clone(), id.to_owned());
        tokio::spawn(async move {
            let _ = docker
                .kill_container(
                    &id,
                    Some(KillContainerOptions {
                        signal: "SIGKILL".to_owned(),
                    }),
                )
                .await;
        });
    };
    loop {
        tokio::select! {
            _ = wait.next() => break,
            () = &mut deadline, if !timed_out && !stopped => {
                timed_out = true;
                stop(&docker, &id, KILL_GRACE_AFTER_TIMEOUT);
            }
            changed = control.changed(), if control_open => {
                if changed.is_err() {
                    control_open = false;
                    continue;
                }
                let asked = *control.borrow_and_update();
                match asked {
                    Control::Run => {}
                    Control::Stop(grace) => {
                        if !timed_out && !stopped {
                            stopped = true;
                            stop(&docker, &id, grace);
                        }
                    }
                    Control::Kill => {
                        if !killed {
                            killed = true;
                            stopped |= !timed_out;
                            kill(&docker, &id);
                        }
                    }
                }
            }
            _ = sampler.tick() => {
                if let Some((memory_kb, cpu)) = sample(&docker, &id).await {
                    max_memory_kb = max_memory_kb.max(memory_kb);
                    cpu_ms = cpu_ms.max(cpu);
                    let _ = events.send(ExecEvent::Sampled { rss_kb: memory_kb, cpu_ms: cpu });
                }
            }
        }
    }
    let wall_ms = u64::try_from(started_at.elapsed().as_millis()).unwrap_or(u64::MAX);
    let state = docker
        .inspect_container(&id, None::<InspectContainerOptions>)
        .await
        .ok()
        .and_then(|i| i.state);
    let code = state
        .as_ref()
        .and_then(|s| s.exit_code)
        .and_then(|c| i32::try_from(c).ok());
    let oom_killed = state.as_ref().and_then(|s| s.oom_killed).unwrap_or(false);
    let (out, err) = tokio::select! {
        both = reader => both.unwrap_or_default(),
        () = tokio::time::sleep(OUTPUT_DRAIN_LIMIT) => {
            let _ = give_up_tx.send(true);
            (Captured::default(), Captured::default())
        }
    };
    let removal = match remove(docker.clone(), id.clone()).await {
        Ok(()) => "removed".to_owned(),
        Err(e) => format!("not removed: {e}"),
    };
    let report = ExitReport {
        code,
        signal: None,
        timed_out,
        stopped,
        stdout: String::from_utf8_lossy(&out.kept).into_owned(),
        stderr: String::from_utf8_lossy(&err.kept).into_owned(),
        stdout_dropped: out.dropped,
        stderr_dropped: err.dropped,
        wall_ms,
        cpu_ms,
        max_rss_kb: max_memory_kb,
    };
    let exit = SandboxExit {
        container: id,
        code,
        oom_killed,
        timed_out,
        stopped,
        stdout: report.stdout.clone(),
        stderr: report.stderr.clone(),
        output_dropped: out.dropped + err.dropped,
        wall_ms,
        cpu_ms,
        max_memory_kb,
        removal,
    };
    let _ = events.send(ExecEvent::Exited {
        report,
        sandbox: Some(Box::new(exit)),
    });
    Ok(())
}

/// One look at a running container: (memory in use KiB, CPU ms).
async fn sample(docker: &Docker, id: &str) -> Option<(u64, u64)> {
    let mut stats = docker.stats(
        id,
        Some(StatsOptions {
            stream: false,
            one_shot: true,
        }),
    );
    let s = stats.next().await?.ok()?;
    let memory_kb = s.memory_stats.and_then(|m| m.usage).unwrap_or(0) / 1024;
    let cpu_ms = s
        .cpu_stats
        .and_then(|c| c.cpu_usage)
        .and_then(|u| u.total_usage)
        .unwrap_or(0)
        / 1_000_000;
    Some((memory_kb, cpu_ms))
}

/// A container found by [`reap`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reaped {
    /// Its `stele.task` label.
    pub task: String,
    /// Its `stele.call` label (a reasoning run's `run_command`), if any.
    pub call: Option<String>,
    /// Its id.
    pub container: String,
    /// What was found and done, one line.
    pub detail: String,
}

/// What a command run inside a running container said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecReport {
    /// Its exit code (`None`: it did not end within the timeout).
    pub code: Option<i64>,
    /// Its stdout then stderr, at most the limit given.
    pub output: String,
    /// It did not end within the timeout and was still running
    /// [`EXEC_KILL_GRACE`] later: the `timeout` of the image did not end it
    /// (e.g. the image has none).
    pub still_running: bool,
}

/// How long [`exec_in`] waits, after the deadline, for the `timeout` inside
/// the container to have killed a command that overran it.
pub const EXEC_KILL_GRACE: Duration = Duration::from_secs(2);

/// Runs `command` inside the running container `container` (a Docker
/// exec: same namespaces, limits, user and read-only root as the task
/// itself; under gVisor, inside its sandbox), waits at most `timeout` for
/// it to end, and keeps at most `output_limit` bytes of its output. What
/// health probes of container-tier agents run through.
///
/// Docker cannot kill an exec, so the deadline is enforced inside the
/// container: the command runs as `timeout -s KILL <timeout> command…`
/// (the image's `timeout`, busybox's in the images `stele sandbox image
/// build` makes), which SIGKILLs it at the deadline. One that did not end
/// by then is reported with `code: None`; when it is still running
/// [`EXEC_KILL_GRACE`] after the deadline, `still_running` says so. Only
/// the command's own process is killed: descendants it started and left
/// behind are the container's (its init adopts them).
///
/// # Errors
/// dockerd is unreachable or refuses the exec (e.g. the container has
/// stopped).
pub async fn exec_in(
    host: &DockerHost,
    container: &str,
    command: Vec<String>,
    timeout: Duration,
    output_limit: usize,
) -> Result<ExecReport, SandboxError> {
    use bollard::exec::{StartExecOptions, StartExecResults};
    use bollard::models::ExecConfig;
    let short = &container[..container.len().min(12)];
    if timeout.is_zero() {
        return Err(SandboxError::InvalidSpec {
            task: format!("exec in container {short}"),
            reason: "its timeout is 0".into(),
        });
    }
    let docker = host.client().await?;
    let cmd: Vec<String> = ["timeout", "-s", "KILL"]
        .into_iter()
        .map(str::to_owned)
        .chain(std::iter::once(format!("{:.3}", timeout.as_secs_f64())))
        .chain(command)
        .collect();
    let created = docker
        .create_exec(
            container,
            ExecConfig {
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                attach_stdin: Some(false),
                tty: Some(false),
                cmd: Some(cmd),
                ..ExecConfig::default()
            },
        )
        .await
        .map_err(|e| docker_error(format!("creating an exec in container {short}"), &e))?;
    let started_at = tokio::time::Instant::now();
    let mut out = Captured::default();
    let run = async {
        match docker
            .start_exec(&created.id, None::<StartExecOptions>)
            .await
            .map_err(|e| docker_error(format!("starting an exec in container {short}"), &e))?
        {
            StartExecResults::Attached { mut output, .. } => {
                while let Some(Ok(chunk)) = output.next().await {
                    match chunk {
                        LogOutput::StdOut { message }
                        | LogOutput::StdErr { message }
                        | LogOutput::Console { message } => out.take(&message, output_limit),
                        LogOutput::StdIn { .. } => {}
                    }
                }
            }
            StartExecResults::Detached => {}
        }
        Ok::<_, SandboxError>(())
    };
    // The stream ends when the command does: at the latest when the
    // `timeout` inside kills it at the deadline.
    let ended = match tokio::time::timeout(timeout + EXEC_KILL_GRACE, run).await {
        Ok(r) => {
            r?;
            true
        }
        Err(_) => false,
    };
    let output = String::from_utf8_lossy(&out.kept).into_owned();
    let inspected = docker
        .inspect_exec(&created.id)
        .await
        .map_err(|e| docker_error(format!("inspecting an exec in container {short}"), &e))?;
    let still_running = inspected.running == Some(true);
    // Killed by the `timeout` inside: SIGKILL (128 + 9) once the deadline
    // passed.
    let killed = inspected.exit_code == Some(137) && started_at.elapsed() >= timeout;
    let overran = !ended || still_running || killed;
    Ok(ExecReport {
        code: if overran { None } else { inspected.exit_code },
        output,
        still_running,
    })
}

/// Finds the containers labelled `stele.owner=<owner>` (running or not)
/// and removes them (SIGKILL first when running). A runtime calls it at
/// start: anything it finds was left by a predecessor that did not end
/// cleanly.
///
/// # Errors
/// [`SandboxError::Docker`] when dockerd cannot be asked; a container that
/// cannot be removed is reported in its [`Reaped::detail`].
pub async fn reap(host: &DockerHost, owner: &str) -> Result<Vec<Reaped>, SandboxError> {
    let docker = host.client().await?;
    let filters = HashMap::from([("label".to_owned(), vec![format!("{LABEL_OWNER}={owner}")])]);
    let found = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..ListContainersOptions::default()
        }))
        .await
        .map_err(|e| docker_error(format!("listing the containers of owner {owner}"), &e))?;
    let mut reaped = Vec::with_capacity(found.len());
    for c in found {
        let Some(id) = c.id else { continue };
        let task = c
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_TASK).cloned())
            .unwrap_or_default();
        let call = c.labels.as_ref().and_then(|l| l.get(LABEL_CALL).cloned());
        let state = c
            .state
            .map_or_else(|| "unknown".to_owned(), |s| s.to_string().to_lowercase());
        let removed = docker
            .remove_container(
                &id,
                Some(RemoveContainerOptions {
                    force: true,
                    v: true,
                    link: false,
                }),
            )
            .await;
        let short = &id[..id.len().min(12)];
        let of_call = call.as_ref().map(|c| format!(" of call {c}")).unwrap_or_default();
        let detail = match removed {
            Ok(()) if state == "running" => {
                format!("orphan container {short}{of_call} was still running and was removed")
            }
            Ok(()) => format!("orphan container {short}{of_call} ({state}) was removed"),
            Err(e) => format!("orphan container {short}{of_call} ({state}) could not be removed: {e}"),
        };
        reaped.push(Reaped {
            task,
            call,
            container: id,
            detail,
        });
    }
    reaped.sort_by(|a, b| a.task.cmp(&b.task).then(a.container.cmp(&b.container)));
    Ok(reaped)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::sandbox::ContainerOptions;

    fn spec() -> TaskSpec {
        TaskSpec {
            task: "task-1".into(),
            agent: "a".into(),
            command: "/bin/sh".into(),
            args: vec!["-c".into(), "true".into()],
            env: BTreeMap::new(),
            workdir: None,
            memory_mb: 32,
            cpu_cores: 0.5,
            timeout: Duration::from_secs(5),
            output_limit: 1024,
            sample_every: Duration::from_secs(1),
            container: ContainerOptions {
                owner: "o".into(),
                ..ContainerOptions::default()
            },
        }
    }

    #[test]
    fn the_create_request_carries_every_confinement() {
        let s = spec();
        let l = limits(&s).expect("valid");
        assert_eq!(l.tmpfs_mb, 32, "tmpfs at most the memory limit");
        let c = container_config(&s, SandboxTier::Gvisor, "stele-sandbox:x", &l);
        let h = c.host_config.expect("host config");
        assert_eq!(h.runtime.as_deref(), Some("runsc"));
        assert_eq!(h.network_mode.as_deref(), Some("none"));
        assert_eq!(c.network_disabled, Some(true));
        assert_eq!(h.readonly_rootfs, Some(true));
        assert_eq!(h.cap_drop, Some(vec!["ALL".to_owned()]));
        assert_eq!(h.security_opt, Some(vec!["no-new-privileges".to_owned()]));
        assert_eq!(h.memory, Some(32 * 1024 * 1024));
        assert_eq!(h.memory_swap, h.memory, "no swap beyond the limit");
        assert_eq!(h.nano_cpus, Some(500_000_000));
        assert_eq!(h.pids_limit, Some(256));
        let tmpfs = h.tmpfs.expect("tmpfs");
        assert!(tmpfs["/work"].contains("size=32m"), "{tmpfs:?}");
        assert_eq!(h.log_config.and_then(|l| l.typ).as_deref(), Some("none"));
        assert_eq!(c.user.as_deref(), Some(CONTAINER_USER));
        let labels = c.labels.expect("labels");
        assert_eq!(labels[LABEL_OWNER], "o");
        assert_eq!(labels[LABEL_TASK], "task-1");
        assert_eq!(labels[LABEL_TIER], "gvisor");
        assert!(
            !labels.contains_key(LABEL_CALL),
            "only a tool call's container names its call"
        );
        let mut call = spec();
        call.container.call = Some("call-7".into());
        let labels = container_config(&call, SandboxTier::Docker, "stele-sandbox:x", &l)
            .labels
            .expect("labels");
        assert_eq!(labels[LABEL_CALL], "call-7");
        assert_eq!(
            c.cmd,
            Some(vec!["/bin/sh".to_owned(), "-c".to_owned(), "true".to_owned()])
        );
        let named = TaskSpec {
            container: ContainerOptions {
                network: Some("agents".into()),
                owner: "o".into(),
                ..ContainerOptions::default()
            },
            ..spec()
        };
        let c = container_config(&named, SandboxTier::Docker, "i", &l);
        assert_eq!(c.network_disabled, Some(false));
        let ws = TaskSpec {
            container: ContainerOptions {
                workspace: Some("/srv/ws".into()),
                user: Some("1000:1000".into()),
                owner: "o".into(),
                ..ContainerOptions::default()
            },
            ..spec()
        };
        let w = container_config(&ws, SandboxTier::Docker, "i", &l);
        assert_eq!(w.user.as_deref(), Some("1000:1000"));
        let wh = w.host_config.clone().expect("host config");
        assert!(
            !wh.tmpfs.expect("tmpfs").contains_key("/work"),
            "the workspace replaces the tmpfs"
        );
        let m = &wh.mounts.expect("mounts")[0];
        assert_eq!(m.source.as_deref(), Some("/srv/ws"));
        assert_eq!(m.target.as_deref(), Some("/work"));
        assert_eq!(m.typ, Some(MountType::BIND));
        assert_eq!(wh.readonly_rootfs, Some(true), "the root stays read-only");
        assert_eq!(
            c.host_config.and_then(|h| h.network_mode).as_deref(),
            Some("agents")
        );
    }

    #[test]
    fn bad_specs_are_refused_with_the_field() {
        let err = |s: TaskSpec| limits(&s).expect_err("refused").to_string();
        assert!(
            err(TaskSpec {
                memory_mb: 0,
                ..spec()
            })
            .contains("memory_mb")
        );
        assert!(
            err(TaskSpec {
                cpu_cores: 0.0,
                ..spec()
            })
            .contains("cpu_cores")
        );
        assert!(
            err(TaskSpec {
                timeout: Duration::ZERO,
                ..spec()
            })
            .contains("timeout")
        );
        assert!(
            err(TaskSpec {
                workdir: Some("rel".into()),
                ..spec()
            })
            .contains("absolute")
        );
        assert!(
            err(TaskSpec {
                command: String::new(),
                ..spec()
            })
            .contains("command")
        );
    }
}
