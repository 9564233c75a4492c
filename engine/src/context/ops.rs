//! The context decider: each operation checks its input against the store,
//! asks the Cedar gate (`data_access`: `write_data` for store, update,
//! share and archive; `read_data` for reads and feedback) and answers with
//! the facts to journal — the `PolicyDecided` of each decision first, then
//! the change. A denial is journaled too: it comes back as [`Rejected`]
//! carrying its `PolicyDecided`.
//!
//! The `Data` resource of a request is the item `owner/id` with
//! `classification` = its access level (for a reader holding a grant: the
//! grant's level) and `owner`; the context says the `operation` (`store`,
//! `update`, `share`, `archive`, `read`, `feedback`) and whether the reader
//! holds a grant (`granted`). The policies that give the levels their
//! meaning are `fixtures/policies/context.cedar`.
//!
//! Pure: no clock, no I/O. Times come in as arguments.

use serde_json::json;
use stele_journal::EventBody;
use stele_journal::event::{ContextArchive, ContextItem};
use stele_projections::context::{ContextStore, Item, item_key};

use super::score::Scoring;
use super::{AccessLevel, ContextError, MemoryType};
use crate::policy::{AuthzRequest, Entity, Point, PolicyGate};

/// Longest content of one item (its fact must fit an event body).
pub const MAX_CONTENT_BYTES: usize = 64 * 1024;
/// Most tags on one item.
pub const MAX_TAGS: usize = 32;
/// Longest tag.
pub const MAX_TAG_BYTES: usize = 64;
/// Longest item id.
pub const MAX_ID_BYTES: usize = 64;
/// Items' JSON per `ContextArchived` before a new event is started (the
/// compressed bytes stay well under the journal's body limit).
pub const ARCHIVE_CHUNK_BYTES: usize = 512 * 1024;

/// Who asks: an agent and its priority (a policy attribute).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requester {
    /// The agent.
    pub agent: String,
    /// `critical`, `high`, `normal` or `low`.
    pub priority: String,
}

impl Requester {
    /// An agent of `normal` priority.
    #[must_use]
    pub fn normal(agent: &str) -> Requester {
        Requester {
            agent: agent.to_owned(),
            priority: "normal".into(),
        }
    }
}

/// An item to store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewItem {
    /// Its id; `None` numbers it `m-<n>`.
    pub id: Option<String>,
    /// Its memory type.
    pub memory_type: MemoryType,
    /// Its access level.
    pub level: AccessLevel,
    /// The text.
    pub content: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Base importance, thousandths (0..=1000).
    pub importance_permille: u32,
    /// The session or run it came from (empty: none).
    pub session: String,
}

impl NewItem {
    /// A private (restricted) item of type `memory_type` with importance 0.5.
    #[must_use]
    pub fn text(memory_type: MemoryType, content: &str) -> NewItem {
        NewItem {
            id: None,
            memory_type,
            level: AccessLevel::Restricted,
            content: content.to_owned(),
            tags: Vec::new(),
            importance_permille: 500,
            session: String::new(),
        }
    }
}

/// What changes in an update (`None`: unchanged).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// New content.
    pub content: Option<String>,
    /// New base importance.
    pub importance_permille: Option<u32>,
    /// New memory type.
    pub memory_type: Option<MemoryType>,
}

/// A refused operation: the facts to journal anyway (the denying
/// `PolicyDecided`) and why.
#[derive(Debug)]
pub struct Rejected {
    /// Facts recording the refusal (may be empty for bad input).
    pub facts: Vec<EventBody>,
    /// Why.
    pub error: ContextError,
}

impl From<ContextError> for Rejected {
    fn from(error: ContextError) -> Rejected {
        Rejected {
            facts: Vec::new(),
            error,
        }
    }
}

/// The outcome of a decision.
pub type Decided = Result<Vec<EventBody>, Rejected>;

fn check_id(what: &'static str, id: &str) -> Result<(), ContextError> {
    if id.is_empty() || id.len() > MAX_ID_BYTES {
        return Err(ContextError::Invalid {
            what,
            reason: format!("{id:?} must be 1 to {MAX_ID_BYTES} bytes"),
        });
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(ContextError::Invalid {
            what,
            reason: format!("{id:?} contains {c:?}; allowed are ASCII letters, digits and . _ -"),
        });
    }
    Ok(())
}

fn check_agent(agent: &str) -> Result<(), ContextError> {
    check_id("agent name", agent)
}

/// The `data_access` request for `requester` acting on an item.
#[must_use]
pub fn data_request(
    requester: &Requester,
    action: &str,
    key: &str,
    owner: &str,
    classification: &str,
    operation: &str,
    granted: bool,
) -> AuthzRequest {
    AuthzRequest {
        point: Point::DataAccess,
        principal: Entity {
            kind: "Agent".into(),
            id: requester.agent.clone(),
            attrs: json!({ "priority": requester.priority }),
        },
        action: action.to_owned(),
        resource: Entity {
            kind: "Data".into(),
            id: key.to_owned(),
            attrs: json!({ "classification": classification, "owner": {"type": "Agent", "id": owner} }),
        },
        context: json!({ "operation": operation, "granted": granted }),
    }
}

/// Asks the gate; the `PolicyDecided` fact and, when denied, the reason.
#[must_use]
pub fn ask(gate: &PolicyGate, request: &AuthzRequest) -> (EventBody, Option<String>) {
    let decision = gate.decide(request);
    let mut detail = decision.verdict.detail();
    if !decision.errors.is_empty() {
        detail = format!("{detail} (errors: {})", decision.errors.join("; "));
    }
    let denied = if decision.verdict.allows() {
        None
    } else if detail.is_empty() {
        Some(decision.verdict.name().to_owned())
    } else {
        Some(detail.clone())
    };
    let fact = EventBody::PolicyDecided {
        run: None,
        point: Point::DataAccess.name().to_owned(),
        request: request.canonical_json(),
        verdict: decision.verdict.name().to_owned(),
        detail,
        policies: decision.policies,
        policy_set: gate.hash(),
    };
    (fact, denied)
}

fn gated(gate: &PolicyGate, request: &AuthzRequest, change: Vec<EventBody>) -> Decided {
    let (fact, denied) = ask(gate, request);
    match denied {
        None => {
            let mut facts = vec![fact];
            facts.extend(change);
            Ok(facts)
        }
        Some(reason) => Err(Rejected {
            facts: vec![fact],
            error: ContextError::Denied {
                agent: request.principal.id.clone(),
                action: format!(
                    "{} ({})",
                    request.action,
                    request.context["operation"].as_str().unwrap_or("")
                ),
                item: request.resource.id.clone(),
                reason,
            },
        }),
    }
}

fn live<'a>(store: &'a ContextStore, owner: &str, id: &str) -> Result<&'a Item, ContextError> {
    store.item(owner, id).ok_or_else(|| ContextError::NotFound {
        agent: owner.to_owned(),
        item: id.to_owned(),
    })
}

/// Stores an item in `requester`'s own context. Returns the facts and the id.
///
/// # Errors
/// Bad input, a taken id, or the gate's denial.
pub fn store(
    state: &ContextStore,
    gate: &PolicyGate,
    requester: &Requester,
    new: NewItem,
) -> Result<(Vec<EventBody>, String), Rejected> {
    check_agent(&requester.agent)?;
    let next = state.agents.get(&requester.agent).map_or(0, |a| a.stored) + 1;
    let id = new.id.clone().unwrap_or_else(|| format!("m-{next}"));
    check_id("item id", &id)?;
    if new.content.trim().is_empty() {
        return Err(ContextError::Invalid {
            what: "content",
            reason: "it is empty".into(),
        }
        .into());
    }
    if new.content.len() > MAX_CONTENT_BYTES {
        return Err(ContextError::Invalid {
            what: "content",
            reason: format!(
                "{} bytes is over the limit of {MAX_CONTENT_BYTES}",
                new.content.len()
            ),
        }
        .into());
    }
    if new.tags.len() > MAX_TAGS {
        return Err(ContextError::Invalid {
            what: "tags",
            reason: format!("{} tags is over the limit of {MAX_TAGS}", new.tags.len()),
        }
        .into());
    }
    if let Some(t) = new.tags.iter().find(|t| t.is_empty() || t.len() > MAX_TAG_BYTES) {
        return Err(ContextError::Invalid {
            what: "tag",
            reason: format!("{t:?} must be 1 to {MAX_TAG_BYTES} bytes"),
        }
        .into());
    }
    if new.importance_permille > 1000 {
        return Err(ContextError::Invalid {
            what: "importance",
            reason: format!("{} is over 1000 (thousandths)", new.importance_permille),
        }
        .into());
    }
    if state.item(&requester.agent, &id).is_some() {
        return Err(ContextError::Exists {
            agent: requester.agent.clone(),
            item: id,
        }
        .into());
    }
    let key = item_key(&requester.agent, &id);
    let request = data_request(
        requester,
        "write_data",
        &key,
        &requester.agent,
        new.level.name(),
        "store",
        false,
    );
    let fact = EventBody::ContextStored {
        agent: requester.agent.clone(),
        item: Box::new(ContextItem {
            id: id.clone(),
            memory_type: new.memory_type.name().to_owned(),
            level: new.level.name().to_owned(),
            content: new.content,
            tags: new.tags,
            importance_permille: new.importance_permille,
            session: new.session,
        }),
    };
    Ok((gated(gate, &request, vec![fact])?, id))
}

/// Updates an item of `owner` (the requester must be allowed to write it).
///
/// # Errors
/// No such item, nothing to change, bad input, or the gate's denial.
pub fn update(
    state: &ContextStore,
    gate: &PolicyGate,
    requester: &Requester,
    owner: &str,
    id: &str,
    changes: Changes,
) -> Decided {
    let item = live(state, owner, id)?;
    if changes == Changes::default() {
        return Err(ContextError::Invalid {
            what: "update",
            reason: "nothing to change (give content, importance or memory type)".into(),
        }
        .into());
    }
    if let Some(c) = &changes.content
        && (c.trim().is_empty() || c.len() > MAX_CONTENT_BYTES)
    {
        return Err(ContextError::Invalid {
            what: "content",
            reason: format!("must be 1 to {MAX_CONTENT_BYTES} bytes, found {}", c.len()),
        }
        .into());
    }
    if let Some(i) = changes.importance_permille
        && i > 1000
    {
        return Err(ContextError::Invalid {
            what: "importance",
            reason: format!("{i} is over 1000 (thousandths)"),
        }
        .into());
    }
    let key = item_key(owner, id);
    let request = data_request(requester, "write_data", &key, owner, &item.level, "update", false);
    gated(
        gate,
        &request,
        vec![EventBody::ContextUpdated {
            agent: owner.to_owned(),
            item: id.to_owned(),
            content: changes.content,
            importance_permille: changes.importance_permille,
            memory_type: changes.memory_type.map(|t| t.name().to_owned()),
        }],
    )
}

/// Feedback on an item the requester may read (-1000..=1000 thousandths).
///
/// # Errors
/// No such item, a score out of range, or the gate's denial.
pub fn feedback(
    state: &ContextStore,
    gate: &PolicyGate,
    requester: &Requester,
    owner: &str,
    id: &str,
    score_permille: i32,
) -> Decided {
    let item = live(state, owner, id)?;
    if !(-1000..=1000).contains(&score_permille) {
        return Err(ContextError::Invalid {
            what: "feedback",
            reason: format!("{score_permille} is outside -1000..=1000 (thousandths)"),
        }
        .into());
    }
    let key = item_key(owner, id);
    let (level, granted) = reader_view(state, &requester.agent, item);
    let request = data_request(requester, "read_data", &key, owner, level, "feedback", granted);
    gated(
        gate,
        &request,
        vec![EventBody::ContextFeedbackGiven {
            agent: owner.to_owned(),
            item: id.to_owned(),
            score_permille,
        }],
    )
}

/// Shares the requester's item `id` with agent `with` at `level`. The level
/// may not be less restrictive than the item's own; the gate sees the
/// item's level (so a secret item is refused by policy).
///
/// # Errors
/// No such item, a level below the item's, sharing with oneself, or the
/// gate's denial.
pub fn share(
    state: &ContextStore,
    gate: &PolicyGate,
    requester: &Requester,
    id: &str,
    with: &str,
    level: AccessLevel,
) -> Decided {
    let owner = requester.agent.as_str();
    let item = live(state, owner, id)?;
    check_agent(with)?;
    if with == owner {
        return Err(ContextError::Invalid {
            what: "share",
            reason: format!("{owner} already owns {id}"),
        }
        .into());
    }
    let own = AccessLevel::parse(&item.level)?;
    if level < own {
        return Err(ContextError::Invalid {
            what: "share",
            reason: format!(
                "{owner}/{id} is {own}; it cannot be shared as {level}, which is less restrictive"
            ),
        }
        .into());
    }
    let key = item_key(owner, id);
    let request = data_request(requester, "write_data", &key, owner, &item.level, "share", false);
    gated(
        gate,
        &request,
        vec![EventBody::ContextShared {
            agent: owner.to_owned(),
            item: id.to_owned(),
            with: with.to_owned(),
            level: level.name().to_owned(),
        }],
    )
}

/// The cut-off of an item for archiving: stored before `before_ms`, or
/// (without one) older than its type's retention at `now_ms`.
#[must_use]
pub fn eligible(item: &Item, before_ms: Option<u64>, now_ms: u64, scoring: &Scoring) -> bool {
    match before_ms {
        Some(b) => item.stored_ms < b,
        None => {
            let keep_ms = u64::from(scoring.policy_of(&item.memory_type).retention_days) * 86_400_000;
            item.stored_ms.saturating_add(keep_ms) < now_ms
        }
    }
}

/// Archives the requester's items stored before `before_ms` (or, without
/// it, those past their type's retention at `now_ms`): their JSON,
/// compressed with LZ4, goes into `ContextArchived` events and they leave
/// the live store. Returns the facts and how many items.
///
/// # Errors
/// The gate's denial.
pub fn archive(
    state: &ContextStore,
    gate: &PolicyGate,
    requester: &Requester,
    before_ms: Option<u64>,
    now_ms: u64,
    scoring: &Scoring,
) -> Result<(Vec<EventBody>, usize), Rejected> {
    let owner = requester.agent.as_str();
    check_agent(owner)?;
    let request = data_request(
        requester,
        "write_data",
        &format!("{owner}/*"),
        owner,
        AccessLevel::Restricted.name(),
        "archive",
        false,
    );
    let items: Vec<&Item> = state
        .agents
        .get(owner)
        .map(|a| {
            a.items
                .values()
                .filter(|i| eligible(i, before_ms, now_ms, scoring))
                .collect()
        })
        .unwrap_or_default();
    let n = items.len();
    let cut = before_ms.unwrap_or(now_ms);
    let mut changes = Vec::new();
    let mut chunk: Vec<&Item> = Vec::new();
    let mut chunk_bytes = 0;
    for item in items {
        chunk_bytes += item.size_bytes() as usize + 256;
        chunk.push(item);
        if chunk_bytes >= ARCHIVE_CHUNK_BYTES {
            changes.push(archived(owner, cut, &chunk));
            chunk.clear();
            chunk_bytes = 0;
        }
    }
    if !chunk.is_empty() {
        changes.push(archived(owner, cut, &chunk));
    }
    Ok((gated(gate, &request, changes)?, n))
}

fn archived(owner: &str, before_ms: u64, items: &[&Item]) -> EventBody {
    let json = serde_json::to_vec(items).expect("items serialize to JSON");
    EventBody::ContextArchived {
        agent: owner.to_owned(),
        archive: Box::new(ContextArchive {
            before_ms,
            items: items.iter().map(|i| i.id.clone()).collect(),
            original_bytes: json.len() as u64,
            codec: "lz4".into(),
            compressed: lz4_flex::compress_prepend_size(&json),
        }),
    }
}

/// The items of a `ContextArchived`, decompressed.
///
/// # Errors
/// An unknown codec or bytes that do not decompress to the items' JSON.
pub fn unarchive(codec: &str, compressed: &[u8]) -> Result<Vec<Item>, ContextError> {
    if codec != "lz4" {
        return Err(ContextError::Invalid {
            what: "archive",
            reason: format!("unknown codec {codec:?} (this build reads lz4)"),
        });
    }
    let json = lz4_flex::decompress_size_prepended(compressed).map_err(|e| ContextError::Invalid {
        what: "archive",
        reason: format!("the compressed items do not decompress: {e}"),
    })?;
    serde_json::from_slice(&json).map_err(|e| ContextError::Invalid {
        what: "archive",
        reason: format!("the archived items are not the expected JSON: {e}"),
    })
}

/// How `reader` sees `item`: the classification its read is checked at
/// (the grant's level for a grantee) and whether it holds a grant.
#[must_use]
pub fn reader_view<'a>(state: &'a ContextStore, reader: &str, item: &'a Item) -> (&'a str, bool) {
    if item.owner == reader {
        return (&item.level, false);
    }
    let Some(shared) = state.shared_with.get(reader) else {
        return (&item.level, false);
    };
    let key = item_key(&item.owner, &item.id);
    if !shared.contains(&key) {
        return (&item.level, false);
    }
    match state.grant(&key, reader) {
        Some(g) => (&g.level, true),
        None => (&item.level, false),
    }
}

/// Read checks of one query, memoized per (owner, classification, granted):
/// a query over thousands of items asks the gate a handful of times, and
/// each distinct decision is journaled once.
#[derive(Debug)]
pub struct ReadGate<'a> {
    gate: &'a PolicyGate,
    requester: &'a Requester,
    /// (owner, classification, granted) → allowed; a handful per query,
    /// searched linearly so the hot path allocates nothing.
    memo: Vec<(String, String, bool, bool)>,
    facts: Vec<EventBody>,
}

impl<'a> ReadGate<'a> {
    /// A fresh memo for one query.
    #[must_use]
    pub fn new(gate: &'a PolicyGate, requester: &'a Requester) -> ReadGate<'a> {
        ReadGate {
            gate,
            requester,
            memo: Vec::new(),
            facts: Vec::new(),
        }
    }

    /// The requester.
    #[must_use]
    pub fn requester(&self) -> &Requester {
        self.requester
    }

    /// Whether the requester may read `item`: it must be in scope (its
    /// own, public, or shared with it) and the gate must allow it.
    pub fn allows(&mut self, state: &ContextStore, item: &Item) -> bool {
        let me = self.requester.agent.as_str();
        let (classification, granted) = reader_view(state, me, item);
        if item.owner != me && !granted && item.level != AccessLevel::Public.name() {
            return false;
        }
        if let Some(m) = self
            .memo
            .iter()
            .find(|m| m.2 == granted && m.0 == item.owner && m.1 == classification)
        {
            return m.3;
        }
        let request = data_request(
            self.requester,
            "read_data",
            &format!("{}/*", item.owner),
            &item.owner,
            classification,
            "read",
            granted,
        );
        let (fact, denied) = ask(self.gate, &request);
        let allowed = denied.is_none();
        self.facts.push(fact);
        self.memo
            .push((item.owner.clone(), classification.to_owned(), granted, allowed));
        allowed
    }

    /// The distinct decisions taken, to journal.
    #[must_use]
    pub fn into_facts(self) -> Vec<EventBody> {
        self.facts
    }
}

/// The fact recording a read: the items returned (keys) and the reader's
/// clock.
#[must_use]
pub fn accessed(requester: &Requester, keys: Vec<String>, query: &str, now_ms: u64) -> EventBody {
    EventBody::ContextAccessed {
        agent: requester.agent.clone(),
        items: keys,
        query: crate::orga::bounded(query, 200),
        now_ms,
    }
}

/// The stream an agent's context facts go to (`context:<agent>`).
///
/// # Errors
/// An agent name that is not a valid id.
pub fn stream_of(agent: &str) -> Result<stele_journal::StreamId, ContextError> {
    check_agent(agent)?;
    Ok(stele_journal::StreamId::new(format!("context:{agent}"))?)
}
