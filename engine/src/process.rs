//! The native process effect runner: runs one task's command as a confined
//! child process, reports what it does as [`ProcessEvent`]s and ends with one
//! [`ExitReport`]. It performs effects and reads the clock; it decides
//! nothing (what to run, and what an exit means for the task, is the
//! scheduler's and lifecycle's business, journaled elsewhere).
//!
//! # Why re-exec
//!
//! The workspace forbids `unsafe`, so limits cannot be set between `fork`
//! and `exec` (`pre_exec`). Instead [`spawn`] starts a *launcher*, the
//! `stele` binary itself, with the hidden subcommand [`CONFINE_SUBCOMMAND`]:
//! that process confines itself ([`confine_and_exec`]) and then `exec`s the
//! task's command, which inherits everything it set:
//!
//! ```text
//! stele __confine [--memory-mb N] [--cpu-seconds S] [--cgroup DIR] -- COMMAND ARGS...
//! ```
//!
//! # What is in force
//!
//! Always: `setsid()` (the task is the leader of its own session and process
//! group, so the whole tree can be signalled), `RLIMIT_CPU` = S seconds
//! (S = timeout × cpu cores, rounded up, at least 1; SIGXCPU at S, SIGKILL a
//! second later) and `RLIMIT_CORE` = 0.
//!
//! Memory depends on [`detect_confinement`]:
//! - [`Confinement::CgroupV2`]: when `/sys/fs/cgroup` is a cgroup2 mount with
//!   the `memory` and `cpu` controllers and a `stele` child can be made, each
//!   task gets `<root>/stele/<task>` with `memory.max` and `cpu.max`; the
//!   launcher moves itself in before `exec`; the directory is emptied
//!   (`cgroup.kill`) and removed after the exit. `RLIMIT_AS` is not set then:
//!   it would refuse the address-space reservations of Go, the JVM or V8
//!   while catching nothing `memory.max` does not.
//! - [`Confinement::Rlimits`] otherwise (cgroup v1, hybrid hierarchies,
//!   read-only or delegated-elsewhere cgroupfs): `RLIMIT_AS` and
//!   `RLIMIT_DATA` = memory MiB, per process. There is no CPU *rate* limit in
//!   this mode; `cpu_cores` only scales the CPU-time ceiling.
//!
//! # Timeouts and stop
//!
//! Both signal the process *group*: SIGTERM, then SIGKILL after a grace
//! ([`KILL_GRACE_AFTER_TIMEOUT`] for a timeout, the caller's for
//! [`ProcessHandle::stop`]). When the leader exits, whatever is left of its
//! group gets SIGKILL: a task's processes do not outlive it. A process that
//! leaves the group (`setsid`, `setpgid`) escapes the signals unless cgroup v2
//! is in force.
//!
//! The exit is observed with `waitid(WNOWAIT)` on a small thread, so the
//! leader is still an unreaped zombie while the group is signalled (its pid
//! cannot be reused yet) and its `/proc` entry still gives the final CPU time.
//!
//! # Bounded output
//!
//! stdout and stderr are read concurrently in fixed chunks; the first
//! `output_limit` bytes of each are kept and the rest is counted and dropped,
//! so a process writing gigabytes costs no more memory than one writing
//! kilobytes. stdin is `/dev/null`. The environment is exactly the spec's,
//! plus `PATH` from stele when the spec does not set one.

#![warn(missing_docs)]

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::resource::{Resource, setrlimit};
use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::statfs::{CGROUP_SUPER_MAGIC, CGROUP2_SUPER_MAGIC, TMPFS_MAGIC, statfs};
use nix::sys::wait::{Id, WaitPidFlag, waitid};
use nix::unistd::{AccessFlags, Pid, SysconfVar, access, setsid, sysconf};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Sleep;

/// The hidden `stele` subcommand that runs [`confine_and_exec`].
pub const CONFINE_SUBCOMMAND: &str = "__confine";

/// How long a timed-out task has between SIGTERM and SIGKILL.
pub const KILL_GRACE_AFTER_TIMEOUT: Duration = Duration::from_secs(2);

/// How long output is still read after the task's group was killed: a
/// process that escaped the group may hold the pipes open for ever.
pub const OUTPUT_DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// The resource sampling period when the configuration says nothing.
pub const DEFAULT_SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// Where cgroup v2 is looked for.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Bytes read from a pipe at a time; also the most a reader holds beyond
/// what it keeps.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// The cgroup v2 `cpu.max` period, in microseconds (the kernel's default).
const CPU_PERIOD_US: u64 = 100_000;

/// The smallest `cpu.max` quota the kernel accepts, in microseconds.
const CPU_QUOTA_MIN_US: u64 = 1_000;

const MIB: u64 = 1024 * 1024;

// ---------------------------------------------------------------------------
// The launcher side: `stele __confine …`
// ---------------------------------------------------------------------------

/// What the launcher was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ConfineArgs {
    memory_mb: Option<u64>,
    cpu_seconds: Option<u64>,
    cgroup: Option<PathBuf>,
    command: OsString,
    args: Vec<OsString>,
}

impl ConfineArgs {
    /// The launcher's command line (after the subcommand) for these limits.
    fn to_args(&self) -> Vec<OsString> {
        let mut out: Vec<OsString> = Vec::new();
        if let Some(mb) = self.memory_mb {
            out.extend(["--memory-mb".into(), mb.to_string().into()]);
        }
        if let Some(s) = self.cpu_seconds {
            out.extend(["--cpu-seconds".into(), s.to_string().into()]);
        }
        if let Some(dir) = &self.cgroup {
            out.extend(["--cgroup".into(), dir.clone().into_os_string()]);
        }
        out.push("--".into());
        out.push(self.command.clone());
        out.extend(self.args.iter().cloned());
        out
    }

    fn parse(args: &[OsString]) -> Result<ConfineArgs, String> {
        const USAGE: &str =
            "usage: stele __confine [--memory-mb N] [--cpu-seconds S] [--cgroup DIR] -- COMMAND ARGS...";
        let mut parsed = ConfineArgs {
            memory_mb: None,
            cpu_seconds: None,
            cgroup: None,
            command: OsString::new(),
            args: vec![],
        };
        let mut it = args.iter();
        loop {
            let Some(flag) = it.next() else {
                return Err(format!("missing `-- COMMAND`; {USAGE}"));
            };
            if flag == "--" {
                break;
            }
            let Some(value) = it.next() else {
                return Err(format!("{} needs a value; {USAGE}", flag.to_string_lossy()));
            };
            let number = || -> Result<u64, String> {
                value
                    .to_str()
                    .and_then(|v| v.parse::<u64>().ok())
                    .filter(|n| *n > 0)
                    .ok_or_else(|| {
                        format!(
                            "{} needs a positive whole number, found {:?}",
                            flag.to_string_lossy(),
                            value.to_string_lossy()
                        )
                    })
            };
            match flag.to_str() {
                Some("--memory-mb") => parsed.memory_mb = Some(number()?),
                Some("--cpu-seconds") => parsed.cpu_seconds = Some(number()?),
                Some("--cgroup") => parsed.cgroup = Some(PathBuf::from(value)),
                _ => return Err(format!("unknown option {:?}; {USAGE}", flag.to_string_lossy())),
            }
        }
        let Some(command) = it.next() else {
            return Err(format!("missing COMMAND after `--`; {USAGE}"));
        };
        parsed.command = command.clone();
        parsed.args = it.cloned().collect();
        Ok(parsed)
    }
}

/// The launcher: confines the current process and `exec`s the command.
///
/// `args` are the arguments after [`CONFINE_SUBCOMMAND`]:
/// `[--memory-mb N] [--cpu-seconds S] [--cgroup DIR] -- COMMAND ARGS...`.
/// In order: `setsid()`; with `--cgroup`, `"0"` is written to
/// `DIR/cgroup.procs` (this process moves itself in); `RLIMIT_CORE` = 0;
/// with `--cpu-seconds`, `RLIMIT_CPU` = S soft, S + 1 hard; with
/// `--memory-mb`, `RLIMIT_DATA` and `RLIMIT_AS` = N MiB (soft = hard); then
/// `exec` of COMMAND, looked up in `PATH` as [`std::process::Command`] does.
/// The environment, working directory and open descriptors pass through.
///
/// Returns only if something failed, with an error that names the step.
pub fn confine_and_exec(args: &[OsString]) -> io::Error {
    let parsed = match ConfineArgs::parse(args) {
        Ok(parsed) => parsed,
        Err(why) => return io::Error::new(io::ErrorKind::InvalidInput, why),
    };
    // Built before the limits: under a small RLIMIT_AS this process (the
    // whole stele binary) may no longer be able to allocate.
    let mut command = std::process::Command::new(&parsed.command);
    command.args(&parsed.args);
    if let Err(e) = confine_self(&parsed) {
        return e;
    }
    let e = command.exec();
    io::Error::new(e.kind(), format!("{}: {e}", parsed.command.to_string_lossy()))
}

fn confine_self(parsed: &ConfineArgs) -> io::Result<()> {
    let step = |what: &str, e: Errno| io::Error::new(io::Error::from(e).kind(), format!("{what}: {e}"));
    setsid().map_err(|e| step("setsid", e))?;
    if let Some(dir) = &parsed.cgroup {
        let procs = dir.join("cgroup.procs");
        std::fs::write(&procs, "0")
            .map_err(|e| io::Error::new(e.kind(), format!("joining cgroup {}: {e}", procs.display())))?;
    }
    setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(|e| step("setrlimit(RLIMIT_CORE)", e))?;
    if let Some(s) = parsed.cpu_seconds {
        setrlimit(Resource::RLIMIT_CPU, s, s.saturating_add(1))
            .map_err(|e| step("setrlimit(RLIMIT_CPU)", e))?;
    }
    if let Some(mb) = parsed.memory_mb {
        let bytes = mb.saturating_mul(MIB);
        setrlimit(Resource::RLIMIT_DATA, bytes, bytes).map_err(|e| step("setrlimit(RLIMIT_DATA)", e))?;
        setrlimit(Resource::RLIMIT_AS, bytes, bytes).map_err(|e| step("setrlimit(RLIMIT_AS)", e))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Confinement detection
// ---------------------------------------------------------------------------

/// What confines a task's memory on this machine (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confinement {
    /// cgroup v2 with the `memory` and `cpu` controllers delegated to
    /// `<root>/stele`; each task gets `<root>/stele/<task>`.
    CgroupV2 {
        /// The cgroup2 mount, normally `/sys/fs/cgroup`.
        root: PathBuf,
    },
    /// Per-process rlimits only.
    Rlimits {
        /// Why cgroup v2 is not in force.
        why: String,
    },
}

impl Confinement {
    /// One line for logs and the `Started` event: what is in force and, for
    /// rlimits, why not cgroup v2.
    pub fn describe(&self) -> String {
        match self {
            Confinement::CgroupV2 { root } => format!(
                "cgroup v2 ({}/stele/<task>: memory.max, cpu.max) + RLIMIT_CPU",
                root.display()
            ),
            Confinement::Rlimits { why } => {
                format!("rlimits (RLIMIT_AS, RLIMIT_CPU); cgroup v2 not in force: {why}")
            }
        }
    }

    fn cgroup_root(&self) -> Option<&Path> {
        match self {
            Confinement::CgroupV2 { root } => Some(root),
            Confinement::Rlimits { .. } => None,
        }
    }
}

/// Finds out whether cgroup v2 can confine tasks here, preparing
/// `/sys/fs/cgroup/stele` (controllers `memory` and `cpu` enabled) if so.
///
/// cgroup v2 is in force only if [`CGROUP_ROOT`] is a cgroup2 mount whose
/// `cgroup.controllers` lists `memory` and `cpu`, a `stele` child can be
/// created there and both controllers can be enabled for its children.
/// Anything else gives [`Confinement::Rlimits`] with the reason; it never
/// fails.
pub fn detect_confinement() -> Confinement {
    let root = Path::new(CGROUP_ROOT);
    match prepare_cgroup_v2(root) {
        Ok(()) => Confinement::CgroupV2 {
            root: root.to_path_buf(),
        },
        Err(why) => Confinement::Rlimits { why },
    }
}

fn prepare_cgroup_v2(root: &Path) -> Result<(), String> {
    let fs = statfs(root).map_err(|e| format!("{} cannot be examined: {e}", root.display()))?;
    let kind = fs.filesystem_type();
    if kind != CGROUP2_SUPER_MAGIC {
        let mut why = if kind == TMPFS_MAGIC {
            format!("{} is cgroup v1 (a tmpfs of v1 hierarchies)", root.display())
        } else if kind == CGROUP_SUPER_MAGIC {
            format!("{} is cgroup v1 (a v1 hierarchy)", root.display())
        } else {
            format!("{} is not a cgroup file system", root.display())
        };
        let unified = root.join("unified");
        if statfs(&unified).is_ok_and(|u| u.filesystem_type() == CGROUP2_SUPER_MAGIC) {
            let controllers = std::fs::read_to_string(unified.join("cgroup.controllers")).unwrap_or_default();
            let controllers = controllers.trim();
            why += &format!("; the hybrid cgroup2 mount {} has ", unified.display());
            why += &if controllers.is_empty() {
                "no controllers".to_string()
            } else {
                format!(
                    "{controllers} but not {}",
                    missing_controllers(controllers).join(", ")
                )
            };
        }
        return Err(why);
    }
    let controllers_file = root.join("cgroup.controllers");
    let controllers = std::fs::read_to_string(&controllers_file)
        .map_err(|e| format!("cannot read {}: {e}", controllers_file.display()))?;
    let missing = missing_controllers(&controllers);
    if !missing.is_empty() {
        return Err(format!(
            "the cgroup v2 root {} lacks the {} controller(s)",
            root.display(),
            missing.join(", ")
        ));
    }
    let stele = root.join("stele");
    match std::fs::create_dir(&stele) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create {}: {e}", stele.display())),
    }
    for dir in [root, stele.as_path()] {
        let control = dir.join("cgroup.subtree_control");
        let enabled = std::fs::read_to_string(&control).unwrap_or_default();
        if missing_controllers(&enabled).is_empty() {
            continue;
        }
        std::fs::write(&control, "+memory +cpu")
            .map_err(|e| format!("cannot enable memory and cpu in {}: {e}", control.display()))?;
    }
    Ok(())
}

/// Which of `memory` and `cpu` a controller list lacks.
fn missing_controllers(list: &str) -> Vec<&'static str> {
    let have: Vec<&str> = list.split_whitespace().collect();
    ["memory", "cpu"]
        .into_iter()
        .filter(|c| !have.contains(c))
        .collect()
}

// ---------------------------------------------------------------------------
// The runner
// ---------------------------------------------------------------------------

/// What to run and within which limits.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessSpec {
    /// The task this process belongs to: names its cgroup and appears in
    /// errors.
    pub task: String,
    /// The program: a path (with a `/`) or a name looked up in `PATH`.
    pub command: String,
    /// Its arguments (not including the program name).
    pub args: Vec<String>,
    /// The whole environment of the process; `PATH` is added from stele's
    /// own environment when not given here.
    pub env: BTreeMap<String, String>,
    /// The working directory; stele's own when `None`.
    pub workdir: Option<PathBuf>,
    /// Memory limit in MiB (`memory.max`, or `RLIMIT_AS` per process).
    pub memory_mb: u64,
    /// CPU share in cores (`cpu.max`, and the scale of the CPU-time ceiling).
    pub cpu_cores: f64,
    /// Wall-clock limit; then SIGTERM, and SIGKILL after
    /// [`KILL_GRACE_AFTER_TIMEOUT`].
    pub timeout: Duration,
    /// Bytes kept per stream (stdout, stderr); the rest is counted and
    /// dropped.
    pub output_limit: usize,
    /// Resource sampling period ([`DEFAULT_SAMPLE_EVERY`] in the config).
    pub sample_every: Duration,
}

/// The program that performs [`confine_and_exec`] when given
/// [`CONFINE_SUBCOMMAND`]: the `stele` binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launcher {
    /// Path of the `stele` binary.
    pub program: PathBuf,
}

impl Launcher {
    /// The running executable, which must be the `stele` binary (a test
    /// binary or another embedder names `stele` explicitly instead).
    pub fn current() -> io::Result<Launcher> {
        Ok(Launcher {
            program: std::env::current_exe()?,
        })
    }
}

/// What a running process reports, in order: one `Started`, any number of
/// `Sampled`, exactly one `Exited`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessEvent {
    /// The process exists (sent by [`spawn`] before it returns).
    Started {
        /// Its pid, also its process group and session id.
        pid: u32,
        /// [`Confinement::describe`] of what confines it.
        confinement: String,
    },
    /// Resource use of the task's session (the leader and every descendant
    /// still in it), every [`ProcessSpec::sample_every`].
    Sampled {
        /// Resident memory, summed over the session's processes, in KiB.
        rss_kb: u64,
        /// CPU time (user + system) of the session's live processes and the
        /// children they reaped, in ms.
        cpu_ms: u64,
    },
    /// The process ended and was reaped; the last event.
    Exited(ExitReport),
}

/// How a process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitReport {
    /// The exit code, if it exited.
    pub code: Option<i32>,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// It ran into [`ProcessSpec::timeout`] (and was signalled for it).
    pub timed_out: bool,
    /// It ended because [`ProcessHandle::stop`] was called.
    pub stopped: bool,
    /// Lossy UTF-8 of the kept stdout bytes.
    pub stdout: String,
    /// Lossy UTF-8 of the kept stderr bytes.
    pub stderr: String,
    /// stdout bytes beyond [`ProcessSpec::output_limit`], counted and dropped.
    pub stdout_dropped: u64,
    /// stderr bytes beyond [`ProcessSpec::output_limit`], counted and dropped.
    pub stderr_dropped: u64,
    /// Wall time from spawn to reap, in ms.
    pub wall_ms: u64,
    /// CPU time of the session, the last sample or the leader's final total
    /// (its own and its reaped children's) whichever is larger, in ms.
    pub cpu_ms: u64,
    /// Largest resident memory seen: the session sum over samples, or the
    /// leader's own peak (`VmHWM`), in KiB.
    pub max_rss_kb: u64,
}

impl ExitReport {
    /// Exit code 0, not timed out and not stopped.
    pub fn success(&self) -> bool {
        self.code == Some(0) && !self.timed_out && !self.stopped
    }

    /// One line: `exit 0`, `exit 3`, `killed by signal 9 (SIGKILL)`,
    /// `killed by signal 15 (SIGTERM): timed out after 1.0 s`, with the
    /// dropped output appended when there is some.
    pub fn summary(&self) -> String {
        let mut line = match (self.code, self.signal) {
            (Some(code), _) => format!("exit {code}"),
            (None, Some(sig)) => {
                let name = Signal::try_from(sig)
                    .map(Signal::as_str)
                    .unwrap_or("unknown signal");
                let hint = if sig == Signal::SIGXCPU as i32 {
                    ", the CPU-time limit"
                } else {
                    ""
                };
                format!("killed by signal {sig} ({name}{hint})")
            }
            (None, None) => "ended with an unknown status".to_string(),
        };
        let ran = format!("{:.1} s", self.wall_ms as f64 / 1000.0);
        if self.timed_out {
            line += &format!(": timed out after {ran}");
        } else if self.stopped {
            line += &format!(": stopped after {ran}");
        }
        for (what, dropped) in [("stdout", self.stdout_dropped), ("stderr", self.stderr_dropped)] {
            if dropped > 0 {
                line += &format!("; {dropped} bytes of {what} dropped");
            }
        }
        line
    }
}

/// A cheap, cloneable handle on a running process.
#[derive(Debug, Clone)]
pub struct ProcessHandle {
    pid: u32,
    stop: Arc<watch::Sender<Option<Duration>>>,
}

impl ProcessHandle {
    /// The leader's pid (also its process group and session id).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Asks the process group to end: SIGTERM now, SIGKILL after `grace` if
    /// the leader is still alive. Idempotent (the first call's grace holds);
    /// does nothing once the process has exited. The report says
    /// `stopped` unless the timeout came first.
    pub fn stop(&self, grace: Duration) {
        self.stop.send_if_modified(|asked| {
            if asked.is_some() {
                return false;
            }
            *asked = Some(grace);
            true
        });
    }
}

/// Why a process could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnError {
    /// A field of the spec is unusable.
    #[error("task {task}: {reason}")]
    InvalidSpec {
        /// The task.
        task: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// The command is not a path and no `PATH` entry holds it.
    #[error(
        "task {task}: command `{command}` not found in PATH ({path}); give its absolute path or install it"
    )]
    CommandNotFound {
        /// The task.
        task: String,
        /// The command as given.
        command: String,
        /// The `PATH` searched.
        path: String,
    },
    /// The command exists but cannot be executed.
    #[error("task {task}: command `{command}` ({}) is not executable: {reason}", .path.display())]
    NotExecutable {
        /// The task.
        task: String,
        /// The command as given.
        command: String,
        /// Where it was found.
        path: PathBuf,
        /// Why it cannot run.
        reason: String,
    },
    /// The working directory is unusable.
    #[error("task {task}: workdir {} {reason}", .workdir.display())]
    Workdir {
        /// The task.
        task: String,
        /// The directory asked for.
        workdir: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The launcher (the `stele` binary) cannot be run.
    #[error("task {task}: launcher {} cannot be run: {reason}", .program.display())]
    Launcher {
        /// The task.
        task: String,
        /// The launcher program.
        program: PathBuf,
        /// Why.
        reason: String,
    },
    /// The task's cgroup could not be set up.
    #[error("task {task}: cannot set up cgroup {}: {source}", .path.display())]
    Cgroup {
        /// The task.
        task: String,
        /// The file or directory that failed.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The operating system refused to start the launcher or its watcher.
    #[error("task {task}: cannot start `{command}`: {source}")]
    Start {
        /// The task.
        task: String,
        /// The command as given.
        command: String,
        /// The error.
        source: io::Error,
    },
    /// [`spawn`] was called outside a tokio runtime.
    #[error("task {task}: the process runner must be called inside a tokio runtime")]
    NoRuntime {
        /// The task.
        task: String,
    },
}

/// Starts `spec` confined through `launcher` and returns its handle.
///
/// Sends [`ProcessEvent::Started`] before returning, then, from a task on
/// the current tokio runtime, `Sampled` events and exactly one `Exited`.
/// The command and workdir are checked first, so a missing program is a
/// [`SpawnError`] naming it rather than an exit 127 from the launcher. If
/// the runtime shuts down first, the leader is killed (`kill_on_drop`).
/// The runtime needs its IO and time drivers (`enable_all`).
// An effect runner: wall time and the timeout run from the moment of spawn,
// so it reads the clock.
#[allow(clippy::disallowed_methods)]
pub fn spawn(
    spec: ProcessSpec,
    launcher: &Launcher,
    confinement: &Confinement,
    events: mpsc::UnboundedSender<ProcessEvent>,
) -> Result<ProcessHandle, SpawnError> {
    let task = spec.task.clone();
    let runtime =
        tokio::runtime::Handle::try_current().map_err(|_| SpawnError::NoRuntime { task: task.clone() })?;
    let invalid = |reason: String| SpawnError::InvalidSpec {
        task: task.clone(),
        reason,
    };
    if spec.memory_mb == 0 {
        return Err(invalid("memory_mb is 0; give the memory limit in MiB".into()));
    }
    if !(spec.cpu_cores.is_finite() && spec.cpu_cores > 0.0) {
        return Err(invalid(format!(
            "cpu_cores is {}; give a positive number of cores",
            spec.cpu_cores
        )));
    }
    if spec.timeout.is_zero() {
        return Err(invalid("timeout is 0".into()));
    }
    if spec.sample_every.is_zero() {
        return Err(invalid("sample_every is 0".into()));
    }
    if let Some(dir) = &spec.workdir {
        let reason = match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => None,
            Ok(_) => Some("is not a directory".to_string()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Some("does not exist".to_string()),
            Err(e) => Some(format!("cannot be used: {e}")),
        };
        if let Some(reason) = reason {
            return Err(SpawnError::Workdir {
                task,
                workdir: dir.clone(),
                reason,
            });
        }
    }
    let path_var: Option<OsString> = match spec.env.get("PATH") {
        Some(p) => Some(p.into()),
        None => std::env::var_os("PATH"),
    };
    let program = resolve_command(&spec, path_var.as_deref())?;
    if let Err(reason) = executable(&launcher.program) {
        return Err(SpawnError::Launcher {
            task,
            program: launcher.program.clone(),
            reason,
        });
    }

    let cgroup = match confinement.cgroup_root() {
        Some(root) => Some(make_task_cgroup(root, &spec)?),
        None => None,
    };
    let confine = ConfineArgs {
        memory_mb: if cgroup.is_some() {
            None
        } else {
            Some(spec.memory_mb)
        },
        cpu_seconds: Some(cpu_seconds(spec.timeout, spec.cpu_cores)),
        cgroup: cgroup.clone(),
        command: program.into_os_string(),
        args: spec.args.iter().map(OsString::from).collect(),
    };
    let mut command = tokio::process::Command::new(&launcher.program);
    command
        .arg(CONFINE_SUBCOMMAND)
        .args(confine.to_args())
        .env_clear()
        .envs(&spec.env)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    if let Some(path) = &path_var
        && !spec.env.contains_key("PATH")
    {
        command.env("PATH", path);
    }
    if let Some(dir) = &spec.workdir {
        command.current_dir(dir);
    }
    let start_error = |source: io::Error| SpawnError::Start {
        task: spec.task.clone(),
        command: spec.command.clone(),
        source,
    };
    let cleanup = |cgroup: &Option<PathBuf>| {
        if let Some(dir) = cgroup {
            let _ = std::fs::remove_dir(dir);
        }
    };
    let started = std::time::Instant::now();
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            cleanup(&cgroup);
            return Err(start_error(e));
        }
    };
    let pid = child
        .id()
        .expect("a child that was just spawned has not been reaped");
    let exited = match watch_exit(pid) {
        Ok(exited) => exited,
        Err(e) => {
            // Without a watcher the exit cannot be observed: do not leave
            // the process running unsupervised.
            let _ = child.start_kill();
            cleanup(&cgroup);
            return Err(start_error(e));
        }
    };

    let _ = events.send(ProcessEvent::Started {
        pid,
        confinement: confinement.describe(),
    });
    let deadline = Box::pin(tokio::time::sleep(spec.timeout));
    let (stop_tx, stop_rx) = watch::channel(None);
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    runtime.spawn(supervise(Supervised {
        child,
        pid,
        stdout,
        stderr,
        exited,
        cgroup,
        started,
        deadline,
        output_limit: spec.output_limit,
        sample_every: spec.sample_every,
        stop: stop_rx,
        events,
    }));
    Ok(ProcessHandle {
        pid,
        stop: Arc::new(stop_tx),
    })
}

/// The CPU-time ceiling: timeout × cores, rounded up, at least 1 s.
fn cpu_seconds(timeout: Duration, cpu_cores: f64) -> u64 {
    let s = (timeout.as_secs_f64() * cpu_cores).ceil();
    // `as` saturates; NaN cannot occur (both factors are checked finite).
    (s as u64).max(1)
}

/// The path the launcher will `exec`, checked now so that the error names
/// the command. Names without `/` are looked up in `path_var` (resolved to
/// the full path passed on); paths are checked relative to the workdir.
fn resolve_command(spec: &ProcessSpec, path_var: Option<&OsStr>) -> Result<PathBuf, SpawnError> {
    let not_executable = |path: PathBuf, reason: String| SpawnError::NotExecutable {
        task: spec.task.clone(),
        command: spec.command.clone(),
        path,
        reason,
    };
    let relative_to_workdir = |p: &Path| match &spec.workdir {
        Some(dir) if p.is_relative() => dir.join(p),
        _ => p.to_path_buf(),
    };
    if spec.command.is_empty() {
        return Err(SpawnError::InvalidSpec {
            task: spec.task.clone(),
            reason: "command is empty".into(),
        });
    }
    if spec.command.contains('/') {
        let given = PathBuf::from(&spec.command);
        let checked = relative_to_workdir(&given);
        return match executable(&checked) {
            Ok(()) => Ok(given),
            Err(reason) => Err(not_executable(checked, reason)),
        };
    }
    let mut refused: Option<(PathBuf, String)> = None;
    for dir in std::env::split_paths(path_var.unwrap_or_default()) {
        if dir.as_os_str().is_empty() {
            continue;
        }
        let candidate = relative_to_workdir(&dir).join(&spec.command);
        if !candidate.exists() {
            continue;
        }
        match executable(&candidate) {
            Ok(()) => return Ok(candidate),
            Err(reason) => {
                refused.get_or_insert((candidate, reason));
            }
        }
    }
    match refused {
        Some((path, reason)) => Err(not_executable(path, reason)),
        None => Err(SpawnError::CommandNotFound {
            task: spec.task.clone(),
            command: spec.command.clone(),
            path: path_var.unwrap_or_default().to_string_lossy().into_owned(),
        }),
    }
}

/// `Ok` if `path` is a file this process may execute.
fn executable(path: &Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => return Err("it is a directory".into()),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err("it does not exist".into()),
        Err(e) => return Err(e.to_string()),
    }
    access(path, AccessFlags::X_OK).map_err(|e| format!("no execute permission ({e})"))
}

/// Creates `<root>/stele/<task>` with the spec's `memory.max` and `cpu.max`.
fn make_task_cgroup(root: &Path, spec: &ProcessSpec) -> Result<PathBuf, SpawnError> {
    let name: String = spec
        .task
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let name = if name.is_empty() || name.chars().all(|c| c == '.') {
        format!("task{name}")
    } else {
        name
    };
    let dir = root.join("stele").join(name);
    let failed = |path: &Path, source: io::Error| SpawnError::Cgroup {
        task: spec.task.clone(),
        path: path.to_path_buf(),
        source,
    };
    if let Err(e) = std::fs::create_dir(&dir) {
        if e.kind() != io::ErrorKind::AlreadyExists {
            return Err(failed(&dir, e));
        }
        // Left over from a run that died: removable only if it is empty.
        std::fs::remove_dir(&dir).map_err(|e| failed(&dir, e))?;
        std::fs::create_dir(&dir).map_err(|e| failed(&dir, e))?;
    }
    let quota_us = ((spec.cpu_cores * CPU_PERIOD_US as f64).ceil() as u64).max(CPU_QUOTA_MIN_US);
    let settings = [
        ("memory.max", spec.memory_mb.saturating_mul(MIB).to_string()),
        ("cpu.max", format!("{quota_us} {CPU_PERIOD_US}")),
    ];
    for (file, value) in settings {
        let path = dir.join(file);
        if let Err(e) = std::fs::write(&path, value) {
            let _ = std::fs::remove_dir(&dir);
            return Err(failed(&path, e));
        }
    }
    // No swap beyond memory.max, where the kernel has swap accounting.
    let _ = std::fs::write(dir.join("memory.swap.max"), "0");
    Ok(dir)
}

/// A thread that blocks in `waitid(WEXITED | WNOWAIT)`: it learns of the
/// exit without reaping, so the leader stays a zombie (pid and group id not
/// reusable, `/proc/<pid>/stat` readable) until the supervisor reaps it.
fn watch_exit(pid: u32) -> io::Result<oneshot::Receiver<()>> {
    let (tx, rx) = oneshot::channel();
    let raw = i32::try_from(pid).map_err(|_| io::Error::other(format!("pid {pid} out of range")))?;
    std::thread::Builder::new()
        .name(format!("stele-wait-{pid}"))
        .spawn(move || {
            // Ends when the child has exited, or cannot be waited for (then
            // reaping will say why).
            while let Err(Errno::EINTR) = waitid(
                Id::Pid(Pid::from_raw(raw)),
                WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT,
            ) {}
            let _ = tx.send(());
        })?;
    Ok(rx)
}

/// Everything the supervising task owns.
struct Supervised {
    child: tokio::process::Child,
    pid: u32,
    stdout: Option<tokio::process::ChildStdout>,
    stderr: Option<tokio::process::ChildStderr>,
    exited: oneshot::Receiver<()>,
    cgroup: Option<PathBuf>,
    /// When the launcher was spawned.
    started: std::time::Instant,
    /// The timeout, running since the spawn.
    deadline: Pin<Box<Sleep>>,
    output_limit: usize,
    sample_every: Duration,
    stop: watch::Receiver<Option<Duration>>,
    events: mpsc::UnboundedSender<ProcessEvent>,
}

/// Bytes kept from one stream and the count of those dropped.
#[derive(Debug, Default)]
struct Captured {
    kept: Vec<u8>,
    dropped: u64,
}

/// Drives one process from spawn to its `Exited` event.
async fn supervise(mut s: Supervised) {
    let (give_up_tx, give_up_rx) = watch::channel(false);
    let out_reader = tokio::spawn(read_bounded(s.stdout.take(), s.output_limit, give_up_rx.clone()));
    let err_reader = tokio::spawn(read_bounded(s.stderr.take(), s.output_limit, give_up_rx));

    let mut sampler = tokio::time::interval(s.sample_every);
    sampler.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    sampler.tick().await; // the first tick is immediate; the first sample is one period in
    let mut kill_timer: Option<Pin<Box<Sleep>>> = None;
    let mut stop_open = true;
    let (mut timed_out, mut stopped) = (false, false);
    let (mut max_rss_kb, mut cpu_ms) = (0u64, 0u64);
    let fold = |usage: Usage, max_rss_kb: &mut u64, cpu_ms: &mut u64| {
        *max_rss_kb = (*max_rss_kb).max(usage.rss_kb).max(usage.leader_peak_kb);
        *cpu_ms = (*cpu_ms).max(usage.cpu_ms);
    };

    loop {
        tokio::select! {
            _ = &mut s.exited => break,
            _ = &mut s.deadline, if !timed_out && !stopped => {
                timed_out = true;
                signal_group(s.pid, Signal::SIGTERM);
                arm(&mut kill_timer, KILL_GRACE_AFTER_TIMEOUT);
            }
            changed = s.stop.changed(), if stop_open => {
                let asked = *s.stop.borrow_and_update();
                match (changed, asked) {
                    (Err(_), _) => stop_open = false, // every handle dropped
                    (Ok(()), Some(grace)) => {
                        stop_open = false;
                        if !timed_out {
                            stopped = true;
                            signal_group(s.pid, Signal::SIGTERM);
                        }
                        arm(&mut kill_timer, grace);
                    }
                    (Ok(()), None) => {}
                }
            }
            _ = fire(&mut kill_timer) => {
                signal_group(s.pid, Signal::SIGKILL);
                kill_timer = None;
            }
            _ = sampler.tick() => {
                if let Some(usage) = sample_session(s.pid) {
                    fold(usage, &mut max_rss_kb, &mut cpu_ms);
                    let _ = s.events.send(ProcessEvent::Sampled { rss_kb: usage.rss_kb, cpu_ms: usage.cpu_ms });
                }
            }
        }
    }

    // The leader has exited but is not reaped: one last look, then nothing
    // of its group outlives it.
    if let Some(usage) = sample_session(s.pid) {
        fold(usage, &mut max_rss_kb, &mut cpu_ms);
    }
    signal_group(s.pid, Signal::SIGKILL);
    if let Some(dir) = &s.cgroup {
        let _ = std::fs::write(dir.join("cgroup.kill"), "1");
    }
    let status = s.child.wait().await;
    let wall_ms = u64::try_from(s.started.elapsed().as_millis()).unwrap_or(u64::MAX);

    let readers = async {
        (
            out_reader.await.unwrap_or_default(),
            err_reader.await.unwrap_or_default(),
        )
    };
    tokio::pin!(readers);
    let (out, err) = tokio::select! {
        both = &mut readers => both,
        _ = tokio::time::sleep(OUTPUT_DRAIN_LIMIT) => {
            let _ = give_up_tx.send(true);
            readers.await
        }
    };
    if let Some(dir) = &s.cgroup {
        remove_cgroup(dir).await;
    }
    let (code, signal) = match &status {
        Ok(status) => (status.code(), status.signal()),
        Err(_) => (None, None),
    };
    let _ = s.events.send(ProcessEvent::Exited(ExitReport {
        code,
        signal,
        timed_out,
        stopped,
        stdout: String::from_utf8_lossy(&out.kept).into_owned(),
        stderr: String::from_utf8_lossy(&err.kept).into_owned(),
        stdout_dropped: out.dropped,
        stderr_dropped: err.dropped,
        wall_ms,
        cpu_ms,
        max_rss_kb,
    }));
}

/// Arms the kill timer to fire after `after`, unless it fires sooner.
fn arm(timer: &mut Option<Pin<Box<Sleep>>>, after: Duration) {
    let new = Box::pin(tokio::time::sleep(after));
    match timer {
        Some(old) if old.deadline() <= new.deadline() => {}
        _ => *timer = Some(new),
    }
}

/// Completes when the armed timer fires; never if none is armed.
async fn fire(timer: &mut Option<Pin<Box<Sleep>>>) {
    match timer {
        Some(sleep) => sleep.as_mut().await,
        None => std::future::pending().await,
    }
}

/// Signals the process group led by `pid`. Only called while the leader is
/// unreaped, so the group id cannot belong to anyone else. Before the
/// launcher's `setsid` there is no such group yet: then the leader alone.
fn signal_group(pid: u32, signal: Signal) {
    let Ok(raw) = i32::try_from(pid) else { return };
    if killpg(Pid::from_raw(raw), signal) == Err(Errno::ESRCH) {
        let _ = kill(Pid::from_raw(raw), signal);
    }
}

/// Removes an emptied cgroup; the kernel may take a moment to let go of
/// the processes it held.
async fn remove_cgroup(dir: &Path) {
    for _ in 0..20 {
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads a stream to its end (or until told to give up), keeping at most
/// `limit` bytes and counting the rest.
async fn read_bounded<R: AsyncRead + Unpin>(
    stream: Option<R>,
    limit: usize,
    mut give_up: watch::Receiver<bool>,
) -> Captured {
    let mut captured = Captured::default();
    let Some(mut stream) = stream else { return captured };
    let mut buf = vec![0u8; READ_CHUNK_BYTES];
    loop {
        let n = tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            _ = give_up.wait_for(|g| *g) => break,
        };
        let take = n.min(limit - captured.kept.len());
        captured.kept.extend_from_slice(&buf[..take]);
        captured.dropped += (n - take) as u64;
    }
    captured
}

// ---------------------------------------------------------------------------
// Sampling /proc
// ---------------------------------------------------------------------------

/// One look at a session's resource use.
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    rss_kb: u64,
    cpu_ms: u64,
    /// The leader's own peak RSS (`VmHWM`), 0 once it has exited.
    leader_peak_kb: u64,
}

/// Clock ticks per second and page size in KiB, from `sysconf`.
fn units() -> (u64, u64) {
    static UNITS: OnceLock<(u64, u64)> = OnceLock::new();
    *UNITS.get_or_init(|| {
        let value = |var, default: u64| {
            sysconf(var)
                .ok()
                .flatten()
                .and_then(|v| u64::try_from(v).ok())
                .filter(|v| *v > 0)
                .unwrap_or(default)
        };
        (
            value(SysconfVar::CLK_TCK, 100),
            value(SysconfVar::PAGE_SIZE, 4096) / 1024,
        )
    })
}

/// Sums RSS and CPU time over the processes whose session is `sid` (the
/// launcher's `setsid` made the leader's pid the session id), reading each
/// `/proc/<pid>/stat`. `None` when none is found.
fn sample_session(sid: u32) -> Option<Usage> {
    let (ticks_per_s, page_kb) = units();
    let mut usage = Usage::default();
    let (mut rss_pages, mut ticks, mut found) = (0u64, 0u64, false);
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(fields) = parse_stat(&stat) else { continue };
        if fields.session != sid {
            continue;
        }
        found = true;
        rss_pages += fields.rss_pages;
        ticks += fields.utime + fields.stime + fields.cutime + fields.cstime;
    }
    if !found {
        return None;
    }
    usage.rss_kb = rss_pages * page_kb;
    usage.cpu_ms = ticks * 1000 / ticks_per_s;
    if let Ok(status) = std::fs::read_to_string(format!("/proc/{sid}/status")) {
        usage.leader_peak_kb = status_kb(&status, "VmHWM:").unwrap_or(0);
    }
    Some(usage)
}

/// The fields of `/proc/<pid>/stat` the sampler uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StatFields {
    session: u32,
    utime: u64,
    stime: u64,
    cutime: u64,
    cstime: u64,
    rss_pages: u64,
}

/// Parses `/proc/<pid>/stat` (proc(5)); the command name, field 2, may hold
/// spaces and parentheses, so fields are counted after its last `)`.
fn parse_stat(stat: &str) -> Option<StatFields> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state) of proc(5).
    let field = |n: usize| fields.get(n - 3)?.parse::<i64>().ok();
    let unsigned = |n: usize| field(n).map(|v| u64::try_from(v).unwrap_or(0));
    Some(StatFields {
        session: u32::try_from(field(6)?).ok()?,
        utime: unsigned(14)?,
        stime: unsigned(15)?,
        cutime: unsigned(16)?,
        cstime: unsigned(17)?,
        rss_pages: unsigned(24)?,
    })
}

/// A `Key:   123 kB` line of `/proc/<pid>/status`.
fn status_kb(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn confine_args_round_trip() {
        let args = ConfineArgs {
            memory_mb: Some(64),
            cpu_seconds: Some(3),
            cgroup: Some("/sys/fs/cgroup/stele/t1".into()),
            command: "/bin/sh".into(),
            args: os(&["-c", "echo --memory-mb"]),
        };
        assert_eq!(ConfineArgs::parse(&args.to_args()), Ok(args));
        let bare = ConfineArgs::parse(&os(&["--", "true"])).expect("parses");
        assert_eq!(
            (bare.memory_mb, bare.cpu_seconds, bare.cgroup),
            (None, None, None)
        );
    }

    #[test]
    fn confine_args_refusals_say_what_is_wrong() {
        let err = |a: &[&str]| ConfineArgs::parse(&os(a)).expect_err("refused");
        assert!(err(&["--memory-mb", "0", "--", "true"]).contains("positive whole number"));
        assert!(err(&["--memory-mb", "x", "--", "true"]).contains("--memory-mb"));
        assert!(err(&["--bogus", "1", "--", "true"]).contains("unknown option"));
        assert!(err(&["--memory-mb", "5"]).contains("missing `-- COMMAND`"));
        assert!(err(&["--"]).contains("missing COMMAND"));
    }

    #[test]
    fn cpu_ceiling_rounds_up_and_is_at_least_one_second() {
        assert_eq!(cpu_seconds(Duration::from_millis(100), 0.5), 1);
        assert_eq!(cpu_seconds(Duration::from_secs(10), 1.5), 15);
        assert_eq!(cpu_seconds(Duration::from_millis(2500), 2.0), 5);
        assert_eq!(cpu_seconds(Duration::from_millis(2501), 2.0), 6);
    }

    #[test]
    fn stat_parsing_survives_odd_command_names() {
        let stat = "4242 (a b) (c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 7 3 2 1 20 0 1 0 \
                    123 4096000 250 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0";
        assert_eq!(
            parse_stat(stat),
            Some(StatFields {
                session: 4242,
                utime: 7,
                stime: 3,
                cutime: 2,
                cstime: 1,
                rss_pages: 250
            })
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn summaries() {
        let report = ExitReport {
            code: Some(0),
            signal: None,
            timed_out: false,
            stopped: false,
            stdout: String::new(),
            stderr: String::new(),
            stdout_dropped: 0,
            stderr_dropped: 0,
            wall_ms: 2040,
            cpu_ms: 0,
            max_rss_kb: 0,
        };
        assert_eq!(report.summary(), "exit 0");
        assert!(report.success());
        let timed_out = ExitReport {
            code: None,
            signal: Some(15),
            timed_out: true,
            ..report.clone()
        };
        assert_eq!(
            timed_out.summary(),
            "killed by signal 15 (SIGTERM): timed out after 2.0 s"
        );
        assert!(!timed_out.success());
        let cpu = ExitReport {
            code: None,
            signal: Some(24),
            stdout_dropped: 10,
            ..report.clone()
        };
        assert_eq!(
            cpu.summary(),
            "killed by signal 24 (SIGXCPU, the CPU-time limit); 10 bytes of stdout dropped"
        );
        let stopped = ExitReport {
            code: Some(0),
            stopped: true,
            ..report
        };
        assert_eq!(stopped.summary(), "exit 0: stopped after 2.0 s");
        assert!(!stopped.success());
    }

    #[test]
    fn missing_controllers_are_named() {
        assert_eq!(
            missing_controllers("cpuset cpu io memory pids"),
            Vec::<&str>::new()
        );
        assert_eq!(missing_controllers("cpuset io pids"), vec!["memory", "cpu"]);
        assert_eq!(missing_controllers(""), vec!["memory", "cpu"]);
    }
}
