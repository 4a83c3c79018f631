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

use rpc_core::{json, Args, CallError, ContextProxy, RpcProxy, Value};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::future::Future;
use std::time::{Duration, Instant};

/// Something calls can be made through: a standalone [`RpcProxy`] (for
/// `--once`) or a handler's [`ContextProxy`] (so that the call-id stack
/// propagates). The round is written once against this.
pub trait Caller: Send + Sync {
    /// Calls `service.method` and waits for the result.
    fn call<'a>(
        &'a self,
        service: &'a str,
        method: &'a str,
        args: Args,
    ) -> impl Future<Output = Result<Value, CallError>> + Send + 'a;
}

impl Caller for RpcProxy {
    fn call<'a>(
        &'a self,
        service: &'a str,
        method: &'a str,
        args: Args,
    ) -> impl Future<Output = Result<Value, CallError>> + Send + 'a {
        RpcProxy::call(self, service, method, args)
    }
}

impl Caller for ContextProxy {
    fn call<'a>(
        &'a self,
        service: &'a str,
        method: &'a str,
        args: Args,
    ) -> impl Future<Output = Result<Value, CallError>> + Send + 'a {
        ContextProxy::call(self, service, method, args)
    }
}

/// A person record as the person service returns it. Decoding into this
/// type is itself a check: a record with a missing field or a field of the
/// wrong JSON type fails with serde's description of the problem.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Person {
    /// Assigned by the service on create.
    pub id: i64,
    /// Given name.
    pub first_name: String,
    /// Family name.
    pub last_name: String,
    /// Age in years.
    pub age: i64,
    /// Club membership.
    pub member: bool,
}

impl Person {
    /// What differs from `expected`, field by field, or `None` when equal;
    /// a whole-record dump would hide the one field that matters.
    pub fn differences(&self, expected: &Person) -> Option<String> {
        let mut diffs = Vec::new();
        let mut field = |name: &str, got: String, want: String| {
            if got != want {
                diffs.push(format!("{name} is {got}, expected {want}"));
            }
        };
        field("id", self.id.to_string(), expected.id.to_string());
        field(
            "first_name",
            format!("{:?}", self.first_name),
            format!("{:?}", expected.first_name),
        );
        field(
            "last_name",
            format!("{:?}", self.last_name),
            format!("{:?}", expected.last_name),
        );
        field("age", self.age.to_string(), expected.age.to_string());
        field(
            "member",
            self.member.to_string(),
            expected.member.to_string(),
        );
        if diffs.is_empty() {
            None
        } else {
            Some(diffs.join(", "))
        }
    }
}

/// The checks of a round, in the order they run.
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
}

impl Step {
    /// Every step, in order.
    pub const ALL: [Step; 7] = [
        Step::Create,
        Step::List,
        Step::Update,
        Step::Get,
        Step::Delete,
        Step::GetDeleted,
        Step::CreateInvalid,
    ];

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

/// One check: the step, how it ended, and how long its call took.
#[derive(Clone, Debug, PartialEq)]
pub struct Check {
    /// Which check.
    pub step: Step,
    /// How it ended.
    pub outcome: Outcome,
    /// Time from sending the request to having the reply; `None` when the
    /// check was skipped.
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
    /// after a failure.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let label = match self.outcome {
            Outcome::Passed => "PASS",
            Outcome::Failed(_) => "FAIL",
            Outcome::Skipped(_) => "SKIP",
        };
        let latency = self
            .latency
            .map_or_else(|| "-".to_owned(), |d| format!("{:.1} ms", millis(d)));
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

    /// Time spent in calls, all steps together.
    pub fn total_latency(&self) -> Duration {
        self.checks.iter().filter_map(|c| c.latency).sum()
    }

    /// `create=3.1 list=1.2 …` in milliseconds: one log field for all steps.
    pub fn latencies_ms(&self) -> String {
        let parts: Vec<String> = self
            .checks
            .iter()
            .map(|c| match c.latency {
                Some(d) => format!("{}={:.1}", c.step, millis(d)),
                None => format!("{}=-", c.step),
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
                    "passed": c.passed(),
                    "reason": c.reason(),
                    "latency_ms": c.latency.map(millis),
                })
            })
            .collect();
        json!({
            "passed": self.passed(),
            "person_id": self.person_id,
            "checks": checks,
        })
    }

    fn record(&mut self, step: Step, latency: Duration, result: Result<(), String>) {
        self.checks.push(Check {
            step,
            outcome: match result {
                Ok(()) => Outcome::Passed,
                Err(reason) => Outcome::Failed(reason),
            },
            latency: Some(latency),
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

/// Runs one round against the person service called `target`.
///
/// Never fails as a whole: everything that goes wrong, including the broker
/// or the service being unreachable, ends up in the report.
pub async fn run_round<C: Caller>(caller: &C, target: &str) -> Report {
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let tag = &tag[..8];
    let mut round = Round {
        caller,
        target,
        report: Report::default(),
    };
    let mut expected = Person {
        id: 0,
        first_name: "Probe".to_owned(),
        last_name: format!("Roundtrip-{tag}"),
        age: 41,
        member: false,
    };
    match round.create(&expected).await {
        Some(id) => {
            expected.id = id;
            round.report.person_id = Some(id);
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
    round.report
}

/// The state of a round in progress.
struct Round<'a, C> {
    caller: &'a C,
    target: &'a str,
    report: Report,
}

impl<C: Caller> Round<'_, C> {
    async fn timed(&self, method: &str, args: Args) -> (Result<Value, CallError>, Duration) {
        let start = Instant::now();
        let result = self.caller.call(self.target, method, args).await;
        (result, start.elapsed())
    }

    async fn create(&mut self, person: &Person) -> Option<i64> {
        let args = Args::new()
            .arg(person.first_name.as_str())
            .arg(person.last_name.as_str())
            .arg(person.age)
            .kwarg("member", person.member);
        let (result, latency) = self.timed("create", args).await;
        let id = result
            .map_err(|e| e.to_string())
            .and_then(|v| v.as_i64().ok_or(format!("expected an integer id, got {v}")));
        self.report.record(
            Step::Create,
            latency,
            id.as_ref().map(|_| ()).map_err(Clone::clone),
        );
        id.ok()
    }

    async fn list(&mut self, expected: &Person) {
        // The id comes from the peer: no arithmetic that can overflow.
        let after_id = expected.id.saturating_sub(1);
        let args = Args::new().kwarg("after_id", after_id).kwarg("limit", 1);
        let (result, latency) = self.timed("list", args).await;
        let verdict = result.map_err(|e| e.to_string()).and_then(|v| {
            let people: Vec<Person> = serde_json::from_value(v.clone())
                .map_err(|e| format!("expected a list of person records, got {v}: {e}"))?;
            match people.as_slice() {
                [only] if only.id == expected.id => match only.differences(expected) {
                    None => Ok(()),
                    Some(d) => Err(format!("listed record differs: {d}")),
                },
                _ => Err(format!(
                    "list(after_id={after_id}, limit=1) should hold exactly person {}, got {v}",
                    expected.id
                )),
            }
        });
        self.report.record(Step::List, latency, verdict);
    }

    async fn update(&mut self, expected: &Person) {
        let args = Args::new()
            .arg(expected.id)
            .kwarg("age", expected.age)
            .kwarg("member", expected.member);
        let (result, latency) = self.timed("update", args).await;
        let verdict = result
            .map_err(|e| e.to_string())
            .and_then(|v| same_person("update", v, expected));
        self.report.record(Step::Update, latency, verdict);
    }

    async fn get(&mut self, expected: &Person) {
        let (result, latency) = self.timed("get", Args::new().arg(expected.id)).await;
        let verdict = result
            .map_err(|e| e.to_string())
            .and_then(|v| same_person("get", v, expected));
        self.report.record(Step::Get, latency, verdict);
    }

    async fn delete(&mut self, id: i64) {
        let (result, latency) = self.timed("delete", Args::new().arg(id)).await;
        let verdict = match result {
            Ok(Value::Null) => Ok(()),
            Ok(other) => Err(format!("expected null, got {other}")),
            Err(e) => Err(e.to_string()),
        };
        self.report.record(Step::Delete, latency, verdict);
    }

    async fn get_deleted(&mut self, id: i64) {
        let (result, latency) = self.timed("get", Args::new().arg(id)).await;
        let verdict = match result {
            Ok(v) => Err(format!(
                "person {id} still there after delete (got {v}), expected PersonNotFound"
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
        let args = Args::new()
            .arg("Probe")
            .arg(format!("Invalid-{tag}"))
            .arg(200)
            .kwarg("member", false);
        let (result, latency) = self.timed("create", args).await;
        let verdict = match result {
            Ok(v) => {
                // Accepted: remove it again so a broken service does not
                // fill up with probes, then report.
                if let Some(id) = v.as_i64() {
                    if let Err(e) = self
                        .caller
                        .call(self.target, "delete", Args::new().arg(id))
                        .await
                    {
                        tracing::warn!(id, error = %e, "could not delete a person created with age 200");
                    }
                }
                Err(format!(
                    "age 200 was accepted (got {v}), expected ValidationError"
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

/// Checks that a reply is the expected person record.
fn same_person(method: &str, value: Value, expected: &Person) -> Result<(), String> {
    let person: Person = serde_json::from_value(value.clone())
        .map_err(|e| format!("{method} returned {value}, not a person record: {e}"))?;
    match person.differences(expected) {
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
        assert_eq!(ada().differences(&other), None);
        other.age = 37;
        other.member = true;
        assert_eq!(
            ada().differences(&other).as_deref(),
            Some("age is 36, expected 37, member is false, expected true")
        );
    }

    #[test]
    fn non_records_are_described() {
        let err = same_person("get", json!({"id": 7}), &ada()).unwrap_err();
        assert!(err.contains("not a person record"), "{err}");
        let err = same_person("get", json!({"id": 7, "first_name": "Ada", "last_name": "Lovelace", "age": "36", "member": false}), &ada()).unwrap_err();
        assert!(err.contains("invalid type"), "{err}");
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
}
