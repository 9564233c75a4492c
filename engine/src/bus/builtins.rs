//! The communication builtins the reasoning loop offers the model — `ask`,
//! `delegate`, `send_to`, `parallel`, `race` — and [`BusTools`], the tool
//! runner that performs them through the bus (the seed's
//! `CommunicationPolicyGate`).
//!
//! A builtin call passes two gates before any message exists: the driver's
//! `invoke_tool` decision on the builtin as a tool (like every tool call),
//! then the bus's `message_send` decision for each message it would send,
//! with `context.builtin` naming the builtin and `context.correlation` the
//! run and call (`run-3/call_1`). Both decisions are journaled; the
//! `MessageSent` carries the same correlation, a response names its
//! request, and the call's result (the answer, or why there is none)
//! returns to the run as its `ToolReturned`.
//!
//! - `send_to {agent, message}`: a direct message; returns its id.
//! - `ask {agent, question, timeout_ms?}`: a request; returns the answer.
//! - `delegate {agent, task, timeout_ms?}`: a request for work; returns the
//!   result.
//! - `parallel {requests: [{agent, question}], timeout_ms?}`: every request
//!   at once; returns every answer or error, in order.
//! - `race {requests: [{agent, question}], timeout_ms?}`: every request at
//!   once; returns the first answer, and the others' waits end as
//!   `MessageExpired` (`race lost`).
//!
//! Agents on a peer instance are addressed `agent@instance`. A message to a
//! full mailbox here waits up to [`BUILTIN_SEND_WAIT`] (5 s) for room
//! before the call fails with `mailbox_full`; a request's `timeout_ms`
//! counts from when it is sent.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use serde_json::{Value, json};

use super::service::{Bus, Outgoing};
use super::{BUILTIN_SEND_WAIT, BusError, MAX_FANOUT, Pattern, RequestId};
use crate::llm::{ToolCall, ToolSpec};
use crate::orga::ToolOutcome;
use crate::tools::{CallContext, ToolResult, ToolRunner};

/// The builtin names.
pub const BUILTINS: [&str; 5] = ["ask", "delegate", "send_to", "parallel", "race"];
/// A request's wait when the call names none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest wait a call may ask for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(600);

/// Whether `name` is a communication builtin.
#[must_use]
pub fn is_builtin(name: &str) -> bool {
    BUILTINS.contains(&name)
}

/// The builtins as the model sees them.
#[must_use]
pub fn specs() -> Vec<ToolSpec> {
    let spec = |name: &str, description: &str, parameters: Value| ToolSpec {
        name: name.to_owned(),
        description: description.to_owned(),
        parameters: parameters.to_string(),
    };
    let requests = json!({
        "type": "array",
        "items": {"type": "object", "properties": {"agent": {"type": "string"}, "question": {"type": "string"}}, "required": ["agent", "question"]}
    });
    vec![
        spec(
            "send_to",
            "Send a message to another agent's mailbox (agent, or agent@instance).",
            json!({"type": "object", "properties": {"agent": {"type": "string"}, "message": {"type": "string"}}, "required": ["agent", "message"]}),
        ),
        spec(
            "ask",
            "Ask another agent a question and wait for its answer.",
            json!({"type": "object", "properties": {"agent": {"type": "string"}, "question": {"type": "string"}, "timeout_ms": {"type": "integer"}}, "required": ["agent", "question"]}),
        ),
        spec(
            "delegate",
            "Hand a task to another agent and wait for its result.",
            json!({"type": "object", "properties": {"agent": {"type": "string"}, "task": {"type": "string"}, "timeout_ms": {"type": "integer"}}, "required": ["agent", "task"]}),
        ),
        spec(
            "parallel",
            "Ask several agents at once; returns every answer (or error) in order.",
            json!({"type": "object", "properties": {"requests": requests, "timeout_ms": {"type": "integer"}}, "required": ["requests"]}),
        ),
        spec(
            "race",
            "Ask several agents at once; returns the first answer.",
            json!({"type": "object", "properties": {"requests": requests, "timeout_ms": {"type": "integer"}}, "required": ["requests"]}),
        ),
    ]
}

/// A tool runner that performs the builtins through the bus and hands
/// every other call to `inner`.
#[derive(Clone, Debug)]
pub struct BusTools {
    /// The bus.
    pub bus: Bus,
    /// The agent whose run calls them (the sender).
    pub agent: String,
    /// The run, for correlation.
    pub run: String,
    /// Every other tool.
    pub inner: Arc<dyn ToolRunner>,
}

impl ToolRunner for BusTools {
    #[allow(clippy::disallowed_methods)] // an effect runner measures how long the effect took
    fn run<'a>(
        &'a self,
        call: &'a ToolCall,
        ctx: &'a CallContext,
    ) -> Pin<Box<dyn Future<Output = ToolOutcome> + Send + 'a>> {
        if !is_builtin(&call.name) {
            return self.inner.run(call, ctx);
        }
        Box::pin(async move {
            let started = std::time::Instant::now();
            let result = self.call(call).await;
            let (ok, output) = match result {
                Ok(o) => (true, o),
                Err(e) => (false, e),
            };
            ToolOutcome {
                call_id: call.id.clone(),
                ok,
                output,
                duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            }
        })
    }

    fn compensation<'a>(
        &'a self,
        call: &'a ToolCall,
    ) -> Pin<Box<dyn Future<Output = Option<Result<String, String>>> + Send + 'a>> {
        if is_builtin(&call.name) {
            // A sent message cannot be unsent; nothing to record.
            return Box::pin(async { None });
        }
        self.inner.compensation(call)
    }

    fn compensate<'a>(&'a self, action: &'a str) -> Pin<Box<dyn Future<Output = ToolResult> + Send + 'a>> {
        self.inner.compensate(action)
    }

    fn clock_ms(&self) -> u64 {
        self.inner.clock_ms()
    }
}

fn text(args: &Value, key: &str) -> Result<String, String> {
    args.get(key)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| format!("argument {key:?} (a string) is missing"))
}

fn timeout_of(args: &Value) -> Result<Duration, String> {
    match args.get("timeout_ms") {
        None | Some(Value::Null) => Ok(DEFAULT_TIMEOUT),
        Some(v) => {
            let ms = v
                .as_u64()
                .filter(|m| *m > 0)
                .ok_or_else(|| format!("timeout_ms must be a positive integer, found {v}"))?;
            let d = Duration::from_millis(ms);
            if d > MAX_TIMEOUT {
                return Err(format!(
                    "timeout_ms {ms} is over the limit of {} ms",
                    MAX_TIMEOUT.as_millis()
                ));
            }
            Ok(d)
        }
    }
}

fn requests_of(args: &Value) -> Result<Vec<(String, String)>, String> {
    let list = args
        .get("requests")
        .and_then(Value::as_array)
        .ok_or("argument \"requests\" (an array of {agent, question}) is missing")?;
    if list.is_empty() || list.len() > MAX_FANOUT {
        return Err(format!(
            "requests must hold 1 to {MAX_FANOUT} entries, found {}",
            list.len()
        ));
    }
    list.iter()
        .enumerate()
        .map(|(i, r)| {
            Ok((
                text(r, "agent").map_err(|e| format!("requests[{i}]: {e}"))?,
                text(r, "question").map_err(|e| format!("requests[{i}]: {e}"))?,
            ))
        })
        .collect()
}

impl BusTools {
    fn outgoing(&self, call: &ToolCall, builtin: &str, to: String, payload: String) -> Outgoing {
        Outgoing {
            from: self.agent.clone(),
            to,
            pattern: Pattern::Request,
            builtin: builtin.to_owned(),
            context: format!("{}/{}", self.run, call.id),
            payload: payload.into_bytes(),
            ttl: None,
        }
    }

    /// Performs one builtin call.
    ///
    /// # Errors
    /// The call's error as the model sees it.
    pub async fn call(&self, call: &ToolCall) -> Result<String, String> {
        let args: Value =
            serde_json::from_str(&call.arguments).map_err(|e| format!("arguments are not JSON: {e}"))?;
        if !args.is_object() {
            return Err("arguments must be a JSON object".into());
        }
        let err = |e: BusError| e.to_string();
        match call.name.as_str() {
            "send_to" => {
                let mut msg = self.outgoing(call, "send_to", text(&args, "agent")?, text(&args, "message")?);
                msg.pattern = Pattern::Direct;
                let sent = self.bus.send_wait(msg, BUILTIN_SEND_WAIT).await.map_err(err)?;
                Ok(format!("sent {} (journal seq {})", sent.id, sent.seq))
            }
            "ask" | "delegate" => {
                let key = if call.name == "ask" { "question" } else { "task" };
                let mut msg = self.outgoing(call, &call.name, text(&args, "agent")?, text(&args, key)?);
                let timeout = timeout_of(&args)?;
                let (id, rx) = self
                    .bus
                    .start_request(&mut msg, timeout, BUILTIN_SEND_WAIT)
                    .await
                    .map_err(err)?;
                let answer = self
                    .bus
                    .wait_response(id, rx, timeout, "request timed out")
                    .await
                    .map_err(err)?;
                Ok(answer.text)
            }
            "parallel" => {
                let timeout = timeout_of(&args)?;
                let requests = requests_of(&args)?;
                let mut waits = Vec::new();
                for (agent, question) in &requests {
                    let mut msg = self.outgoing(call, "parallel", agent.clone(), question.clone());
                    waits.push(
                        match self.bus.start_request(&mut msg, timeout, BUILTIN_SEND_WAIT).await {
                            Ok(started) => Ok(started),
                            Err(e) => Err(e.to_string()),
                        },
                    );
                }
                let results = futures::future::join_all(requests.iter().zip(waits).map(|((agent, _), w)| {
                    let bus = self.bus.clone();
                    async move {
                        let r = match w {
                            Ok((id, rx)) => bus
                                .wait_response(id, rx, timeout, "request timed out")
                                .await
                                .map(|r| r.text)
                                .map_err(|e| e.to_string()),
                            Err(e) => Err(e),
                        };
                        match r {
                            Ok(answer) => json!({"agent": agent, "ok": true, "answer": answer}),
                            Err(error) => json!({"agent": agent, "ok": false, "error": error}),
                        }
                    }
                }))
                .await;
                Ok(Value::Array(results).to_string())
            }
            "race" => self.race(call, &args).await,
            other => Err(format!("no builtin named {other:?}")),
        }
    }

    async fn race(&self, call: &ToolCall, args: &Value) -> Result<String, String> {
        let timeout = timeout_of(args)?;
        let requests = requests_of(args)?;
        let mut open: Vec<(String, RequestId)> = Vec::new();
        let mut errors = Vec::new();
        let mut waits = FuturesUnordered::new();
        for (agent, question) in &requests {
            let mut msg = self.outgoing(call, "race", agent.clone(), question.clone());
            match self.bus.start_request(&mut msg, timeout, BUILTIN_SEND_WAIT).await {
                Ok((id, rx)) => {
                    open.push((agent.clone(), id.clone()));
                    let agent = agent.clone();
                    waits.push(async move { (agent, id, rx.await) });
                }
                Err(e) => errors.push(format!("{agent}: {e}")),
            }
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut winner = None;
        loop {
            tokio::select! {
                next = waits.next() => match next {
                    Some((agent, id, Ok(r))) => {
                        winner = Some((agent, id, r));
                        break;
                    }
                    Some((agent, _, Err(_))) => errors.push(format!("{agent}: no response (refused or cancelled)")),
                    None => break,
                },
                () = &mut deadline => break,
            }
        }
        let reason = if winner.is_some() {
            "race lost"
        } else {
            "request timed out"
        };
        for (_, id) in &open {
            if winner.as_ref().is_some_and(|(_, w, _)| w == id) {
                continue;
            }
            let _ = self.bus.cancel(id, reason).await;
        }
        match winner {
            Some((agent, id, r)) => {
                Ok(json!({"agent": agent, "request": id.0, "answer": r.text}).to_string())
            }
            None => Err(format!(
                "no agent answered within {} ms{}",
                timeout.as_millis(),
                if errors.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", errors.join("; "))
                }
            )),
        }
    }
}
