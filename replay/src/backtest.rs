//! Policy backtests: every journaled `PolicyDecided` request (the full
//! canonical request is in the event) evaluated again against another
//! Cedar policy set, and each verdict that would flip listed with the old
//! and new determining policies.
//!
//! Reading is sequential (the journal's order); evaluation runs on every
//! core (rayon), each request through the same pure `PolicyGate::decide`
//! the live gate uses. A request that no longer parses is reported, not
//! skipped silently.

use rayon::prelude::*;
use stele_engine::policy::{AuthzRequest, PolicyGate};
use stele_journal::{ArchivedEventBody, Reader, Seq};

use crate::Result;

/// One recorded decision.
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

/// The `PolicyDecided` events of `from..=to`.
///
/// # Errors
/// Reading the journal failed.
pub fn recorded(reader: &Reader, from: Seq, to: Seq) -> Result<Vec<Recorded>> {
    let mut out = Vec::new();
    if to < from {
        return Ok(out);
    }
    for e in reader.range(from, to) {
        let e = e?;
        if let ArchivedEventBody::PolicyDecided {
            run,
            request,
            verdict,
            policies,
            ..
        } = e.body()
        {
            out.push(Recorded {
                seq: e.seq().0,
                run: run.as_ref().map(|r| r.to_string()),
                request: request.to_string(),
                verdict: verdict.to_string(),
                policies: policies.iter().map(|p| p.to_string()).collect(),
            });
        }
    }
    Ok(out)
}

/// A new verdict: its name, determining policies and detail.
type Answer = (String, Vec<String>, String);

/// Evaluates `decisions` against `gate`: the flips and the unreadable
/// requests, each in seq order. The gate is pure, so each distinct request
/// text is evaluated once (journals repeat requests: the same agent
/// reading the same file), on every core.
#[must_use]
pub fn evaluate(gate: &PolicyGate, decisions: &[Recorded]) -> (Vec<Flip>, Vec<Unreadable>) {
    let mut distinct: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let mut texts: Vec<&str> = Vec::new();
    let index: Vec<usize> = decisions
        .iter()
        .map(|r| {
            *distinct.entry(r.request.as_str()).or_insert_with(|| {
                texts.push(r.request.as_str());
                texts.len() - 1
            })
        })
        .collect();
    let answers: Vec<Result<Answer, String>> = texts
        .par_iter()
        .with_min_len(64)
        .map(|text| {
            AuthzRequest::from_canonical_json(text)
                .map(|req| {
                    let d = gate.decide(&req);
                    (d.verdict.name().to_owned(), d.policies, d.verdict.detail())
                })
                .map_err(|e| e.to_string())
        })
        .collect();
    let mut flips = Vec::new();
    let mut unreadable = Vec::new();
    for (r, i) in decisions.iter().zip(index) {
        match &answers[i] {
            Err(reason) => unreadable.push(Unreadable {
                seq: r.seq,
                reason: reason.clone(),
            }),
            Ok((verdict, policies, detail)) if *verdict != r.verdict => flips.push(Flip {
                seq: r.seq,
                run: r.run.clone(),
                request: r.request.clone(),
                old_verdict: r.verdict.clone(),
                new_verdict: verdict.clone(),
                old_policies: r.policies.clone(),
                new_policies: policies.clone(),
                new_detail: detail.clone(),
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
