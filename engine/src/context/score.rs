//! Importance of an item, from journaled facts only: its base importance,
//! its journaled accesses (log-scaled), its recency (exponential decay with
//! the half-life of its memory type, measured from its last journaled
//! access or its storing, against an explicit `now`), the feedback given,
//! and the weight of its type. The same store and the same `now` give the
//! same score, so a replay ranks as the original did.
//!
//! ```text
//! importance = weight(type) × (0.4·base + 0.2·access + 0.3·recency + 0.1·feedback)
//! base     = importance_permille / 1000                          ∈ [0, 1]
//! access   = min(1, ln(1 + accesses) / ln(1 + 100))              ∈ [0, 1]
//! recency  = 0.5 ^ (age_hours / half_life_hours(type))           ∈ (0, 1]
//! feedback = (1 + tanh(feedback_permille / 1000)) / 2            ∈ (0, 1)
//! ```

use stele_projections::context::{Item, MEMORY_TYPES};

use super::{ContextError, MemoryType};
use crate::config::ContextConfig;

/// What a memory type keeps and weighs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TypePolicy {
    /// Items older than this are eligible for archiving, days.
    pub retention_days: u32,
    /// Half-life of the recency factor, hours.
    pub half_life_hours: f64,
    /// Importance multiplier.
    pub weight: f64,
}

/// The built-in policy of a type (`[context.memory.<type>]` overrides it).
#[must_use]
pub fn default_policy(t: MemoryType) -> TypePolicy {
    let (retention_days, half_life_hours, weight) = match t {
        MemoryType::ShortTerm => (1, 1.0, 0.6),
        MemoryType::Working => (1, 0.5, 0.8),
        MemoryType::Episodic => (90, 7.0 * 24.0, 1.0),
        MemoryType::LongTerm => (365, 90.0 * 24.0, 1.2),
        MemoryType::Semantic => (365, 180.0 * 24.0, 1.1),
        MemoryType::SharedKnowledge => (365, 90.0 * 24.0, 1.0),
    };
    TypePolicy {
        retention_days,
        half_life_hours,
        weight,
    }
}

/// Per-type policies.
#[derive(Clone, Debug, PartialEq)]
pub struct Scoring {
    per_type: [TypePolicy; 6],
}

impl Default for Scoring {
    fn default() -> Self {
        Scoring {
            per_type: MemoryType::ALL.map(default_policy),
        }
    }
}

impl Scoring {
    /// The defaults with `[context]`'s overrides: `knowledge_retention_days`
    /// for shared knowledge, then each `[context.memory.<type>]`.
    ///
    /// # Errors
    /// An unknown memory type, a non-positive half-life, a negative weight.
    pub fn from_config(c: &ContextConfig) -> Result<Scoring, ContextError> {
        let mut s = Scoring::default();
        s.per_type[MemoryType::SharedKnowledge as usize].retention_days = c.knowledge_retention_days;
        for (name, m) in &c.memory {
            let t = MemoryType::parse(name).map_err(|_| ContextError::Invalid {
                what: "[context.memory]",
                reason: format!(
                    "[context.memory.{name}]: unknown memory type; expected one of {}",
                    MEMORY_TYPES.join(", ")
                ),
            })?;
            let p = &mut s.per_type[t as usize];
            if let Some(d) = m.retention_days {
                p.retention_days = d;
            }
            if let Some(h) = m.half_life_hours {
                if !(h.is_finite() && h > 0.0) {
                    return Err(ContextError::Invalid {
                        what: "[context.memory]",
                        reason: format!(
                            "[context.memory.{name}] half_life_hours must be positive, found {h}"
                        ),
                    });
                }
                p.half_life_hours = h;
            }
            if let Some(w) = m.weight {
                if !(w.is_finite() && w >= 0.0) {
                    return Err(ContextError::Invalid {
                        what: "[context.memory]",
                        reason: format!("[context.memory.{name}] weight must be zero or more, found {w}"),
                    });
                }
                p.weight = w;
            }
        }
        Ok(s)
    }

    /// The policy of a journaled type name (an unknown name gets the
    /// episodic policy: the fold is total, names are checked on the way in).
    #[must_use]
    pub fn policy_of(&self, memory_type: &str) -> TypePolicy {
        let t = MemoryType::parse(memory_type).unwrap_or(MemoryType::Episodic);
        self.per_type[t as usize]
    }

    /// The largest type weight (an upper bound of any importance).
    #[must_use]
    pub fn max_weight(&self) -> f64 {
        self.per_type.iter().map(|p| p.weight).fold(0.0, f64::max)
    }

    /// The recency factor of `item` at `now_ms`.
    #[must_use]
    pub fn recency(&self, item: &Item, now_ms: u64) -> f64 {
        let last = item.stored_ms.max(item.last_access_ms);
        let age_hours = now_ms.saturating_sub(last) as f64 / 3_600_000.0;
        0.5_f64.powf(age_hours / self.policy_of(&item.memory_type).half_life_hours)
    }

    /// The importance of `item` at `now_ms` (see the module documentation).
    #[must_use]
    pub fn importance(&self, item: &Item, now_ms: u64) -> f64 {
        let base = f64::from(item.importance_permille.min(1000)) / 1000.0;
        let access = ((1.0 + item.accesses as f64).ln() / 101_f64.ln()).min(1.0);
        let recency = self.recency(item, now_ms);
        let feedback = f64::midpoint(1.0, (item.feedback_permille as f64 / 1000.0).tanh());
        self.policy_of(&item.memory_type).weight
            * (0.4 * base + 0.2 * access + 0.3 * recency + 0.1 * feedback)
    }
}
