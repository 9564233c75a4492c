//! Reasoning runs inside `stele up`: the [`Desk`] drives them as tokio
//! tasks of the daemon on the journal it owns, with one Cedar policy gate
//! loaded when the daemon starts (`stele up --policies`) and replaced by a
//! reload (`stele policy reload`, `POST /v1/policy/reload`, SIGHUP): the
//! change is journaled (`PolicySetLoaded`, stream `policy`) before the set
//! is swapped, and every drive decides each step with the set in force.
//!
//! - A scheduler task of a `[runs] kind = "reasoning"` agent begins a run
//!   (its input says what triggered it) and ends when the run finishes or
//!   parks on an approval; the core hears that as the task's exit.
//! - `POST /v1/runs` ([`Desk::start_requested`]) queues a scheduler task
//!   for the agent (`RuntimeCommand::Requested`: `TaskQueued` with trigger
//!   `request run over HTTP: <input>`), and the run begins once the task is
//!   placed: it holds the slot while it drives and gives it back when it
//!   finishes or parks (the task's exit). One task per agent: while the
//!   agent has an active task the start waits (up to `[http]
//!   request_timeout`, then it is refused as busy); a request beyond
//!   `crate::up::MAX_WAITING_REQUESTS` waiting ones is refused.
//! - Every request is journaled as data beside its task (`TaskRequested`);
//!   one still queued when the daemon died is done after the next start
//!   ([`Desk::adopt`]) with nobody waiting: a run begins, or the parked run
//!   continues from the journal, once.
//! - Approvals and rejections (`POST /v1/runs/{id}/approve|reject`) are
//!   checked at once; the continuation then queues a task the same way
//!   (`request continue <run> …`, waiting while the agent is busy) and
//!   drives when it is placed.
//! - Every parked run with an approval timeout has a timer; when it fires
//!   the approval is rejected by the timeout (approver `expired`), as the
//!   CLI does on touch, and the continuation takes a slot likewise.
//! - A stop cancels a drive: the drive is dropped, the append it had in
//!   flight completes, and the run is rebuilt from the journal and ended
//!   `cancelled` (its saga rolled back), so the cancellation is journaled.
//!
//! One drive per run at a time: a run being driven is *claimed*; a
//! decision on it is refused until it settles. Not here: the HTTP shapes
//! (`crate::http::runs`), the scheduler (`stele_engine::runtime`).

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use stele_engine::AgentDefinition;
use stele_engine::policy::{LiveGate, PolicyGate};
use stele_engine::reasoning::{self, Driver, Resumed, Sink, Stop};
use stele_journal::{Append, EventBody, Journal, Seq, StreamId, TaskRequest};
use stele_projections::{RunsView, SnapshotStore, state_at};
use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::run_cmd;

/// How long a timer waits again when the run it would expire is being
/// driven (a decision or a drive is in progress).
const EXPIRY_RETRY: Duration = Duration::from_millis(250);

/// How long a request for a slot of a busy agent waits before it asks
/// again (the agent's task may have ended).
const BUSY_RETRY: Duration = Duration::from_millis(100);

/// A cancellation signal: `Some(reason)` once a stop was asked for.
pub type Cancel = Arc<watch::Sender<Option<String>>>;

/// A fresh, not yet fired cancellation signal.
#[must_use]
pub fn cancel_signal() -> Cancel {
    Arc::new(watch::channel(None).0)
}

/// Where a drive left its run.
#[derive(Debug, Clone)]
pub struct Settled {
    /// The run.
    pub run: String,
    /// `completed`, `failed`, … `cancelled`, or `awaiting_approval`.
    pub outcome: String,
    /// The answer or the error (empty while parked).
    pub answer: String,
    /// Steps taken.
    pub steps: u32,
    /// Calls waiting for a human, with the reason.
    pub awaiting: Vec<(String, String)>,
}

impl Settled {
    fn of(stop: &Stop) -> Settled {
        match stop {
            Stop::Finished(f) => Settled {
                run: f.run.clone(),
                outcome: f.outcome.clone(),
                answer: f.answer.clone(),
                steps: f.steps,
                awaiting: Vec::new(),
            },
            Stop::Parked(p) => Settled {
                run: p.run().to_owned(),
                outcome: "awaiting_approval".into(),
                answer: String::new(),
                steps: p.step(),
                awaiting: p.awaiting(),
            },
        }
    }

    /// Where a fork left its new run.
    fn of_fork(f: &stele_replay::ForkOutcome) -> Settled {
        match &f.ended {
            stele_replay::run::Ended::Finished {
                outcome,
                answer,
                steps,
            } => Settled {
                run: f.run.clone(),
                outcome: outcome.clone(),
                answer: answer.clone(),
                steps: *steps,
                awaiting: Vec::new(),
            },
            stele_replay::run::Ended::Parked { awaiting } => Settled {
                run: f.run.clone(),
                outcome: "awaiting_approval".into(),
                answer: String::new(),
                steps: 0,
                awaiting: awaiting.clone(),
            },
        }
    }

    /// One line saying where the run stands (a task's output).
    #[must_use]
    pub fn summary(&self) -> String {
        if self.awaiting.is_empty() {
            format!(
                "{} {} after {} steps: {}",
                self.run,
                self.outcome,
                self.steps,
                stele_engine::orga::bounded(&self.answer, 400)
            )
        } else {
            let calls: Vec<String> = self.awaiting.iter().map(|(c, r)| format!("{c} ({r})")).collect();
            format!("{} awaits approval of {}", self.run, calls.join(", "))
        }
    }
}

/// Replaced policy sets a daemon keeps for replays (a set is small; a
/// replay of a run decided by an older one diverges, naming the hash).
const KEPT_SETS: usize = 16;

/// The stream `PolicySetLoaded` events of the daemon go to.
pub const POLICY_STREAM: &str = "policy";

/// What a reload did.
#[derive(Debug, Clone)]
pub struct Reloaded {
    /// The hash of the set in force before (empty: none was).
    pub old: String,
    /// The hash of the set in force now.
    pub new: String,
    /// Policies in it.
    pub policies: usize,
    /// Where it came from.
    pub source: String,
    /// The `PolicySetLoaded` event's seq; `None`: the set was already in
    /// force, nothing was journaled.
    pub seq: Option<u64>,
}

impl Reloaded {
    /// One line saying what changed.
    #[must_use]
    pub fn describe(&self) -> String {
        match self.seq {
            None => format!(
                "the policy set from {} ({} policies, {}) is already in force; nothing changed, nothing journaled",
                self.source, self.policies, self.new
            ),
            Some(seq) => format!(
                "policy set {} ({} policies, from {}) in force, replacing {} (PolicySetLoaded at seq {seq})",
                self.new,
                self.policies,
                self.source,
                if self.old.is_empty() { "none" } else { &self.old }
            ),
        }
    }
}

/// Why a decision was not taken.
#[derive(Debug)]
pub enum DecideError {
    /// The run is being driven right now (not parked).
    Busy(String),
    /// The run is unknown, not parked on that call, or its approval expired.
    Refused(anyhow::Error),
}

/// Appends a run's facts to `run:<id>`; an append, once begun, completes
/// even when the drive that asked for it is dropped, and [`Desk`] waits
/// for it (the write lock) before it ends a cancelled run.
#[derive(Clone)]
struct DaemonSink {
    journal: Journal,
    stream: StreamId,
    write: Arc<tokio::sync::Mutex<()>>,
}

impl Sink for DaemonSink {
    fn record<'a>(
        &'a mut self,
        facts: Vec<EventBody>,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Seq>, String>> + Send + 'a>> {
        Box::pin(async move {
            if facts.is_empty() {
                return Ok(Vec::new());
            }
            let guard = Arc::clone(&self.write).lock_owned().await;
            let appends: Vec<Append> = facts
                .into_iter()
                .map(|body| Append {
                    stream: self.stream.clone(),
                    cause: None,
                    body,
                })
                .collect();
            let journal = self.journal.clone();
            let append = tokio::spawn(async move {
                let r = journal.append_many(appends).await;
                drop(guard);
                r
            });
            match append.await {
                Ok(Ok(receipts)) => Ok(receipts.iter().map(|r| r.seq).collect()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(e) => Err(format!("the append task failed: {e}")),
            }
        })
    }
}

struct Claim {
    cancel: Cancel,
    /// Begun by a scheduler task (the core counts those itself).
    task: bool,
}

struct Inner {
    data: PathBuf,
    journal: Journal,
    policies: PathBuf,
    /// The policy set every decision takes at the time (a reload swaps
    /// it), or why none loaded at start (a reload then installs one).
    gate: std::sync::RwLock<Result<LiveGate, String>>,
    /// Held through a reload's append and swap: reloads one at a time.
    reload: tokio::sync::Mutex<()>,
    /// The sets a reload replaced, newest last (at most [`KEPT_SETS`]): a
    /// replay decides the steps they decided under them.
    replaced: Mutex<Vec<Arc<PolicyGate>>>,
    /// Held from choosing a run id until its `RunStarted` is durable.
    begin: tokio::sync::Mutex<()>,
    /// Runs being driven, by id.
    claimed: Mutex<HashMap<String, Claim>>,
    /// Approval timers, by run.
    timers: Mutex<HashMap<String, AbortHandle>>,
    /// Set when the runtime shuts down: no new drive begins.
    closed: std::sync::atomic::AtomicBool,
    /// The bus, when it runs (`[bus] policies`): runs are then offered
    /// its builtins.
    bus: std::sync::OnceLock<stele_engine::bus::service::Bus>,
    /// The runtime core, where requests queue their tasks (set once at
    /// start).
    runtime: std::sync::OnceLock<crate::up::Handle>,
    /// Starts waiting for a busy agent's task to end.
    waiting: std::sync::atomic::AtomicUsize,
}

/// The daemon's reasoning runs (cheap to clone).
#[derive(Clone)]
pub struct Desk(Arc<Inner>);

impl std::fmt::Debug for Desk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Desk")
            .field("policies", &self.0.policies)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these maps leaves them consistent (single inserts/removes).
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Desk {
    /// The desk of the daemon on `data`, with the policies of `policies`
    /// compiled once (or why they did not load: then every run is refused
    /// with that reason).
    #[must_use]
    pub fn new(
        data: &Path,
        journal: Journal,
        policies: &Path,
        gate: Result<Arc<PolicyGate>, String>,
    ) -> Desk {
        Desk(Arc::new(Inner {
            data: data.to_owned(),
            journal,
            policies: policies.to_owned(),
            gate: std::sync::RwLock::new(gate.map(LiveGate::new)),
            reload: tokio::sync::Mutex::new(()),
            replaced: Mutex::new(Vec::new()),
            begin: tokio::sync::Mutex::new(()),
            claimed: Mutex::new(HashMap::new()),
            timers: Mutex::new(HashMap::new()),
            closed: std::sync::atomic::AtomicBool::new(false),
            bus: std::sync::OnceLock::new(),
            runtime: std::sync::OnceLock::new(),
            waiting: std::sync::atomic::AtomicUsize::new(0),
        }))
    }

    /// Connects the desk to the runtime core: from now on runs begun by
    /// requests and continuations queue scheduler tasks there.
    pub fn attach(&self, runtime: crate::up::Handle) {
        let _ = self.0.runtime.set(runtime);
    }

    /// A scheduler slot for work of `agent` (`what` is journaled in its
    /// `TaskQueued`): waits for the task's placement.
    ///
    /// # Errors
    /// [`SlotError::Refused`] (the agent has an active task, too many
    /// requests wait, the runtime is shutting down, no such agent), or the
    /// task ended before it was placed.
    async fn slot(&self, agent: &str, request: TaskRequest) -> Result<Lease, SlotError> {
        let runtime = self
            .0
            .runtime
            .get()
            .ok_or_else(|| SlotError::Gone("the runtime core is not running".into()))?;
        let placed = runtime
            .request(agent, request)
            .await
            .map_err(|e| SlotError::Gone(format!("{e:#}")))?
            .map_err(SlotError::Refused)?;
        placed.await.map_err(|_| {
            SlotError::Gone(format!(
                "the task queued for {agent} ended before it was placed (the runtime is shutting down, or it was cancelled)"
            ))
        })
    }

    /// [`Desk::slot`], waiting while the agent has an active task (a
    /// continuation: nobody waits on it, and it must run when it can).
    async fn slot_when_free(&self, agent: &str, request: TaskRequest) -> Result<Lease, SlotError> {
        loop {
            match self.slot(agent, request.clone()).await {
                Err(SlotError::Refused(stele_engine::runtime::RuntimeRejection::Busy { .. }))
                    if !self.0.closed.load(std::sync::atomic::Ordering::SeqCst) =>
                {
                    tokio::time::sleep(BUSY_RETRY).await;
                }
                other => return other,
            }
        }
    }

    /// [`Desk::slot`], waiting up to `patience` while the agent has an
    /// active task (a start: its client waits at most that long); then
    /// the agent is busy. At most `crate::up::MAX_WAITING_REQUESTS` starts
    /// wait so at once; one more is refused.
    async fn slot_within(
        &self,
        agent: &str,
        request: TaskRequest,
        patience: Duration,
    ) -> Result<Lease, SlotError> {
        struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let limit = crate::up::MAX_WAITING_REQUESTS;
        if self.0.waiting.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= limit {
            self.0.waiting.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            return Err(SlotError::Refused(
                stele_engine::runtime::RuntimeRejection::TooManyRequests { limit },
            ));
        }
        let _waiting = Waiting(&self.0.waiting);
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            match self.slot(agent, request.clone()).await {
                Err(SlotError::Refused(stele_engine::runtime::RuntimeRejection::Busy { .. }))
                    if tokio::time::Instant::now() + BUSY_RETRY < deadline
                        && !self.0.closed.load(std::sync::atomic::Ordering::SeqCst) =>
                {
                    tokio::time::sleep(BUSY_RETRY).await;
                }
                other => return other,
            }
        }
    }

    /// Returns once the desk is closed (a shutdown began).
    async fn closing(&self) {
        while !self.0.closed.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::time::sleep(EXPIRY_RETRY).await;
        }
    }

    /// Offers every run begun or continued from now on the bus builtins,
    /// sent through `bus` (the daemon's; set once, when the bus starts).
    pub fn offer_bus(&self, bus: stele_engine::bus::service::Bus) {
        let _ = self.0.bus.set(bus);
    }

    /// The daemon's policy gate (the current deciders a replay uses).
    ///
    /// # Errors
    /// No policy set is loaded; the message says why.
    pub(crate) fn gate(&self) -> Result<Arc<PolicyGate>> {
        Ok(self.live()?.current())
    }

    /// The set in force, then the sets it replaced, newest first (what a
    /// replay decides under: `stele_replay::replay_under`).
    ///
    /// # Errors
    /// No policy set is loaded; the message says why.
    pub(crate) fn gates(&self) -> Result<Vec<Arc<PolicyGate>>> {
        let mut gates = vec![self.gate()?];
        gates.extend(lock(&self.0.replaced).iter().rev().cloned());
        Ok(gates)
    }

    /// The daemon's live gate: a drive given it decides each step with the
    /// set in force then, so a reload reaches runs in flight.
    ///
    /// # Errors
    /// No policy set is loaded; the message says why.
    pub(crate) fn live(&self) -> Result<LiveGate> {
        match &*self
            .0
            .gate
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
        {
            Ok(g) => Ok(g.clone()),
            Err(e) => bail!(
                "no policy set is loaded, so reasoning runs cannot be checked: {e} (start `stele up --policies DIR`, or `stele policy reload --policies DIR`)"
            ),
        }
    }

    /// The daemon's own policy directory (`stele up --policies`).
    #[must_use]
    pub fn policy_dir(&self) -> &Path {
        &self.0.policies
    }

    /// Journals the set the daemon starts with (`PolicySetLoaded`, `old`
    /// empty) on stream [`POLICY_STREAM`]; nothing when none loaded.
    ///
    /// # Errors
    /// The journal refused the event.
    pub async fn announce(&self) -> Result<()> {
        let Ok(gate) = self.gate() else {
            return Ok(());
        };
        let _one_at_a_time = self.0.reload.lock().await;
        self.0
            .journal
            .append(Append {
                stream: StreamId::new(POLICY_STREAM)?,
                cause: None,
                body: EventBody::PolicySetLoaded {
                    old: String::new(),
                    new: gate.hash(),
                    policies: u32::try_from(gate.len()).unwrap_or(u32::MAX),
                    source: self.0.policies.display().to_string(),
                },
            })
            .await
            .context("journaling the policy set in force")?;
        Ok(())
    }

    /// Loads the daemon's own policy directory again (on the blocking
    /// pool) and [`reload`](Self::reload)s it.
    ///
    /// # Errors
    /// The set does not load (every problem named; the old set stays in
    /// force), or the journal refused the event.
    pub async fn reload_dir(&self) -> Result<Reloaded> {
        let dir = self.0.policies.clone();
        let gate = tokio::task::spawn_blocking({
            let dir = dir.clone();
            move || PolicyGate::load(&dir)
        })
        .await
        .context("the policy loader task failed")?
        .with_context(|| format!("loading the policies in {}", dir.display()))?;
        self.reload(gate, dir.display().to_string()).await
    }

    /// Puts `gate` (compiled and validated by the caller) in force: unless
    /// it is the set already in force (same hash: nothing is journaled or
    /// swapped), `PolicySetLoaded { old, new, policies, source }` is
    /// journaled on [`POLICY_STREAM`] and, once durable, the set is swapped
    /// for every later decision — runs in flight take it at their next
    /// step's decisions, whose `PolicyDecided.policy_set` is its hash.
    ///
    /// # Errors
    /// The journal refused the event (the old set stays in force).
    pub async fn reload(&self, gate: PolicyGate, source: String) -> Result<Reloaded> {
        let _one_at_a_time = self.0.reload.lock().await;
        let old = self.gate().ok();
        let new = gate.hash();
        let policies = gate.len();
        let old_hash = old.as_ref().map(|g| g.hash()).unwrap_or_default();
        if old_hash == new {
            return Ok(Reloaded {
                old: old_hash,
                new,
                policies,
                source,
                seq: None,
            });
        }
        let receipt = self
            .0
            .journal
            .append(Append {
                stream: StreamId::new(POLICY_STREAM)?,
                cause: None,
                body: EventBody::PolicySetLoaded {
                    old: old_hash.clone(),
                    new: new.clone(),
                    policies: u32::try_from(policies).unwrap_or(u32::MAX),
                    source: source.clone(),
                },
            })
            .await
            .context("journaling the policy set change (the old set stays in force)")?;
        let gate = Arc::new(gate);
        let mut slot = self
            .0
            .gate
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match &*slot {
            Ok(live) => {
                let old = live.replace(gate);
                let mut replaced = lock(&self.0.replaced);
                replaced.retain(|g| g.hash() != old.hash());
                replaced.push(old);
                if replaced.len() > KEPT_SETS {
                    replaced.remove(0);
                }
            }
            Err(_) => *slot = Ok(LiveGate::new(gate)),
        }
        Ok(Reloaded {
            old: old_hash,
            new,
            policies,
            source,
            seq: Some(receipt.seq.0),
        })
    }

    /// The sink of a claimed `run` and the lock its writes take; the claim
    /// is released when the sink cannot be made.
    fn claimed_sink(&self, run: &str) -> Result<(DaemonSink, Arc<tokio::sync::Mutex<()>>)> {
        let write = Arc::new(tokio::sync::Mutex::new(()));
        match self.sink(run, &write) {
            Ok(sink) => Ok((sink, write)),
            Err(e) => {
                self.release(run);
                Err(e)
            }
        }
    }

    fn sink(&self, run: &str, write: &Arc<tokio::sync::Mutex<()>>) -> Result<DaemonSink> {
        Ok(DaemonSink {
            journal: self.0.journal.clone(),
            stream: StreamId::new(format!("run:{run}"))?,
            write: Arc::clone(write),
        })
    }

    /// Whether `run` is being driven now.
    #[must_use]
    pub fn driving(&self, run: &str) -> bool {
        lock(&self.0.claimed).contains_key(run)
    }

    /// Runs being driven, or waiting for a slot, that no scheduler task
    /// owns (forks; continuations until their task is placed).
    #[must_use]
    pub fn detached(&self) -> usize {
        lock(&self.0.claimed).values().filter(|c| !c.task).count()
    }

    /// Refuses new drives and cancels the detached ones (a shutdown).
    pub fn close(&self, reason: &str) {
        self.0.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        self.cancel_detached(reason);
    }

    /// Cancels every detached drive.
    pub fn cancel_detached(&self, reason: &str) {
        for c in lock(&self.0.claimed).values().filter(|c| !c.task) {
            c.cancel.send_replace(Some(reason.to_owned()));
        }
    }

    /// Stops the timers (the daemon ends).
    pub fn disarm_all(&self) {
        for (_, t) in lock(&self.0.timers).drain() {
            t.abort();
        }
    }

    /// The registered definition of `agent`, or the one in `source`
    /// (registered first unless the same text is registered).
    ///
    /// # Errors
    /// No such agent, or a definition that does not parse.
    pub async fn definition(&self, agent: &str, source: Option<&str>) -> Result<AgentDefinition> {
        let path = Path::new("(request definition)");
        run_cmd::definition_async(&self.0.data, &self.0.journal, agent, source.map(|s| (path, s))).await
    }

    /// Begins a run of `def` on `input` for a request (`POST /v1/runs`):
    /// queues a scheduler task for the agent and, once it is placed, begins
    /// the run in it (its slot held until the run finishes or parks);
    /// returns the run id once `RunStarted` is durable.
    ///
    /// # Errors
    /// [`StartError::Slot`]: no task could be queued or placed (the agent
    /// is busy, too many requests wait, the runtime is shutting down);
    /// [`StartError::Run`]: the run could not begin (not a reasoning agent,
    /// no policy set, its provider or tools).
    pub async fn start_requested(&self, def: AgentDefinition, input: String) -> Result<String, StartError> {
        if self.0.closed.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StartError::Slot(SlotError::Gone(
                "the runtime is shutting down; no run begins".into(),
            )));
        }
        if !matches!(def.runs, stele_engine::Runs::Reasoning { .. }) {
            return Err(StartError::Run(anyhow::anyhow!(
                "agent {} does not run a reasoning loop (its [runs] kind is not \"reasoning\")",
                def.name
            )));
        }
        // Checked before a slot is taken: a run that cannot begin queues nothing.
        self.live().map_err(StartError::Run)?;
        let Lease { task, cancel, done } = self
            .slot_within(
                &def.name,
                TaskRequest::Run { input: input.clone() },
                crate::cli::config().http.request_timeout,
            )
            .await
            .map_err(StartError::Slot)?;
        match self.start(def, input, cancel, true).await {
            Ok((run, handle)) => {
                tokio::spawn(async move {
                    let end = match handle.await {
                        Ok(Ok(s)) => TaskEnd::Settled(s),
                        Ok(Err(e)) => TaskEnd::Failed(format!("{e:#}")),
                        Err(e) => TaskEnd::Failed(format!("the run's task failed: {e}")),
                    };
                    let _ = done.send(end);
                });
                Ok(run)
            }
            Err(e) => {
                let _ = done.send(TaskEnd::Failed(format!("{task}: {e:#}")));
                Err(StartError::Run(e))
            }
        }
    }

    /// Begins a run of `def` on `input` and drives it in a tokio task; the
    /// id is known (and `RunStarted` durable) when this returns. The
    /// handle yields where the drive left the run. `task`: begun for a
    /// scheduler task, whose `cancel` the core fires on a stop.
    ///
    /// # Errors
    /// The agent is not a reasoning agent, its provider or tools cannot be
    /// set up, or the journal refused `RunStarted`.
    pub async fn start(
        &self,
        def: AgentDefinition,
        input: String,
        cancel: Cancel,
        task: bool,
    ) -> Result<(String, tokio::task::JoinHandle<Result<Settled>>)> {
        if !task && self.0.closed.load(std::sync::atomic::Ordering::SeqCst) {
            bail!("the runtime is shutting down; no run begins");
        }
        let begun = {
            let _one_at_a_time = self.0.begin.lock().await;
            run_cmd::begin(
                &self.0.data,
                &self.0.journal,
                &def,
                &input,
                self.live()?,
                &self.0.policies,
                self.0.bus.get(),
            )
            .await?
        };
        let run = begun.run.clone();
        match self.claim(&run, cancel.clone(), task) {
            Ok(()) => {}
            Err(DecideError::Busy(m)) => bail!("{m}"),
            Err(DecideError::Refused(e)) => return Err(e),
        }
        let desk = self.clone();
        let handle = tokio::spawn(async move {
            let write = Arc::new(tokio::sync::Mutex::new(()));
            let mut sink = desk.sink(&begun.run, &write)?;
            let driver = begun.driver;
            let lp = begun.lp;
            let knowledge = begun.knowledge;
            let input = begun.input;
            let run = begun.run;
            let drive = async {
                let stop = driver.drive(lp, &mut sink).await?;
                crate::context_cmd::learned_async(&knowledge, &stop, &input).await;
                Ok(stop)
            };
            desk.guarded(&run, &def, &driver, &write, cancel, drive).await
        });
        Ok((run, handle))
    }

    /// Forks `origin` at `at` (its next journaled input replaced by `edit`)
    /// into a new run, driven in a tokio task like any detached run (live
    /// past the journaled prefix, with the daemon's policy gate); returns
    /// the new run's id once its start (`RunStarted`, `RunForked`) is
    /// durable, and the task's handle.
    ///
    /// # Errors
    /// The runtime is shutting down, no policy set is loaded, the agent's
    /// provider or tools cannot be set up, or the fork failed before it
    /// started (its spec, the journal refusing its start).
    pub async fn fork(
        &self,
        origin: stele_replay::RecordedRun,
        at: stele_journal::Seq,
        edit: Option<stele_replay::Edit>,
    ) -> Result<(String, tokio::task::JoinHandle<Result<Settled>>)> {
        if self.0.closed.load(std::sync::atomic::Ordering::SeqCst) {
            bail!("the runtime is shutting down; no run begins");
        }
        let def = origin.definition.clone();
        let (driver, _tools) = run_cmd::driver_with(&def, self.live()?, &self.0.journal)?;
        let started = Arc::new(tokio::sync::Notify::new());
        let live = stele_replay::fork::Live {
            provider: Arc::clone(&driver.provider),
            tools: Arc::clone(&driver.tools),
            gate: driver.gate.clone(),
            knowledge: Some(crate::context_cmd::step_recall(
                &self.0.journal,
                &self.0.policies,
                &driver,
            )?),
            started: Some(Arc::clone(&started)),
        };
        // Run ids are taken in order: hold the lock until the start is durable.
        let _one_at_a_time = self.0.begin.lock().await;
        let run = {
            let reader = self.0.journal.reader();
            state_at::<RunsView>(&reader, &SnapshotStore::new(&self.0.data), reader.head().seq)?
                .state
                .next_run()
        };
        let cancel = cancel_signal();
        match self.claim(&run, cancel.clone(), false) {
            Ok(()) => {}
            Err(DecideError::Busy(m)) => bail!("{m}"),
            Err(DecideError::Refused(e)) => return Err(e),
        }
        let desk = self.clone();
        let new_run = run.clone();
        let mut handle = tokio::spawn(async move {
            let write = Arc::new(tokio::sync::Mutex::new(()));
            let settings = crate::replay_cmd::settings();
            let work = async {
                let outcome =
                    stele_replay::fork(&origin, at, edit, &new_run, &settings, live, &desk.0.journal)
                        .await
                        .map_err(|e| e.to_string())?;
                Ok(Settled::of_fork(&outcome))
            };
            desk.guarded_settled(&new_run, &def, &driver, &write, cancel, work)
                .await
        });
        tokio::select! {
            biased;
            () = started.notified() => Ok((run, handle)),
            ended = &mut handle => {
                // It ended before its start was durable: that is an error.
                let settled = ended.map_err(|e| anyhow::anyhow!("{run}: {e}"))??;
                bail!("{run}: the fork ended before it started ({})", settled.outcome)
            }
        }
    }

    fn claim(&self, run: &str, cancel: Cancel, task: bool) -> Result<(), DecideError> {
        if !task && self.0.closed.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(DecideError::Busy(
                "the runtime is shutting down; the run stays as it is".into(),
            ));
        }
        let mut claimed = lock(&self.0.claimed);
        if claimed.contains_key(run) {
            return Err(DecideError::Busy(format!(
                "{run} is being driven now (not parked); wait until it parks or finishes"
            )));
        }
        claimed.insert(run.to_owned(), Claim { cancel, task });
        Ok(())
    }

    fn release(&self, run: &str) {
        lock(&self.0.claimed).remove(run);
    }

    /// Hands the claim of `run` to the scheduler task now driving it: its
    /// stop signal is the task's.
    fn claim_for_task(&self, run: &str, cancel: Cancel) {
        lock(&self.0.claimed).insert(run.to_owned(), Claim { cancel, task: true });
    }

    /// A continuation of `run` (claimed) waits for a slot of `agent`, then
    /// drives `work` with the task's stop signal and reports its end to the
    /// task; without a slot the run stays parked and the claim is released.
    async fn continue_in_slot<W, F>(&self, run: &str, agent: &str, request: TaskRequest, work: W)
    where
        W: FnOnce(Cancel) -> F,
        F: Future<Output = Result<Settled>>,
    {
        // A shutdown ends the wait (the queued task is cancelled with the
        // queue); the run stays parked.
        let waited = tokio::select! {
            l = self.slot_when_free(agent, request) => l,
            () = self.closing() => Err(SlotError::Gone("the runtime is shutting down".into())),
        };
        let Lease { cancel, done, .. } = match waited {
            Ok(l) => l,
            Err(e) => {
                eprintln!("stele up: {run}: not continued (it stays parked): {e}");
                self.release(run);
                self.arm(run);
                return;
            }
        };
        self.claim_for_task(run, cancel.clone());
        let end = match work(cancel).await {
            Ok(s) => TaskEnd::Settled(s),
            Err(e) => {
                eprintln!("stele up: {run}: {e:#}");
                TaskEnd::Failed(format!("{e:#}"))
            }
        };
        let _ = done.send(end);
    }

    /// Drives `work` until it settles or `cancel` fires; a cancelled run is
    /// ended `cancelled` from its journaled facts. Releases the claim and
    /// arms the approval timer of a parked run.
    async fn guarded(
        &self,
        run: &str,
        def: &AgentDefinition,
        driver: &Driver,
        write: &Arc<tokio::sync::Mutex<()>>,
        cancel: Cancel,
        work: impl Future<Output = Result<Stop, String>>,
    ) -> Result<Settled> {
        let work = async { work.await.map(|s| Settled::of(&s)) };
        self.guarded_settled(run, def, driver, write, cancel, work).await
    }

    /// [`Desk::guarded`] for work that says where it left the run itself
    /// (a fork).
    async fn guarded_settled(
        &self,
        run: &str,
        def: &AgentDefinition,
        driver: &Driver,
        write: &Arc<tokio::sync::Mutex<()>>,
        cancel: Cancel,
        work: impl Future<Output = Result<Settled, String>>,
    ) -> Result<Settled> {
        let mut stopped = cancel.subscribe();
        let outcome = tokio::select! {
            r = work => Ok(r),
            reason = stopped.wait_for(Option::is_some) => {
                Err(reason.ok().and_then(|r| r.clone()).unwrap_or_else(|| "stopped".into()))
            }
        };
        let settled = match outcome {
            Ok(r) => r.map_err(|e| anyhow::anyhow!("{run}: {e}")),
            Err(reason) => self.end_cancelled(run, def, driver, write, &reason).await,
        };
        self.release(run);
        if let Ok(s) = &settled
            && !s.awaiting.is_empty()
        {
            self.arm(run);
        }
        settled
    }

    /// Ends a run whose drive was dropped: waits for the append it had in
    /// flight, rebuilds it and records its cancellation.
    async fn end_cancelled(
        &self,
        run: &str,
        def: &AgentDefinition,
        driver: &Driver,
        write: &Arc<tokio::sync::Mutex<()>>,
        reason: &str,
    ) -> Result<Settled> {
        drop(write.lock().await);
        let events = run_cmd::run_events(&self.0.journal.reader(), run)?;
        let spec = run_cmd::spec(def, run)?;
        let resumed =
            reasoning::resume(spec, &events).map_err(|e| anyhow::anyhow!("rebuilding {run}: {e}"))?;
        let finished = match resumed {
            Resumed::Reasoning(lp) => lp.cancel(reason),
            Resumed::Parked(p) => p.cancel(reason),
            Resumed::Interrupted(d) => d.cancel(reason),
            Resumed::Finished => return self.settled_from_view(run),
        };
        let mut sink = self.sink(run, write)?;
        let stop = driver
            .finish(finished, &mut sink)
            .await
            .map_err(|e| anyhow::anyhow!("{run}: {e}"))?;
        Ok(Settled::of(&stop))
    }

    fn settled_from_view(&self, run: &str) -> Result<Settled> {
        let reader = self.0.journal.reader();
        let runs = state_at::<RunsView>(&reader, &SnapshotStore::new(&self.0.data), reader.head().seq)?.state;
        let view = runs
            .runs
            .get(run)
            .with_context(|| format!("no run named {run}"))?;
        Ok(Settled {
            run: run.to_owned(),
            outcome: view.outcome.clone().unwrap_or_else(|| view.state.clone()),
            answer: view.answer.clone().unwrap_or_default(),
            steps: view.step,
            awaiting: view
                .awaiting
                .iter()
                .map(|(c, r)| (c.clone(), r.clone()))
                .collect(),
        })
    }

    /// Decides `call` of parked run `run` and continues the run in a tokio
    /// task (a detached drive); returns once the decision is checked.
    ///
    /// # Errors
    /// The run is being driven, or the decision is refused (unknown run,
    /// not awaiting that call, the approval expired).
    pub async fn decide(
        &self,
        run: &str,
        call: &str,
        approved: bool,
        approver: &str,
        reason: &str,
    ) -> Result<(), DecideError> {
        // Until its slot: a shutdown cancels the wait (`close`).
        self.claim(run, cancel_signal(), false)?;
        let (prepared, def) = match self.prepare_decision(run, call).await {
            Ok(p) => p,
            Err(e) => {
                self.release(run);
                // What an expiry found is journaled: its timer may be re-armed.
                self.arm(run);
                return Err(DecideError::Refused(e));
            }
        };
        let desk = self.clone();
        let decision = Decision {
            run: run.to_owned(),
            call: call.to_owned(),
            approved,
            approver: approver.to_owned(),
            reason: reason.to_owned(),
        };
        // The continuation takes a scheduler slot of the run's agent first.
        let agent = def.name.clone();
        let request = decision.request();
        tokio::spawn(async move {
            let d = desk.clone();
            let id = decision.run.clone();
            desk.continue_in_slot(&id, &agent, request, |cancel| async move {
                d.drive_decision(&def, prepared, &decision, cancel).await
            })
            .await;
        });
        Ok(())
    }

    /// Checks that `run` is parked on `call` and rebuilds it (with its
    /// agent's definition) for a decision.
    async fn prepare_decision(&self, run: &str, call: &str) -> Result<(run_cmd::Prepared, AgentDefinition)> {
        let prepared = run_cmd::prepare_decision(
            &self.0.data,
            &self.0.journal,
            run,
            call,
            self.live()?,
            &self.0.policies,
            self.0.bus.get(),
        )
        .await?;
        let view_agent = {
            let reader = self.0.journal.reader();
            let runs =
                state_at::<RunsView>(&reader, &SnapshotStore::new(&self.0.data), reader.head().seq)?.state;
            runs.runs.get(run).map(|v| v.agent.clone()).unwrap_or_default()
        };
        let def = self.definition(&view_agent, None).await?;
        Ok((prepared, def))
    }

    /// Continues a prepared, claimed run with `decision` until it settles
    /// or `cancel` fires.
    async fn drive_decision(
        &self,
        def: &AgentDefinition,
        prepared: run_cmd::Prepared,
        decision: &Decision,
        cancel: Cancel,
    ) -> Result<Settled> {
        let run_cmd::Prepared {
            driver,
            parked,
            knowledge,
            input,
        } = prepared;
        let run = &decision.run;
        let (mut sink, write) = self.claimed_sink(run)?;
        let work = async {
            let stop = driver
                .decide(
                    parked,
                    &decision.call,
                    decision.approved,
                    &decision.approver,
                    &decision.reason,
                    &mut sink,
                )
                .await?;
            // It went on to its end: what it learned is stored.
            crate::context_cmd::learned_async(&knowledge, &stop, &input).await;
            Ok(stop)
        };
        self.guarded(run, def, &driver, &write, cancel, work).await
    }

    /// Does what a request queued before this daemon started asks (its
    /// requester is gone, so nobody waits): once `placed` yields the
    /// task's lease, a run begins and is driven to its end or park, or a
    /// parked run is continued from the journal — the decision if the run
    /// still waits on that call, the rejection of what has timed out by
    /// then — and the end is reported to the task. A continuation's run is
    /// claimed from now on, so neither a new decision nor an approval
    /// timer continues it meanwhile (the claim goes with the task; a task
    /// ended unplaced releases it and the run stays parked).
    pub fn adopt(
        &self,
        task: String,
        agent: String,
        request: TaskRequest,
        placed: tokio::sync::oneshot::Receiver<Lease>,
    ) {
        let run = match &request {
            TaskRequest::Run { .. } => None,
            TaskRequest::Decision { run, .. } | TaskRequest::Expiry { run } => Some(run.clone()),
        };
        let claimed = run
            .as_ref()
            .is_some_and(|r| self.claim(r, cancel_signal(), false).is_ok());
        let desk = self.clone();
        tokio::spawn(async move {
            let lease = tokio::select! {
                l = placed => l.ok(),
                () = desk.closing() => None,
            };
            let Some(Lease { cancel, done, .. }) = lease else {
                eprintln!(
                    "stele up: {task} ended before it was placed; not done: {}",
                    stele_engine::runtime::request_words(&request)
                );
                if let (Some(run), true) = (&run, claimed) {
                    desk.release(run);
                    desk.arm(run);
                }
                return;
            };
            if let Some(run) = &run {
                desk.claim_for_task(run, cancel.clone());
            }
            let end = match desk.adopted(&agent, request, cancel).await {
                Ok(s) => TaskEnd::Settled(s),
                Err(e) => {
                    eprintln!("stele up: {task}: {e:#}");
                    if let Some(run) = &run {
                        desk.release(run);
                        desk.arm(run);
                    }
                    TaskEnd::Failed(format!("{e:#}"))
                }
            };
            let _ = done.send(end);
        });
    }

    /// The work of an adopted request, in its placed task.
    async fn adopted(&self, agent: &str, request: TaskRequest, cancel: Cancel) -> Result<Settled> {
        match request {
            TaskRequest::Run { input } => {
                let def = self.definition(agent, None).await?;
                let (_, handle) = self.start(def, input, cancel, true).await?;
                handle.await.context("the run's task failed")?
            }
            TaskRequest::Decision {
                run,
                call,
                approved,
                approver,
                reason,
            } => {
                let (prepared, def) = self.prepare_decision(&run, &call).await?;
                let decision = Decision {
                    run,
                    call,
                    approved,
                    approver,
                    reason,
                };
                self.drive_decision(&def, prepared, &decision, cancel).await
            }
            TaskRequest::Expiry { run } => match self.prepare_expiry(&run).await? {
                Some(expiry) => self.drive_expiry(&run, expiry, cancel).await,
                None => {
                    self.release(&run);
                    self.arm(&run);
                    self.settled_from_view(&run)
                }
            },
        }
    }

    /// Arms the approval timer of every parked run (daemon start).
    ///
    /// # Errors
    /// The runs view cannot be folded.
    pub fn arm_parked(&self) -> Result<()> {
        let reader = self.0.journal.reader();
        let runs = state_at::<RunsView>(&reader, &SnapshotStore::new(&self.0.data), reader.head().seq)?.state;
        for (run, view) in &runs.runs {
            if !view.awaiting.is_empty() {
                self.arm(run);
            }
        }
        Ok(())
    }

    /// (Re)arms the timer of `run`'s earliest approval deadline, if any.
    fn arm(&self, run: &str) {
        // An id that names no run (a refused request's) has no deadline.
        let deadline = run_cmd::run_events(&self.0.journal.reader(), run)
            .ok()
            .and_then(|events| reasoning::next_approval_deadline(&events));
        let mut timers = lock(&self.0.timers);
        if let Some(old) = timers.remove(run) {
            old.abort();
        }
        let Some(deadline_ms) = deadline else {
            return;
        };
        let desk = self.clone();
        let name = run.to_owned();
        let handle = tokio::spawn(async move {
            let wait = deadline_ms.saturating_sub(run_cmd::now_ms());
            tokio::time::sleep(Duration::from_millis(wait)).await;
            desk.expire(&name).await;
        });
        timers.insert(run.to_owned(), handle.abort_handle());
    }

    /// Rejects `run`'s timed-out approvals (a timer fired) and lets the run
    /// go on in a detached drive.
    async fn expire(&self, run: &str) {
        loop {
            if self.claim(run, cancel_signal(), false).is_ok() {
                if let Err(e) = self.expire_claimed(run).await {
                    eprintln!("stele up: {run}: resolving timed-out approvals: {e:#}");
                    self.release(run);
                }
                return;
            }
            tokio::time::sleep(EXPIRY_RETRY).await;
        }
    }

    async fn expire_claimed(&self, run: &str) -> Result<()> {
        let Some(expiry) = self.prepare_expiry(run).await? else {
            self.release(run);
            self.arm(run);
            return Ok(());
        };
        let agent = expiry.def.name.clone();
        let desk = self.clone();
        let run = run.to_owned();
        tokio::spawn(async move {
            let d = desk.clone();
            let id = run.clone();
            let request = TaskRequest::Expiry { run: run.clone() };
            desk.continue_in_slot(&id, &agent, request, |cancel| async move {
                d.drive_expiry(&run, expiry, cancel).await
            })
            .await;
        });
        Ok(())
    }

    /// Rebuilds parked `run` for the rejection of its approvals that have
    /// timed out by now; `None` when none has.
    async fn prepare_expiry(&self, run: &str) -> Result<Option<Expiry>> {
        let reader = self.0.journal.reader();
        let events = run_cmd::run_events(&reader, run)?;
        let expired = reasoning::expired_approvals(&events, run_cmd::now_ms());
        if expired.is_empty() {
            return Ok(None);
        }
        let runs = state_at::<RunsView>(&reader, &SnapshotStore::new(&self.0.data), reader.head().seq)?.state;
        let agent = runs
            .runs
            .get(run)
            .map(|v| v.agent.clone())
            .with_context(|| format!("no run named {run}"))?;
        let def = self.definition(&agent, None).await?;
        // The same tools the run was offered before it parked.
        let run_cmd::Stack {
            driver,
            spec,
            knowledge,
            ..
        } = run_cmd::stack(
            &self.0.journal,
            &def,
            run,
            self.live()?,
            &self.0.policies,
            self.0.bus.get(),
        )
        .await?;
        let parked =
            match reasoning::resume(spec, &events).map_err(|e| anyhow::anyhow!("rebuilding {run}: {e}"))? {
                Resumed::Parked(p) => p,
                _ => bail!("{run} has approvals that timed out but is not parked"),
            };
        Ok(Some(Expiry {
            def,
            driver,
            parked,
            expired,
            knowledge,
            input: run_cmd::run_input(&events),
        }))
    }

    /// Rejects a prepared, claimed run's timed-out approvals (approver
    /// `expired`) and lets it go on until it settles or `cancel` fires.
    async fn drive_expiry(&self, run: &str, expiry: Expiry, cancel: Cancel) -> Result<Settled> {
        let Expiry {
            def,
            driver,
            mut parked,
            expired,
            knowledge,
            input,
        } = expiry;
        let (mut sink, write) = self.claimed_sink(run)?;
        let work = async {
            for (call, why) in expired {
                eprintln!("stele up: {run}: {call} {why}");
                match driver
                    .decide(parked, &call, false, "expired", &why, &mut sink)
                    .await?
                {
                    Stop::Parked(p) => parked = p,
                    other => {
                        crate::context_cmd::learned_async(&knowledge, &other, &input).await;
                        return Ok(other);
                    }
                }
            }
            Ok(Stop::Parked(parked))
        };
        self.guarded(run, &def, &driver, &write, cancel, work).await
    }
}

/// A human's decision on a parked run's call.
struct Decision {
    run: String,
    call: String,
    approved: bool,
    approver: String,
    reason: String,
}

impl Decision {
    /// The request its continuation's task records.
    fn request(&self) -> TaskRequest {
        TaskRequest::Decision {
            run: self.run.clone(),
            call: self.call.clone(),
            approved: self.approved,
            approver: self.approver.clone(),
            reason: self.reason.clone(),
        }
    }
}

/// A parked run rebuilt for the rejection of its timed-out approvals.
struct Expiry {
    def: AgentDefinition,
    driver: Driver,
    parked: stele_engine::orga::AgentLoop<stele_engine::orga::AwaitingApproval>,
    expired: Vec<(String, String)>,
    knowledge: crate::context_cmd::Bridge,
    input: String,
}

/// A scheduler slot a request holds: the task placed for it. The work
/// done in it reports its end through `done` (the core records it as the
/// task's exit and frees the slot); `cancel` fires when the task is
/// stopped (`stele agent stop`, `execution_timeout`, preemption, shutdown).
#[derive(Debug)]
pub struct Lease {
    /// The task.
    pub task: String,
    /// Its stop signal.
    pub cancel: Cancel,
    /// Where its end goes.
    pub done: tokio::sync::oneshot::Sender<TaskEnd>,
}

/// Why a request got no slot.
#[derive(Debug)]
pub enum SlotError {
    /// The runtime refused to queue it (busy agent, too many waiting, no
    /// such agent, shutting down).
    Refused(stele_engine::runtime::RuntimeRejection),
    /// The core is gone, or the task ended before it was placed.
    Gone(String),
}

impl std::fmt::Display for SlotError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SlotError::Refused(r) => write!(f, "no scheduler slot: {r}"),
            SlotError::Gone(m) => write!(f, "no scheduler slot: {m}"),
        }
    }
}

/// Why [`Desk::start_requested`] began no run.
#[derive(Debug)]
pub enum StartError {
    /// No slot (nothing began; nothing of the run is journaled).
    Slot(SlotError),
    /// The run could not begin.
    Run(anyhow::Error),
}

/// Where a scheduler task of a reasoning agent stands, for the core.
#[derive(Debug)]
pub enum TaskEnd {
    /// The drive settled (finished, parked or cancelled).
    Settled(Settled),
    /// The drive failed (the journal refused its facts).
    Failed(String),
}

/// What a reasoning agent's scheduled run gets as input: what triggered it,
/// and for an event trigger the event itself (its kind, stream and body as
/// JSON).
#[must_use]
pub fn trigger_input(journal: &Journal, agent: &str, task: &str, trigger: Option<&str>) -> String {
    let Some(trigger) = trigger else {
        return format!("scheduled run {task} of agent {agent}");
    };
    if let Some(seq) = trigger.strip_prefix("event ").and_then(|s| s.parse::<u64>().ok())
        && let Ok(Some(e)) = journal.reader().get(stele_journal::Seq(seq))
        && let Ok(ev) = e.to_event()
    {
        let body = serde_json::to_string(&ev.body).unwrap_or_default();
        return format!(
            "run {task} of agent {agent}, triggered by event {seq} on stream {}: {body}",
            e.stream()
        );
    }
    format!("run {task} of agent {agent}, triggered by {trigger}")
}
