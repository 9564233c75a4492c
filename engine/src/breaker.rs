//! Per-tool circuit breakers of a reasoning run: pure state machines the
//! loop (`crate::orga`) consults before a call runs and feeds each result.
//!
//! ```text
//! closed ─(failures in a row ≥ threshold)─► open ─(open timeout elapsed)─► half_open
//!   ▲                                         ▲                               │
//!   └──────────(probes succeeded)─────────────┼───────────(a probe failed)────┘
//! ```
//!
//! A breaker never reads a clock: the caller hands in a reading, and every
//! transition carries the reading it was decided with (`RunBreakerChanged`'s
//! `at_ms`). A rebuild hands the journaled readings back in and reaches the
//! same state. A refused call changes nothing: the open breaker's state is
//! a function of the transitions alone.
//!
//! Not here: what a refused call answers (the loop journals it as the call's
//! `ToolReturned`), and where the thresholds come from (`[tools]` in
//! `crate::config`).

use std::collections::BTreeMap;
use std::time::Duration;

/// Thresholds of every breaker of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Failures in a row that open a breaker.
    pub failures: u32,
    /// How long an open breaker refuses calls, ms.
    pub open_timeout_ms: u64,
    /// Successful probes that close a half-open breaker; also the most
    /// probes admitted in one step.
    pub half_open_probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures: 3,
            open_timeout_ms: 30_000,
            half_open_probes: 1,
        }
    }
}

impl From<&crate::config::ToolsConfig> for BreakerConfig {
    fn from(c: &crate::config::ToolsConfig) -> Self {
        BreakerConfig {
            failures: c.breaker_failures.max(1),
            open_timeout_ms: duration_ms(c.breaker_open_timeout),
            half_open_probes: c.breaker_half_open_probes.max(1),
        }
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// One breaker's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Calls run; `failures` in a row so far.
    Closed {
        /// Failures in a row.
        failures: u32,
    },
    /// Calls are refused until `since_ms + open_timeout_ms`.
    Open {
        /// The reading it opened at.
        since_ms: u64,
    },
    /// Calls run as probes; `successes` so far.
    HalfOpen {
        /// Successful probes so far.
        successes: u32,
    },
}

impl State {
    /// The name journaled (`closed`, `open`, `half_open`).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            State::Closed { .. } => "closed",
            State::Open { .. } => "open",
            State::HalfOpen { .. } => "half_open",
        }
    }
}

/// A state change, to journal as `RunBreakerChanged`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    /// The tool.
    pub tool: String,
    /// The state before.
    pub from: &'static str,
    /// The state after.
    pub to: &'static str,
    /// Why.
    pub reason: String,
    /// The reading it was decided with.
    pub at_ms: u64,
}

/// Whether a call may run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Run it.
    Run,
    /// Run it as a half-open probe.
    Probe,
    /// Do not run it; the reason is the call's answer.
    Refuse(String),
}

/// The breakers of one run, by tool.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Breakers {
    config: BreakerConfig,
    by_tool: BTreeMap<String, State>,
    /// Probes admitted in the current step, by tool.
    probing: BTreeMap<String, u32>,
}

impl Breakers {
    /// Every breaker closed.
    #[must_use]
    pub fn new(config: BreakerConfig) -> Breakers {
        Breakers {
            config,
            by_tool: BTreeMap::new(),
            probing: BTreeMap::new(),
        }
    }

    /// The thresholds.
    #[must_use]
    pub fn config(&self) -> BreakerConfig {
        self.config
    }

    /// A tool's state (closed when never seen).
    #[must_use]
    pub fn state(&self, tool: &str) -> State {
        self.by_tool
            .get(tool)
            .copied()
            .unwrap_or(State::Closed { failures: 0 })
    }

    /// Whether any breaker is not closed (only then does a decision need a
    /// clock reading).
    #[must_use]
    pub fn any_open(&self) -> bool {
        self.by_tool.values().any(|s| !matches!(s, State::Closed { .. }))
    }

    /// Starts a step: no probes admitted yet.
    pub fn begin_step(&mut self) {
        self.probing.clear();
    }

    /// Decides one call of `tool` at `now_ms`; an open breaker whose timeout
    /// elapsed goes half-open (the transition is returned).
    pub fn admit(&mut self, tool: &str, now_ms: u64) -> (Admission, Option<Transition>) {
        let c = self.config;
        let mut transition = None;
        if let State::Open { since_ms } = self.state(tool) {
            let until = since_ms.saturating_add(c.open_timeout_ms);
            if now_ms < until {
                // Only the state in the answer, not the reading: a rebuild
                // (which hands in no reading) answers the same.
                let why = format!(
                    "circuit breaker of {tool} is open after {} failures in a row; a probe is let through {} ms after it opened",
                    c.failures, c.open_timeout_ms
                );
                return (Admission::Refuse(why), None);
            }
            self.by_tool
                .insert(tool.to_owned(), State::HalfOpen { successes: 0 });
            transition = Some(Transition {
                tool: tool.to_owned(),
                from: "open",
                to: "half_open",
                reason: format!(
                    "open timeout of {} ms elapsed; probing with up to {} call(s)",
                    c.open_timeout_ms, c.half_open_probes
                ),
                at_ms: now_ms,
            });
        }
        match self.state(tool) {
            State::HalfOpen { successes } => {
                let probes = self.probing.entry(tool.to_owned()).or_default();
                if successes + *probes >= c.half_open_probes {
                    let why = format!("circuit breaker of {tool} is half-open and its probe is in flight");
                    (Admission::Refuse(why), transition)
                } else {
                    *probes += 1;
                    (Admission::Probe, transition)
                }
            }
            _ => (Admission::Run, transition),
        }
    }

    /// Feeds the result of a call that ran; returns the transition it causes.
    pub fn record(&mut self, tool: &str, ok: bool, now_ms: u64) -> Option<Transition> {
        let c = self.config;
        let before = self.state(tool);
        let (after, reason) = match (before, ok) {
            (State::Closed { .. }, true) => (State::Closed { failures: 0 }, None),
            (State::Closed { failures }, false) => {
                let failures = failures + 1;
                if failures >= c.failures {
                    (
                        State::Open { since_ms: now_ms },
                        Some(format!(
                            "{failures} failures in a row (threshold {}); refusing calls for {} ms",
                            c.failures, c.open_timeout_ms
                        )),
                    )
                } else {
                    (State::Closed { failures }, None)
                }
            }
            (State::HalfOpen { successes }, true) => {
                let successes = successes + 1;
                if successes >= c.half_open_probes {
                    (
                        State::Closed { failures: 0 },
                        Some(format!("{successes} probe(s) succeeded")),
                    )
                } else {
                    (State::HalfOpen { successes }, None)
                }
            }
            (State::HalfOpen { .. }, false) => (
                State::Open { since_ms: now_ms },
                Some(format!(
                    "a probe failed; refusing calls for {} ms",
                    c.open_timeout_ms
                )),
            ),
            // A call that ran while open cannot happen (it is refused); keep
            // the state.
            (State::Open { .. }, _) => (before, None),
        };
        self.by_tool.insert(tool.to_owned(), after);
        reason.map(|reason| Transition {
            tool: tool.to_owned(),
            from: before.name(),
            to: after.name(),
            reason,
            at_ms: now_ms,
        })
    }
}
