//! The built-in tools a reasoning agent can call — real ones, confined to
//! the agent's workspace directory — and tool profiles (glob patterns of
//! what the model may see). Tools are effects: the driver runs them after
//! the policy gate allowed the call, and journals each result.
//!
//! - `read_file {path, max_bytes?}`: a file under the workspace (at most
//!   64 KiB, or `max_bytes`, which a policy condition may set);
//! - `list_dir {path?}`: the entries of a directory under the workspace;
//! - `write_file {path, content}`: creates or replaces a file under the
//!   workspace (at most 1 MiB);
//! - `run_command {command, args?}`: a program run in the agent's sandbox
//!   tier ([`CommandSandbox`]) with the agent's limits: `native`, a process
//!   of the process runner in the workspace; `docker` / `gvisor`, a
//!   container (no network, read-only root, every capability dropped, …)
//!   with the workspace at `/work`, never run as uid 0 (see
//!   [`CommandSandbox::Container`]); its `SandboxStarted` and
//!   `SandboxExited` (container, runtime, image hash, …) are journaled as
//!   they happen, as facts of the run that made the call (their `task` is
//!   the run id, their `cause` the seq of the call's `ToolCalled`: see
//!   [`CallContext`]). Exit status and output come back; the driver
//!   journals them and a replay serves them.
//!
//! A path that leaves the workspace (`..`, an absolute path elsewhere, a
//! symlink pointing out) is refused.

use std::collections::{BTreeMap, HashSet};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use stele_journal::{EventBody, Seq};

use serde_json::Value;

use std::future::Future;
use std::pin::Pin;

use crate::llm::{ToolCall, ToolSpec};
use crate::orga::ToolOutcome;
use crate::process::{Confinement, Launcher};
use crate::sandbox::{
    ContainerExecutor, ContainerOptions, ExecEvent, ExecHandle, Executor as _, NativeExecutor, TaskSpec,
    tier_name,
};

/// Largest file `read_file` returns.
pub const MAX_READ_BYTES: u64 = 64 * 1024;
/// Largest content `write_file` accepts.
pub const MAX_WRITE_BYTES: usize = 1024 * 1024;

/// Every built-in tool as the model sees it.
#[must_use]
pub fn builtin() -> Vec<ToolSpec> {
    let spec = |name: &str, description: &str, parameters: Value| ToolSpec {
        name: name.to_owned(),
        description: description.to_owned(),
        parameters: parameters.to_string(),
    };
    vec![
        spec(
            "read_file",
            "Read a text file of the workspace.",
            serde_json::json!({"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}),
        ),
        spec(
            "list_dir",
            "List the entries of a directory of the workspace.",
            serde_json::json!({"type": "object", "properties": {"path": {"type": "string"}}}),
        ),
        spec(
            "write_file",
            "Create or replace a file of the workspace.",
            serde_json::json!({"type": "object", "properties": {"path": {"type": "string"}, "content": {"type": "string"}}, "required": ["path", "content"]}),
        ),
        spec(
            "run_command",
            "Run a program in the workspace with the agent's resource limits.",
            serde_json::json!({"type": "object", "properties": {"command": {"type": "string"}, "args": {"type": "array", "items": {"type": "string"}}}, "required": ["command"]}),
        ),
    ]
}

/// Whether `name` matches a glob `pattern` (`*` any run, `?` one character).
#[must_use]
pub fn glob_match(pattern: &str, name: &str) -> bool {
    fn go(p: &[char], n: &[char]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some('*'), _) => go(&p[1..], n) || (!n.is_empty() && go(p, &n[1..])),
            (Some('?'), Some(_)) => go(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &n[1..]),
            _ => false,
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    go(&p, &n)
}

/// The built-in tools a profile lets the model see (every tool matching
/// one of the patterns), in a stable order.
#[must_use]
pub fn profile(patterns: &[String]) -> Vec<ToolSpec> {
    builtin()
        .into_iter()
        .filter(|t| patterns.iter().any(|p| glob_match(p, &t.name)))
        .collect()
}

/// Where and with what limits tools run for one agent.
#[derive(Clone, Debug)]
pub struct ToolBox {
    /// The workspace directory (absolute).
    pub workspace: PathBuf,
    /// Memory for `run_command`, MiB.
    pub memory_mb: u64,
    /// CPU for `run_command`, cores.
    pub cpu_cores: f64,
    /// Timeout of `run_command`.
    pub timeout: Duration,
    /// The process launcher (the `stele` binary).
    pub launcher: Launcher,
    /// What confines processes here.
    pub confinement: Confinement,
    /// Where `run_command` runs.
    pub sandbox: CommandSandbox,
}

/// Where a [`ToolBox`]'s `run_command` runs: the agent's sandbox tier.
#[derive(Clone, Debug)]
pub enum CommandSandbox {
    /// The `native` tier: a process of the process runner (the toolbox's
    /// launcher and confinement), in the workspace.
    Native,
    /// A container of the `docker` or `gvisor` tier, the workspace at
    /// `/work`. The command never runs as uid 0:
    ///
    /// - a workspace owned by an ordinary user and group (uid and gid not
    ///   0) is bind-mounted read-write and the command runs as that
    ///   `uid:gid`, so what it writes is the owner's, as if they wrote it;
    /// - a workspace owned by root (uid or gid 0) is copied to a per-call
    ///   scratch directory owned by [`SCRATCH_USER`] (65534, `nobody`),
    ///   which is mounted and where the command runs as that user; after
    ///   it exits (also on failure or timeout) its changes are copied back
    ///   by the runtime itself — new and changed files, directories and
    ///   symlinks written, deleted ones removed, set-id bits dropped — so
    ///   they are owned as the runtime's other writes to the workspace
    ///   are. The user's files are never chowned; the scratch copy is
    ///   removed afterwards (also when the call is dropped, and then
    ///   nothing is copied back). Sockets, FIFOs and devices are neither
    ///   copied in nor touched.
    Container {
        /// The tier's executor.
        executor: ContainerExecutor,
        /// The image (`None`: the newest `stele sandbox image build`).
        image: Option<String>,
        /// The `stele.owner` label (the journal's identity), so a crash's
        /// leftovers are reaped.
        owner: String,
        /// The agent (its label).
        agent: String,
        /// Where the container's own facts are journaled.
        journal: SandboxJournal,
    },
}

/// Where a call comes from: what the facts its effect journals (a
/// `run_command` container's `SandboxStarted` and `SandboxExited`) are
/// tied to. The driver hands it to [`ToolRunner::run`] with each call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallContext {
    /// The run that made the call: the `task` (and so the run) of its
    /// container's facts, and its `stele.task` label.
    pub run: String,
    /// The seq of the call's `ToolCalled`: the `cause` of its container's
    /// facts (`None`: the sink gave no seqs, e.g. a test's memory, or the
    /// call was not journaled as one, e.g. a pre-hydration read).
    pub cause: Option<Seq>,
}

/// Who a `run_command` on a scratch copy of a root-owned workspace runs as
/// (`nobody`).
pub const SCRATCH_USER: (u32, u32) = (65534, 65534);

/// A boxed future of a [`SandboxJournal`] append.
pub type JournalFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// Journals the facts of a `run_command` container (`SandboxStarted`,
/// `SandboxExited`, whose `task` is the call's run), each with the call's
/// [`CallContext`] (its run's stream, its `cause`): each append is durable
/// before the call goes on, and one that fails stops the command and fails
/// the call.
#[derive(Clone)]
pub struct SandboxJournal(Arc<AppendFn>);

/// What a [`SandboxJournal`] appends through.
type AppendFn = dyn Fn(&CallContext, EventBody) -> JournalFuture + Send + Sync;

impl SandboxJournal {
    /// A journal appending through `append`.
    pub fn new<F, Fut>(append: F) -> SandboxJournal
    where
        F: Fn(&CallContext, EventBody) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        SandboxJournal(Arc::new(move |ctx, body| Box::pin(append(ctx, body))))
    }

    async fn record(&self, ctx: &CallContext, body: EventBody) -> Result<(), String> {
        (self.0)(ctx, body).await
    }
}

impl std::fmt::Debug for SandboxJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SandboxJournal")
    }
}

/// The result of a tool: success and its text.
pub type ToolResult = Result<String, String>;

/// A boxed future of a captured compensation (see
/// [`ToolRunner::compensation`]).
pub type CompensationFuture<'a> = Pin<Box<dyn Future<Output = Option<Result<String, String>>> + Send + 'a>>;

/// Runs the calls the gate allowed and reports each outcome: the effect
/// runner of the reasoning driver. [`ToolBox`] runs the built-in tools for
/// real; a replay serves the journaled results instead (and performs
/// nothing).
///
/// Besides running calls, a runner is where the driver's other effects go,
/// so a replay can serve each from the journal: the compensation a saga
/// step records before it runs (`SagaStepRecorded.compensation`), running a
/// compensation (`SagaCompensated`), and the clock readings the circuit
/// breakers decide with (`RunBreakerChanged.at_ms`).
pub trait ToolRunner: Send + Sync + std::fmt::Debug {
    /// Runs one allowed call (its arguments as the gate allowed them), made
    /// by `ctx.run` and journaled at `ctx.cause`: what the call's own facts
    /// (a container's) are tied to.
    fn run<'a>(
        &'a self,
        call: &'a ToolCall,
        ctx: &'a CallContext,
    ) -> Pin<Box<dyn Future<Output = ToolOutcome> + Send + 'a>>;

    /// What undoes `call`, captured now, before it runs (JSON `{tool,
    /// arguments}`): `None` when the tool has no compensation, an error
    /// when it has one that cannot be captured (the call then fails
    /// without running).
    fn compensation<'a>(&'a self, call: &'a ToolCall) -> CompensationFuture<'a> {
        let _ = call;
        Box::pin(async { None })
    }

    /// Runs a compensating action (as [`compensation`](Self::compensation)
    /// captured it). Compensations are idempotent: running one twice leaves
    /// what running it once leaves.
    fn compensate<'a>(&'a self, action: &'a str) -> Pin<Box<dyn Future<Output = ToolResult> + Send + 'a>> {
        let _ = action;
        Box::pin(async { Err("this tool runner performs no compensations".to_owned()) })
    }

    /// A clock reading, ms since the Unix epoch, for the circuit breakers.
    #[allow(clippy::disallowed_methods)] // the effect side reads the clock; the reading is journaled
    fn clock_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

impl ToolRunner for ToolBox {
    #[allow(clippy::disallowed_methods)] // an effect runner measures how long the effect took
    fn run<'a>(
        &'a self,
        call: &'a ToolCall,
        ctx: &'a CallContext,
    ) -> Pin<Box<dyn Future<Output = ToolOutcome> + Send + 'a>> {
        Box::pin(async move {
            let started = std::time::Instant::now();
            let result = self.call(ctx, &call.id, &call.name, &call.arguments).await;
            let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            let (ok, output) = match result {
                Ok(o) => (true, o),
                Err(e) => (false, e),
            };
            ToolOutcome {
                call_id: call.id.clone(),
                ok,
                output,
                duration_ms,
            }
        })
    }

    fn compensation<'a>(&'a self, call: &'a ToolCall) -> CompensationFuture<'a> {
        Box::pin(crate::saga::capture(self, call))
    }

    fn compensate<'a>(&'a self, action: &'a str) -> Pin<Box<dyn Future<Output = ToolResult> + Send + 'a>> {
        Box::pin(crate::saga::perform(self, action))
    }
}

impl ToolBox {
    /// A path of the workspace, refusing anything that leaves it.
    pub(crate) fn resolve(&self, path: &str) -> Result<PathBuf, String> {
        let rel = Path::new(path);
        if rel.is_absolute() {
            return Err(format!("path {path:?} must be relative to the workspace"));
        }
        if rel.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(format!("path {path:?} leaves the workspace"));
        }
        let full = self.workspace.join(rel);
        // Symlinks may point out: check the real location of what exists.
        let existing = full.ancestors().find(|a| a.exists()).unwrap_or(&self.workspace);
        let real = existing.canonicalize().map_err(|e| format!("{path}: {e}"))?;
        let root = self
            .workspace
            .canonicalize()
            .map_err(|e| format!("workspace {}: {e}", self.workspace.display()))?;
        if !real.starts_with(&root) {
            return Err(format!("path {path:?} leaves the workspace"));
        }
        Ok(full)
    }

    /// Runs tool `name` with JSON `arguments` as call `call_id` of
    /// `ctx.run` (a container names both).
    pub async fn call(&self, ctx: &CallContext, call_id: &str, name: &str, arguments: &str) -> ToolResult {
        let args: Value =
            serde_json::from_str(arguments).map_err(|e| format!("arguments are not JSON: {e}"))?;
        let Some(args) = args.as_object() else {
            return Err("arguments must be a JSON object".into());
        };
        let text = |key: &str| -> Result<String, String> {
            args.get(key)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| format!("argument {key:?} (a string) is missing"))
        };
        match name {
            "read_file" => {
                let path = self.resolve(&text("path")?)?;
                let meta = tokio::fs::metadata(&path)
                    .await
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                if meta.len() > MAX_READ_BYTES {
                    return Err(format!(
                        "file is {} bytes, over the {MAX_READ_BYTES} read limit",
                        meta.len()
                    ));
                }
                let mut bytes = tokio::fs::read(&path)
                    .await
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                // A policy condition may cap what is returned.
                if let Some(max) = args.get("max_bytes").and_then(Value::as_u64) {
                    bytes.truncate(usize::try_from(max).unwrap_or(usize::MAX));
                }
                String::from_utf8(bytes).map_err(|_| "the file is not UTF-8 text".to_owned())
            }
            "list_dir" => {
                let rel = args.get("path").and_then(Value::as_str).unwrap_or(".");
                let dir = self.resolve(rel)?;
                let mut rd = tokio::fs::read_dir(&dir)
                    .await
                    .map_err(|e| format!("{rel}: {e}"))?;
                let mut names = Vec::new();
                while let Some(e) = rd.next_entry().await.map_err(|e| e.to_string())? {
                    let mut n = e.file_name().to_string_lossy().into_owned();
                    if e.file_type().await.is_ok_and(|t| t.is_dir()) {
                        n.push('/');
                    }
                    names.push(n);
                }
                names.sort();
                Ok(names.join("\n"))
            }
            "write_file" => {
                let path = self.resolve(&text("path")?)?;
                let content = text("content")?;
                if content.len() > MAX_WRITE_BYTES {
                    return Err(format!(
                        "content is {} bytes, over the {MAX_WRITE_BYTES} limit",
                        content.len()
                    ));
                }
                if let Some(parent) = path.parent() {
                    tokio::fs::create_dir_all(parent)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                tokio::fs::write(&path, content.as_bytes())
                    .await
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                Ok(format!("wrote {} bytes to {}", content.len(), text("path")?))
            }
            "run_command" => {
                let command = text("command")?;
                let argv: Vec<String> = match args.get("args") {
                    None => Vec::new(),
                    Some(Value::Array(a)) => a
                        .iter()
                        .map(|v| v.as_str().map(str::to_owned).ok_or("args must be strings"))
                        .collect::<Result<_, _>>()?,
                    Some(_) => return Err("args must be an array of strings".into()),
                };
                self.run(ctx, call_id, command, argv).await
            }
            other => Err(format!("no tool named {other:?}")),
        }
    }

    async fn run(&self, ctx: &CallContext, call_id: &str, command: String, args: Vec<String>) -> ToolResult {
        // A root-owned workspace is worked on in a scratch copy (see
        // `CommandSandbox::Container`), removed when this call ends.
        let mut scratch: Option<Scratch> = None;
        // The call's facts belong to its run: its container's `stele.task`
        // label and journaled `task` are the run id, its `stele.call` label
        // the call (a run's calls may run at once; each container has its
        // own id).
        let task = ctx.run.clone();
        let (agent, container) = match &self.sandbox {
            CommandSandbox::Native => (String::new(), ContainerOptions::default()),
            CommandSandbox::Container {
                image, owner, agent, ..
            } => {
                use std::os::unix::fs::MetadataExt as _;
                let meta = std::fs::metadata(&self.workspace)
                    .map_err(|e| format!("workspace {}: {e}", self.workspace.display()))?;
                let (mount, (uid, gid)) = if meta.uid() != 0 && meta.gid() != 0 {
                    (self.workspace.clone(), (meta.uid(), meta.gid()))
                } else {
                    let workspace = self.workspace.clone();
                    let copy = tokio::task::spawn_blocking(move || Scratch::copy_of(&workspace))
                        .await
                        .map_err(|e| format!("copying the workspace to a scratch directory: {e}"))??;
                    let dir = copy.dir.clone();
                    scratch = Some(copy);
                    (dir, SCRATCH_USER)
                };
                (
                    agent.clone(),
                    ContainerOptions {
                        image: image.clone(),
                        owner: owner.clone(),
                        workspace: Some(mount),
                        user: Some(format!("{uid}:{gid}")),
                        call: Some(call_id.to_owned()),
                        ..ContainerOptions::default()
                    },
                )
            }
        };
        let native = matches!(self.sandbox, CommandSandbox::Native);
        let spec = TaskSpec {
            task: task.clone(),
            agent,
            command,
            args,
            env: BTreeMap::new(),
            // Native: the workspace itself; a container: /work, where the
            // workspace is mounted.
            workdir: native.then(|| self.workspace.clone()),
            memory_mb: self.memory_mb,
            cpu_cores: self.cpu_cores,
            timeout: self.timeout,
            output_limit: 16 * 1024,
            sample_every: self.timeout + Duration::from_secs(1),
            container,
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let (tier, handle, journal) = match &self.sandbox {
            CommandSandbox::Native => {
                let executor = NativeExecutor {
                    launcher: self.launcher.clone(),
                    confinement: self.confinement.clone(),
                };
                (executor.tier(), executor.start(spec, tx), None)
            }
            CommandSandbox::Container {
                executor, journal, ..
            } => (executor.tier(), executor.start(spec, tx), Some(journal)),
        };
        let handle = handle.map_err(|e| e.to_string())?;
        // A call dropped mid-way (its run was cancelled) stops its command.
        let _stop = StopOnDrop(handle);
        while let Some(ev) = rx.recv().await {
            match ev {
                ExecEvent::Started {
                    sandbox: Some(sandbox),
                    ..
                } => {
                    if let Some(journal) = journal {
                        journal
                            .record(
                                ctx,
                                EventBody::SandboxStarted {
                                    task: task.clone(),
                                    sandbox,
                                },
                            )
                            .await
                            .map_err(|e| {
                                format!(
                                    "journaling the start of the sandbox of call {call_id} of {task}: {e}"
                                )
                            })?;
                    }
                }
                ExecEvent::Exited { report: r, sandbox } => {
                    if let (Some(journal), Some(exit)) = (journal, sandbox) {
                        journal
                            .record(
                                ctx,
                                EventBody::SandboxExited {
                                    task: task.clone(),
                                    exit,
                                },
                            )
                            .await
                            .map_err(|e| {
                                format!("journaling the exit of the sandbox of call {call_id} of {task}: {e}")
                            })?;
                    }
                    if let Some(copy) = scratch.take() {
                        let workspace = self.workspace.clone();
                        tokio::task::spawn_blocking(move || copy.copy_back(&workspace))
                            .await
                            .map_err(|e| format!("copying the command's changes to the workspace: {e}"))??;
                    }
                    let out = format!("{}{}", r.stdout, r.stderr);
                    return if r.success() {
                        Ok(out)
                    } else {
                        Err(format!("{}: {out}", r.summary()))
                    };
                }
                ExecEvent::Failed(reason) => {
                    return Err(format!(
                        "the {} sandbox could not run the command: {reason}",
                        tier_name(tier)
                    ));
                }
                ExecEvent::Started { .. } | ExecEvent::Sampled { .. } => {}
            }
        }
        Err("the command ended without a report".into())
    }
}

/// `bytes` random bytes, hex.
fn random_hex(bytes: usize) -> String {
    use rand_core::RngCore as _;
    let mut b = vec![0u8; bytes];
    rand_core::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

/// A per-call copy of a root-owned workspace that a container's
/// unprivileged user may write ([`SCRATCH_USER`] owns everything in it);
/// removed on drop.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    /// Copies `workspace` to a new scratch directory.
    fn copy_of(workspace: &Path) -> Result<Scratch, String> {
        use std::os::unix::fs::DirBuilderExt as _;
        let dir = std::env::temp_dir().join(format!("stele-scratch-{}", random_hex(8)));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| format!("creating scratch directory {}: {e}", dir.display()))?;
        let scratch = Scratch { dir };
        copy_in(workspace, &scratch.dir)?;
        let (uid, gid) = SCRATCH_USER;
        std::os::unix::fs::chown(&scratch.dir, Some(uid), Some(gid)).map_err(|e| {
            format!(
                "giving scratch directory {} to uid {uid} (the runtime must run as root \
                 to work on a root-owned workspace): {e}",
                scratch.dir.display()
            )
        })?;
        Ok(scratch)
    }

    /// Makes `workspace` what the scratch copy now is.
    fn copy_back(&self, workspace: &Path) -> Result<(), String> {
        copy_out(&self.dir, workspace)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!("removing scratch directory {}: {e}", self.dir.display());
        }
    }
}

fn io_at(path: &Path) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("{}: {e}", path.display())
}

/// Permission bits without set-id and sticky bits.
fn plain_mode(meta: &std::fs::Metadata) -> std::fs::Permissions {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    std::fs::Permissions::from_mode(meta.mode() & 0o777)
}

/// Copies the directories, files and symlinks under `from` into `to` (an
/// existing directory), all given to [`SCRATCH_USER`].
fn copy_in(from: &Path, to: &Path) -> Result<(), String> {
    let (uid, gid) = SCRATCH_USER;
    for entry in std::fs::read_dir(from).map_err(io_at(from))? {
        let entry = entry.map_err(io_at(from))?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let meta = std::fs::symlink_metadata(&src).map_err(io_at(&src))?;
        let kind = meta.file_type();
        if kind.is_dir() {
            std::fs::create_dir(&dst).map_err(io_at(&dst))?;
            copy_in(&src, &dst)?;
            std::fs::set_permissions(&dst, plain_mode(&meta)).map_err(io_at(&dst))?;
        } else if kind.is_file() {
            std::fs::copy(&src, &dst).map_err(io_at(&src))?;
            std::fs::set_permissions(&dst, plain_mode(&meta)).map_err(io_at(&dst))?;
        } else if kind.is_symlink() {
            let target = std::fs::read_link(&src).map_err(io_at(&src))?;
            std::os::unix::fs::symlink(target, &dst).map_err(io_at(&dst))?;
        } else {
            continue; // sockets, FIFOs, devices
        }
        std::os::unix::fs::lchown(&dst, Some(uid), Some(gid)).map_err(io_at(&dst))?;
    }
    Ok(())
}

/// Removes `path` (`meta` its own metadata), never following a symlink.
fn remove(path: &Path, meta: &std::fs::Metadata) -> Result<(), String> {
    if meta.file_type().is_dir() {
        std::fs::remove_dir_all(path).map_err(io_at(path))
    } else {
        std::fs::remove_file(path).map_err(io_at(path))
    }
}

/// Makes the directories, files and symlinks under `to` those under
/// `from`: writes what is new or changed, removes what is gone. Nothing is
/// written through a symlink: an entry of another kind is removed first.
fn copy_out(from: &Path, to: &Path) -> Result<(), String> {
    let mut kept = HashSet::new();
    for entry in std::fs::read_dir(from).map_err(io_at(from))? {
        let entry = entry.map_err(io_at(from))?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let meta = std::fs::symlink_metadata(&src).map_err(io_at(&src))?;
        let there = std::fs::symlink_metadata(&dst).ok();
        let kind = meta.file_type();
        if kind.is_dir() {
            match &there {
                Some(t) if t.file_type().is_dir() => {}
                other => {
                    if let Some(t) = other {
                        remove(&dst, t)?;
                    }
                    std::fs::create_dir(&dst).map_err(io_at(&dst))?;
                }
            }
            copy_out(&src, &dst)?;
            std::fs::set_permissions(&dst, plain_mode(&meta)).map_err(io_at(&dst))?;
        } else if kind.is_file() {
            if let Some(t) = &there {
                let same = t.file_type().is_file()
                    && t.len() == meta.len()
                    && std::fs::read(&src).map_err(io_at(&src))?
                        == std::fs::read(&dst).map_err(io_at(&dst))?;
                if !same {
                    remove(&dst, t)?;
                }
            }
            if std::fs::symlink_metadata(&dst).is_err() {
                std::fs::copy(&src, &dst).map_err(io_at(&dst))?;
            }
            std::fs::set_permissions(&dst, plain_mode(&meta)).map_err(io_at(&dst))?;
        } else if kind.is_symlink() {
            let target = std::fs::read_link(&src).map_err(io_at(&src))?;
            if let Some(t) = &there {
                if t.file_type().is_symlink() && std::fs::read_link(&dst).ok().as_ref() == Some(&target) {
                    kept.insert(entry.file_name());
                    continue;
                }
                remove(&dst, t)?;
            }
            std::os::unix::fs::symlink(target, &dst).map_err(io_at(&dst))?;
        } else {
            continue; // made in the container: not the workspace's
        }
        kept.insert(entry.file_name());
    }
    for entry in std::fs::read_dir(to).map_err(io_at(to))? {
        let entry = entry.map_err(io_at(to))?;
        if kept.contains(&entry.file_name()) {
            continue;
        }
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path).map_err(io_at(&path))?;
        let kind = meta.file_type();
        // What was never copied in (sockets, FIFOs, devices) stays.
        if kind.is_dir() || kind.is_file() || kind.is_symlink() {
            remove(&path, &meta)?;
        }
    }
    Ok(())
}

/// How long a command whose call was dropped gets between SIGTERM and
/// SIGKILL.
const DROPPED_CALL_GRACE: Duration = Duration::from_secs(2);

/// Stops a tool's command when its call is dropped before it returned (a
/// no-op once the command has exited).
struct StopOnDrop(ExecHandle);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop(DROPPED_CALL_GRACE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copying_back_mirrors_the_scratch_copy_without_writing_through_symlinks() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (scratch, ws, outside) = (tmp.path().join("s"), tmp.path().join("w"), tmp.path().join("o"));
        for d in [&scratch, &ws, &outside] {
            std::fs::create_dir(d).expect("dir");
        }
        // The workspace: a symlink pointing out, a file to keep, one to
        // change, one deleted in the container, a FIFO never copied in.
        std::os::unix::fs::symlink(&outside, ws.join("link")).expect("symlink");
        std::fs::write(ws.join("same"), "same").expect("same");
        std::fs::write(ws.join("changed"), "old").expect("changed");
        std::fs::write(ws.join("deleted"), "x").expect("deleted");
        nix::unistd::mkfifo(&ws.join("fifo"), nix::sys::stat::Mode::S_IRWXU).expect("fifo");
        // The container replaced the symlink by a directory with a file.
        std::fs::create_dir(scratch.join("link")).expect("link dir");
        std::fs::write(scratch.join("link/f"), "inside").expect("link/f");
        std::fs::write(scratch.join("same"), "same").expect("same");
        std::fs::write(scratch.join("changed"), "new").expect("changed");
        std::fs::write(scratch.join("new"), "made").expect("new");
        copy_out(&scratch, &ws).expect("copy back");
        assert!(!outside.join("f").exists(), "written through the symlink");
        assert!(std::fs::symlink_metadata(ws.join("link")).expect("link").is_dir());
        assert_eq!(std::fs::read_to_string(ws.join("link/f")).expect("f"), "inside");
        assert_eq!(
            std::fs::read_to_string(ws.join("changed")).expect("changed"),
            "new"
        );
        assert_eq!(std::fs::read_to_string(ws.join("new")).expect("new"), "made");
        assert_eq!(std::fs::read_to_string(ws.join("same")).expect("same"), "same");
        assert!(!ws.join("deleted").exists());
        assert!(ws.join("fifo").exists(), "what was never copied in stays");
    }

    #[test]
    fn set_id_bits_are_not_copied_back() {
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = tempfile::tempdir().expect("tempdir");
        let (scratch, ws) = (tmp.path().join("s"), tmp.path().join("w"));
        std::fs::create_dir(&scratch).expect("s");
        std::fs::create_dir(&ws).expect("w");
        std::fs::write(scratch.join("suid"), "x").expect("suid");
        std::fs::set_permissions(scratch.join("suid"), std::fs::Permissions::from_mode(0o4755))
            .expect("chmod");
        copy_out(&scratch, &ws).expect("copy back");
        let mode = std::fs::metadata(ws.join("suid"))
            .expect("suid")
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o755);
    }
}
