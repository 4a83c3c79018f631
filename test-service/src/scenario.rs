//! One round of checks against a person service.
//!
//! The round works on a person of its own (its last name carries a fresh
//! uuid fragment), so rounds can run against a shared, live database, from
//! several checkers at once, without reading or touching anyone else's
//! records. It finds that person with a paged `list` (`after_id = id - 1,
//! limit = 1`) so a round costs the same however large the table grows.
//!
//! A failed check does not end the round: later steps still run when they
//! can (the person is deleted even when the update was wrong), so one report
//! shows every symptom and the round leaves nothing behind.
//!
//! With [`EventChecks::On`] the round also checks the person service's
//! events ([`crate::events`]): after its calls it waits, up to a timeout
//! after each change's reply, for `person_created` carrying the created
//! record, `person_updated` carrying the record the update returned, and
//! `person_deleted` carrying `{"id": id}`, and checks that each carries the
//! round's call id in its call-id stack. How long after its change's
//! request each event arrived is the event check's latency.

use crate::events::{EventBoard, Kind, Received, Watch};
use person_api::PersonClient;
use rpc_core::{json, CallError, Caller, Value};
use std::fmt;
use std::future::Future;
use std::time::{Duration, Instant};

/// A person record as the person service returns it: person-api's, so
/// the round decodes with the server's own definition. Decoding into it is
/// itself a check: a record with a missing field or a field of the wrong
/// JSON type fails with serde's description of the problem.
pub use person_api::Person;

/// What differs between a record and the one expected, field by field, or
/// `None` when equal; a whole-record dump would hide the one field that
/// matters.
pub fn differences(got: &Person, expected: &Person) -> Option<String> {
    let mut diffs = Vec::new();
    let mut field = |name: &str, got: String, want: String| {
        if got != want {
            diffs.push(format!("{name} is {got}, expected {want}"));
        }
    };
    field("id", got.id.to_string(), expected.id.to_string());
    field(
        "first_name",
        format!("{:?}", got.first_name),
        format!("{:?}", expected.first_name),
    );
    field(
        "last_name",
        format!("{:?}", got.last_name),
        format!("{:?}", expected.last_name),
    );
    field("age", got.age.to_string(), expected.age.to_string());
    field(
        "member",
        got.member.to_string(),
        expected.member.to_string(),
    );
    if diffs.is_empty() {
        None
    } else {
        Some(diffs.join(", "))
    }
}

/// The checks of a round, in the order they run: the calls, then (when
/// the round checks events) the events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Step {
    /// `create(first_name, last_name, age, member=False)` returns an int id.
    Create,
    /// `list(after_id=id-1, limit=1)` returns exactly the new person.
    List,
    /// `update(id, age=age+1, member=not member)` returns the changed record.
    Update,
    /// `get(id)` returns what the update returned.
    Get,
    /// `delete(id)` returns null.
    Delete,
    /// `get(id)` after the delete raises `PersonNotFound`.
    GetDeleted,
    /// `create(..., age=200)` raises `ValidationError` naming `age`.
    CreateInvalid,
    /// A `person_created` event whose data is the created record.
    PersonCreated,
    /// A `person_updated` event whose data is what the update returned.
    PersonUpdated,
    /// A `person_deleted` event whose data is `{"id": id}`.
    PersonDeleted,
    /// Every event that arrived carries the round's call id in its call-id
    /// stack (the caller's context travels with RPC-caused events).
    EventCallIds,
}

impl Step {
    /// The call steps, in order: a round without event checks has these.
    pub const CALLS: [Step; 7] = [
        Step::Create,
        Step::List,
        Step::Update,
        Step::Get,
        Step::Delete,
        Step::GetDeleted,
        Step::CreateInvalid,
    ];

    /// The event steps, in order, after the calls.
    pub const EVENTS: [Step; 4] = [
        Step::PersonCreated,
        Step::PersonUpdated,
        Step::PersonDeleted,
        Step::EventCallIds,
    ];

    /// Every step, in order.
    pub const ALL: [Step; 11] = [
        Step::Create,
        Step::List,
        Step::Update,
        Step::Get,
        Step::Delete,
        Step::GetDeleted,
        Step::CreateInvalid,
        Step::PersonCreated,
        Step::PersonUpdated,
        Step::PersonDeleted,
        Step::EventCallIds,
    ];

    /// Whether this checks events rather than a call.
    pub fn is_event(self) -> bool {
        Self::EVENTS.contains(&self)
    }

    /// The step checking the event of `kind`.
    pub fn for_event(kind: Kind) -> Step {
        match kind {
            Kind::Created => Step::PersonCreated,
            Kind::Updated => Step::PersonUpdated,
            Kind::Deleted => Step::PersonDeleted,
        }
    }

    /// A short name for logs and summaries.
    pub fn name(self) -> &'static str {
        match self {
            Step::Create => "create",
            Step::List => "list",
            Step::Update => "update",
            Step::Get => "get",
            Step::Delete => "delete",
            Step::GetDeleted => "get_deleted",
            Step::CreateInvalid => "create_invalid",
            Step::PersonCreated => "person_created",
            Step::PersonUpdated => "person_updated",
            Step::PersonDeleted => "person_deleted",
            Step::EventCallIds => "event_call_ids",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a check ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The call returned what the person service's contract says.
    Passed,
    /// It did not; the text says what was wrong.
    Failed(String),
    /// It could not run because an earlier step failed (e.g. nothing was
    /// created, so there is no id to get). Counts as not passed.
    Skipped(String),
}

impl Outcome {
    /// `pass`, `fail` or `skip`.
    pub fn verdict(&self) -> &'static str {
        match self {
            Outcome::Passed => "pass",
            Outcome::Failed(_) => "fail",
            Outcome::Skipped(_) => "skip",
        }
    }
}

/// One check: the step, how it ended, and how long its call took.
#[derive(Clone, Debug, PartialEq)]
pub struct Check {
    /// Which check.
    pub step: Step,
    /// How it ended.
    pub outcome: Outcome,
    /// For a call: time from sending the request to having the reply. For
    /// an event: time from sending the change's request to the event's
    /// arrival. `None` when the check was skipped or no event arrived.
    pub latency: Option<Duration>,
}

impl Check {
    /// Whether the check passed.
    pub fn passed(&self) -> bool {
        self.outcome == Outcome::Passed
    }

    /// Why the check did not pass.
    pub fn reason(&self) -> Option<&str> {
        match &self.outcome {
            Outcome::Passed => None,
            Outcome::Failed(r) | Outcome::Skipped(r) => Some(r),
        }
    }
}

impl fmt::Display for Check {
    /// One summary line: `PASS  create            3.1 ms`, with the reason
    /// after a failure; an event's delay after its change's request shows
    /// as `+4.2 ms`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let label = self.outcome.verdict().to_ascii_uppercase();
        let sign = if self.step.is_event() { "+" } else { "" };
        let latency = self
            .latency
            .map_or_else(|| "-".to_owned(), |d| format!("{sign}{:.1} ms", millis(d)));
        write!(f, "{label}  {:<15} {latency:>10}", self.step.name())?;
        if let Some(reason) = self.reason() {
            write!(f, "  {reason}")?;
        }
        Ok(())
    }
}

/// The outcome of one round.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    /// One entry per [`Step`], in order.
    pub checks: Vec<Check>,
    /// The id the round's person got, when the create worked.
    pub person_id: Option<i64>,
    /// The call id the round's calls carried as their caller's, when it
    /// checked events (their call-id stacks must contain it).
    pub round_call_id: Option<String>,
}

impl Report {
    /// True when every check passed.
    pub fn passed(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(Check::passed)
    }

    /// The checks that did not pass.
    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| !c.passed())
    }

    /// The check of one step.
    pub fn check(&self, step: Step) -> Option<&Check> {
        self.checks.iter().find(|c| c.step == step)
    }

    /// Time spent in calls, all call steps together.
    pub fn total_latency(&self) -> Duration {
        self.calls().filter_map(|c| c.latency).sum()
    }

    fn calls(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| !c.step.is_event())
    }

    /// `create=3.1 list=1.2 …` in milliseconds: one log field for all call
    /// steps.
    pub fn latencies_ms(&self) -> String {
        let parts: Vec<String> = self
            .calls()
            .map(|c| match c.latency {
                Some(d) => format!("{}={:.1}", c.step, millis(d)),
                None => format!("{}=-", c.step),
            })
            .collect();
        parts.join(" ")
    }

    /// `person_created=pass+4.2ms person_updated=pass+3.0ms
    /// person_deleted=fail event_call_ids=pass`: one log field for the
    /// event checks, each with its event's delay after the change's request
    /// when one arrived (reasons are in [`failure_summary`](Self::failure_summary)).
    /// Empty when the round did not check events.
    pub fn events_summary(&self) -> String {
        let parts: Vec<String> = self
            .checks
            .iter()
            .filter(|c| c.step.is_event())
            .map(|c| {
                let verdict = c.outcome.verdict();
                match c.latency {
                    Some(d) => format!("{}={verdict}+{:.1}ms", c.step, millis(d)),
                    None => format!("{}={verdict}", c.step),
                }
            })
            .collect();
        parts.join(" ")
    }

    /// `update: age is 41, expected 42; get: …`: one log field for all
    /// failures.
    pub fn failure_summary(&self) -> String {
        let parts: Vec<String> = self
            .failures()
            .map(|c| format!("{}: {}", c.step, c.reason().unwrap_or("")))
            .collect();
        parts.join("; ")
    }

    /// The report as JSON, as the service's `stats()` method returns it.
    pub fn to_json(&self) -> Value {
        let checks: Vec<Value> = self
            .checks
            .iter()
            .map(|c| {
                json!({
                    "step": c.step.name(),
                    "kind": if c.step.is_event() { "event" } else { "call" },
                    "passed": c.passed(),
                    "reason": c.reason(),
                    "latency_ms": c.latency.map(millis),
                })
            })
            .collect();
        json!({
            "passed": self.passed(),
            "person_id": self.person_id,
            "round_call_id": self.round_call_id,
            "checks": checks,
        })
    }

    fn record(&mut self, step: Step, latency: Duration, result: Result<(), String>) {
        self.push(step, Some(latency), result);
    }

    fn push(&mut self, step: Step, latency: Option<Duration>, result: Result<(), String>) {
        self.checks.push(Check {
            step,
            outcome: match result {
                Ok(()) => Outcome::Passed,
                Err(reason) => Outcome::Failed(reason),
            },
            latency,
        });
    }

    fn skip(&mut self, step: Step, reason: &str) {
        self.checks.push(Check {
            step,
            outcome: Outcome::Skipped(reason.to_owned()),
            latency: None,
        });
    }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Whether and how a round checks the person service's events.
#[derive(Clone, Debug)]
pub enum EventChecks<'a> {
    /// Calls only: the report has no event steps.
    Off,
    /// Events should be checked but cannot be received (the subscriber
    /// did not start, say): the event steps are skipped with this reason,
    /// so the round does not pass.
    Unavailable(String),
    /// Watch `board` (fed by [`crate::events::subscribe`]'s handlers) for
    /// the round's events.
    On {
        /// Where the subscriber's handlers put events.
        board: &'a EventBoard,
        /// The call id the round's calls carry as their caller's: a
        /// service-mode tick's own call id, or a standalone proxy's.
        round_call_id: &'a str,
        /// How long after its change's reply an event may arrive.
        timeout: Duration,
    },
}

/// Runs one round of calls against the person service called `target`,
/// without event checks.
///
/// Never fails as a whole: everything that goes wrong, including the broker
/// or the service being unreachable, ends up in the report.
pub async fn run_round<C: Caller>(caller: &C, target: &str) -> Report {
    run_round_with(caller, target, EventChecks::Off).await
}

/// Runs one round against `target`, checking its events as `events` says.
pub async fn run_round_with<C: Caller>(
    caller: &C,
    target: &str,
    events: EventChecks<'_>,
) -> Report {
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let tag = &tag[..8];
    let mut round = Round {
        person: PersonClient::for_service(caller, target),
        report: Report::default(),
        changes: Changes::default(),
    };
    let mut expected = Person {
        id: 0,
        first_name: "Probe".to_owned(),
        last_name: format!("Roundtrip-{tag}"),
        age: 41,
        member: false,
    };
    // Watching starts before the create: its event may come before its reply.
    let mut watch = match &events {
        EventChecks::On { board, .. } => Some(board.watch(&expected.last_name)),
        _ => None,
    };
    match round.create(&expected).await {
        Some(id) => {
            expected.id = id;
            round.report.person_id = Some(id);
            if let Some(watch) = &mut watch {
                watch.set_id(id);
            }
            round.list(&expected).await;
            expected.age += 1;
            expected.member = !expected.member;
            round.update(&expected).await;
            round.get(&expected).await;
            round.delete(id).await;
            round.get_deleted(id).await;
        }
        None => {
            for step in [
                Step::List,
                Step::Update,
                Step::Get,
                Step::Delete,
                Step::GetDeleted,
            ] {
                round.report.skip(step, "no person was created");
            }
        }
    }
    round.create_invalid(tag).await;
    match (events, watch) {
        (
            EventChecks::On {
                round_call_id,
                timeout,
                ..
            },
            Some(mut watch),
        ) => {
            round.report.round_call_id = Some(round_call_id.to_owned());
            round.check_events(&mut watch, round_call_id, timeout).await;
        }
        (EventChecks::Unavailable(reason), _) => {
            for step in Step::EVENTS {
                round.report.skip(step, &reason);
            }
        }
        _ => {}
    }
    round.report
}

/// A change the round made, and so an event it expects.
#[derive(Clone, Debug)]
struct Change {
    /// The person changed.
    id: i64,
    /// The call that made it, as in "the update's reply".
    call: &'static str,
    /// When its request was sent.
    sent: Instant,
    /// When its reply came.
    replied: Instant,
    /// The event's data.
    expected: Value,
}

/// The changes of a round, or why there is none (and so no event).
#[derive(Debug)]
struct Changes {
    created: Result<Change, String>,
    updated: Result<Change, String>,
    deleted: Result<Change, String>,
}

impl Default for Changes {
    fn default() -> Self {
        let none = || Err("no person was created".to_owned());
        Changes {
            created: none(),
            updated: none(),
            deleted: none(),
        }
    }
}

impl Changes {
    fn get(&self, kind: Kind) -> &Result<Change, String> {
        match kind {
            Kind::Created => &self.created,
            Kind::Updated => &self.updated,
            Kind::Deleted => &self.deleted,
        }
    }
}

/// The state of a round in progress.
struct Round<'a, C> {
    person: PersonClient<&'a C>,
    report: Report,
    changes: Changes,
}

/// When a call was sent and how long its reply took.
#[derive(Clone, Copy, Debug)]
struct Timing {
    sent: Instant,
    latency: Duration,
}

impl Timing {
    fn replied(self) -> Instant {
        self.sent + self.latency
    }
}

impl<C: Caller> Round<'_, C> {
    async fn timed<T>(
        &self,
        call: impl Future<Output = Result<T, CallError>>,
    ) -> (Result<T, CallError>, Timing) {
        let sent = Instant::now();
        let result = call.await;
        let latency = sent.elapsed();
        (result, Timing { sent, latency })
    }

    fn changed(&mut self, kind: Kind, id: i64, timing: Timing, expected: Value) {
        let change = Ok(Change {
            id,
            call: match kind {
                Kind::Created => "create",
                Kind::Updated => "update",
                Kind::Deleted => "delete",
            },
            sent: timing.sent,
            replied: timing.replied(),
            expected,
        });
        match kind {
            Kind::Created => self.changes.created = change,
            Kind::Updated => self.changes.updated = change,
            Kind::Deleted => self.changes.deleted = change,
        }
    }

    /// Waits for each expected event and checks it, then checks the
    /// call-id stacks of those that came.
    async fn check_events(&mut self, watch: &mut Watch, round_call_id: &str, timeout: Duration) {
        let mut arrived: Vec<(Kind, Received)> = Vec::new();
        for kind in Kind::ALL {
            let step = Step::for_event(kind);
            let change = match self.changes.get(kind) {
                Ok(change) => change.clone(),
                Err(why) => {
                    let reason = format!("no event expected: {why}");
                    self.report.skip(step, &reason);
                    continue;
                }
            };
            // Far in the future when the sum overflows: wait "forever" was
            // asked for.
            let deadline = change
                .replied
                .checked_add(timeout)
                .unwrap_or_else(|| change.replied + crate::cli::MAX_DURATION);
            let Some(event) = watch.wait(kind, deadline).await else {
                self.report.push(
                    step,
                    None,
                    Err(format!(
                        "no {kind} event for person {} within {:.1} s of the {}'s reply",
                        change.id,
                        timeout.as_secs_f64(),
                        change.call
                    )),
                );
                continue;
            };
            let delay = event.at.saturating_duration_since(change.sent);
            let verdict = if event.at > deadline {
                Err(format!(
                    "{kind} event for person {} arrived {:.1} ms after the {} request, more than {:.1} s after its reply",
                    change.id,
                    millis(delay),
                    change.call,
                    timeout.as_secs_f64()
                ))
            } else {
                same_event_data(kind, &event.data, &change.expected)
            };
            self.report.push(step, Some(delay), verdict);
            arrived.push((kind, event));
        }
        if arrived.is_empty() {
            self.report
                .skip(Step::EventCallIds, "no event arrived to check");
            return;
        }
        let lacking: Vec<String> = arrived
            .iter()
            .filter(|(_, e)| !e.call_id_stack.iter().any(|id| id == round_call_id))
            .map(|(kind, e)| format!("{kind} event's call-id stack {:?}", e.call_id_stack))
            .collect();
        let verdict = if lacking.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} lacks the round's call id {round_call_id}",
                lacking.join(" and ")
            ))
        };
        self.report.push(Step::EventCallIds, None, verdict);
    }

    async fn create(&mut self, person: &Person) -> Option<i64> {
        let call = self.person.create(
            person.first_name.clone(),
            person.last_name.clone(),
            person.age,
            Some(person.member),
        );
        let (result, timing) = self.timed(call).await;
        let id = result.map_err(|e| e.to_string());
        self.report.record(
            Step::Create,
            timing.latency,
            id.as_ref().map(|_| ()).map_err(Clone::clone),
        );
        let id = id.ok()?;
        let created = Person {
            id,
            ..person.clone()
        };
        self.changed(Kind::Created, id, timing, person_json(&created));
        Some(id)
    }

    async fn list(&mut self, expected: &Person) {
        // The id comes from the peer: no arithmetic that can overflow.
        let after_id = expected.id.saturating_sub(1);
        let call = self.person.list(Some(1), Some(after_id));
        let (result, Timing { latency, .. }) = self.timed(call).await;
        let verdict = result
            .map_err(|e| e.to_string())
            .and_then(|people| match people.as_slice() {
                [only] if only.id == expected.id => match differences(only, expected) {
                    None => Ok(()),
                    Some(d) => Err(format!("listed record differs: {d}")),
                },
                _ => Err(format!(
                    "list(after_id={after_id}, limit=1) should hold exactly person {}, got {people:?}",
                    expected.id
                )),
            });
        self.report.record(Step::List, latency, verdict);
    }

    async fn update(&mut self, expected: &Person) {
        let call = self.person.update(
            expected.id,
            None,
            None,
            Some(expected.age),
            Some(expected.member),
        );
        let (result, timing) = self.timed(call).await;
        match &result {
            // Whatever it returned is what its event should carry.
            Ok(p) => self.changed(Kind::Updated, expected.id, timing, person_json(p)),
            Err(_) => self.changes.updated = Err("the update call failed".to_owned()),
        }
        let verdict = result
            .map_err(|e| e.to_string())
            .and_then(|p| same_person("update", &p, expected));
        self.report.record(Step::Update, timing.latency, verdict);
    }

    async fn get(&mut self, expected: &Person) {
        let (result, Timing { latency, .. }) = self.timed(self.person.get(expected.id)).await;
        let verdict = result
            .map_err(|e| e.to_string())
            .and_then(|p| same_person("get", &p, expected));
        self.report.record(Step::Get, latency, verdict);
    }

    async fn delete(&mut self, id: i64) {
        let (result, timing) = self.timed(self.person.delete(id)).await;
        let latency = timing.latency;
        match &result {
            Ok(()) => self.changed(Kind::Deleted, id, timing, json!({ "id": id })),
            Err(_) => self.changes.deleted = Err("the delete call failed".to_owned()),
        }
        self.report
            .record(Step::Delete, latency, result.map_err(|e| e.to_string()));
    }

    async fn get_deleted(&mut self, id: i64) {
        let (result, Timing { latency, .. }) = self.timed(self.person.get(id)).await;
        let verdict = match result {
            Ok(p) => Err(format!(
                "person {id} still there after delete (got {p:?}), expected PersonNotFound"
            )),
            Err(CallError::Remote(r)) if r.is("PersonNotFound") => {
                let want = Value::String(id.to_string());
                if r.exc_args.first() == Some(&want) {
                    Ok(())
                } else {
                    Err(format!(
                        "PersonNotFound args are {:?}, expected [\"{id}\"]",
                        r.exc_args
                    ))
                }
            }
            Err(e) => Err(format!("expected PersonNotFound, got {e}")),
        };
        self.report.record(Step::GetDeleted, latency, verdict);
    }

    async fn create_invalid(&mut self, tag: &str) {
        let call = self.person.create(
            "Probe".to_owned(),
            format!("Invalid-{tag}"),
            200,
            Some(false),
        );
        let (result, Timing { latency, .. }) = self.timed(call).await;
        let verdict = match result {
            Ok(id) => {
                // Accepted: remove it again so a broken service does not
                // fill up with probes, then report.
                if let Err(e) = self.person.delete(id).await {
                    tracing::warn!(id, error = %e, "could not delete a person created with age 200");
                }
                Err(format!(
                    "age 200 was accepted (got id {id}), expected ValidationError"
                ))
            }
            Err(CallError::Remote(r)) if r.is("ValidationError") => {
                match r.exc_args.first().and_then(Value::as_str) {
                    Some("age") => Ok(()),
                    other => Err(format!(
                        "ValidationError names field {}, expected \"age\" (args {:?})",
                        other.unwrap_or("(none)"),
                        r.exc_args
                    )),
                }
            }
            Err(e) => Err(format!("expected ValidationError for age 200, got {e}")),
        };
        self.report.record(Step::CreateInvalid, latency, verdict);
    }
}

/// A person record as the person service sends it.
fn person_json(p: &Person) -> Value {
    json!({
        "id": p.id,
        "first_name": p.first_name,
        "last_name": p.last_name,
        "age": p.age,
        "member": p.member,
    })
}

/// Checks an event's data: exactly `expected`, with the differing fields
/// named when both are person records.
fn same_event_data(kind: Kind, got: &Value, expected: &Value) -> Result<(), String> {
    if got == expected {
        return Ok(());
    }
    let want = serde_json::from_value::<Person>(expected.clone());
    let have = serde_json::from_value::<Person>(got.clone());
    Err(match (have, want) {
        (Ok(have), Ok(want)) => match differences(&have, &want) {
            Some(d) => format!("{kind} event data differs: {d}"),
            None => format!("{kind} event data is {got}, expected exactly {expected}"),
        },
        (Err(e), Ok(_)) => format!("{kind} event data is {got}, not a person record: {e}"),
        _ => format!("{kind} event data is {got}, expected {expected}"),
    })
}

/// Checks that a reply is the expected person record.
fn same_person(method: &str, person: &Person, expected: &Person) -> Result<(), String> {
    match differences(person, expected) {
        None => Ok(()),
        Some(d) => Err(format!("{method} returned a record where {d}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ada() -> Person {
        Person {
            id: 7,
            first_name: "Ada".into(),
            last_name: "Lovelace".into(),
            age: 36,
            member: false,
        }
    }

    #[test]
    fn differences_name_each_field() {
        let mut other = ada();
        assert_eq!(differences(&ada(), &other), None);
        other.age = 37;
        other.member = true;
        assert_eq!(
            differences(&ada(), &other).as_deref(),
            Some("age is 36, expected 37, member is false, expected true")
        );
    }

    #[test]
    fn report_summaries() {
        let mut report = Report::default();
        assert!(!report.passed(), "an empty report is not a pass");
        report.record(Step::Create, Duration::from_micros(3150), Ok(()));
        assert!(report.passed());
        report.record(
            Step::Update,
            Duration::from_millis(2),
            Err("age is 41, expected 42".into()),
        );
        report.skip(Step::Get, "no person was created");
        assert!(!report.passed());
        assert_eq!(report.latencies_ms(), "create=3.1 update=2.0 get=-");
        assert_eq!(
            report.failure_summary(),
            "update: age is 41, expected 42; get: no person was created"
        );
        assert_eq!(report.total_latency(), Duration::from_micros(5150));
        let line = report.checks[1].to_string();
        assert!(line.starts_with("FAIL  update"), "{line}");
        assert!(line.ends_with("age is 41, expected 42"), "{line}");
        assert_eq!(report.to_json()["checks"][0]["passed"], json!(true));
    }

    #[test]
    fn event_checks_are_summarised_apart_from_calls() {
        let mut report = Report::default();
        report.record(Step::Create, Duration::from_millis(3), Ok(()));
        report.push(
            Step::PersonCreated,
            Some(Duration::from_micros(4200)),
            Ok(()),
        );
        report.push(
            Step::PersonDeleted,
            None,
            Err("no person_deleted event for person 7 within 5.0 s of the delete's reply".into()),
        );
        report.skip(Step::EventCallIds, "no event arrived to check");
        assert_eq!(report.latencies_ms(), "create=3.0");
        assert_eq!(report.total_latency(), Duration::from_millis(3));
        assert_eq!(
            report.events_summary(),
            "person_created=pass+4.2ms person_deleted=fail event_call_ids=skip"
        );
        assert!(report
            .failure_summary()
            .contains("person_deleted: no person_deleted event for person 7"));
        let line = report.checks[1].to_string();
        assert!(line.starts_with("PASS  person_created"), "{line}");
        assert!(line.ends_with("+4.2 ms"), "{line}");
        assert_eq!(report.to_json()["checks"][1]["kind"], json!("event"));
        assert_eq!(Report::default().events_summary(), "");
    }

    #[test]
    fn event_data_is_compared_exactly() {
        let want = person_json(&ada());
        assert_eq!(same_event_data(Kind::Created, &want, &want), Ok(()));
        let mut older = ada();
        older.age = 35;
        let err = same_event_data(Kind::Updated, &person_json(&older), &want).unwrap_err();
        assert_eq!(
            err,
            "person_updated event data differs: age is 35, expected 36"
        );
        let mut extra = want.clone();
        extra["email"] = json!("ada@example.org");
        let err = same_event_data(Kind::Created, &extra, &want).unwrap_err();
        assert!(err.contains("expected exactly"), "{err}");
        let err = same_event_data(Kind::Created, &json!({"id": 7}), &want).unwrap_err();
        assert!(err.contains("not a person record"), "{err}");
        let err =
            same_event_data(Kind::Deleted, &json!({"id": "7"}), &json!({"id": 7})).unwrap_err();
        assert_eq!(
            err,
            r#"person_deleted event data is {"id":"7"}, expected {"id":7}"#
        );
    }
}
