//! The Cedar policy gate: every enforcement point of the runtime (agent
//! creation, message send, resource allocation, tool invocation, data
//! access) asks it for a [`Verdict`] on an [`AuthzRequest`]. The gate is a
//! pure function of its policy set and the request: no clock, no
//! randomness, no I/O in [`PolicyGate::decide`]. Turning a decision into a
//! `PolicyDecided` event, and a reload into `PolicySetLoaded`, is the
//! caller's; hot reload swaps the `Arc<PolicyGate>` a [`LiveGate`] holds
//! (the gate is `Send + Sync`, built once, shared read-only).
//!
//! # Policy files
//!
//! A policy directory holds `*.cedar` files and at most one `*.cedarschema`
//! (without one, [`DEFAULT_SCHEMA`], the schema below, applies). Loading
//! parses every file, checks the annotations, and validates the whole set
//! against the schema in Cedar's strict mode; any problem refuses the whole
//! set, each problem naming the file, `line:column` and the policy id.
//!
//! Every policy carries `@id("…")`: the id decisions cite (1–128 of
//! `A-Z a-z 0-9 - _ . : /`, unique across the set). Other annotations
//! the gate reads:
//!
//! | annotation | on | effect when the policy is determining |
//! |---|---|---|
//! | `@reason("…")` | `forbid` | the deny reason (default `forbidden by <id>`) |
//! | `@approval("…")` | `permit` | [`Verdict::RequireApproval`] with this reason |
//! | `@approval_timeout("10m")` | `permit` with `@approval` | the approval's timeout (humantime) |
//! | `@conditions("k1=v1; k2=v2")` | `permit` | [`Verdict::AllowWithConditions`] |
//!
//! # Decisions
//!
//! - Cedar's semantics: a satisfied `forbid` wins; otherwise a satisfied
//!   `permit` allows; otherwise **default deny** (`no policy permits
//!   <action> on <Type>::"<id>"`).
//! - Allowed by permits with `@approval`: `RequireApproval` (reasons joined,
//!   the shortest timeout); that takes precedence over other determining
//!   permits' conditions, which the approver does not see applied.
//!   Otherwise the `@conditions` of all determining permits merge (sorted by
//!   key); two permits giving one key different values is a decision error
//!   and denies (fail closed).
//! - Fail closed: a request that does not fit the schema (unknown action or
//!   type, a declared attribute of the wrong type, a missing required one)
//!   and any evaluation error in any policy deny, the errors listed in
//!   [`GateDecision::errors`].
//! - Attributes the schema does not declare (of the principal, the resource
//!   or the context, at any depth of a record) are dropped before Cedar sees
//!   the request: validated policies cannot read them, so this cannot change
//!   a verdict, and a tool call's other arguments do not make it invalid.
//!   Entity-typed attributes are written `{"type": "Agent", "id": "bob"}`;
//!   extension types (decimal, ipaddr, datetime) are not supported.
//!
//! # Cost
//!
//! The gate checks and converts a request itself, from the schema's types
//! compiled at load (Cedar's schema-directed JSON parser costs more than
//! the evaluation), and evaluates it only against the policies whose scope
//! admits its action, and its resource when a scope names one (`resource ==
//! Tool::"read_file"`): a policy whose scope is false is false, so this is
//! exact. BENCHMARKS.md (`## Policy`) has the figures.
//!
//! # The schema (`policy/stele.cedarschema`, empty namespace)
//!
//! | point ([`Point`]) | action | principal | resource | context |
//! |---|---|---|---|---|
//! | `agent_creation` | `create_agent` | `Operator`, `Agent` | `Agent` | `mode`, `memory_mb`, `cpu_millis` |
//! | `message_send` | `send_message` | `Agent` | `Agent`, `Topic` | `pattern` (`direct`/`request`/`publish`), `size_bytes` |
//! | `resource_allocation` | `allocate` | `Agent` | `Resource` | `memory_mb`, `cpu_millis` |
//! | `resource_allocation` | `join_network` | `Agent` | `Network` | `tier`, `network_io_mbps` |
//! | `tool_invocation` | `invoke_tool` | `Agent` | `Tool` | `args` (`path?`, `command?`, `max_bytes?`, `size_bytes?`, `url?`), `in_workspace?` |
//! | `data_access` | `read_data`, `write_data` | `Agent` | `Data` | — |
//!
//! Entity attributes: `Agent { priority: String }`, `Data { classification?:
//! String, owner?: Agent }`; `Operator`, `Tool`, `Resource`, `Topic`,
//! `Network` have none. A custom schema may declare more, in the empty
//! namespace.
//!
//! What is not here: the reasoning loop that asks, the events, deciding
//! when to reload.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use cedar_policy as cedar;
use miette::Diagnostic;
use serde_json::{Map, Value};

/// The schema the gate uses when a policy directory has none.
pub const DEFAULT_SCHEMA: &str = include_str!("policy/stele.cedarschema");

/// Largest policy or schema file read (a policy set is small text).
pub const MAX_POLICY_FILE_BYTES: u64 = 1024 * 1024;
/// Most `*.cedar` files in a set.
pub const MAX_POLICY_FILES: usize = 1024;
/// Most policies in a set (load and validation time grow with it).
pub const MAX_POLICIES: usize = 10_000;
/// Longest policy id, in characters (ids are journaled with every decision).
pub const MAX_POLICY_ID_CHARS: usize = 128;
/// Most policy copies made to give each (action, resource) one set to
/// evaluate; beyond it an action's requests are evaluated in two sets.
const MAX_SLICE_COPIES: usize = 100_000;
/// Deepest nesting of schema types followed when checking requests.
const MAX_TYPE_DEPTH: usize = 32;
/// Problems spelled out in an error's one-line message.
const MAX_PROBLEMS_SHOWN: usize = 5;
/// What a set without a schema file names as its schema.
const EMBEDDED_SCHEMA_NAME: &str = "(embedded stele.cedarschema)";
/// Domain tag of the policy-set hash.
const HASH_DOMAIN: &[u8] = b"stele/policy-set/v1\n";

/// An enforcement point of the runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Point {
    /// Registering or spawning an agent.
    AgentCreation,
    /// Sending or publishing a message.
    MessageSend,
    /// Reserving memory and CPU.
    ResourceAllocation,
    /// Calling a tool.
    ToolInvocation,
    /// Reading or writing stored data.
    DataAccess,
}

impl Point {
    /// Every point, in the seed's order.
    pub const ALL: [Point; 5] = [
        Point::AgentCreation,
        Point::MessageSend,
        Point::ResourceAllocation,
        Point::ToolInvocation,
        Point::DataAccess,
    ];

    /// The name journaled in `PolicyDecided.point`.
    pub fn name(self) -> &'static str {
        match self {
            Point::AgentCreation => "agent_creation",
            Point::MessageSend => "message_send",
            Point::ResourceAllocation => "resource_allocation",
            Point::ToolInvocation => "tool_invocation",
            Point::DataAccess => "data_access",
        }
    }

    /// The point of a journaled name.
    pub fn from_name(name: &str) -> Option<Point> {
        Point::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The default schema's action for this point (`data_access` also has
    /// `write_data`).
    pub fn default_action(self) -> &'static str {
        match self {
            Point::AgentCreation => "create_agent",
            Point::MessageSend => "send_message",
            Point::ResourceAllocation => "allocate",
            Point::ToolInvocation => "invoke_tool",
            Point::DataAccess => "read_data",
        }
    }
}

impl fmt::Display for Point {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A principal or resource of a request: `Agent::"alice"` with attributes.
#[derive(Clone, Debug, PartialEq)]
pub struct Entity {
    /// The schema's entity type (`Agent`, `Tool`, …).
    pub kind: String,
    /// Its id (an agent's or tool's name, …).
    pub id: String,
    /// A JSON object of attributes (`{"priority": "low"}`); `null` is `{}`.
    pub attrs: Value,
}

/// What an enforcement point asks the gate.
#[derive(Clone, Debug, PartialEq)]
pub struct AuthzRequest {
    /// Where it is asked.
    pub point: Point,
    /// Who acts.
    pub principal: Entity,
    /// The Cedar action id (`invoke_tool`, `create_agent`, …).
    pub action: String,
    /// What it acts on.
    pub resource: Entity,
    /// A JSON object (tool arguments, sizes, …); `null` is `{}`.
    pub context: Value,
}

impl AuthzRequest {
    /// The request as canonical JSON: compact, object keys sorted by their
    /// UTF-8 bytes at every depth, numbers and strings as serde_json writes
    /// them. Equal requests give equal bytes; this is what
    /// `PolicyDecided.request` stores.
    pub fn canonical_json(&self) -> String {
        let entity = |e: &Entity| {
            let mut m = Map::new();
            m.insert("attrs".into(), e.attrs.clone());
            m.insert("id".into(), Value::String(e.id.clone()));
            m.insert("kind".into(), Value::String(e.kind.clone()));
            Value::Object(m)
        };
        let mut m = Map::new();
        m.insert("action".into(), Value::String(self.action.clone()));
        m.insert("context".into(), self.context.clone());
        m.insert("point".into(), Value::String(self.point.name().into()));
        m.insert("principal".into(), entity(&self.principal));
        m.insert("resource".into(), entity(&self.resource));
        let mut out = String::new();
        write_canonical(&Value::Object(m), &mut out);
        out
    }

    /// Reads a request back from [`canonical_json`](Self::canonical_json)
    /// (any key order is accepted), e.g. for a backtest.
    ///
    /// # Errors
    /// [`PolicyError::Request`] when it is not JSON of that shape.
    pub fn from_canonical_json(text: &str) -> Result<AuthzRequest, PolicyError> {
        let bad = |reason: String| PolicyError::Request { reason };
        let v: Value = serde_json::from_str(text).map_err(|e| bad(format!("not JSON: {e}")))?;
        let mut m = object(v, "the request")?;
        let point = take_string(&mut m, "point", "the request")?;
        let point =
            Point::from_name(&point).ok_or_else(|| bad(format!("unknown enforcement point `{point}`")))?;
        let action = take_string(&mut m, "action", "the request")?;
        let principal = take_entity(&mut m, "principal")?;
        let resource = take_entity(&mut m, "resource")?;
        let context = m
            .remove("context")
            .ok_or_else(|| bad("the request has no `context`".into()))?;
        if !(context.is_object() || context.is_null()) {
            return Err(bad("`context` is not a JSON object".into()));
        }
        no_more_keys(&m, "the request")?;
        Ok(AuthzRequest {
            point,
            principal,
            action,
            resource,
            context,
        })
    }
}

fn object(v: Value, what: &str) -> Result<Map<String, Value>, PolicyError> {
    match v {
        Value::Object(m) => Ok(m),
        _ => Err(PolicyError::Request {
            reason: format!("{what} is not a JSON object"),
        }),
    }
}

fn take_string(m: &mut Map<String, Value>, key: &str, what: &str) -> Result<String, PolicyError> {
    match m.remove(key) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(PolicyError::Request {
            reason: format!("`{key}` of {what} is not a string"),
        }),
        None => Err(PolicyError::Request {
            reason: format!("{what} has no `{key}`"),
        }),
    }
}

fn take_entity(m: &mut Map<String, Value>, key: &str) -> Result<Entity, PolicyError> {
    let v = m.remove(key).ok_or_else(|| PolicyError::Request {
        reason: format!("the request has no `{key}`"),
    })?;
    let what = format!("`{key}`");
    let mut e = object(v, &what)?;
    let kind = take_string(&mut e, "kind", &what)?;
    let id = take_string(&mut e, "id", &what)?;
    let attrs = e.remove("attrs").ok_or_else(|| PolicyError::Request {
        reason: format!("{what} has no `attrs`"),
    })?;
    if !(attrs.is_object() || attrs.is_null()) {
        return Err(PolicyError::Request {
            reason: format!("`attrs` of {what} is not a JSON object"),
        });
    }
    no_more_keys(&e, &what)?;
    Ok(Entity { kind, id, attrs })
}

fn no_more_keys(m: &Map<String, Value>, what: &str) -> Result<(), PolicyError> {
    match m.keys().next() {
        Some(k) => Err(PolicyError::Request {
            reason: format!("{what} has an unknown key `{k}`"),
        }),
        None => Ok(()),
    }
}

/// Compact JSON with object keys sorted, independent of serde_json's map
/// order (cedar enables `preserve_order`, so `Map` keeps insertion order).
fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(&m[k], out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The gate's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Go ahead.
    Allow,
    /// Do not.
    Deny {
        /// Why (a forbid's `@reason`, default deny, or the error).
        reason: String,
    },
    /// Go ahead, modified: the caller applies the conditions (e.g. caps
    /// `max_bytes`) before acting.
    AllowWithConditions {
        /// Merged `@conditions` of the determining permits.
        conditions: BTreeMap<String, String>,
    },
    /// Ask a human first.
    RequireApproval {
        /// The `@approval` reasons.
        reason: String,
        /// How long to wait before treating it as rejected.
        timeout: Option<Duration>,
    },
}

impl Verdict {
    /// `allow`, `deny`, `allow_with_conditions` or `require_approval`, as
    /// journaled in `PolicyDecided.verdict`.
    pub fn name(&self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny { .. } => "deny",
            Verdict::AllowWithConditions { .. } => "allow_with_conditions",
            Verdict::RequireApproval { .. } => "require_approval",
        }
    }

    /// The deny reason, the conditions (`k1=v1; k2=v2`) or the approval
    /// reason (with ` (timeout 10m)` when there is one); empty for `allow`.
    pub fn detail(&self) -> String {
        match self {
            Verdict::Allow => String::new(),
            Verdict::Deny { reason } => reason.clone(),
            Verdict::AllowWithConditions { conditions } => render_conditions(conditions),
            Verdict::RequireApproval { reason, timeout } => match timeout {
                Some(t) => format!("{reason} (timeout {})", humantime::format_duration(*t)),
                None => reason.clone(),
            },
        }
    }

    /// Whether the action may go ahead now (`allow`, `allow_with_conditions`).
    pub fn allows(&self) -> bool {
        matches!(self, Verdict::Allow | Verdict::AllowWithConditions { .. })
    }
}

fn render_conditions(c: &BTreeMap<String, String>) -> String {
    c.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// A verdict and what it rests on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GateDecision {
    /// The verdict.
    pub verdict: Verdict,
    /// Ids of the determining policies, sorted: the satisfied forbids of a
    /// deny, the satisfied permits of an allow, the erroring policies of an
    /// evaluation-error deny; empty for default deny and invalid requests.
    pub policies: Vec<String>,
    /// Evaluation and request errors (each one made the verdict a deny).
    pub errors: Vec<String>,
}

impl GateDecision {
    fn deny(reason: String, policies: Vec<String>, errors: Vec<String>) -> GateDecision {
        GateDecision {
            verdict: Verdict::Deny { reason },
            policies,
            errors,
        }
    }
}

/// One thing wrong (or worth a warning) in a policy set, where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The file as named to the loader (a path for [`PolicyGate::load`]).
    pub file: String,
    /// The policy's `@id` (or cedar's own id when it has none), if the
    /// problem is in one policy.
    pub policy: Option<String>,
    /// 1-based line; 0 when the problem has no position.
    pub line: usize,
    /// 1-based column in characters; 0 when the problem has no position.
    pub column: usize,
    /// What is wrong, and the fix where cedar suggests one.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if let Some(p) = &self.policy {
            write!(f, ": policy `{p}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Why a policy set did not load, or a journaled request did not parse.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A file or directory could not be read.
    #[error("cannot read {}: {reason}", path.display())]
    Read {
        /// What.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The set has problems (syntax, annotations, ids, schema validation).
    #[error("{}", render_problems(problems))]
    Invalid {
        /// Every problem found, in file order.
        problems: Vec<Problem>,
    },
    /// A journaled request is not a request.
    #[error("invalid policy request: {reason}")]
    Request {
        /// Why.
        reason: String,
    },
}

fn render_problems(problems: &[Problem]) -> String {
    let mut s = problems
        .iter()
        .take(MAX_PROBLEMS_SHOWN)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    if problems.len() > MAX_PROBLEMS_SHOWN {
        s.push_str(&format!(" (and {} more)", problems.len() - MAX_PROBLEMS_SHOWN));
    }
    s
}

/// A loaded policy, as `stele policy check` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyInfo {
    /// Its `@id`.
    pub id: String,
    /// `permit` or `forbid`.
    pub effect: &'static str,
    /// Its file.
    pub file: String,
    /// Where it starts (1-based).
    pub line: usize,
    /// Where it starts (1-based, characters).
    pub column: usize,
    /// `@reason` (forbid).
    pub reason: Option<String>,
    /// `@approval` (permit).
    pub approval: Option<String>,
    /// `@approval_timeout`.
    pub approval_timeout: Option<Duration>,
    /// `@conditions` (permit).
    pub conditions: BTreeMap<String, String>,
}

/// A type of the schema, as requests are checked against it.
#[derive(Clone, Debug)]
enum Ty {
    String,
    Long,
    Bool,
    Entity(cedar::EntityTypeName),
    Set(Box<Ty>),
    /// A closed record: undeclared attributes of a request are dropped.
    Record(BTreeMap<String, Attr>),
    /// What the gate cannot build (extension types): a value is refused.
    Unsupported(String),
}

/// A record attribute's type.
#[derive(Clone, Debug)]
struct Attr {
    ty: Ty,
    required: bool,
}

impl Ty {
    fn empty_record() -> Ty {
        Ty::Record(BTreeMap::new())
    }

    /// Converts a JSON value of this type into a Cedar value; `at` names it
    /// in errors (`args.max_bytes`).
    fn convert(&self, v: &Value, at: &At<'_>) -> Result<cedar::RestrictedExpression, String> {
        use cedar::RestrictedExpression as R;
        let wrong = |want: &str| Err(format!("`{at}`: expected {want}, found {}", json_kind(v)));
        match (self, v) {
            (Ty::String, Value::String(s)) => Ok(R::new_string(s.clone())),
            (Ty::String, _) => wrong("a string"),
            (Ty::Long, Value::Number(n)) => match n.as_i64() {
                Some(i) => Ok(R::new_long(i)),
                None => wrong("a 64-bit integer"),
            },
            (Ty::Long, _) => wrong("a 64-bit integer"),
            (Ty::Bool, Value::Bool(b)) => Ok(R::new_bool(*b)),
            (Ty::Bool, _) => wrong("true or false"),
            (Ty::Entity(ty), _) => {
                let uid = v.get("__entity").unwrap_or(v);
                match (
                    uid.get("type").and_then(Value::as_str),
                    uid.get("id").and_then(Value::as_str),
                ) {
                    (Some(t), Some(id)) if t == ty.to_string() => Ok(R::new_entity_uid(
                        cedar::EntityUid::from_type_name_and_id(ty.clone(), cedar::EntityId::new(id)),
                    )),
                    (Some(t), Some(_)) => Err(format!("`{at}`: expected an entity of type {ty}, found {t}")),
                    _ => wrong(&format!("an entity reference {{\"type\": \"{ty}\", \"id\": …}}")),
                }
            }
            (Ty::Set(el), Value::Array(items)) => {
                let items = items
                    .iter()
                    .enumerate()
                    .map(|(i, x)| el.convert(x, &At::Index(at, i)))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(R::new_set(items))
            }
            (Ty::Set(_), _) => wrong("an array"),
            (Ty::Record(_), Value::Object(_)) => {
                R::new_record(self.fields(v, at)?).map_err(|e| format!("`{at}`: {e}"))
            }
            (Ty::Record(_), _) => wrong("an object"),
            (Ty::Unsupported(name), _) => Err(format!(
                "`{at}` has type {name}, which the gate does not build; declare it as String or Long"
            )),
        }
    }

    /// The declared attributes of a record value, converted; `null` is `{}`.
    fn fields(&self, v: &Value, at: &At<'_>) -> Result<Vec<(String, cedar::RestrictedExpression)>, String> {
        let Ty::Record(attrs) = self else {
            return Err(format!("`{at}` is not a record type"));
        };
        let m = match v {
            Value::Object(m) => m,
            Value::Null => return self.fields(&Value::Object(Map::new()), at),
            _ => return Err(format!("`{at}`: expected an object, found {}", json_kind(v))),
        };
        // Fast path: walk the value's keys (few) and look each up among the
        // declared attributes, then count the required ones seen.
        let mut out = Vec::with_capacity(attrs.len().min(m.len()));
        let mut required_seen = 0;
        for (k, x) in m {
            if let Some(a) = attrs.get(k) {
                match a.ty.convert(x, &At::Key(at, k)) {
                    Ok(e) => out.push((k.clone(), e)),
                    Err(_) => return Err(Ty::first_error(attrs, m, at)),
                }
                required_seen += usize::from(a.required);
            }
        }
        if required_seen < attrs.values().filter(|a| a.required).count() {
            return Err(Ty::first_error(attrs, m, at));
        }
        Ok(out)
    }

    /// The first problem of a record value in declared-attribute order, so
    /// the error does not depend on the JSON's key order.
    fn first_error(attrs: &BTreeMap<String, Attr>, m: &Map<String, Value>, at: &At<'_>) -> String {
        for (k, a) in attrs {
            match m.get(k) {
                Some(x) => {
                    if let Err(e) = a.ty.convert(x, &At::Key(at, k)) {
                        return e;
                    }
                }
                None if a.required => return format!("`{}` is required and missing", At::Key(at, k)),
                None => {}
            }
        }
        unreachable!("first_error is called on a record value with a problem")
    }
}

/// Where a value sits in a request, for errors; built without allocating.
enum At<'a> {
    Root,
    Key(&'a At<'a>, &'a str),
    Index(&'a At<'a>, usize),
}

impl fmt::Display for At<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            At::Root => Ok(()),
            At::Key(At::Root, k) => write!(f, "{k}"),
            At::Key(parent, k) => write!(f, "{parent}.{k}"),
            At::Index(parent, i) => write!(f, "{parent}[{i}]"),
        }
    }
}

fn json_kind(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

/// A declared action, compiled: its request types and its policies.
#[derive(Debug)]
struct ActionInfo {
    uid: cedar::EntityUid,
    context: Ty,
    principals: Vec<String>,
    resources: Vec<String>,
    /// Policies that may apply whatever the resource.
    any: cedar::PolicySet,
    /// Policies scoped to `resource == <uid>`, by that uid — with `any`'s
    /// merged in when `merged` (one evaluation instead of two).
    by_resource: HashMap<cedar::EntityUid, cedar::PolicySet>,
    merged: bool,
}

/// A declared entity type, compiled.
#[derive(Debug)]
struct TypeInfo {
    name: cedar::EntityTypeName,
    attrs: Ty,
}

/// A policy file (or schema) as read.
struct Source {
    /// Base name: what the hash covers.
    name: String,
    /// What errors call it (a path when loaded from a directory).
    display: String,
    text: String,
}

/// Most entity stores an [`EntityCache`] keeps (a batch's distinct
/// principal/resource pairs are few: agents × tools).
const ENTITY_CACHE_ENTRIES: usize = 64;

/// Entity stores kept across the decisions of one thread of a batch
/// ([`PolicyGate::decide_cached`]), by action, principal and resource.
/// Building a store is a quarter of a decision (Cedar computes a
/// transitive closure even for one entity); a backtest's requests share a
/// few principals.
#[derive(Debug, Default)]
pub struct EntityCache {
    stores: Vec<(String, Entity, Entity, cedar::Entities)>,
}

/// A compiled, validated Cedar policy set with its schema: build once,
/// share (`Arc`), [`decide`](Self::decide) many times.
#[derive(Debug)]
pub struct PolicyGate {
    authorizer: cedar::Authorizer,
    /// Action entities, only when the schema has action groups.
    action_entities: Option<cedar::Entities>,
    policies: BTreeMap<String, PolicyInfo>,
    actions: BTreeMap<String, ActionInfo>,
    types: BTreeMap<String, TypeInfo>,
    schema_name: String,
    warnings: Vec<Problem>,
    hash: String,
}

// Hot reload shares the gate across tasks.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<PolicyGate>();
};

/// A policy directory's texts ([`PolicyGate::texts`]): the schema, if the
/// directory has one, and each `*.cedar` file as (base name, text) in name
/// order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyTexts {
    /// The `*.cedarschema` text; `None`: the embedded [`DEFAULT_SCHEMA`].
    pub schema: Option<String>,
    /// (file name, text), sorted by name.
    pub files: Vec<(String, String)>,
}

/// The policy set in force where it can be replaced while in use (hot
/// reload, `stele policy reload`): every holder asks for the
/// [`current`](Self::current) set at each decision, so a swap takes effect
/// at the next decision everywhere. Clones share the set; a
/// [`PolicyGate`] converts into a `LiveGate` that nothing swaps.
#[derive(Clone, Debug)]
pub struct LiveGate(Arc<RwLock<Arc<PolicyGate>>>);

impl LiveGate {
    /// A live gate holding `gate`.
    #[must_use]
    pub fn new(gate: Arc<PolicyGate>) -> LiveGate {
        LiveGate(Arc::new(RwLock::new(gate)))
    }

    /// The set in force now. A decision takes it once and decides with it
    /// (and journals its hash), so a swap never splits one decision.
    #[must_use]
    pub fn current(&self) -> Arc<PolicyGate> {
        // A poisoned lock still holds a whole `Arc` (the swap is one store).
        Arc::clone(&self.0.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Puts `gate` in force for every later decision; returns the set it
    /// replaces.
    pub fn replace(&self, gate: Arc<PolicyGate>) -> Arc<PolicyGate> {
        let mut slot = self.0.write().unwrap_or_else(PoisonError::into_inner);
        std::mem::replace(&mut *slot, gate)
    }
}

impl From<Arc<PolicyGate>> for LiveGate {
    fn from(gate: Arc<PolicyGate>) -> LiveGate {
        LiveGate::new(gate)
    }
}

impl From<PolicyGate> for LiveGate {
    fn from(gate: PolicyGate) -> LiveGate {
        LiveGate::new(Arc::new(gate))
    }
}

impl PolicyGate {
    /// Loads `dir/*.cedar` (sorted by name; hidden files skipped) and the
    /// directory's one `*.cedarschema`, or [`DEFAULT_SCHEMA`] without one.
    ///
    /// # Errors
    /// [`PolicyError::Read`] naming the path; [`PolicyError::Invalid`] with
    /// every problem (file, line:column, policy id).
    pub fn load(dir: &Path) -> Result<PolicyGate, PolicyError> {
        let (schema, files) = read_sources(dir)?;
        PolicyGate::build(schema, files)
    }

    /// The texts [`load`](Self::load) would compile from `dir`, read with
    /// the same rules and limits: what a client sends when the set is
    /// compiled elsewhere (`stele policy reload`). [`from_sources`](Self::from_sources)
    /// on them gives the same set and [`hash`](Self::hash) as `load(dir)`.
    ///
    /// # Errors
    /// As [`load`](Self::load), for what is checked before compiling.
    pub fn texts(dir: &Path) -> Result<PolicyTexts, PolicyError> {
        let (schema, files) = read_sources(dir)?;
        Ok(PolicyTexts {
            schema: schema.map(|s| s.text),
            files: files.into_iter().map(|f| (f.name, f.text)).collect(),
        })
    }

    /// Builds a gate from texts: `files` are (file name, policy text); the
    /// schema defaults to [`DEFAULT_SCHEMA`].
    ///
    /// # Errors
    /// [`PolicyError::Invalid`] with every problem.
    pub fn from_sources(schema: Option<&str>, files: &[(String, String)]) -> Result<PolicyGate, PolicyError> {
        let schema = schema.map(|text| Source {
            name: "schema.cedarschema".into(),
            display: "schema.cedarschema".into(),
            text: text.to_owned(),
        });
        let mut files: Vec<Source> = files
            .iter()
            .map(|(name, text)| Source {
                name: name.clone(),
                display: name.clone(),
                text: text.clone(),
            })
            .collect();
        files.sort_by(|a, b| a.name.cmp(&b.name));
        if let Some(w) = files.windows(2).find(|w| w[0].name == w[1].name) {
            return Err(invalid(Problem {
                file: w[1].display.clone(),
                policy: None,
                line: 0,
                column: 0,
                message: "the same file name is given twice".into(),
            }));
        }
        for f in &files {
            if f.text.len() as u64 > MAX_POLICY_FILE_BYTES {
                return Err(invalid(Problem {
                    file: f.display.clone(),
                    policy: None,
                    line: 0,
                    column: 0,
                    message: format!("larger than the limit of {MAX_POLICY_FILE_BYTES} bytes"),
                }));
            }
        }
        PolicyGate::build(schema, files)
    }

    /// The empty set on the default schema: every request is denied.
    pub fn deny_all() -> PolicyGate {
        PolicyGate::build(None, Vec::new()).expect("the embedded schema and an empty set are valid")
    }

    fn build(schema_src: Option<Source>, files: Vec<Source>) -> Result<PolicyGate, PolicyError> {
        assert!(
            files.windows(2).all(|w| w[0].name < w[1].name),
            "files sorted and unique"
        );
        let hash = set_hash(schema_src.as_ref(), &files);
        let schema_src = schema_src.unwrap_or_else(|| Source {
            name: EMBEDDED_SCHEMA_NAME.into(),
            display: EMBEDDED_SCHEMA_NAME.into(),
            text: DEFAULT_SCHEMA.into(),
        });
        let mut warnings = Vec::new();
        let CompiledSchema {
            schema,
            mut actions,
            types,
            has_action_groups,
        } = compile_schema(&schema_src, &mut warnings)?;

        let mut problems = Vec::new();
        let mut set = cedar::PolicySet::new();
        let mut policies: BTreeMap<String, PolicyInfo> = BTreeMap::new();
        for f in &files {
            compile_file(f, &mut set, &mut policies, &mut problems);
        }
        if problems.is_empty() && policies.len() > MAX_POLICIES {
            problems.push(Problem {
                file: files.last().map(|f| f.display.clone()).unwrap_or_default(),
                policy: None,
                line: 0,
                column: 0,
                message: format!(
                    "{} policies, more than the limit of {MAX_POLICIES}",
                    policies.len()
                ),
            });
        }
        if !problems.is_empty() {
            return Err(PolicyError::Invalid { problems });
        }

        let validator = cedar::Validator::new(schema.clone());
        let result = validator.validate(&set, cedar::ValidationMode::Strict);
        let locate = |id: &str, d: &dyn Diagnostic| -> Problem {
            let info = policies.get(id);
            let file = info.map(|i| i.file.clone()).unwrap_or_default();
            let text = files.iter().find(|f| f.display == file).map(|f| f.text.as_str());
            let (line, column) = match (text, first_offset(d)) {
                (Some(t), Some(off)) => line_col(t, off),
                _ => info.map(|i| (i.line, i.column)).unwrap_or((0, 0)),
            };
            // cedar starts each message with the id; the problem names it.
            let message = diagnostic_message(d);
            let prefix = format!("for policy `{id}`, ");
            Problem {
                file,
                policy: Some(id.to_owned()),
                line,
                column,
                message: message
                    .strip_prefix(&prefix)
                    .map_or(message.clone(), str::to_owned),
            }
        };
        let mut problems: Vec<Problem> = result
            .validation_errors()
            .map(|e| locate(id_str(e.policy_id()), e))
            .collect();
        if !problems.is_empty() {
            problems.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
            return Err(PolicyError::Invalid { problems });
        }
        let mut policy_warnings: Vec<Problem> = result
            .validation_warnings()
            .map(|w| locate(id_str(w.policy_id()), w))
            .collect();
        policy_warnings.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
        warnings.extend(policy_warnings);

        let action_entities = if has_action_groups {
            Some(schema.action_entities().map_err(|e| {
                invalid(Problem {
                    file: schema_src.display.clone(),
                    policy: None,
                    line: 0,
                    column: 0,
                    message: diagnostic_message(&e),
                })
            })?)
        } else {
            None
        };
        slice(&set, &mut actions, has_action_groups);
        Ok(PolicyGate {
            authorizer: cedar::Authorizer::new(),
            action_entities,
            policies,
            actions,
            types,
            schema_name: schema_src.display,
            warnings,
            hash,
        })
    }

    /// BLAKE3 (hex) of the set: a domain tag, the schema text (marked as
    /// given or as the embedded default) and each policy file's base name
    /// and text, in name order, length-prefixed. It changes iff a file, its
    /// name or the schema changes; where the directory is does not count.
    pub fn hash(&self) -> String {
        self.hash.clone()
    }

    /// Policies in the set.
    pub fn len(&self) -> usize {
        self.policies.len()
    }

    /// Whether the set is empty (everything is denied).
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// The policy ids, sorted.
    pub fn ids(&self) -> Vec<String> {
        self.policies.keys().cloned().collect()
    }

    /// The policies, sorted by id.
    pub fn policies(&self) -> impl Iterator<Item = &PolicyInfo> {
        self.policies.values()
    }

    /// The schema's file (or the embedded default's name).
    pub fn schema_name(&self) -> &str {
        &self.schema_name
    }

    /// Warnings from the schema and the validator (nothing refused).
    pub fn warnings(&self) -> &[Problem] {
        &self.warnings
    }

    /// Decides a request. Pure and total: every failure is a deny with its
    /// errors.
    pub fn decide(&self, req: &AuthzRequest) -> GateDecision {
        match self.cedar_request(req) {
            Ok((action, request, entities)) => self.evaluate(req, action, &request, &entities),
            Err(e) => GateDecision::deny(format!("invalid request: {e}"), Vec::new(), vec![e]),
        }
    }

    /// [`decide`](Self::decide) for one thread of a batch of decisions
    /// (a backtest): the entity store of a request's action, principal and
    /// resource is taken from `cache` when an earlier request built it,
    /// else built and kept there. The same decision as `decide`.
    pub fn decide_cached(&self, req: &AuthzRequest, cache: &mut EntityCache) -> GateDecision {
        let hit = cache.stores.iter().position(|(action, principal, resource, _)| {
            *action == req.action && *principal == req.principal && *resource == req.resource
        });
        if let Some(i) = hit {
            return match self.request_only(req) {
                Ok((action, request)) => self.evaluate(req, action, &request, &cache.stores[i].3),
                Err(e) => GateDecision::deny(format!("invalid request: {e}"), Vec::new(), vec![e]),
            };
        }
        match self.cedar_request(req) {
            Ok((action, request, entities)) => {
                let d = self.evaluate(req, action, &request, &entities);
                if cache.stores.len() < ENTITY_CACHE_ENTRIES {
                    cache.stores.push((
                        req.action.clone(),
                        req.principal.clone(),
                        req.resource.clone(),
                        entities,
                    ));
                }
                d
            }
            Err(e) => GateDecision::deny(format!("invalid request: {e}"), Vec::new(), vec![e]),
        }
    }

    /// The action and the Cedar request of `req` whose entity store an
    /// earlier request of the same action, principal and resource built
    /// (so their checks passed): only the context is converted.
    fn request_only(&self, req: &AuthzRequest) -> Result<(&ActionInfo, cedar::Request), String> {
        let action = self
            .actions
            .get(req.action.as_str())
            .ok_or_else(|| format!("unknown action `{}`", req.action))?;
        let uid = |e: &Entity| {
            self.types
                .get(e.kind.as_str())
                .map(|ty| {
                    cedar::EntityUid::from_type_name_and_id(ty.name.clone(), cedar::EntityId::new(&e.id))
                })
                .ok_or_else(|| format!("type `{}` is not in the schema", e.kind))
        };
        let (principal, resource) = (uid(&req.principal)?, uid(&req.resource)?);
        let context = self.context(action, req)?;
        let request = cedar::Request::new(principal, action.uid.clone(), resource, context, None)
            .map_err(|e| diagnostic_message(&e))?;
        Ok((action, request))
    }

    /// The context of `req`, checked against `action`'s.
    fn context(&self, action: &ActionInfo, req: &AuthzRequest) -> Result<cedar::Context, String> {
        if !(req.context.is_object() || req.context.is_null()) {
            return Err("the context is not a JSON object".into());
        }
        let context = action
            .context
            .fields(&req.context, &At::Root)
            .map_err(|e| format!("context of {}: {e}", req.action))?;
        cedar::Context::from_pairs(context)
            .map_err(|e| format!("context of {}: {}", req.action, diagnostic_message(&e)))
    }

    /// Evaluates a built request against the policies of its action.
    fn evaluate(
        &self,
        req: &AuthzRequest,
        action: &ActionInfo,
        request: &cedar::Request,
        entities: &cedar::Entities,
    ) -> GateDecision {
        // The policies that may apply: those for any resource, and those
        // scoped to this one. Cedar's rule composes over the two: a
        // satisfied forbid in either denies, else a satisfied permit allows.
        let resource = request.resource().expect("a request built with a resource");
        let mut forbids: Vec<String> = Vec::new();
        let mut permits: Vec<String> = Vec::new();
        let mut failed: Vec<(String, String)> = Vec::new();
        let sets = match action.by_resource.get(resource) {
            Some(both) if action.merged => [Some(both), None],
            scoped => [Some(&action.any), scoped],
        };
        for set in sets.into_iter().flatten() {
            if set.is_empty() {
                continue;
            }
            let response = self.authorizer.is_authorized(request, set, entities);
            let diagnostics = response.diagnostics();
            failed.extend(diagnostics.errors().map(|e| match e {
                cedar::AuthorizationError::PolicyEvaluationError(p) => {
                    (id_str(p.policy_id()).to_owned(), p.to_string())
                }
            }));
            let ids = diagnostics.reason().map(|id| id_str(id).to_owned());
            match response.decision() {
                cedar::Decision::Deny => forbids.extend(ids),
                cedar::Decision::Allow => permits.extend(ids),
            }
        }

        // Any evaluation error fails closed, whatever Cedar decided.
        if !failed.is_empty() {
            failed.sort();
            let errors: Vec<String> = failed.iter().map(|(_, e)| e.clone()).collect();
            let mut reason = format!("policy evaluation failed: {}", errors[0]);
            if errors.len() > 1 {
                reason.push_str(&format!(" (and {} more)", errors.len() - 1));
            }
            let mut policies: Vec<String> = failed.into_iter().map(|(id, _)| id).collect();
            policies.dedup();
            return GateDecision::deny(reason, policies, errors);
        }
        if !forbids.is_empty() {
            forbids.sort();
            let reason = forbids
                .iter()
                .map(|id| match self.policies.get(id).and_then(|p| p.reason.clone()) {
                    Some(r) => r,
                    None => format!("forbidden by {id}"),
                })
                .collect::<Vec<_>>()
                .join("; ");
            return GateDecision::deny(reason, forbids, Vec::new());
        }
        if permits.is_empty() {
            return GateDecision::deny(
                format!(
                    "no policy permits {} on {}::{:?}",
                    req.action, req.resource.kind, req.resource.id
                ),
                Vec::new(),
                Vec::new(),
            );
        }
        permits.sort();
        self.allowed(permits)
    }

    /// The verdict of an allow by the permits `ids`.
    fn allowed(&self, ids: Vec<String>) -> GateDecision {
        let infos: Vec<&PolicyInfo> = ids.iter().filter_map(|id| self.policies.get(id)).collect();
        let approvals: Vec<&PolicyInfo> = infos.iter().copied().filter(|p| p.approval.is_some()).collect();
        if !approvals.is_empty() {
            let reason = approvals
                .iter()
                .filter_map(|p| p.approval.clone())
                .collect::<Vec<_>>()
                .join("; ");
            let timeout = approvals.iter().filter_map(|p| p.approval_timeout).min();
            return GateDecision {
                verdict: Verdict::RequireApproval { reason, timeout },
                policies: ids,
                errors: Vec::new(),
            };
        }
        let mut conditions: BTreeMap<String, (String, &str)> = BTreeMap::new();
        for p in &infos {
            for (k, v) in &p.conditions {
                match conditions.get(k) {
                    Some((other, by)) if other != v => {
                        let e = format!(
                            "conflicting conditions: `{k}` is {other:?} in {by} and {v:?} in {}",
                            p.id
                        );
                        return GateDecision::deny(e.clone(), ids, vec![e]);
                    }
                    Some(_) => {}
                    None => {
                        conditions.insert(k.clone(), (v.clone(), &p.id));
                    }
                }
            }
        }
        let verdict = if conditions.is_empty() {
            Verdict::Allow
        } else {
            Verdict::AllowWithConditions {
                conditions: conditions.into_iter().map(|(k, (v, _))| (k, v)).collect(),
            }
        };
        GateDecision {
            verdict,
            policies: ids,
            errors: Vec::new(),
        }
    }

    /// The action, the Cedar request and entities of `req`, checked
    /// against the schema: types the action applies to, every declared
    /// attribute of the right type, every required one present; undeclared
    /// attributes are dropped.
    fn cedar_request(
        &self,
        req: &AuthzRequest,
    ) -> Result<(&ActionInfo, cedar::Request, cedar::Entities), String> {
        let action = self.actions.get(req.action.as_str()).ok_or_else(|| {
            format!(
                "unknown action `{}` (the schema declares {})",
                req.action,
                self.actions
                    .keys()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        let (principal_uid, principal) =
            self.entity(&req.principal, "principal", &action.principals, &req.action)?;
        let (resource_uid, resource) =
            self.entity(&req.resource, "resource", &action.resources, &req.action)?;
        let context = self.context(action, req)?;
        let same = principal_uid == resource_uid;
        let request = cedar::Request::new(principal_uid, action.uid.clone(), resource_uid, context, None)
            .map_err(|e| diagnostic_message(&e))?;
        let entities: Vec<cedar::Entity> = match (principal, resource) {
            (Some(p), Some(r)) if same => {
                if !p.deep_eq(&r) {
                    return Err(format!(
                        "principal and resource are both {} with different attributes",
                        p.uid()
                    ));
                }
                vec![p]
            }
            (Some(_), None) | (None, Some(_)) if same => {
                return Err("principal and resource are the same entity with different attributes".into());
            }
            (p, r) => p.into_iter().chain(r).collect(),
        };
        let entities = match (&self.action_entities, entities.is_empty()) {
            (None, true) => Ok(cedar::Entities::empty()),
            (None, false) => cedar::Entities::from_entities(entities, None),
            (Some(actions), _) => actions.clone().add_entities(entities, None),
        }
        .map_err(|e| diagnostic_message(&e))?;
        Ok((action, request, entities))
    }

    /// The uid of a principal or resource, and its entity for the store —
    /// none when it has no attributes: Cedar treats an entity missing from
    /// the store as one without attributes or parents, so leaving it out
    /// changes no verdict and saves building the store.
    fn entity(
        &self,
        e: &Entity,
        role: &str,
        allowed: &[String],
        action: &str,
    ) -> Result<(cedar::EntityUid, Option<cedar::Entity>), String> {
        let ty = self.types.get(e.kind.as_str()).ok_or_else(|| {
            format!(
                "{role} type `{}` is not in the schema (it declares {})",
                e.kind,
                self.types
                    .keys()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        if !allowed.contains(&e.kind) {
            return Err(format!(
                "{action} does not apply to a {role} of type {} (the schema allows {})",
                e.kind,
                allowed.join(", ")
            ));
        }
        let what = || format!("{role} {}::{:?}", e.kind, e.id);
        if !(e.attrs.is_object() || e.attrs.is_null()) {
            return Err(format!("attributes of {} are not a JSON object", what()));
        }
        let attrs = ty
            .attrs
            .fields(&e.attrs, &At::Root)
            .map_err(|err| format!("{}: {err}", what()))?;
        let uid = cedar::EntityUid::from_type_name_and_id(ty.name.clone(), cedar::EntityId::new(&e.id));
        if attrs.is_empty() {
            return Ok((uid, None));
        }
        let entity = cedar::Entity::new(uid.clone(), attrs.into_iter().collect(), HashSet::new())
            .map_err(|err| format!("{}: {}", what(), diagnostic_message(&err)))?;
        Ok((uid, Some(entity)))
    }
}

fn invalid(p: Problem) -> PolicyError {
    PolicyError::Invalid { problems: vec![p] }
}

/// Files each policy under the actions its scope admits, and under its
/// resource when the scope is `resource == <uid>`: a request is evaluated
/// only against policies whose scope can hold for it. Exact, because a
/// policy whose scope is false is false without evaluating its conditions.
/// With action groups, `action in [...]` is admitted everywhere (safe).
fn slice(set: &cedar::PolicySet, actions: &mut BTreeMap<String, ActionInfo>, has_action_groups: bool) {
    for p in set.policies() {
        let admits = |a: &ActionInfo| match p.action_constraint() {
            cedar::ActionConstraint::Any => true,
            cedar::ActionConstraint::Eq(uid) => uid == a.uid,
            cedar::ActionConstraint::In(uids) => has_action_groups || uids.contains(&a.uid),
        };
        for a in actions.values_mut().filter(|a| admits(a)) {
            let into = match p.resource_constraint() {
                cedar::ResourceConstraint::Eq(uid) => a.by_resource.entry(uid).or_default(),
                _ => &mut a.any,
            };
            into.add(p.clone())
                .expect("ids are unique in the validated set, so in each slice");
        }
    }
    // Merge each action's resource-agnostic policies into its per-resource
    // sets while the copies stay within budget.
    let mut budget = MAX_SLICE_COPIES;
    for a in actions.values_mut() {
        let copies = a.any.num_of_policies() * a.by_resource.len();
        if copies > budget {
            continue;
        }
        budget -= copies;
        for set in a.by_resource.values_mut() {
            for p in a.any.policies() {
                set.add(p.clone())
                    .expect("a policy is either scoped to a resource or not");
            }
        }
        a.merged = true;
    }
}

/// A policy directory's schema (if it has one) and `*.cedar` files, sorted
/// by name, hidden files skipped, within the limits.
fn read_sources(dir: &Path) -> Result<(Option<Source>, Vec<Source>), PolicyError> {
    let read_err = |path: &Path, e: std::io::Error| PolicyError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let mut cedar_files = Vec::new();
    let mut schemas = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| read_err(dir, e))? {
        let entry = entry.map_err(|e| read_err(dir, e))?;
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if name.starts_with('.') || !path.is_file() {
            continue;
        }
        if name.ends_with(".cedar") {
            cedar_files.push((name, path));
        } else if name.ends_with(".cedarschema") {
            schemas.push((name, path));
        }
    }
    cedar_files.sort();
    schemas.sort();
    if cedar_files.len() > MAX_POLICY_FILES {
        return Err(invalid(Problem {
            file: dir.display().to_string(),
            policy: None,
            line: 0,
            column: 0,
            message: format!(
                "{} policy files, more than the limit of {MAX_POLICY_FILES}",
                cedar_files.len()
            ),
        }));
    }
    if schemas.len() > 1 {
        return Err(invalid(Problem {
            file: schemas[1].1.display().to_string(),
            policy: None,
            line: 0,
            column: 0,
            message: format!(
                "a second schema (the first is {}); keep one *.cedarschema per directory",
                schemas[0].1.display()
            ),
        }));
    }
    let read = |(name, path): (String, PathBuf)| -> Result<Source, PolicyError> {
        let file = std::fs::File::open(&path).map_err(|e| read_err(&path, e))?;
        let mut bytes = Vec::new();
        file.take(MAX_POLICY_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| read_err(&path, e))?;
        if bytes.len() as u64 > MAX_POLICY_FILE_BYTES {
            return Err(PolicyError::Read {
                path,
                reason: format!("larger than the limit of {MAX_POLICY_FILE_BYTES} bytes"),
            });
        }
        let text = String::from_utf8(bytes).map_err(|e| PolicyError::Read {
            path: path.clone(),
            reason: format!("not UTF-8 (at byte {})", e.utf8_error().valid_up_to()),
        })?;
        Ok(Source {
            name,
            display: path.display().to_string(),
            text,
        })
    };
    let schema = schemas.into_iter().next().map(read).transpose()?;
    let files = cedar_files.into_iter().map(read).collect::<Result<Vec<_>, _>>()?;
    Ok((schema, files))
}

/// The hash of a set: domain tag, then the schema (if a file gave one) and
/// each file, each as `tag len:name len\ntext`.
fn set_hash(schema: Option<&Source>, files: &[Source]) -> String {
    let mut h = blake3::Hasher::new();
    h.update(HASH_DOMAIN);
    let mut part = |tag: &str, name: &str, text: &str| {
        h.update(format!("{tag} {}:{name} {}\n", name.len(), text.len()).as_bytes());
        h.update(text.as_bytes());
    };
    match schema {
        Some(s) => part("schema", "", &s.text),
        None => part("default-schema", "", DEFAULT_SCHEMA),
    }
    for f in files {
        part("file", &f.name, &f.text);
    }
    h.finalize().to_hex().to_string()
}

/// A schema, compiled: the Cedar schema, each action's and entity type's
/// request types, and whether actions form groups.
struct CompiledSchema {
    schema: cedar::Schema,
    actions: BTreeMap<String, ActionInfo>,
    types: BTreeMap<String, TypeInfo>,
    has_action_groups: bool,
}

/// Parses the schema; derives each action's context type and each entity
/// type's attribute types from its JSON form.
fn compile_schema(src: &Source, warnings: &mut Vec<Problem>) -> Result<CompiledSchema, PolicyError> {
    let problem = |d: &dyn Diagnostic| {
        let (line, column) = first_offset(d).map_or((0, 0), |o| line_col(&src.text, o));
        Problem {
            file: src.display.clone(),
            policy: None,
            line,
            column,
            message: format!("schema: {}", diagnostic_message(d)),
        }
    };
    let whole = |message: String| {
        invalid(Problem {
            file: src.display.clone(),
            policy: None,
            line: 0,
            column: 0,
            message,
        })
    };
    let (schema, schema_warnings) =
        cedar::Schema::from_cedarschema_str(&src.text).map_err(|e| invalid(problem(&e)))?;
    warnings.extend(schema_warnings.map(|w| problem(&w)));
    let (fragment, _) =
        cedar::SchemaFragment::from_cedarschema_str(&src.text).map_err(|e| invalid(problem(&e)))?;
    let json = fragment.to_json_value().map_err(|e| invalid(problem(&e)))?;
    let Value::Object(namespaces) = json else {
        return Err(whole("schema: not a set of namespaces".into()));
    };
    if let Some(ns) = namespaces.keys().find(|k| !k.is_empty()) {
        return Err(whole(format!(
            "schema: namespace `{ns}`; the gate's schema uses the empty namespace \
             (requests name types as `Agent`, actions as `invoke_tool`)"
        )));
    }
    let empty = Map::new();
    let ns = namespaces.get("").and_then(Value::as_object).unwrap_or(&empty);
    let section = |key: &str| ns.get(key).and_then(Value::as_object).unwrap_or(&empty);
    let entity_names: BTreeMap<String, cedar::EntityTypeName> = schema
        .entity_types()
        .map(|t| (t.to_string(), t.clone()))
        .collect();
    let resolve = Types {
        common: section("commonTypes"),
        entities: &entity_names,
    };

    let mut types = BTreeMap::new();
    for (key, name) in &entity_names {
        let attrs = section("entityTypes")
            .get(key)
            .and_then(|d| d.get("shape"))
            .map_or_else(Ty::empty_record, |s| resolve.ty(s, 0));
        types.insert(
            key.clone(),
            TypeInfo {
                name: name.clone(),
                attrs,
            },
        );
    }
    let names = |v: Option<&Value>| -> Vec<String> {
        v.and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
            .unwrap_or_default()
    };
    let mut actions = BTreeMap::new();
    let mut has_action_groups = false;
    for uid in schema.actions() {
        let key = uid.id().unescaped().to_owned();
        let decl = section("actions").get(&key);
        has_action_groups |= decl
            .and_then(|d| d.get("memberOf"))
            .and_then(Value::as_array)
            .is_some_and(|m| !m.is_empty());
        let applies = decl.and_then(|d| d.get("appliesTo"));
        let context = applies
            .and_then(|a| a.get("context"))
            .map_or_else(Ty::empty_record, |c| resolve.ty(c, 0));
        actions.insert(
            key,
            ActionInfo {
                uid: uid.clone(),
                context,
                principals: names(applies.and_then(|a| a.get("principalTypes"))),
                resources: names(applies.and_then(|a| a.get("resourceTypes"))),
                any: cedar::PolicySet::new(),
                by_resource: HashMap::new(),
                merged: false,
            },
        );
    }
    Ok(CompiledSchema {
        schema,
        actions,
        types,
        has_action_groups,
    })
}

/// Resolves the schema's JSON types (Cedar's rules for a name: a common
/// type, else an entity type, else a primitive or extension type).
struct Types<'a> {
    common: &'a Map<String, Value>,
    entities: &'a BTreeMap<String, cedar::EntityTypeName>,
}

impl Types<'_> {
    fn ty(&self, t: &Value, depth: usize) -> Ty {
        if depth > MAX_TYPE_DEPTH {
            return Ty::Unsupported("a type nested too deeply".into());
        }
        let name = t.get("name").and_then(Value::as_str).unwrap_or("");
        match t.get("type").and_then(Value::as_str).unwrap_or("") {
            "Record" => Ty::Record(
                t.get("attributes")
                    .and_then(Value::as_object)
                    .map(|attrs| {
                        attrs
                            .iter()
                            .map(|(k, a)| {
                                let required = a.get("required").and_then(Value::as_bool).unwrap_or(true);
                                let ty = self.ty(a, depth + 1);
                                (k.clone(), Attr { ty, required })
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            ),
            "Set" => Ty::Set(Box::new(
                t.get("element")
                    .map_or(Ty::Unsupported("a set of nothing".into()), |e| {
                        self.ty(e, depth + 1)
                    }),
            )),
            "Entity" => self.entity_or(name, Ty::Unsupported(format!("entity type {name}"))),
            "Extension" => Ty::Unsupported(name.to_owned()),
            "EntityOrCommon" => self.named(name, depth),
            other => self.named(other, depth),
        }
    }

    fn named(&self, name: &str, depth: usize) -> Ty {
        if let Some(t) = self.common.get(name) {
            return self.ty(t, depth + 1);
        }
        let primitive = match name.strip_prefix("__cedar::").unwrap_or(name) {
            "String" => Ty::String,
            "Long" => Ty::Long,
            "Bool" | "Boolean" => Ty::Bool,
            other => Ty::Unsupported(other.to_owned()),
        };
        self.entity_or(name, primitive)
    }

    fn entity_or(&self, name: &str, otherwise: Ty) -> Ty {
        match self.entities.get(name) {
            Some(t) => Ty::Entity(t.clone()),
            None => otherwise,
        }
    }
}

/// Parses one file's policies into `set`, recording each policy's info or
/// the problems.
fn compile_file(
    f: &Source,
    set: &mut cedar::PolicySet,
    policies: &mut BTreeMap<String, PolicyInfo>,
    problems: &mut Vec<Problem>,
) {
    let parsed = match cedar::PolicySet::from_str(&f.text) {
        Ok(p) => p,
        Err(errors) => {
            for e in errors.iter() {
                let (line, column) = first_offset(e).map_or((0, 0), |o| line_col(&f.text, o));
                problems.push(Problem {
                    file: f.display.clone(),
                    policy: None,
                    line,
                    column,
                    message: diagnostic_message(e),
                });
            }
            return;
        }
    };
    // cedar names a file's policies policy0, policy1, … in source order, and
    // keeps each one's text: find each in turn for its position.
    let mut texts: Vec<(usize, String, Option<cedar::Policy>)> = Vec::new();
    for p in parsed.policies() {
        texts.push((ordinal(p.id()), p.to_cedar().unwrap_or_default(), Some(p.clone())));
    }
    for t in parsed.templates() {
        texts.push((ordinal(t.id()), t.to_cedar(), None));
    }
    texts.sort_by_key(|(n, _, _)| *n);
    let mut from = 0;
    for (_, text, policy) in texts {
        let offset = f.text[from..].find(&text).map_or(from, |i| from + i);
        from = offset + text.len();
        let (line, column) = line_col(&f.text, offset);
        let at = |policy: Option<String>, message: String| Problem {
            file: f.display.clone(),
            policy,
            line,
            column,
            message,
        };
        let Some(policy) = policy else {
            problems.push(at(
                None,
                "a template (`?principal`/`?resource` slot); the gate takes static policies only".into(),
            ));
            continue;
        };
        let Some(id) = policy.annotation("id") else {
            problems.push(at(
                None,
                "no @id(\"…\") annotation; every policy needs one: decisions cite it".into(),
            ));
            continue;
        };
        if let Err(why) = check_id(id) {
            problems.push(at(Some(id.to_owned()), why));
            continue;
        }
        if let Some(first) = policies.get(id) {
            problems.push(at(
                Some(id.to_owned()),
                format!(
                    "duplicate policy id, first used at {}:{}:{}",
                    first.file, first.line, first.column
                ),
            ));
            continue;
        }
        let info = match annotations(&policy, id, &f.display, line, column) {
            Ok(info) => info,
            Err(why) => {
                problems.push(at(Some(id.to_owned()), why));
                continue;
            }
        };
        if let Err(e) = set.add(policy.new_id(cedar::PolicyId::new(id))) {
            problems.push(at(Some(id.to_owned()), diagnostic_message(&e)));
            continue;
        }
        policies.insert(id.to_owned(), info);
    }
}

fn id_str(id: &cedar::PolicyId) -> &str {
    id.as_ref()
}

/// N of cedar's default id `policyN`.
fn ordinal(id: &cedar::PolicyId) -> usize {
    id_str(id)
        .strip_prefix("policy")
        .and_then(|n| n.parse().ok())
        .unwrap_or(usize::MAX)
}

fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("empty @id".into());
    }
    if id.chars().count() > MAX_POLICY_ID_CHARS {
        return Err(format!("@id longer than {MAX_POLICY_ID_CHARS} characters"));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '/')))
    {
        return Err(format!(
            "@id contains {c:?}; ids are letters, digits and - _ . : / only"
        ));
    }
    Ok(())
}

/// Reads and checks the gate's annotations of one policy.
fn annotations(
    p: &cedar::Policy,
    id: &str,
    file: &str,
    line: usize,
    column: usize,
) -> Result<PolicyInfo, String> {
    let permit = p.effect() == cedar::Effect::Permit;
    let get = |k: &str| p.annotation(k).map(str::to_owned);
    let reason = get("reason");
    let approval = get("approval");
    let timeout_text = get("approval_timeout");
    let conditions_text = get("conditions");
    if !permit {
        for (k, present) in [
            ("approval", approval.is_some()),
            ("approval_timeout", timeout_text.is_some()),
            ("conditions", conditions_text.is_some()),
        ] {
            if present {
                return Err(format!("@{k} on a forbid policy; it applies to permits only"));
            }
        }
    } else if reason.is_some() {
        return Err("@reason on a permit policy; it gives a forbid's deny reason".into());
    }
    if approval.is_some() && conditions_text.is_some() {
        return Err(
            "@approval and @conditions on one policy; the approver approves the action as proposed, \
             put the conditions on another permit"
                .into(),
        );
    }
    let approval = approval.map(|a| {
        if a.is_empty() {
            format!("approval required by {id}")
        } else {
            a
        }
    });
    let approval_timeout = match timeout_text {
        None => None,
        Some(_) if approval.is_none() => {
            return Err("@approval_timeout without @approval".into());
        }
        Some(t) => Some(
            humantime::parse_duration(&t)
                .map_err(|e| format!("@approval_timeout({t:?}): {e}; write e.g. \"10m\" or \"1h 30m\""))?,
        ),
    };
    let conditions = match conditions_text {
        None => BTreeMap::new(),
        Some(t) => parse_conditions(&t)?,
    };
    Ok(PolicyInfo {
        id: id.to_owned(),
        effect: if permit { "permit" } else { "forbid" },
        file: file.to_owned(),
        line,
        column,
        reason,
        approval,
        approval_timeout,
        conditions,
    })
}

/// `k1=v1; k2=v2` → map; keys are `a-z 0-9 _`, values non-empty.
fn parse_conditions(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, v)) = part.split_once('=') else {
            return Err(format!("@conditions: `{part}` is not key=value"));
        };
        let (k, v) = (k.trim(), v.trim());
        if k.is_empty()
            || !k
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(format!("@conditions: key `{k}` is not a-z 0-9 _"));
        }
        if v.is_empty() {
            return Err(format!("@conditions: `{k}` has no value"));
        }
        if out.insert(k.to_owned(), v.to_owned()).is_some() {
            return Err(format!("@conditions: `{k}` given twice"));
        }
    }
    if out.is_empty() {
        return Err("@conditions is empty; write e.g. \"max_bytes=65536\"".into());
    }
    Ok(out)
}

/// The byte offset of a diagnostic's first label.
fn first_offset(d: &dyn Diagnostic) -> Option<usize> {
    if let Some(mut labels) = d.labels()
        && let Some(l) = labels.next()
    {
        return Some(l.offset());
    }
    d.related()?.find_map(first_offset)
}

/// A diagnostic's message, with cedar's help when it has some.
fn diagnostic_message(d: &dyn Diagnostic) -> String {
    let mut s = d.to_string();
    if let Some(help) = d.help() {
        s.push_str(&format!(" ({help})"));
    }
    s.replace('\n', " ")
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_characters() {
        assert_eq!(line_col("ab\ncé\nx", 0), (1, 1));
        assert_eq!(line_col("ab\ncé\nx", 3), (2, 1));
        assert_eq!(line_col("ab\ncé\nx", 7), (3, 1));
        assert_eq!(line_col("ab\ncé\nx", 99), (3, 2));
    }

    #[test]
    fn conditions_parse() {
        let c = parse_conditions(" max_bytes = 10 ; mode=ro;").expect("parses");
        assert_eq!(render_conditions(&c), "max_bytes=10; mode=ro");
        assert!(parse_conditions("a=1; a=2").is_err());
        assert!(parse_conditions("A=1").is_err());
        assert!(parse_conditions("novalue").is_err());
        assert!(parse_conditions(" ; ").is_err());
    }

    #[test]
    fn the_default_gate_denies() {
        let g = PolicyGate::deny_all();
        assert!(g.is_empty());
        let d = g.decide(&AuthzRequest {
            point: Point::ToolInvocation,
            principal: Entity {
                kind: "Agent".into(),
                id: "a".into(),
                attrs: serde_json::json!({"priority": "low"}),
            },
            action: "invoke_tool".into(),
            resource: Entity {
                kind: "Tool".into(),
                id: "read_file".into(),
                attrs: Value::Null,
            },
            context: serde_json::json!({"args": {}}),
        });
        assert_eq!(
            d.verdict,
            Verdict::Deny {
                reason: "no policy permits invoke_tool on Tool::\"read_file\"".into()
            }
        );
        assert!(d.errors.is_empty(), "{:?}", d.errors);
    }

    #[test]
    fn decide_cached_decides_as_decide() {
        let g = PolicyGate::from_sources(
            None,
            &[(
                "t.cedar".into(),
                "@id(\"high-reads\")\npermit (principal, action == Action::\"invoke_tool\", resource == Tool::\"read_file\") when { principal.priority == \"high\" && context has in_workspace && context.in_workspace };\n@id(\"no-du\")\nforbid (principal, action == Action::\"invoke_tool\", resource) when { context.args has command && context.args.command == \"du\" };".into(),
            )],
        )
        .expect("gate");
        let req = |priority: Value, tool: &str, context: Value| AuthzRequest {
            point: Point::ToolInvocation,
            principal: Entity {
                kind: "Agent".into(),
                id: "a".into(),
                attrs: serde_json::json!({ "priority": priority }),
            },
            action: "invoke_tool".into(),
            resource: Entity {
                kind: "Tool".into(),
                id: tool.into(),
                attrs: Value::Null,
            },
            context,
        };
        let inside = serde_json::json!({"in_workspace": true, "args": {"path": "a"}});
        let requests = [
            req("high".into(), "read_file", inside.clone()),
            req("low".into(), "read_file", inside.clone()),
            req(
                "high".into(),
                "read_file",
                serde_json::json!({"in_workspace": false}),
            ),
            req(
                "high".into(),
                "run_command",
                serde_json::json!({"args": {"command": "du"}}),
            ),
            req(
                "high".into(),
                "read_file",
                serde_json::json!({"args": {"command": 3}}),
            ),
            req("high".into(), "read_file", serde_json::json!([1])),
            req(7.into(), "read_file", inside),
        ];
        let mut cache = EntityCache::default();
        // Twice over: the second pass takes every store from the cache.
        for r in requests.iter().chain(requests.iter()) {
            assert_eq!(g.decide_cached(r, &mut cache), g.decide(r), "{r:?}");
        }
        assert!(cache.stores.len() >= 2, "{cache:?}");
    }
}
