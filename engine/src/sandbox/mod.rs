//! Sandboxes: where a task's command runs, behind one [`Executor`] trait
//! with three tiers ([`SandboxTier`]):
//!
//! - `native`: the process runner of [`crate::process`] (rlimits or cgroup
//!   v2, its own session, timeout, bounded output);
//! - `docker`: a container run by dockerd with runc;
//! - `gvisor`: a container run by dockerd with runsc, gVisor's user-space
//!   kernel between the command and the host's.
//!
//! The container tiers ([`docker`]) talk to dockerd over its Unix socket with
//! bollard; nothing here runs the docker CLI. Every container has no network
//! (unless the agent names a network and may use one), a read-only root
//! file system with size-limited tmpfs mounts at `/work` (its working
//! directory) and `/tmp`, every capability dropped, `no-new-privileges`,
//! the memory (no swap beyond it), CPU and pids limits of its task, runs as
//! uid/gid 65534, has a timeout, keeps bounded output (dockerd stores none:
//! log driver `none`, output read from the attach stream) and is removed
//! after its exit. Containers carry labels ([`LABEL_OWNER`], [`LABEL_TASK`],
//! …) so that those a crashed runtime left behind are found and removed
//! ([`docker::reap`]).
//!
//! Images are built here, never pulled ([`image`]): a root file system of
//! busybox (from Debian's `busybox-static`), archived reproducibly, imported
//! through the API and tagged by the BLAKE3 of the archive.
//!
//! What is *not* here: deciding what runs where (the runtime decider and
//! the agent definition's `tier`), and journaling (the caller turns the
//! [`ExecEvent`]s into events: `SandboxStarted`, `ProcessStarted`,
//! `ResourcesSampled`, `SandboxExited`, `ProcessExited`, `SandboxReaped`).

pub mod docker;
pub mod image;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use stele_journal::event::{SandboxExit, SandboxStart};
use tokio::sync::mpsc;

pub use crate::config::SandboxTier;
use crate::process::{
    self, Confinement, ExitReport, Launcher, ProcessEvent, ProcessHandle, ProcessSpec, SpawnError,
};
pub use docker::{BeforeCreate, ContainerExecutor, ContainerHandle, DockerHost, ExecReport, Reaped, exec_in};
pub use image::{ImageInfo, build_base_image, list_images};

/// Label on every container: who owns it (the journal's identity, see
/// [`owner_id`]). Orphans are searched by it.
pub const LABEL_OWNER: &str = "stele.owner";
/// Label on every container: the task it runs.
pub const LABEL_TASK: &str = "stele.task";
/// Label on every container: the agent (empty for `stele sandbox run`).
pub const LABEL_AGENT: &str = "stele.agent";
/// Label on every container: the tier (`docker`, `gvisor`).
pub const LABEL_TIER: &str = "stele.tier";
/// Label on a reasoning run's `run_command` container: the call id (the
/// run is its [`LABEL_TASK`]; several calls of a run run at once).
pub const LABEL_CALL: &str = "stele.call";

/// The working directory of a container, a tmpfs.
pub const CONTAINER_WORKDIR: &str = "/work";

/// Processes and threads a container may have when the spec says nothing.
pub const DEFAULT_PIDS_LIMIT: u64 = 256;

/// Size of each tmpfs (`/work`, `/tmp`) when the spec says nothing, MiB; at
/// most the task's memory limit (tmpfs pages count against it).
pub const DEFAULT_TMPFS_MB: u64 = 64;

/// The name of a tier in configuration, definitions and events.
#[must_use]
pub fn tier_name(tier: SandboxTier) -> &'static str {
    match tier {
        SandboxTier::Native => "native",
        SandboxTier::Docker => "docker",
        SandboxTier::Gvisor => "gvisor",
    }
}

/// Parses a tier name (`native`, `docker`, `gvisor`).
///
/// # Errors
/// A message naming the value and the valid ones.
pub fn parse_tier(s: &str) -> Result<SandboxTier, String> {
    match s {
        "native" => Ok(SandboxTier::Native),
        "docker" => Ok(SandboxTier::Docker),
        "gvisor" => Ok(SandboxTier::Gvisor),
        _ => Err(format!(
            "{s:?} is not a sandbox tier; use native, docker or gvisor"
        )),
    }
}

/// The identity of a journal for container labels: the hex of its first
/// event's hash (unique per journal, stable across restarts and copies).
#[must_use]
pub fn owner_id(genesis_hash: &[u8; 32]) -> String {
    hex_string(&genesis_hash[..16])
}

fn hex_string(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// What to run, within which limits, in whichever tier.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskSpec {
    /// The task (names the container's label, appears in errors).
    pub task: String,
    /// The agent (empty for `stele sandbox run`).
    pub agent: String,
    /// The program: a path or a name looked up in `PATH` (of the host for
    /// `native`, of the image for the container tiers).
    pub command: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its whole environment (`native` adds the host's `PATH` when absent).
    pub env: BTreeMap<String, String>,
    /// The working directory (containers: inside the container, default
    /// [`CONTAINER_WORKDIR`]).
    pub workdir: Option<PathBuf>,
    /// Memory limit, MiB.
    pub memory_mb: u64,
    /// CPU share, cores.
    pub cpu_cores: f64,
    /// Wall-clock limit.
    pub timeout: Duration,
    /// Bytes kept per stream (stdout, stderr); the rest is counted.
    pub output_limit: usize,
    /// Resource sampling period.
    pub sample_every: Duration,
    /// What only the container tiers use.
    pub container: ContainerOptions,
}

/// The container tiers' part of a [`TaskSpec`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContainerOptions {
    /// The image; `None`: the newest one [`build_base_image`] made.
    pub image: Option<String>,
    /// A network to join; `None`: no network at all.
    pub network: Option<String>,
    /// Most processes and threads ([`DEFAULT_PIDS_LIMIT`] when `None`).
    pub pids_limit: Option<u64>,
    /// Size of each tmpfs, MiB ([`DEFAULT_TMPFS_MB`], at most the memory
    /// limit, when `None`).
    pub tmpfs_mb: Option<u64>,
    /// Label [`LABEL_OWNER`]: who may reap it.
    pub owner: String,
    /// A host directory bind-mounted read-write at [`CONTAINER_WORKDIR`]
    /// instead of the tmpfs there: a reasoning agent's workspace, where its
    /// `run_command` works.
    pub workspace: Option<PathBuf>,
    /// Who the command runs as (`uid:gid`); `None`:
    /// [`docker::CONTAINER_USER`].
    pub user: Option<String>,
    /// Label [`LABEL_CALL`]: the tool call a reasoning run's `run_command`
    /// container runs (`None`: no such label).
    pub call: Option<String>,
}

/// What a running task reports, in order: one `Started` (or one `Failed`
/// and nothing else), any number of `Sampled`, exactly one `Exited`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    /// The task's command runs.
    Started {
        /// The host pid of its first process (the container's init for the
        /// container tiers; 0 if dockerd did not say).
        pid: u32,
        /// What confines it, one line.
        confinement: String,
        /// The container, for the container tiers.
        sandbox: Option<Box<SandboxStart>>,
    },
    /// Resource use so far.
    Sampled {
        /// Memory in use, KiB.
        rss_kb: u64,
        /// CPU time used, ms.
        cpu_ms: u64,
    },
    /// It ended (and its container was removed); the last event.
    Exited {
        /// How, in the native runner's terms (a container's exit code is
        /// `code`; dockerd reports a signal n as 128 + n).
        report: ExitReport,
        /// The container's side, for the container tiers.
        sandbox: Option<Box<SandboxExit>>,
    },
    /// It could not be started (container tiers: image, create, start);
    /// nothing follows.
    Failed(String),
}

/// A cheap, cloneable handle on a running task.
#[derive(Debug, Clone)]
pub enum ExecHandle {
    /// A native process.
    Native(ProcessHandle),
    /// A container.
    Container(ContainerHandle),
}

impl ExecHandle {
    /// Asks it to end: SIGTERM, then SIGKILL after `grace`. Idempotent.
    pub fn stop(&self, grace: Duration) {
        match self {
            ExecHandle::Native(p) => p.stop(grace),
            ExecHandle::Container(c) => c.stop(grace),
        }
    }

    /// SIGKILL now (a forced shutdown). True if the signal could be sent
    /// (for a container: was asked for).
    #[must_use]
    pub fn kill(&self) -> bool {
        match self {
            ExecHandle::Native(p) => {
                use nix::sys::signal::{Signal, killpg};
                use nix::unistd::Pid;
                i32::try_from(p.pid()).is_ok_and(|pid| killpg(Pid::from_raw(pid), Signal::SIGKILL).is_ok())
            }
            ExecHandle::Container(c) => c.kill(),
        }
    }
}

/// Why a task could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    /// The native runner refused it.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// The spec is unusable in a container tier.
    #[error("task {task}: {reason}")]
    InvalidSpec {
        /// The task.
        task: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// dockerd could not be reached or refused a request.
    #[error("{what}: {reason}")]
    Docker {
        /// What was being done (names the socket, container or image).
        what: String,
        /// dockerd's answer or the transport error.
        reason: String,
    },
    /// The base image could not be built.
    #[error("building the sandbox image: {0}")]
    Image(String),
}

/// Runs tasks in one tier.
pub trait Executor: Send + Sync + std::fmt::Debug {
    /// Which tier.
    fn tier(&self) -> SandboxTier;

    /// Starts `spec` and returns its handle; reports on `events` (see
    /// [`ExecEvent`]). Must be called inside a tokio runtime with its IO
    /// and time drivers.
    ///
    /// # Errors
    /// What can be known before anything runs (the native runner checks the
    /// command and workdir); the container tiers report later failures as
    /// [`ExecEvent::Failed`].
    fn start(
        &self,
        spec: TaskSpec,
        events: mpsc::UnboundedSender<ExecEvent>,
    ) -> Result<ExecHandle, SandboxError>;
}

/// The `native` tier: [`process::spawn`] through the `stele __confine`
/// launcher.
#[derive(Debug, Clone)]
pub struct NativeExecutor {
    /// The `stele` binary.
    pub launcher: Launcher,
    /// What confines processes here.
    pub confinement: Confinement,
}

impl Executor for NativeExecutor {
    fn tier(&self) -> SandboxTier {
        SandboxTier::Native
    }

    fn start(
        &self,
        spec: TaskSpec,
        events: mpsc::UnboundedSender<ExecEvent>,
    ) -> Result<ExecHandle, SandboxError> {
        let process_spec = ProcessSpec {
            task: spec.task,
            command: spec.command,
            args: spec.args,
            env: spec.env,
            workdir: spec.workdir,
            memory_mb: spec.memory_mb,
            cpu_cores: spec.cpu_cores,
            timeout: spec.timeout,
            output_limit: spec.output_limit,
            sample_every: spec.sample_every,
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let handle = process::spawn(process_spec, &self.launcher, &self.confinement, tx)?;
        tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                let ev = match ev {
                    ProcessEvent::Started { pid, confinement } => ExecEvent::Started {
                        pid,
                        confinement,
                        sandbox: None,
                    },
                    ProcessEvent::Sampled { rss_kb, cpu_ms } => ExecEvent::Sampled { rss_kb, cpu_ms },
                    ProcessEvent::Exited(report) => ExecEvent::Exited {
                        report,
                        sandbox: None,
                    },
                };
                if events.send(ev).is_err() {
                    return;
                }
            }
        });
        Ok(ExecHandle::Native(handle))
    }
}

/// One executor per tier; the container tiers share one dockerd
/// connection, made on first use (a runtime with only native agents never
/// needs dockerd).
#[derive(Debug, Clone)]
pub struct Sandboxes {
    native: NativeExecutor,
    docker: ContainerExecutor,
    gvisor: ContainerExecutor,
}

impl Sandboxes {
    /// The three tiers over one (lazily connected) dockerd.
    #[must_use]
    pub fn new(native: NativeExecutor, host: DockerHost) -> Sandboxes {
        Sandboxes {
            native,
            docker: ContainerExecutor::new(host.clone(), SandboxTier::Docker),
            gvisor: ContainerExecutor::new(host, SandboxTier::Gvisor),
        }
    }

    /// The executor of `tier`.
    #[must_use]
    pub fn executor(&self, tier: SandboxTier) -> &dyn Executor {
        match tier {
            SandboxTier::Native => &self.native,
            SandboxTier::Docker => &self.docker,
            SandboxTier::Gvisor => &self.gvisor,
        }
    }

    /// The container executor of `tier` (`None` for `native`).
    #[must_use]
    pub fn container(&self, tier: SandboxTier) -> Option<&ContainerExecutor> {
        match tier {
            SandboxTier::Native => None,
            SandboxTier::Docker => Some(&self.docker),
            SandboxTier::Gvisor => Some(&self.gvisor),
        }
    }

    /// The dockerd connection of the container tiers.
    #[must_use]
    pub fn host(&self) -> &DockerHost {
        self.docker.host()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_parse_and_name_round_trip() {
        for t in [SandboxTier::Native, SandboxTier::Docker, SandboxTier::Gvisor] {
            assert_eq!(parse_tier(tier_name(t)), Ok(t));
        }
        let err = parse_tier("kvm").expect_err("refused");
        assert!(
            err.contains("\"kvm\"") && err.contains("native, docker or gvisor"),
            "{err}"
        );
    }

    #[test]
    fn owner_ids_are_the_hash_prefix_in_hex() {
        let mut h = [0u8; 32];
        h[0] = 0xab;
        h[15] = 0x01;
        h[16] = 0xff; // beyond the prefix
        assert_eq!(owner_id(&h), format!("ab{}01", "00".repeat(14)));
    }
}
