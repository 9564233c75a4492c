//! Policy backtests: every journaled `PolicyDecided` request (the full
//! canonical request is in the event) evaluated again against another
//! Cedar policy set, and each verdict that would flip listed with the old
//! and new determining policies.
//!
//! The journal is read zero-copy: the decisions are kept as the stored
//! records ([`Decided`]), and the request, verdict and run are borrowed
//! from their bytes; nothing is copied out but the flips. Reading is split
//! into seq ranges read on every core, then each distinct request text is
//! evaluated once (journals repeat requests: the same agent reading the
//! same file), on every core, through the same pure gate the live
//! enforcement points use (`PolicyGate::decide_cached`: each thread keeps
//! the Cedar entity stores of the principals and resources it has seen);
//! only a flip's detail is rendered. A request that no
//! longer parses is reported, not skipped silently. Output is in seq order
//! whatever the thread count.

use std::collections::HashMap;

use rayon::prelude::*;
use stele_engine::policy::{AuthzRequest, EntityCache, GateDecision, PolicyGate};
use stele_journal::{ArchivedEventBody, EventRef, Reader, Seq};

use crate::Result;

/// Events read per task when the journal is read on every core.
const READ_CHUNK_EVENTS: u64 = 16_384;
/// Fewest distinct requests a rayon task evaluates (smaller is overhead).
const EVAL_MIN_LEN: usize = 64;

/// One recorded decision, as the backtest reads it.
pub trait Decision: Sync {
    /// Its seq.
    fn seq(&self) -> u64;
    /// Its run, when it came from one.
    fn run(&self) -> Option<&str>;
    /// The canonical request.
    fn request(&self) -> &str;
    /// The verdict recorded.
    fn verdict(&self) -> &str;
    /// Its determining policies.
    fn policies(&self) -> Vec<String>;
}

/// One recorded decision, owned (built in memory, e.g. by a bench).
#[derive(Clone, Debug)]
pub struct Recorded {
    /// Its seq.
    pub seq: u64,
    /// Its run, when it came from one.
    pub run: Option<String>,
    /// The canonical request.
    pub request: String,
    /// The verdict recorded.
    pub verdict: String,
    /// Its determining policies.
    pub policies: Vec<String>,
}

impl Decision for Recorded {
    fn seq(&self) -> u64 {
        self.seq
    }
    fn run(&self) -> Option<&str> {
        self.run.as_deref()
    }
    fn request(&self) -> &str {
        &self.request
    }
    fn verdict(&self) -> &str {
        &self.verdict
    }
    fn policies(&self) -> Vec<String> {
        self.policies.clone()
    }
}

/// A `PolicyDecided` event as stored: its fields are read in place.
#[derive(Clone, Debug)]
pub struct Decided(EventRef);

impl Decided {
    /// The event, when it is a `PolicyDecided`.
    #[must_use]
    pub fn new(e: EventRef) -> Option<Decided> {
        matches!(e.body(), ArchivedEventBody::PolicyDecided { .. }).then_some(Decided(e))
    }

    /// The run, the request and the verdict, borrowed from the record.
    fn fields(&self) -> (Option<&str>, &str, &str) {
        match self.0.body() {
            ArchivedEventBody::PolicyDecided {
                run,
                request,
                verdict,
                ..
            } => (
                run.as_ref().map(|r| r.as_str()),
                request.as_str(),
                verdict.as_str(),
            ),
            _ => unreachable!("Decided holds PolicyDecided events only (checked in new)"),
        }
    }
}

impl Decision for Decided {
    fn seq(&self) -> u64 {
        self.0.seq().0
    }
    fn run(&self) -> Option<&str> {
        self.fields().0
    }
    fn request(&self) -> &str {
        self.fields().1
    }
    fn verdict(&self) -> &str {
        self.fields().2
    }
    fn policies(&self) -> Vec<String> {
        match self.0.body() {
            ArchivedEventBody::PolicyDecided { policies, .. } => {
                policies.iter().map(|p| p.as_str().to_owned()).collect()
            }
            _ => Vec::new(),
        }
    }
}

/// A verdict that flips.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Flip {
    /// The seq of the recorded decision.
    pub seq: u64,
    /// Its run.
    pub run: Option<String>,
    /// The request (canonical JSON).
    pub request: String,
    /// The verdict recorded.
    pub old_verdict: String,
    /// The verdict of the new set.
    pub new_verdict: String,
    /// Determining policies recorded.
    pub old_policies: Vec<String>,
    /// Determining policies of the new set.
    pub new_policies: Vec<String>,
    /// The new deny reason, conditions or approval reason.
    pub new_detail: String,
}

/// A recorded request that could not be evaluated again.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Unreadable {
    /// Its seq.
    pub seq: u64,
    /// Why.
    pub reason: String,
}

/// The result of a backtest.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Backtest {
    /// First seq looked at.
    pub from: u64,
    /// Last seq looked at.
    pub to: u64,
    /// BLAKE3 (hex) of the new policy set.
    pub policy_set: String,
    /// Requests evaluated.
    pub evaluated: usize,
    /// Verdicts that flip, in seq order.
    pub flips: Vec<Flip>,
    /// Requests that could not be evaluated.
    pub unreadable: Vec<Unreadable>,
}

/// The `PolicyDecided` events of `from..=to`, as stored, in seq order: the
/// range is read in chunks on every core.
///
/// # Errors
/// Reading the journal failed.
pub fn recorded(reader: &Reader, from: Seq, to: Seq) -> Result<Vec<Decided>> {
    let to = to.min(reader.head().seq);
    if to < from {
        return Ok(Vec::new());
    }
    let chunks: Vec<(Seq, Seq)> = (from.0..=to.0)
        .step_by(usize::try_from(READ_CHUNK_EVENTS).unwrap_or(usize::MAX))
        .map(|a| (Seq(a), Seq(a.saturating_add(READ_CHUNK_EVENTS - 1).min(to.0))))
        .collect();
    let read: Vec<Result<Vec<Decided>>> = chunks
        .par_iter()
        .map(|&(a, b)| {
            let mut out = Vec::new();
            for e in reader.range(a, b) {
                out.extend(Decided::new(e?));
            }
            Ok(out)
        })
        .collect();
    let mut out = Vec::new();
    for chunk in read {
        out.extend(chunk?);
    }
    Ok(out)
}

/// Evaluates `decisions` against `gate`: the flips and the unreadable
/// requests, each in seq order. The gate is pure, so each distinct request
/// text is evaluated once, on every core.
#[must_use]
pub fn evaluate<D: Decision>(gate: &PolicyGate, decisions: &[D]) -> (Vec<Flip>, Vec<Unreadable>) {
    let mut distinct: HashMap<&str, usize> = HashMap::with_capacity(decisions.len().min(1 << 16));
    let mut texts: Vec<&str> = Vec::new();
    let index: Vec<usize> = decisions
        .iter()
        .map(|r| {
            let text = r.request();
            *distinct.entry(text).or_insert_with(|| {
                texts.push(text);
                texts.len() - 1
            })
        })
        .collect();
    drop(distinct);
    let answers: Vec<Result<GateDecision, String>> = texts
        .par_iter()
        .with_min_len(EVAL_MIN_LEN)
        .map_init(EntityCache::default, |cache, text| {
            AuthzRequest::from_canonical_json(text)
                .map(|req| gate.decide_cached(&req, cache))
                .map_err(|e| e.to_string())
        })
        .collect();
    let mut flips = Vec::new();
    let mut unreadable = Vec::new();
    for (r, i) in decisions.iter().zip(index) {
        match &answers[i] {
            Err(reason) => unreadable.push(Unreadable {
                seq: r.seq(),
                reason: reason.clone(),
            }),
            Ok(d) if d.verdict.name() != r.verdict() => flips.push(Flip {
                seq: r.seq(),
                run: r.run().map(str::to_owned),
                request: r.request().to_owned(),
                old_verdict: r.verdict().to_owned(),
                new_verdict: d.verdict.name().to_owned(),
                old_policies: r.policies(),
                new_policies: d.policies.clone(),
                new_detail: d.verdict.detail(),
            }),
            Ok(_) => {}
        }
    }
    (flips, unreadable)
}

/// Backtests `gate` over the decisions journaled in `from..=to`.
///
/// # Errors
/// Reading the journal failed.
pub fn backtest(reader: &Reader, gate: &PolicyGate, from: Seq, to: Seq) -> Result<Backtest> {
    let decisions = recorded(reader, from, to)?;
    let (flips, unreadable) = evaluate(gate, &decisions);
    Ok(Backtest {
        from: from.0,
        to: to.0,
        policy_set: gate.hash(),
        evaluated: decisions.len(),
        flips,
        unreadable,
    })
}
