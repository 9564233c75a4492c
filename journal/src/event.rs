//! The event: its body (one enum of plain facts), its canonical bytes, its
//! hash, and the stored record with zero-copy validated access.
//!
//! Layout of a stored record (the value under `seq` in the `events` keyspace):
//!
//! ```text
//! offset  size  field
//! 0       1     record version (1)
//! 1       32    prev      hash of event seq-1 (zero for seq 1)
//! 33      32    hash      BLAKE3(EVENT_DOMAIN || prev || canonical)
//! 65      8     key       KeyId of the signing key
//! 73      64    sig       Ed25519 signature over `hash`
//! 137     ..    canonical bytes:
//!               0   u8      canonical version (1)
//!               1   u64 LE  seq
//!               9   i64 LE  at (ns since the Unix epoch)
//!               17  u8      1 if cause is present, else 0
//!               18  u64 LE  cause (0 when absent)
//!               26  u16 LE  stream length n
//!               28  n       stream (ASCII)
//!               28+n ..     body: rkyv archive of `EventBody`
//! ```
//!
//! The header of the canonical bytes is fixed-layout so that a verifier in
//! another language can read seq, time, cause and stream without rkyv; the
//! body is rkyv (little-endian, unaligned, 32-bit offsets — fixed by cargo
//! features, so the bytes are the same on every platform). Nothing here
//! touches storage; see `store`.

use rkyv::rancor;

use crate::error::{Error, Result};
use crate::ids::{Hash, KeyId, RunId, Seq, StreamId};
use crate::limits::MAX_BODY_BYTES;

/// Domain tag of event hashes.
pub const EVENT_DOMAIN: &[u8] = b"stele/event/v1";
/// Domain tag of key ids.
pub const KEY_ID_DOMAIN: &[u8] = b"stele/key/v1";

/// Record version written by this build.
pub const RECORD_VERSION: u8 = 1;
/// Canonical-bytes version written by this build.
pub const CANONICAL_VERSION: u8 = 1;
/// Size of the record envelope before the canonical bytes.
pub const ENVELOPE_BYTES: usize = 1 + 32 + 32 + 8 + 64;
/// Size of the canonical header before the stream bytes.
pub const CANONICAL_HEADER_BYTES: usize = 1 + 8 + 8 + 1 + 8 + 2;

pub use body::{
    AgentState, ArchivedAgentState, ArchivedBusEnvelope, ArchivedContextArchive, ArchivedContextItem,
    ArchivedEventBody, ArchivedProcessExit, ArchivedRuntimeHost, ArchivedSandboxExit, ArchivedSandboxStart,
    ArchivedTaskOutcome, ArchivedTaskPriority, ArchivedTaskRequest, ArchivedToolList, ArchivedToolOffer,
    BusEnvelope, ContextArchive, ContextItem, EventBody, ProcessExit, RuntimeHost, SandboxExit, SandboxStart,
    TaskOutcome, TaskPriority, TaskRequest, ToolList, ToolOffer,
};

/// The size of the archived `EventBody` (the tag plus its largest
/// variant), which every stored body was written with. rkyv places the root
/// at the end of the body bytes by this size, so it can never change: a new
/// variant whose fields would be larger boxes them (an archived `Box` is a
/// 4-byte relative pointer), as `RuntimeStarted` and `ProcessExited` do. A
/// test pins it; the golden journal catches a change too.
pub const ARCHIVED_BODY_BYTES: usize = 61;

#[allow(missing_docs)] // rkyv's generated resolver types carry no docs
mod body {
    /// A fact the journal records. One variant per fact, named in the past
    /// tense, plain data only.
    ///
    /// Variants are append-only: a released variant is never changed or
    /// reordered (the rkyv tag is its position). To change a fact, add `FooV2`
    /// after the others and upcast on read.
    #[derive(
        Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, serde::Serialize,
    )]
    #[serde(tag = "kind", rename_all = "snake_case")]
    #[rkyv(derive(Debug), attr(allow(missing_docs)))]
    pub enum EventBody {
        /// A writer opened the journal. The first event of every journal is one;
        /// it introduces the first signing key.
        JournalOpened {
            /// Record/canonical format version of the writer.
            format_version: u32,
            /// The software that opened it (`stele x.y.z`).
            software: String,
            /// The key that signs from here on.
            #[serde(serialize_with = "ser_hex")]
            key: [u8; 8],
            /// Its Ed25519 public key.
            #[serde(serialize_with = "ser_hex")]
            public_key: [u8; 32],
            /// The head seq found on opening (0 for a new journal).
            recovered_head: u64,
        },
        /// The signing key changed. This event is signed by the previous key;
        /// every later event is signed by the new one. Old keys stay valid for
        /// the events they signed.
        KeyRotated {
            /// The key that signed until now (and signs this event).
            #[serde(serialize_with = "ser_hex")]
            previous: [u8; 8],
            /// The new key.
            #[serde(serialize_with = "ser_hex")]
            key: [u8; 8],
            /// The new Ed25519 public key.
            #[serde(serialize_with = "ser_hex")]
            public_key: [u8; 32],
            /// Why it was rotated.
            reason: String,
        },
        /// A Merkle checkpoint (RFC 6962 structure, BLAKE3) over the hashes of
        /// events `1..=size`.
        CheckpointSigned {
            /// Number of events the tree covers.
            size: u64,
            /// The Merkle root.
            #[serde(serialize_with = "ser_hex")]
            root: [u8; 32],
        },
        /// A free-form note of an operator, a test or a bench.
        Annotated {
            /// The note.
            text: String,
            /// The run it is about, if any (indexed).
            run: Option<String>,
        },
        /// An agent definition was accepted into the registry.
        AgentRegistered {
            /// The agent's name.
            agent: String,
            /// The definition (TOML) exactly as registered.
            definition: String,
            /// BLAKE3 of `definition`.
            #[serde(serialize_with = "ser_hex")]
            definition_hash: [u8; 32],
        },
        /// An agent moved from one lifecycle state to another.
        AgentStateChanged {
            /// The agent's name.
            agent: String,
            /// The state it left.
            from: AgentState,
            /// The state it entered.
            to: AgentState,
            /// Why.
            reason: String,
        },
        /// A task entered the scheduler's queue.
        TaskQueued {
            /// The task id (`task-<n>`, numbered by the scheduler).
            task: String,
            /// The agent it runs.
            agent: String,
            /// Its priority.
            priority: TaskPriority,
            /// Memory it reserves.
            memory_mb: u64,
            /// CPU it reserves, in thousandths of a core.
            cpu_millis: u32,
            /// What caused it (`registered`, `timer`, `event <seq>`, `restart`).
            trigger: String,
        },
        /// A task was placed on a worker slot and reserves its resources there.
        TaskPlaced {
            /// The task.
            task: String,
            /// The slot (index into the configured slots).
            slot: u32,
        },
        /// A running task was suspended to make room for a higher-priority
        /// one; it releases its resources and waits in the queue again.
        TaskPreempted {
            /// The suspended task.
            task: String,
            /// The task it made room for.
            by: String,
        },
        /// A task ended; its resources are released. Every queued task gets
        /// exactly one.
        TaskFinished {
            /// The task.
            task: String,
            /// How it ended.
            outcome: TaskOutcome,
            /// Detail for operators (exit status, reason).
            detail: String,
        },
        /// A `stele up` runtime started on this journal. It records what the
        /// scheduler decides against, so a replay needs no configuration.
        RuntimeStarted {
            /// The process id of the runtime.
            pid: u32,
            /// The software (`stele x.y.z`).
            software: String,
            /// The host it schedules on (boxed: see [`ARCHIVED_BODY_BYTES`]).
            #[serde(flatten)]
            host: Box<RuntimeHost>,
        },
        /// A timer of an agent fired: a scheduled agent's interval or a
        /// persistent agent's restart backoff. Timers enter the journal, so
        /// replay needs no clock.
        TimerFired {
            /// The agent.
            agent: String,
            /// Which timer (`interval`, `restart`).
            timer: String,
            /// How many times this timer fired for the agent, this one included.
            tick: u64,
        },
        /// An operator asked a running agent to stop; it terminates once its
        /// task has ended.
        AgentStopRequested {
            /// The agent.
            agent: String,
            /// Why.
            reason: String,
        },
        /// The process of a task was started.
        ProcessStarted {
            /// The task (also its run id).
            task: String,
            /// The agent.
            agent: String,
            /// Its process id (and process group).
            pid: u32,
            /// Its start time in clock ticks since boot (`/proc/<pid>/stat`),
            /// so a later runtime never mistakes a reused pid for it.
            start_ticks: u64,
            /// The limits in force and how they are enforced.
            confinement: String,
        },
        /// A sample of a running task's resource use.
        ResourcesSampled {
            /// The task.
            task: String,
            /// Resident memory, KiB.
            rss_kb: u64,
            /// CPU time used so far, milliseconds.
            cpu_ms: u64,
        },
        /// The process of a task ended (the effect's result).
        ProcessExited {
            /// The task.
            task: String,
            /// How (boxed: see [`ARCHIVED_BODY_BYTES`]).
            #[serde(flatten)]
            exit: Box<ProcessExit>,
        },
        /// A task was running when its runtime ended without recording how it
        /// ended (a crash or `kill -9`); a restarted runtime records this.
        RunInterrupted {
            /// The task.
            task: String,
            /// The agent.
            agent: String,
            /// What was found (e.g. whether the orphan process was killed).
            detail: String,
        },
        /// One step of a graceful shutdown.
        ShutdownStep {
            /// 1 to 6, in order.
            step: u32,
            /// `stop-admission`, `signal-agents`, `force-kill`,
            /// `flush-metrics`, `release-resources`, `clear-queue`.
            name: String,
            /// What was done.
            detail: String,
        },
        /// A task's health probe changed its verdict: it failed (again), or
        /// it passed after failing. Passing probes of a healthy task are not
        /// recorded.
        HealthChecked {
            /// The task.
            task: String,
            /// The agent.
            agent: String,
            /// Whether the probe passed.
            ok: bool,
            /// Failures in a row, this one included (0 when it passed).
            failures: u32,
            /// The probe's outcome (exit status, timeout, output).
            detail: String,
        },
        /// A reasoning run started (`stele run`, a task of a reasoning agent,
        /// or a fork of another run).
        RunStarted {
            /// The run id (`run-<n>`; its events carry it).
            run: String,
            /// The agent.
            agent: String,
            /// The operator's input.
            input: String,
            /// The run (and seq) it was forked from, as `run@seq`.
            parent: Option<String>,
        },
        /// A run entered a phase of its Observe–Reason–Gate–Act loop.
        PhaseEntered {
            /// The run.
            run: String,
            /// The step (1-based iteration of the loop).
            step: u32,
            /// `reasoning`, `policy_check`, `tool_dispatching`, `observing`.
            phase: String,
        },
        /// The inference provider answered (the effect's result: served from
        /// the journal on replay).
        CompletionReceived {
            /// The run.
            run: String,
            /// The step.
            step: u32,
            /// The provider (`openai`, `scripted`).
            provider: String,
            /// The model.
            model: String,
            /// The text.
            content: String,
            /// The tool calls, a JSON array of `{id, name, arguments}`.
            tool_calls: String,
            /// Why it stopped.
            finish_reason: String,
            /// Prompt tokens.
            prompt_tokens: u32,
            /// Completion tokens.
            completion_tokens: u32,
        },
        /// An attempt at a completion failed.
        CompletionFailed {
            /// The run.
            run: String,
            /// The step.
            step: u32,
            /// The attempt (1-based).
            attempt: u32,
            /// What went wrong.
            error: String,
            /// The backoff before the next attempt, ms (0: no retry).
            retry_in_ms: u64,
        },
        /// The model proposed an action (a tool call).
        ActionProposed {
            /// The run.
            run: String,
            /// The step.
            step: u32,
            /// The provider's call id.
            call_id: String,
            /// The tool.
            tool: String,
            /// Its arguments (JSON text).
            arguments: String,
        },
        /// The policy gate decided a request.
        PolicyDecided {
            /// The run, when the request came from one.
            run: Option<String>,
            /// The enforcement point (`agent_creation`, `message_send`,
            /// `resource_allocation`, `tool_invocation`, `data_access`).
            point: String,
            /// The full request (principal, action, resource, context) as
            /// canonical JSON, so a backtest can re-evaluate it.
            request: String,
            /// `allow`, `deny`, `allow_with_conditions`, `require_approval`.
            verdict: String,
            /// The deny reason, the conditions or the approval reason.
            detail: String,
            /// The ids of the determining policies.
            policies: Vec<String>,
            /// BLAKE3 (hex) of the policy set that decided.
            policy_set: String,
        },
        /// A tool call was dispatched (with the arguments as allowed).
        ToolCalled {
            /// The run.
            run: String,
            /// The step.
            step: u32,
            /// The call id.
            call_id: String,
            /// The tool.
            tool: String,
            /// Its arguments (JSON text, after any policy conditions).
            arguments: String,
        },
        /// A tool call returned (the effect's result).
        ToolReturned {
            /// The run.
            run: String,
            /// The step.
            step: u32,
            /// The call id.
            call_id: String,
            /// Whether it succeeded.
            ok: bool,
            /// Its output or error (bounded).
            output: String,
            /// How long it took, ms.
            duration_ms: u64,
        },
        /// A tool's circuit breaker changed state.
        BreakerChanged {
            /// The tool.
            tool: String,
            /// `closed`, `open`, `half_open`.
            from: String,
            /// The new state.
            to: String,
            /// Why.
            reason: String,
        },
        /// A run parked waiting for a human decision on an action.
        ApprovalRequested {
            /// The run.
            run: String,
            /// The step.
            step: u32,
            /// The call awaiting approval.
            call_id: String,
            /// Why approval is needed.
            reason: String,
            /// How long the run waits before the request expires, ms.
            timeout_ms: u64,
        },
        /// A human (or the expiry) decided an approval request.
        ApprovalDecided {
            /// The run.
            run: String,
            /// The step.
            step: u32,
            /// The call.
            call_id: String,
            /// Approved or not.
            approved: bool,
            /// Who decided (`expired` for a timeout).
            approver: String,
            /// Their reason.
            reason: String,
        },
        /// A run ended.
        RunFinished {
            /// The run.
            run: String,
            /// `completed`, `failed`, `stuck`, `step_limit`, `rejected`, `cancelled`.
            outcome: String,
            /// The final answer or the error.
            answer: String,
            /// Steps taken.
            steps: u32,
            /// Prompt tokens over the run.
            prompt_tokens: u64,
            /// Completion tokens over the run.
            completion_tokens: u64,
        },
        /// The policy set changed (hot reload).
        PolicySetLoaded {
            /// BLAKE3 (hex) of the previous set (empty: none).
            old: String,
            /// BLAKE3 (hex) of the new set.
            new: String,
            /// Policies in it.
            policies: u32,
            /// Where it was loaded from.
            source: String,
        },
        /// A run was forked from another run's state at a seq (`stele
        /// fork`). It follows the new run's `RunStarted`; the events before
        /// `at` are fed again from the origin, and `edit` (when given)
        /// replaces the first journaled input after `at`. The origin is
        /// untouched.
        RunForked {
            /// The new run.
            run: String,
            /// The run it was forked from.
            origin: String,
            /// The seq of the origin's state it starts from.
            at: u64,
            /// The replacement input as given (JSON; empty: no edit).
            edit: String,
            /// BLAKE3 (hex) of `edit` (empty: no edit).
            edit_hash: String,
        },
        /// A tool's circuit breaker in a run changed state (`closed`, `open`,
        /// `half_open`). `at_ms` is the clock reading (ms since the Unix
        /// epoch) the breaker decided with, so a rebuild of the run reaches
        /// the same state without reading a clock.
        RunBreakerChanged {
            /// The run.
            run: String,
            /// The step.
            step: u32,
            /// The tool.
            tool: String,
            /// The state before.
            from: String,
            /// The new state.
            to: String,
            /// Why (failures counted, timeout elapsed, probe result).
            reason: String,
            /// The clock reading of the decision, ms since the Unix epoch.
            at_ms: u64,
        },
        /// A compensable step of a run's saga is about to take effect: what
        /// undoes it, captured before the effect (the saga's intent).
        SagaStepRecorded {
            /// The run.
            run: String,
            /// The step.
            step: u32,
            /// The call whose effect this undoes.
            call_id: String,
            /// The tool.
            tool: String,
            /// The compensating action (JSON `{tool, arguments}`).
            compensation: String,
        },
        /// A compensation is about to run (its intent, before the effect).
        SagaCompensating {
            /// The run.
            run: String,
            /// The call being compensated.
            call_id: String,
            /// The compensating action (JSON `{tool, arguments}`).
            action: String,
            /// Why the saga is rolled back.
            reason: String,
        },
        /// A compensation ran (the effect's result).
        SagaCompensated {
            /// The run.
            run: String,
            /// The call compensated.
            call_id: String,
            /// Whether it succeeded.
            ok: bool,
            /// What was done, or the error.
            detail: String,
        },
        /// Context loaded for a run from a reference in its task, before the
        /// first completion (deterministic pre-hydration).
        ContextHydrated {
            /// The run.
            run: String,
            /// The reference as found in the task (a workspace path).
            reference: String,
            /// BLAKE3 (hex) of the whole file.
            blake3: String,
            /// The file's size, bytes.
            size_bytes: u64,
            /// What was loaded (bounded; the model sees this).
            content: String,
        },
        /// A task's command started in a sandbox container (the docker or
        /// gvisor tier), after its image was resolved. Follows nothing of
        /// the runtime decider's: for a task of `stele up` it comes just
        /// before the `ProcessStarted` of the same task.
        SandboxStarted {
            /// The task (also its run id); for a reasoning run's
            /// `run_command` container, that run (the `cause` is the call's
            /// `ToolCalled`).
            task: String,
            /// The container and what confines it (boxed: see
            /// [`ARCHIVED_BODY_BYTES`]).
            #[serde(flatten)]
            sandbox: Box<SandboxStart>,
        },
        /// A sandbox container ended and was removed (the effect's result).
        SandboxExited {
            /// The task.
            task: String,
            /// How (boxed: see [`ARCHIVED_BODY_BYTES`]).
            #[serde(flatten)]
            exit: Box<SandboxExit>,
        },
        /// A container left behind by a runtime that ended without removing
        /// it (a crash or `kill -9` of `stele up`) was found by its labels
        /// and removed.
        SandboxReaped {
            /// The task it ran (its `stele.task` label).
            task: String,
            /// The container id.
            container: String,
            /// What was found and done (running or not, removal result).
            detail: String,
        },
        /// A message entered the bus — sent here, or received from a peer
        /// instance — as its sender sealed and signed it. The payload is
        /// AES-256-GCM ciphertext; only the key's epoch is recorded, never
        /// the key.
        MessageSent {
            /// The message id (a request's id is its `RequestId`).
            message: String,
            /// The sealed envelope (boxed: see [`ARCHIVED_BODY_BYTES`]).
            #[serde(flatten)]
            envelope: Box<BusEnvelope>,
        },
        /// A message was placed in a recipient's mailbox, or a peer
        /// instance confirmed it journaled it.
        MessageDelivered {
            /// The message.
            message: String,
            /// The agent whose mailbox holds it (`agent@instance` for a peer).
            recipient: String,
            /// For a peer: `<instance>:<seq>:<hash>` of its `MessageSent`;
            /// empty for a local mailbox.
            remote: String,
        },
        /// A recipient acknowledged a delivered message; it leaves the
        /// mailbox and is never delivered again.
        MessageAcknowledged {
            /// The message.
            message: String,
            /// The recipient.
            recipient: String,
        },
        /// A message (or a request's wait for its response) expired before
        /// it was acknowledged (answered).
        MessageExpired {
            /// The message.
            message: String,
            /// The recipient whose copy expired (the requester for a request).
            recipient: String,
            /// Why (`ttl`, `request timed out`, `race lost`).
            reason: String,
        },
        /// A message was refused: by the policy gate, a rate limit, a full
        /// mailbox, its size, or because it was tampered with, replayed or
        /// mis-addressed.
        MessageRejected {
            /// The message id (as claimed, for a received envelope).
            message: String,
            /// The sender (as claimed).
            sender: String,
            /// The recipient or topic (as claimed).
            recipient: String,
            /// `policy_denied`, `rate_limited`, `mailbox_full`, `oversize`,
            /// `tampered`, `bad_signature`, `replayed`, `misaddressed`,
            /// `expired`, `unknown_peer`.
            code: String,
            /// What was wrong, for operators.
            reason: String,
        },
        /// An agent subscribed to (or unsubscribed from) a topic pattern
        /// (`a.*.c`, `a.>`).
        TopicSubscribed {
            /// The agent.
            agent: String,
            /// The pattern.
            pattern: String,
            /// True to subscribe, false to unsubscribe.
            active: bool,
        },
        /// An agent's bus key moved to a new epoch. The key is derived from
        /// the node's bus secret, the agent and the epoch; it is never
        /// journaled.
        BusKeyRotated {
            /// The agent.
            agent: String,
            /// The new epoch.
            epoch: u32,
            /// Why.
            reason: String,
        },
        /// The bus identity key of a peer instance was pinned (from the
        /// configuration, or on first contact).
        BusPeerPinned {
            /// The peer instance's name.
            peer: String,
            /// Its Ed25519 public key.
            #[serde(serialize_with = "ser_hex")]
            public_key: [u8; 32],
            /// `config` or `first_contact`.
            source: String,
        },
        /// An item entered an agent's context store (memory or knowledge).
        ContextStored {
            /// The agent that owns it.
            agent: String,
            /// The item (boxed: see [`ARCHIVED_BODY_BYTES`]).
            #[serde(flatten)]
            item: Box<ContextItem>,
        },
        /// An item of an agent's context store changed (only the fields
        /// given change).
        ContextUpdated {
            /// The owner.
            agent: String,
            /// The item id.
            item: String,
            /// The new content.
            content: Option<String>,
            /// The new base importance, thousandths (0..=1000).
            importance_permille: Option<u32>,
            /// The new memory type.
            memory_type: Option<String>,
        },
        /// An agent read items of the context store (a retrieval, query or
        /// search): the journaled access that importance counts, and the
        /// "now" the reader ranked with.
        ContextAccessed {
            /// The reading agent.
            agent: String,
            /// The items returned, in rank order (`owner/id`).
            items: Vec<String>,
            /// What was asked (`search hybrid: …`, `get …`).
            query: String,
            /// The reader's clock, ms since the Unix epoch.
            now_ms: u64,
        },
        /// A user (or agent) rated an item: positive raises its importance,
        /// negative lowers it.
        ContextFeedbackGiven {
            /// The owner.
            agent: String,
            /// The item id.
            item: String,
            /// The rating, -1000..=1000 (thousandths).
            score_permille: i32,
        },
        /// An owner shared an item with another agent at an access level
        /// (`public`, `restricted`, `confidential`; never `secret`).
        ContextShared {
            /// The owner.
            agent: String,
            /// The item id.
            item: String,
            /// The agent it is shared with.
            with: String,
            /// The access level of the grant.
            level: String,
        },
        /// Items of an agent's context older than a time were archived:
        /// they leave the live store; their JSON is kept compressed here.
        ContextArchived {
            /// The owner.
            agent: String,
            /// What was archived (boxed: see [`ARCHIVED_BODY_BYTES`]).
            #[serde(flatten)]
            archive: Box<ContextArchive>,
        },
        /// An embedding of an item was computed (the effect's result: a
        /// rebuild of the vector index reads it from here and never calls
        /// the model again).
        EmbeddingComputed {
            /// The owner.
            agent: String,
            /// The item id.
            item: String,
            /// The embedder (`hash-384`, `openai:text-embedding-3-small`).
            model: String,
            /// The vector, f32 little-endian.
            #[serde(serialize_with = "ser_hex_vec")]
            vector: Vec<u8>,
        },
        /// An MCP server was connected (stream `mcp:<server>`).
        McpServerConnected {
            /// The server's name in `[mcp] servers`.
            server: String,
            /// Where: the command line (stdio) or the URL (streamable HTTP).
            endpoint: String,
            /// What the server says it is (`name version`).
            server_info: String,
            /// The MCP protocol version agreed.
            protocol: String,
        },
        /// A server's tools were listed (`tools/list`): the tools as served
        /// (JSON array of `{name, description, inputSchema, _meta}`).
        McpToolsListed {
            /// The server.
            server: String,
            /// The tools, JSON.
            tools: String,
            /// How many.
            count: u32,
        },
        /// A tool's schema was checked against SchemaPin: its signature over
        /// the canonical schema and the key pinned for its domain.
        McpToolVerified {
            /// The server.
            server: String,
            /// The tool (its MCP name).
            tool: String,
            /// The tool domain its key is pinned for.
            domain: String,
            /// `verified`, `first_use`, `unsigned`, `key_changed`,
            /// `invalid_signature`, `bad_key`.
            status: String,
            /// The key's fingerprint (`sha256:<hex>`; empty: no key).
            key: String,
            /// SHA-256 of the canonical schema (hex).
            schema_hash: String,
            /// Whether the tool is offered (refused under `strict` unless
            /// verified or pinned on first use).
            accepted: bool,
        },
        /// A tool domain's key was pinned (trust on first use).
        McpKeyPinned {
            /// The tool domain.
            domain: String,
            /// The key's fingerprint (`sha256:<hex>` of its SPKI DER).
            fingerprint: String,
            /// The key, PEM.
            public_key_pem: String,
            /// The server it was first seen on.
            server: String,
        },
        /// A tool domain's pin was removed by an operator.
        McpKeyUnpinned {
            /// The tool domain.
            domain: String,
            /// The fingerprint that was pinned.
            fingerprint: String,
            /// Why (the operator's words).
            reason: String,
        },
        /// An MCP tool was called (`tools/call`), after the policy gate.
        McpToolCalled {
            /// The server.
            server: String,
            /// The tool (its MCP name).
            tool: String,
            /// The arguments, JSON.
            arguments: String,
            /// Who asked: `run-3/call_1` from a run, `cli` from `stele mcp call`.
            correlation: String,
        },
        /// An MCP tool call returned (the effect's result).
        McpToolReturned {
            /// The server.
            server: String,
            /// The tool.
            tool: String,
            /// As in `McpToolCalled`.
            correlation: String,
            /// Whether it succeeded (no transport error, no `isError`).
            ok: bool,
            /// Its text content (or the error), bounded.
            output: String,
            /// How long it took, ms.
            duration_ms: u64,
        },
        /// A server's resources were listed or one was read
        /// (`resources/list`, `resources/read`).
        McpResourceRead {
            /// The server.
            server: String,
            /// The URI read (empty: the listing).
            uri: String,
            /// Whether it succeeded.
            ok: bool,
            /// The contents (JSON), or the error, bounded.
            content: String,
        },
        /// A tool provider's SchemaPin key was fetched from its
        /// `.well-known/schemapin.json` (the server's `well_known`), at a
        /// connection, before its tools were assessed with it.
        McpKeyDiscovered {
            /// The server.
            server: String,
            /// The tool domain its key is pinned under.
            domain: String,
            /// The document's URL.
            url: String,
            /// The key's fingerprint (`sha256:<hex>` of its SPKI DER).
            fingerprint: String,
            /// The key, PEM.
            public_key_pem: String,
            /// The fingerprints the document lists as revoked, comma-separated.
            revoked_keys: String,
        },
        /// The tools a reasoning run's model is offered (stream `run:<id>`):
        /// recorded before the completion request of the run's first step,
        /// and before a later step's only when the list differs from the
        /// one recorded before it (a run continued by a process that offers
        /// other tools). Each tool by name and the BLAKE3 of its canonical
        /// JSON schema, so a replay can tell which one changed.
        ToolsOffered {
            /// The run.
            run: String,
            /// The step whose completion requests carry this list.
            step: u32,
            /// The list (boxed: see [`ARCHIVED_BODY_BYTES`]).
            #[serde(flatten)]
            offered: Box<ToolList>,
        },
        /// What a request asked of the task it queued (stream `scheduler`,
        /// in the batch of the task's `TaskQueued`, whose trigger says the
        /// same in words): the runtime does it from this when the task is
        /// placed after a restart, when the requester is gone.
        TaskRequested {
            /// The task.
            task: String,
            /// The agent it runs.
            agent: String,
            /// What is asked (boxed: see [`ARCHIVED_BODY_BYTES`]).
            #[serde(flatten)]
            request: Box<TaskRequest>,
        },
    }

    /// What a request asks of its task, as `TaskRequested` records it.
    #[derive(
        Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, serde::Serialize,
    )]
    #[rkyv(derive(Debug), attr(allow(missing_docs)))]
    #[serde(tag = "request", rename_all = "snake_case")]
    pub enum TaskRequest {
        /// Begin a run of the task's agent (`POST /v1/runs`).
        Run {
            /// The run's input.
            input: String,
        },
        /// Continue a parked run with a decision on one of its calls
        /// (`POST /v1/runs/{id}/approve|reject`).
        Decision {
            /// The run.
            run: String,
            /// The call decided.
            call: String,
            /// Approved (else rejected).
            approved: bool,
            /// Who decided.
            approver: String,
            /// Why (may be empty).
            reason: String,
        },
        /// Continue a parked run by rejecting its approvals that timed out
        /// (approver `expired`).
        Expiry {
            /// The run.
            run: String,
        },
    }

    /// The tools offered to a model, as `ToolsOffered` records them.
    #[derive(
        Clone,
        Debug,
        Default,
        PartialEq,
        Eq,
        rkyv::Archive,
        rkyv::Serialize,
        rkyv::Deserialize,
        serde::Serialize,
    )]
    #[rkyv(derive(Debug), attr(allow(missing_docs)))]
    pub struct ToolList {
        /// BLAKE3 over every tool's name and schema hash, in the order
        /// offered: equal lists, equal hashes.
        #[serde(serialize_with = "ser_hex")]
        pub list_hash: [u8; 32],
        /// The tools, in the order offered.
        pub tools: Vec<ToolOffer>,
    }

    /// One offered tool.
    #[derive(
        Clone,
        Debug,
        Default,
        PartialEq,
        Eq,
        rkyv::Archive,
        rkyv::Serialize,
        rkyv::Deserialize,
        serde::Serialize,
    )]
    #[rkyv(derive(Debug), attr(allow(missing_docs)))]
    pub struct ToolOffer {
        /// The name the model calls it by.
        pub name: String,
        /// BLAKE3 of its canonical JSON schema (`{name, description,
        /// parameters}`, keys sorted, compact).
        #[serde(serialize_with = "ser_hex")]
        pub schema_hash: [u8; 32],
    }

    /// A context item as `ContextStored` records it.
    #[derive(
        Clone,
        Debug,
        Default,
        PartialEq,
        Eq,
        rkyv::Archive,
        rkyv::Serialize,
        rkyv::Deserialize,
        serde::Serialize,
    )]
    #[rkyv(derive(Debug), attr(allow(missing_docs)))]
    pub struct ContextItem {
        /// The item id, unique per owner.
        pub id: String,
        /// `short_term`, `long_term`, `working`, `episodic`, `semantic`,
        /// `shared_knowledge`.
        pub memory_type: String,
        /// `public`, `restricted`, `confidential`, `secret`.
        pub level: String,
        /// The text.
        pub content: String,
        /// Free tags (metadata to filter on).
        pub tags: Vec<String>,
        /// Base importance, thousandths (0..=1000).
        pub importance_permille: u32,
        /// The session or run it came from (empty: none).
        pub session: String,
    }

    /// Archived context items, as `ContextArchived` records them.
    #[derive(
        Clone,
        Debug,
        Default,
        PartialEq,
        Eq,
        rkyv::Archive,
        rkyv::Serialize,
        rkyv::Deserialize,
        serde::Serialize,
    )]
    #[rkyv(derive(Debug), attr(allow(missing_docs)))]
    pub struct ContextArchive {
        /// Items stored before this time (ms since the Unix epoch) were
        /// eligible.
        pub before_ms: u64,
        /// The ids archived.
        pub items: Vec<String>,
        /// Size of their JSON before compression.
        pub original_bytes: u64,
        /// The codec of `compressed` (`lz4`).
        pub codec: String,
        /// The items' JSON (an array), compressed.
        #[serde(serialize_with = "ser_hex_vec")]
        pub compressed: Vec<u8>,
    }

    /// A bus message as `MessageSent` records it: who sent it to whom, how,
    /// the key epoch and nonce counter, the ciphertext and the sender's
    /// signature.
    #[derive(
        Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, serde::Serialize,
    )]
    #[rkyv(derive(Debug), attr(allow(missing_docs)))]
    pub struct BusEnvelope {
        /// The instance whose bus sealed it.
        pub origin: String,
        /// The sending agent.
        pub sender: String,
        /// The recipient agent (`agent@instance` across instances) or topic.
        pub recipient: String,
        /// `direct`, `publish`, `request` or `response`.
        pub pattern: String,
        /// The builtin that sent it (`send_to`, `ask`, …; empty for others).
        pub builtin: String,
        /// For a response: the request it answers.
        pub request: Option<String>,
        /// Where it was sent from (`run-3/call-1`, `cli`), for correlation.
        pub context: String,
        /// The sender's key epoch.
        pub epoch: u32,
        /// The per-(sender, epoch) nonce counter.
        pub counter: u64,
        /// When it expires, ms since the Unix epoch (the sender's clock).
        pub expires_at_ms: u64,
        /// AES-256-GCM ciphertext with its tag.
        #[serde(serialize_with = "ser_hex_vec")]
        pub ciphertext: Vec<u8>,
        /// The Ed25519 public key of the signing instance.
        #[serde(serialize_with = "ser_hex")]
        pub signer: [u8; 32],
        /// Ed25519 signature over the envelope's signed bytes.
        #[serde(serialize_with = "ser_hex")]
        pub signature: [u8; 64],
        /// For a message received from a peer: the hash (hex) of the
        /// sender's `MessageSent`; empty otherwise.
        pub remote_hash: String,
    }

    /// The host a runtime schedules on, as `RuntimeStarted` records it.
    #[derive(
        Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, serde::Serialize,
    )]
    #[rkyv(derive(Debug), attr(allow(missing_docs)))]
    pub struct RuntimeHost {
        /// Worker slots: memory of each, in MB.
        pub slot_memory_mb: Vec<u64>,
        /// Worker slots: CPU of each, in thousandths of a core.
        pub slot_cpu_millis: Vec<u64>,
        /// Placement strategy (`first-fit`, `best-fit`).
        pub placement: String,
        /// How processes are confined here (rlimits, cgroup v2).
        pub confinement: String,
        /// BLAKE3 of the effective configuration (TOML).
        #[serde(serialize_with = "ser_hex")]
        pub config_hash: [u8; 32],
    }

    /// How a task's process ended, as `ProcessExited` records it.
    #[derive(
        Clone,
        Debug,
        Default,
        PartialEq,
        Eq,
        rkyv::Archive,
        rkyv::Serialize,
        rkyv::Deserialize,
        serde::Serialize,
    )]
    #[rkyv(derive(Debug), attr(allow(missing_docs)))]
    pub struct ProcessExit {
        /// Exit code, when it exited.
        pub code: Option<i32>,
        /// The signal that ended it, when one did.
        pub signal: Option<i32>,
        /// Killed for running past its `execution_timeout`.
        pub timed_out: bool,
        /// Ended because it was asked to stop (preemption, stop, shutdown).
        pub stopped: bool,
        /// The start of its standard output (bounded).
        pub stdout: String,
        /// The start of its standard error (bounded).
        pub stderr: String,
        /// Bytes of output not kept (both streams).
        pub output_dropped: u64,
        /// Wall time, milliseconds.
        pub wall_ms: u64,
        /// CPU time, milliseconds.
        pub cpu_ms: u64,
        /// Largest resident memory seen, KiB.
        pub max_rss_kb: u64,
    }

    /// A sandbox container as `SandboxStarted` records it.
    #[derive(
        Clone,
        Debug,
        Default,
        PartialEq,
        Eq,
        rkyv::Archive,
        rkyv::Serialize,
        rkyv::Deserialize,
        serde::Serialize,
    )]
    #[rkyv(derive(Debug), attr(allow(missing_docs)))]
    pub struct SandboxStart {
        /// The agent (empty for `stele sandbox run`).
        pub agent: String,
        /// `docker` or `gvisor`.
        pub tier: String,
        /// The OCI runtime dockerd ran it with (`runc`, `runsc`).
        pub runtime: String,
        /// The container id.
        pub container: String,
        /// The image as named (`stele-sandbox:<hash prefix>`).
        pub image: String,
        /// The image's content hash: BLAKE3 (hex) of its root filesystem
        /// archive for images `stele sandbox image build` made, else the
        /// image id dockerd gives.
        pub image_hash: String,
        /// The host pid of the container's first process (0 if unknown).
        pub pid: u32,
        /// The network it is attached to (`none`: no network at all).
        pub network: String,
        /// Memory limit (no swap beyond it), MiB.
        pub memory_mb: u64,
        /// CPU limit, thousandths of a core.
        pub cpu_millis: u64,
        /// Most processes and threads.
        pub pids_limit: u64,
        /// Size of each writable tmpfs (`/work`, `/tmp`), MiB.
        pub tmpfs_mb: u64,
        /// Wall-clock limit, ms.
        pub timeout_ms: u64,
    }

    /// How a sandbox container ended, as `SandboxExited` records it.
    #[derive(
        Clone,
        Debug,
        Default,
        PartialEq,
        Eq,
        rkyv::Archive,
        rkyv::Serialize,
        rkyv::Deserialize,
        serde::Serialize,
    )]
    #[rkyv(derive(Debug), attr(allow(missing_docs)))]
    pub struct SandboxExit {
        /// The container id.
        pub container: String,
        /// Exit code of its first process, as dockerd reports it (128 + n
        /// for a signal n).
        pub code: Option<i32>,
        /// The kernel's OOM killer killed a process of it (its memory limit
        /// was reached).
        pub oom_killed: bool,
        /// Killed for running past its timeout.
        pub timed_out: bool,
        /// Ended because it was asked to stop.
        pub stopped: bool,
        /// The start of its standard output (bounded).
        pub stdout: String,
        /// The start of its standard error (bounded).
        pub stderr: String,
        /// Bytes of output not kept (both streams).
        pub output_dropped: u64,
        /// Wall time from start to exit, ms.
        pub wall_ms: u64,
        /// CPU time at the last sample, ms.
        pub cpu_ms: u64,
        /// Largest memory use seen, KiB.
        pub max_memory_kb: u64,
        /// Whether the container was removed afterwards, or why not.
        pub removal: String,
    }

    use super::ARCHIVED_BODY_BYTES;

    const _: () = assert!(
        std::mem::size_of::<ArchivedEventBody>() == ARCHIVED_BODY_BYTES,
        "the archived EventBody changed size: box the new variant's fields"
    );

    /// Scheduling priority of a task, highest first.
    #[derive(
        Clone,
        Copy,
        Debug,
        PartialEq,
        Eq,
        PartialOrd,
        Ord,
        Hash,
        rkyv::Archive,
        rkyv::Serialize,
        rkyv::Deserialize,
        serde::Serialize,
        serde::Deserialize,
    )]
    #[serde(rename_all = "snake_case")]
    #[rkyv(derive(Debug, PartialEq, Eq), compare(PartialEq))]
    pub enum TaskPriority {
        /// May preempt everything below it.
        Critical,
        /// Before normal work.
        High,
        /// The default class.
        Normal,
        /// Whenever there is room.
        Low,
    }

    /// How a task ended.
    #[derive(
        Clone,
        Copy,
        Debug,
        PartialEq,
        Eq,
        Hash,
        rkyv::Archive,
        rkyv::Serialize,
        rkyv::Deserialize,
        serde::Serialize,
        serde::Deserialize,
    )]
    #[serde(rename_all = "snake_case")]
    #[rkyv(derive(Debug, PartialEq, Eq), compare(PartialEq))]
    pub enum TaskOutcome {
        /// It ran to completion.
        Completed,
        /// It failed (non-zero exit, crash, failed health check).
        Failed,
        /// It ran out of time.
        TimedOut,
        /// It was cancelled before or while running.
        Cancelled,
    }

    /// The lifecycle states of an agent (the seed's Agent Lifecycle
    /// Controller). Append-only like the events that carry it.
    #[derive(
        Clone,
        Copy,
        Debug,
        PartialEq,
        Eq,
        PartialOrd,
        Ord,
        Hash,
        rkyv::Archive,
        rkyv::Serialize,
        rkyv::Deserialize,
        serde::Serialize,
        serde::Deserialize,
    )]
    #[serde(rename_all = "snake_case")]
    #[rkyv(derive(Debug, PartialEq, Eq), compare(PartialEq))]
    pub enum AgentState {
        /// Definition being checked.
        Initializing,
        /// Waiting for work.
        Ready,
        /// Executing a task.
        Running,
        /// Paused (policy violation, resource pressure, preemption).
        Suspended,
        /// Stopped for good.
        Terminated,
        /// Its definition could not be used.
        Failed,
    }

    impl AgentState {
        /// The name used in output.
        #[must_use]
        pub fn name(self) -> &'static str {
            match self {
                AgentState::Initializing => "initializing",
                AgentState::Ready => "ready",
                AgentState::Running => "running",
                AgentState::Suspended => "suspended",
                AgentState::Terminated => "terminated",
                AgentState::Failed => "failed",
            }
        }
    }

    impl ArchivedTaskPriority {
        /// The native priority.
        #[must_use]
        pub fn to_native(&self) -> TaskPriority {
            match self {
                ArchivedTaskPriority::Critical => TaskPriority::Critical,
                ArchivedTaskPriority::High => TaskPriority::High,
                ArchivedTaskPriority::Normal => TaskPriority::Normal,
                ArchivedTaskPriority::Low => TaskPriority::Low,
            }
        }
    }

    impl ArchivedTaskOutcome {
        /// The native outcome.
        #[must_use]
        pub fn to_native(&self) -> TaskOutcome {
            match self {
                ArchivedTaskOutcome::Completed => TaskOutcome::Completed,
                ArchivedTaskOutcome::Failed => TaskOutcome::Failed,
                ArchivedTaskOutcome::TimedOut => TaskOutcome::TimedOut,
                ArchivedTaskOutcome::Cancelled => TaskOutcome::Cancelled,
            }
        }
    }

    impl ArchivedAgentState {
        /// The native state.
        #[must_use]
        pub fn to_native(&self) -> AgentState {
            match self {
                ArchivedAgentState::Initializing => AgentState::Initializing,
                ArchivedAgentState::Ready => AgentState::Ready,
                ArchivedAgentState::Running => AgentState::Running,
                ArchivedAgentState::Suspended => AgentState::Suspended,
                ArchivedAgentState::Terminated => AgentState::Terminated,
                ArchivedAgentState::Failed => AgentState::Failed,
            }
        }
    }

    use super::ser_hex;
    use super::ser_hex_vec;
}

fn ser_hex_vec<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(v))
}

fn ser_hex<S: serde::Serializer, const N: usize>(v: &[u8; N], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(v))
}

/// One list of every fact and its kind name, generating `kind()` for both
/// the native and the archived body so the two can never disagree.
macro_rules! kinds {
    ($($variant:ident => $name:literal,)*) => {
        impl EventBody {
            /// Every kind name, in variant order.
            pub const KINDS: &'static [&'static str] = &[$($name,)*];

            /// The fact's name in snake case (`annotated`, `checkpoint_signed`),
            /// as used in JSON and in subjects.
            #[must_use]
            pub fn kind(&self) -> &'static str {
                match self {
                    $(EventBody::$variant { .. } => $name,)*
                }
            }
        }

        impl ArchivedEventBody {
            /// See [`EventBody::kind`].
            #[must_use]
            pub fn kind(&self) -> &'static str {
                match self {
                    $(ArchivedEventBody::$variant { .. } => $name,)*
                }
            }
        }
    };
}

kinds! {
    JournalOpened => "journal_opened",
    KeyRotated => "key_rotated",
    CheckpointSigned => "checkpoint_signed",
    Annotated => "annotated",
    AgentRegistered => "agent_registered",
    AgentStateChanged => "agent_state_changed",
    TaskQueued => "task_queued",
    TaskPlaced => "task_placed",
    TaskPreempted => "task_preempted",
    TaskFinished => "task_finished",
    RuntimeStarted => "runtime_started",
    TimerFired => "timer_fired",
    AgentStopRequested => "agent_stop_requested",
    ProcessStarted => "process_started",
    ResourcesSampled => "resources_sampled",
    ProcessExited => "process_exited",
    RunInterrupted => "run_interrupted",
    ShutdownStep => "shutdown_step",
    HealthChecked => "health_checked",
    RunStarted => "run_started",
    PhaseEntered => "phase_entered",
    CompletionReceived => "completion_received",
    CompletionFailed => "completion_failed",
    ActionProposed => "action_proposed",
    PolicyDecided => "policy_decided",
    ToolCalled => "tool_called",
    ToolReturned => "tool_returned",
    BreakerChanged => "breaker_changed",
    ApprovalRequested => "approval_requested",
    ApprovalDecided => "approval_decided",
    RunFinished => "run_finished",
    PolicySetLoaded => "policy_set_loaded",
    RunForked => "run_forked",
    RunBreakerChanged => "run_breaker_changed",
    SagaStepRecorded => "saga_step_recorded",
    SagaCompensating => "saga_compensating",
    SagaCompensated => "saga_compensated",
    ContextHydrated => "context_hydrated",
    SandboxStarted => "sandbox_started",
    SandboxExited => "sandbox_exited",
    SandboxReaped => "sandbox_reaped",
    MessageSent => "message_sent",
    MessageDelivered => "message_delivered",
    MessageAcknowledged => "message_acknowledged",
    MessageExpired => "message_expired",
    MessageRejected => "message_rejected",
    TopicSubscribed => "topic_subscribed",
    BusKeyRotated => "bus_key_rotated",
    BusPeerPinned => "bus_peer_pinned",
    ContextStored => "context_stored",
    ContextUpdated => "context_updated",
    ContextAccessed => "context_accessed",
    ContextFeedbackGiven => "context_feedback_given",
    ContextShared => "context_shared",
    ContextArchived => "context_archived",
    EmbeddingComputed => "embedding_computed",
    McpServerConnected => "mcp_server_connected",
    McpToolsListed => "mcp_tools_listed",
    McpToolVerified => "mcp_tool_verified",
    McpKeyPinned => "mcp_key_pinned",
    McpKeyUnpinned => "mcp_key_unpinned",
    McpToolCalled => "mcp_tool_called",
    McpToolReturned => "mcp_tool_returned",
    McpResourceRead => "mcp_resource_read",
    McpKeyDiscovered => "mcp_key_discovered",
    ToolsOffered => "tools_offered",
    TaskRequested => "task_requested",
}

/// Which facts belong to a run, and through which field: one list makes
/// both [`EventBody::run_id`] and [`ArchivedEventBody::run`], so the native
/// and the archived answers cannot drift apart. A new fact that carries a
/// run goes into one of the three lists.
macro_rules! run_fields {
    (
        task: [$($task:ident),+ $(,)?],
        run: [$($run:ident),+ $(,)?],
        optional_run: [$($opt:ident),+ $(,)?] $(,)?
    ) => {
        impl EventBody {
            /// The run this event belongs to, when it carries one. A task's
            /// whole story is one run (`stele events --run task-7`).
            ///
            /// # Errors
            /// A run id in the body that is not a valid id.
            pub fn run_id(&self) -> Result<Option<RunId>> {
                match self {
                    $(EventBody::$task { task, .. })|+ => RunId::new(task.clone()).map(Some),
                    $(EventBody::$run { run, .. })|+ => RunId::new(run.clone()).map(Some),
                    $(EventBody::$opt { run: Some(r), .. })|+ => RunId::new(r.clone()).map(Some),
                    _ => Ok(None),
                }
            }
        }

        impl ArchivedEventBody {
            /// The run this event belongs to, as [`EventBody::run_id`] says.
            #[must_use]
            pub fn run(&self) -> Option<&str> {
                match self {
                    $(ArchivedEventBody::$task { task, .. })|+ => Some(task.as_str()),
                    $(ArchivedEventBody::$run { run, .. })|+ => Some(run.as_str()),
                    $(ArchivedEventBody::$opt { run, .. })|+ => run.as_ref().map(|r| r.as_str()),
                    _ => None,
                }
            }
        }
    };
}

run_fields! {
    task: [
        TaskQueued,
        TaskPlaced,
        TaskPreempted,
        TaskFinished,
        ProcessStarted,
        ResourcesSampled,
        ProcessExited,
        RunInterrupted,
        HealthChecked,
        SandboxStarted,
        SandboxExited,
        SandboxReaped,
        TaskRequested,
    ],
    run: [
        RunStarted,
        PhaseEntered,
        CompletionReceived,
        CompletionFailed,
        ActionProposed,
        ToolCalled,
        ToolReturned,
        ApprovalRequested,
        ApprovalDecided,
        RunFinished,
        RunForked,
        RunBreakerChanged,
        SagaStepRecorded,
        SagaCompensating,
        SagaCompensated,
        ContextHydrated,
        ToolsOffered,
    ],
    optional_run: [
        Annotated,
        PolicyDecided,
    ],
}

impl EventBody {
    /// rkyv-encodes the body, refusing bodies over the size limit.
    ///
    /// # Errors
    /// [`Error::BodyTooLarge`].
    pub fn encode(&self) -> Result<Vec<u8>> {
        let bytes = rkyv::to_bytes::<rancor::Error>(self).map_err(|e| Error::InvalidInput {
            what: "event body",
            reason: e.to_string(),
        })?;
        if bytes.len() > MAX_BODY_BYTES {
            return Err(Error::BodyTooLarge {
                size_bytes: bytes.len(),
                limit_bytes: MAX_BODY_BYTES,
            });
        }
        Ok(bytes.into_vec())
    }
}

/// The canonical bytes of (seq, at, stream, cause, body): what is hashed.
#[must_use]
pub fn canonical_bytes(seq: Seq, at_ns: i64, stream: &StreamId, cause: Option<Seq>, body: &[u8]) -> Vec<u8> {
    let stream = stream.as_str().as_bytes();
    let mut out = Vec::with_capacity(CANONICAL_HEADER_BYTES + stream.len() + body.len());
    out.push(CANONICAL_VERSION);
    out.extend_from_slice(&seq.0.to_le_bytes());
    out.extend_from_slice(&at_ns.to_le_bytes());
    out.push(u8::from(cause.is_some()));
    out.extend_from_slice(&cause.map_or(0, |c| c.0).to_le_bytes());
    let len = u16::try_from(stream.len()).expect("stream ids are at most MAX_ID_BYTES long");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(stream);
    out.extend_from_slice(body);
    out
}

/// BLAKE3(EVENT_DOMAIN || prev || canonical).
#[must_use]
pub fn event_hash(prev: &Hash, canonical: &[u8]) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(EVENT_DOMAIN);
    h.update(&prev.0);
    h.update(canonical);
    Hash(*h.finalize().as_bytes())
}

/// Assembles a stored record from its parts.
#[must_use]
pub fn encode_record(prev: &Hash, hash: &Hash, key: KeyId, sig: &[u8; 64], canonical: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ENVELOPE_BYTES + canonical.len());
    out.push(RECORD_VERSION);
    out.extend_from_slice(&prev.0);
    out.extend_from_slice(&hash.0);
    out.extend_from_slice(&key.0);
    out.extend_from_slice(sig);
    out.extend_from_slice(canonical);
    out
}

/// A validated view of an event that is in no journal: unsigned, with a
/// zero `prev`. For folding facts before they are appended — a decider's
/// preview, a data-driven test of a projection — never for storage.
///
/// # Errors
/// The body is over the size limit.
pub fn detached_event(
    seq: Seq,
    at_ns: i64,
    stream: &StreamId,
    cause: Option<Seq>,
    body: &EventBody,
) -> Result<EventRef> {
    let canonical = canonical_bytes(seq, at_ns, stream, cause, &body.encode()?);
    let hash = event_hash(&Hash::ZERO, &canonical);
    EventRef::parse(
        seq,
        encode_record(&Hash::ZERO, &hash, KeyId::default(), &[0; 64], &canonical),
    )
}

/// An owned, decoded event: every field of the journal's event.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Event {
    /// Gapless global position, from 1.
    pub seq: Seq,
    /// Nanoseconds since the Unix epoch, stamped by the writer (never decreasing).
    pub at: i64,
    /// What the event is about.
    pub stream: StreamId,
    /// The event that caused this one.
    pub cause: Option<Seq>,
    /// The fact.
    pub body: EventBody,
    /// Hash of event seq-1.
    pub prev: Hash,
    /// This event's hash.
    pub hash: Hash,
    /// The signing key.
    pub key: KeyId,
    /// Ed25519 signature over `hash`.
    #[serde(serialize_with = "ser_hex")]
    pub sig: [u8; 64],
}

/// A validated, zero-copy view of a stored record.
///
/// Construction checks the envelope, the canonical header and the rkyv body
/// (bytecheck); accessors then read straight from the stored bytes. It does
/// not check the hash or the signature: that is [`crate::verify`]'s job.
#[derive(Clone)]
pub struct EventRef {
    bytes: fjall::Slice,
    stream_len: usize,
}

impl std::fmt::Debug for EventRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventRef")
            .field("seq", &self.seq())
            .field("stream", &self.stream())
            .field("hash", &self.hash())
            .finish_non_exhaustive()
    }
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

impl EventRef {
    /// Validates `bytes` as the record stored under `key_seq`.
    ///
    /// # Errors
    /// [`Error::Corrupt`] saying what is malformed; never panics.
    pub fn parse(key_seq: Seq, bytes: impl Into<fjall::Slice>) -> Result<EventRef> {
        let bytes: fjall::Slice = bytes.into();
        let corrupt = |reason: String| Error::Corrupt { seq: key_seq, reason };
        if bytes.len() < ENVELOPE_BYTES + CANONICAL_HEADER_BYTES {
            return Err(corrupt(format!(
                "record is {} bytes, shorter than any event",
                bytes.len()
            )));
        }
        if bytes[0] != RECORD_VERSION {
            return Err(corrupt(format!(
                "unknown record version {} (this build reads {RECORD_VERSION})",
                bytes[0]
            )));
        }
        let c = &bytes[ENVELOPE_BYTES..];
        if c[0] != CANONICAL_VERSION {
            return Err(corrupt(format!(
                "unknown canonical version {} (this build reads {CANONICAL_VERSION})",
                c[0]
            )));
        }
        if c[17] > 1 {
            return Err(corrupt(format!("cause flag is {}, expected 0 or 1", c[17])));
        }
        let stream_len = usize::from(u16::from_le_bytes([c[26], c[27]]));
        if CANONICAL_HEADER_BYTES + stream_len > c.len() {
            return Err(corrupt(format!(
                "stream length {stream_len} runs past the end of the record"
            )));
        }
        let stream = &c[CANONICAL_HEADER_BYTES..CANONICAL_HEADER_BYTES + stream_len];
        let stream = std::str::from_utf8(stream).map_err(|e| corrupt(format!("stream is not UTF-8: {e}")))?;
        StreamId::new(stream).map_err(|e| corrupt(e.to_string()))?;
        let body = &c[CANONICAL_HEADER_BYTES + stream_len..];
        rkyv::access::<ArchivedEventBody, rancor::Error>(body)
            .map_err(|e| corrupt(format!("body does not validate: {e}")))?;
        let r = EventRef { bytes, stream_len };
        if r.seq() != key_seq {
            return Err(corrupt(format!(
                "stored under seq {key_seq} but says seq {}",
                r.seq()
            )));
        }
        Ok(r)
    }

    fn canonical_slice(&self) -> &[u8] {
        &self.bytes[ENVELOPE_BYTES..]
    }

    /// The whole stored record.
    #[must_use]
    pub fn record_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The canonical bytes: what the hash covers (with the domain and prev).
    #[must_use]
    pub fn canonical(&self) -> &[u8] {
        self.canonical_slice()
    }

    /// The event's position.
    #[must_use]
    pub fn seq(&self) -> Seq {
        Seq(le_u64(self.canonical_slice(), 1))
    }

    /// Nanoseconds since the Unix epoch.
    #[must_use]
    pub fn at(&self) -> i64 {
        le_u64(self.canonical_slice(), 9).cast_signed()
    }

    /// The cause, if any.
    #[must_use]
    pub fn cause(&self) -> Option<Seq> {
        let c = self.canonical_slice();
        (c[17] == 1).then(|| Seq(le_u64(c, 18)))
    }

    /// The stream, as stored (validated at construction).
    #[must_use]
    pub fn stream(&self) -> &str {
        let c = self.canonical_slice();
        std::str::from_utf8(&c[CANONICAL_HEADER_BYTES..CANONICAL_HEADER_BYTES + self.stream_len])
            .expect("validated at construction")
    }

    /// The rkyv bytes of the body.
    #[must_use]
    pub fn body_bytes(&self) -> &[u8] {
        &self.canonical_slice()[CANONICAL_HEADER_BYTES + self.stream_len..]
    }

    /// The archived body, zero-copy.
    #[must_use]
    pub fn body(&self) -> &ArchivedEventBody {
        rkyv::access::<ArchivedEventBody, rancor::Error>(self.body_bytes())
            .expect("validated at construction")
    }

    /// Hash of the previous event.
    #[must_use]
    pub fn prev(&self) -> Hash {
        Hash(self.bytes[1..33].try_into().expect("fixed envelope"))
    }

    /// This event's stored hash.
    #[must_use]
    pub fn hash(&self) -> Hash {
        Hash(self.bytes[33..65].try_into().expect("fixed envelope"))
    }

    /// The signing key.
    #[must_use]
    pub fn key(&self) -> KeyId {
        KeyId(self.bytes[65..73].try_into().expect("fixed envelope"))
    }

    /// The signature.
    #[must_use]
    pub fn sig(&self) -> [u8; 64] {
        self.bytes[73..137].try_into().expect("fixed envelope")
    }

    /// Recomputes the hash from prev and the canonical bytes.
    #[must_use]
    pub fn computed_hash(&self) -> Hash {
        event_hash(&self.prev(), self.canonical_slice())
    }

    /// Decodes into an owned [`Event`].
    ///
    /// # Errors
    /// [`Error::Corrupt`] if the body does not deserialize.
    pub fn to_event(&self) -> Result<Event> {
        let body =
            rkyv::deserialize::<EventBody, rancor::Error>(self.body()).map_err(|e| Error::Corrupt {
                seq: self.seq(),
                reason: format!("body does not deserialize: {e}"),
            })?;
        Ok(Event {
            seq: self.seq(),
            at: self.at(),
            stream: StreamId::new(self.stream()).map_err(|e| Error::Corrupt {
                seq: self.seq(),
                reason: e.to_string(),
            })?,
            cause: self.cause(),
            body,
            prev: self.prev(),
            hash: self.hash(),
            key: self.key(),
            sig: self.sig(),
        })
    }
}
