//! Running shell commands: the session's state (timeout, context data,
//! background calls) and what each command prints where.
//!
//! The broker is behind the [`Backend`] trait so that every command's
//! handling, output and exit status can be unit-tested without one.
//!
//! Where output goes:
//! * a call's result: stdout, as JSON (indented, or one line with
//!   `--compact`);
//! * errors: stderr; in a script prefixed with the line number;
//! * everything else (help, `context`, "`[1] … started`"): stdout at a
//!   terminal; in a script, shown only when asked for (help, `context`,
//!   `timeout`, `jobs`) and then on stderr, so that a script's stdout is
//!   exactly one JSON document per result.

use super::command::{Command, ContextChange};
use crate::call::{self, render, CliError, EXIT_OK, EXIT_USAGE};
use crate::syntax::{ParseError, Statement};
use rpc_core::{Args, CallError, RemoteError, Value};
use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::time::Duration;

/// A future the shell awaits on its own task (never sent to another).
pub type Task<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// The reply of a published call.
pub type Reply = Pin<Box<dyn Future<Output = Result<Value, CallError>>>>;

/// A call to make.
#[derive(Clone, Debug, PartialEq)]
pub struct CallRequest {
    /// The service.
    pub service: String,
    /// The method.
    pub method: String,
    /// The arguments.
    pub args: Args,
    /// How long to wait for the reply.
    pub timeout: Duration,
    /// Context data sent as `nameko.KEY` headers.
    pub context: BTreeMap<String, Value>,
}

/// What the shell needs from the broker.
pub trait Backend {
    /// Publishes a call; the returned reply resolves to its result.
    fn start_call(&mut self, request: CallRequest) -> Task<'_, Result<Reply, CliError>>;
    /// Publishes an event and waits for the broker to take it.
    fn dispatch(
        &mut self,
        service: String,
        event_type: String,
        data: Value,
    ) -> Task<'_, Result<(), CliError>>;
    /// Closes the connections (deleting the reply queue).
    fn close(&mut self) -> Task<'_, ()>;
    /// The RPC exchange, for error messages.
    fn exchange(&self) -> String;
    /// `host:port` of the broker, for error messages (never the password).
    fn broker(&self) -> String;
}

/// Where one command's output goes.
pub struct Output<'a> {
    /// Results (and, at a terminal, notes).
    pub out: &'a mut dyn Write,
    /// Errors (and, in a script, notes asked for).
    pub err: &'a mut dyn Write,
    /// `line 3` in a script: prefixed to errors so they can be found.
    pub place: Option<String>,
}

/// How a command went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    /// 0, or the exit status its failure maps to (as `rpc call`'s).
    pub status: u8,
    /// The session should end.
    pub exit: bool,
}

impl Step {
    /// Done, nothing failed, the session goes on.
    pub const OK: Step = Step {
        status: EXIT_OK,
        exit: false,
    };

    fn failed(status: u8) -> Step {
        Step {
            status,
            exit: false,
        }
    }
}

/// A background call not collected yet.
struct Job {
    id: usize,
    label: String,
    reply: Reply,
}

/// The help text of the `help` command.
pub const HELP: &str = "\
Calls (as in nameko shell; the `n.rpc.` prefix is optional):
  person.get(1)                        positional arguments
  person.create(\"Ada\", age=36)         then keyword arguments
  n.rpc.person.list(limit=10)          nameko's spelling works as is
  n.rpc[\"person-v2\"].get(1)            any service name
  eu.person.get(1)                     the method follows the last dot
Values: JSON (1, -2.5, \"text\", true, null, [...], {...}) and Python's
  True, False, None, 'text', u'text', r'raw\\text', (tuples,) and 1_000.
  `#` starts a comment; a statement goes on over lines while a bracket is open.
Events (sent without context headers, as nameko's standalone dispatcher):
  dispatch(\"person\", \"person_created\", {\"id\": 1})
  n.dispatch_event(\"person\", \"person_created\", {\"id\": 1})
Background calls (nameko's call_async):
  async person.get(1)                  or person.get.call_async(1)
  jobs                                 the calls not collected yet
  wait [N]                             print their results (all, or call N)
Settings:
  timeout [SECONDS]                    show or set the timeout of each call
  context [KEY=VALUE ...]              show or set context data sent with calls
  context unset KEY ... | context clear
Leave with exit, quit or Ctrl-D. Ctrl-C abandons the call being waited for.";

/// The shell's state; see the module docs.
pub struct Session<B> {
    backend: B,
    timeout: Duration,
    context: BTreeMap<String, Value>,
    jobs: Vec<Job>,
    next_job: usize,
    compact: bool,
    interactive: bool,
}

/// `RemoteError PersonNotFound: no person with id 1`, then the path and the
/// args, which are what a caller matches on.
pub fn describe_remote(remote: &RemoteError) -> String {
    format!("RemoteError {}", call::describe_remote(remote))
}

/// Seconds as the `timeout` command takes them: `30`, `1.5`.
fn seconds(d: Duration) -> String {
    format!("{}", d.as_secs_f64())
}

impl<B: Backend> Session<B> {
    /// A session starting with this timeout and context data.
    pub fn new(
        backend: B,
        timeout: Duration,
        context: BTreeMap<String, Value>,
        compact: bool,
        interactive: bool,
    ) -> Self {
        Session {
            backend,
            timeout,
            context,
            jobs: Vec::new(),
            next_job: 1,
            compact,
            interactive,
        }
    }

    /// The backend (for tests).
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The timeout calls use now.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The context data calls carry now.
    pub fn context(&self) -> &BTreeMap<String, Value> {
        &self.context
    }

    /// Background calls not collected yet.
    pub fn pending(&self) -> usize {
        self.jobs.len()
    }

    /// A note the user did not ask for (a confirmation): shown at a
    /// terminal only.
    fn confirm(&self, o: &mut Output<'_>, text: &str) {
        if self.interactive {
            let _ = writeln!(o.out, "{text}");
        }
    }

    /// Something the user asked to see: stdout at a terminal, stderr in a
    /// script (whose stdout holds results only).
    fn show(&self, o: &mut Output<'_>, text: &str) {
        let _ = if self.interactive {
            writeln!(o.out, "{text}")
        } else {
            writeln!(o.err, "{text}")
        };
    }

    fn result(&self, o: &mut Output<'_>, value: &Value) {
        let _ = writeln!(o.out, "{}", render(value, self.compact));
        let _ = o.out.flush();
    }

    fn fail(&self, o: &mut Output<'_>, text: &str) {
        let _ = match &o.place {
            Some(place) => writeln!(o.err, "{place}: {text}"),
            None => writeln!(o.err, "{text}"),
        };
    }

    fn describe(&self, e: &CliError) -> String {
        match e {
            CliError::Call(CallError::Remote(remote)) => describe_remote(remote),
            other => other.describe(&self.backend.exchange(), Some(&self.backend.broker())),
        }
    }

    /// Reports a line that does not parse; `text` is the statement as read.
    pub fn syntax_error(&self, o: &mut Output<'_>, e: &ParseError, text: &str) -> Step {
        self.fail(o, &format!("error: {}", e.render(text)));
        Step::failed(EXIT_USAGE)
    }

    fn call_failed(&self, o: &mut Output<'_>, e: &CliError, label: Option<&str>) -> Step {
        let text = self.describe(e);
        match label {
            Some(label) => self.fail(o, &format!("{label}: {text}")),
            None => self.fail(o, &text),
        }
        Step::failed(e.exit_code())
    }

    /// Runs one command.
    pub async fn run(&mut self, command: Command, o: &mut Output<'_>) -> Step {
        match command {
            Command::Nothing => Step::OK,
            Command::Help => {
                self.show(o, HELP);
                Step::OK
            }
            Command::Exit => Step {
                status: EXIT_OK,
                exit: true,
            },
            Command::Timeout(None) => {
                self.show(o, &format!("timeout {}", seconds(self.timeout)));
                Step::OK
            }
            Command::Timeout(Some(timeout)) => {
                self.timeout = timeout;
                self.confirm(
                    o,
                    &format!("timeout {} (seconds per call)", seconds(timeout)),
                );
                Step::OK
            }
            Command::Context(change) => self.change_context(change, o),
            Command::Statement(Statement::Call {
                service,
                method,
                args,
                background,
            }) => {
                let label = format!("{service}.{method}");
                let request = CallRequest {
                    service,
                    method,
                    args,
                    timeout: self.timeout,
                    context: self.context.clone(),
                };
                let reply = match self.backend.start_call(request).await {
                    Ok(reply) => reply,
                    Err(e) => return self.call_failed(o, &e, None),
                };
                if background {
                    let id = self.next_job;
                    self.next_job += 1;
                    self.confirm(
                        o,
                        &format!("[{id}] {label} started; `wait` prints its result"),
                    );
                    self.jobs.push(Job { id, label, reply });
                    return Step::OK;
                }
                match reply.await {
                    Ok(value) => {
                        self.result(o, &value);
                        Step::OK
                    }
                    Err(e) => self.call_failed(o, &CliError::Call(e), None),
                }
            }
            Command::Statement(Statement::Dispatch {
                service,
                event_type,
                data,
            }) => match self
                .backend
                .dispatch(service.clone(), event_type.clone(), data)
                .await
            {
                Ok(()) => {
                    self.confirm(o, &format!("dispatched {event_type} from {service}"));
                    Step::OK
                }
                Err(e) => self.call_failed(o, &e, None),
            },
            Command::Wait(None) => {
                if self.jobs.is_empty() {
                    self.show(o, "no calls pending");
                    return Step::OK;
                }
                self.wait_all(o).await
            }
            Command::Wait(Some(id)) => match self.jobs.iter().position(|j| j.id == id) {
                Some(index) => {
                    let job = self.jobs.remove(index);
                    self.collect(job, o).await
                }
                None => {
                    self.fail(
                        o,
                        &format!("error: no pending call [{id}] (`jobs` lists them)"),
                    );
                    Step::failed(EXIT_USAGE)
                }
            },
            Command::Jobs => {
                let text = if self.jobs.is_empty() {
                    "no calls pending".to_owned()
                } else {
                    self.jobs
                        .iter()
                        .map(|j| format!("[{}] {}", j.id, j.label))
                        .collect::<Vec<_>>()
                        .join("\n")
                };
                self.show(o, &text);
                Step::OK
            }
        }
    }

    /// Collects every background call, oldest first; the status is the
    /// first failure's. A call is taken off the list before it is awaited,
    /// so an interrupt abandons that one call only.
    pub async fn wait_all(&mut self, o: &mut Output<'_>) -> Step {
        let mut step = Step::OK;
        while !self.jobs.is_empty() {
            let job = self.jobs.remove(0);
            let done = self.collect(job, o).await;
            if step.status == EXIT_OK {
                step = done;
            }
        }
        step
    }

    async fn collect(&mut self, job: Job, o: &mut Output<'_>) -> Step {
        let label = format!("[{}] {}", job.id, job.label);
        match job.reply.await {
            Ok(value) => {
                self.confirm(o, &format!("{label}:"));
                self.result(o, &value);
                Step::OK
            }
            Err(e) => self.call_failed(o, &CliError::Call(e), Some(&label)),
        }
    }

    fn change_context(&mut self, change: ContextChange, o: &mut Output<'_>) -> Step {
        let shown = match change {
            ContextChange::Show => {
                self.show(o, &self.context_text());
                return Step::OK;
            }
            ContextChange::Set(entries) => {
                self.context.extend(entries);
                self.context_text()
            }
            ContextChange::Unset(keys) => {
                for key in keys {
                    self.context.remove(&key);
                }
                self.context_text()
            }
            ContextChange::Clear => {
                self.context.clear();
                self.context_text()
            }
        };
        self.confirm(o, &shown);
        Step::OK
    }

    fn context_text(&self) -> String {
        let map: serde_json::Map<String, Value> = self
            .context
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        format!("context {}", Value::Object(map))
    }

    /// Closes the backend.
    pub async fn close(mut self) {
        self.backend.close().await;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::call::{EXIT_FAILURE, EXIT_REMOTE};
    use crate::shell::command::parse;
    use rpc_core::json;

    /// Answers calls by method name, records what it was asked.
    #[derive(Default)]
    pub(crate) struct Fake {
        pub calls: Vec<CallRequest>,
        pub events: Vec<(String, String, Value)>,
        pub closed: bool,
    }

    impl Backend for Fake {
        fn start_call(&mut self, request: CallRequest) -> Task<'_, Result<Reply, CliError>> {
            self.calls.push(request.clone());
            Box::pin(async move {
                let result = match request.method.as_str() {
                    "echo" => Ok(json!({
                        "args": request.args.body().args,
                        "kwargs": request.args.body().kwargs,
                    })),
                    "ctx" => Ok(Value::Object(request.context.into_iter().collect())),
                    "fail" => Err(CallError::Remote(RemoteError {
                        exc_type: "PersonNotFound".into(),
                        exc_path: "person.exceptions.PersonNotFound".into(),
                        exc_args: vec![json!("1")],
                        value: "no person with id 1".into(),
                    })),
                    "slow" => Err(CallError::Timeout {
                        service: request.service.clone(),
                        method: request.method.clone(),
                        timeout: request.timeout,
                    }),
                    _ => return Err(CliError::Call(CallError::UnknownService(request.service))),
                };
                Ok(Box::pin(async move { result }) as Reply)
            })
        }

        fn dispatch(
            &mut self,
            service: String,
            event_type: String,
            data: Value,
        ) -> Task<'_, Result<(), CliError>> {
            self.events.push((service, event_type, data));
            Box::pin(async { Ok(()) })
        }

        fn close(&mut self) -> Task<'_, ()> {
            self.closed = true;
            Box::pin(async {})
        }

        fn exchange(&self) -> String {
            "nameko-rpc".into()
        }

        fn broker(&self) -> String {
            "localhost:5672".into()
        }
    }

    pub(crate) struct Run {
        pub out: String,
        pub err: String,
        pub status: u8,
        pub exit: bool,
    }

    pub(crate) fn session(interactive: bool) -> Session<Fake> {
        Session::new(
            Fake::default(),
            Duration::from_secs(30),
            BTreeMap::new(),
            true,
            interactive,
        )
    }

    pub(crate) async fn run(s: &mut Session<Fake>, text: &str) -> Run {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let step = {
            let mut o = Output {
                out: &mut out,
                err: &mut err,
                place: (!s.interactive).then(|| "line 1".to_owned()),
            };
            match parse(text) {
                Ok(command) => s.run(command, &mut o).await,
                Err(e) => s.syntax_error(&mut o, &e, text),
            }
        };
        Run {
            out: String::from_utf8_lossy(&out).into_owned(),
            err: String::from_utf8_lossy(&err).into_owned(),
            status: step.status,
            exit: step.exit,
        }
    }

    #[tokio::test]
    async fn a_call_prints_its_result_as_json() {
        let mut s = session(false);
        let r = run(&mut s, "svc.echo(1, 'a', x=None)").await;
        assert_eq!(r.out, "{\"args\":[1,\"a\"],\"kwargs\":{\"x\":null}}\n");
        assert_eq!((r.err.as_str(), r.status), ("", 0));
        let req = &s.backend().calls[0];
        assert_eq!((req.service.as_str(), req.method.as_str()), ("svc", "echo"));
        assert_eq!(req.timeout, Duration::from_secs(30));
    }

    #[tokio::test]
    async fn remote_errors_are_readable_and_exit_1() {
        let mut s = session(false);
        let r = run(&mut s, "person.fail(1)").await;
        assert_eq!(r.out, "");
        assert_eq!(
            r.err,
            "line 1: RemoteError PersonNotFound: no person with id 1\n  \
             exc_path: person.exceptions.PersonNotFound\n  exc_args: [\"1\"]\n"
        );
        assert_eq!(r.status, EXIT_REMOTE);
        let r = run(&mut s, "person.slow(1)").await;
        assert_eq!(r.status, EXIT_FAILURE);
        assert!(
            r.err
                .starts_with("line 1: error: no reply from person.slow"),
            "{}",
            r.err
        );
        let r = run(&mut s, "nobody.get(1)").await;
        assert_eq!(r.status, EXIT_FAILURE);
        assert!(r.err.contains("unknown service `nobody`"), "{}", r.err);
        assert!(r.err.contains("at localhost:5672"), "{}", r.err);
    }

    #[tokio::test]
    async fn syntax_errors_show_the_column_and_exit_64() {
        let mut s = session(false);
        let r = run(&mut s, "person.get(1 2)").await;
        assert_eq!(r.status, EXIT_USAGE);
        assert_eq!(
            r.err,
            "line 1: error: syntax error at column 14: expected `,` or `)`, found `2`\n  \
             person.get(1 2)\n               ^\n"
        );
        assert!(s.backend().calls.is_empty());
    }

    #[tokio::test]
    async fn timeout_and_context_apply_to_later_calls() {
        let mut s = session(false);
        assert_eq!(run(&mut s, "timeout 2.5").await.status, 0);
        let r = run(&mut s, "context user_id=u1 language=en").await;
        assert_eq!(
            (r.out.as_str(), r.err.as_str()),
            ("", ""),
            "silent in a script"
        );
        let r = run(&mut s, "svc.ctx()").await;
        assert_eq!(r.out, "{\"language\":\"en\",\"user_id\":\"u1\"}\n");
        assert_eq!(s.backend().calls[0].timeout, Duration::from_millis(2500));
        // Shown when asked, on stderr in a script.
        let r = run(&mut s, "context").await;
        assert_eq!(r.err, "context {\"language\":\"en\",\"user_id\":\"u1\"}\n");
        assert_eq!(r.out, "");
        let r = run(&mut s, "timeout").await;
        assert_eq!(r.err, "timeout 2.5\n");
        run(&mut s, "context unset language").await;
        assert_eq!(s.context().len(), 1);
        run(&mut s, "context clear").await;
        assert!(s.context().is_empty());
        let r = run(&mut s, "timeout -1").await;
        assert_eq!(r.status, EXIT_USAGE);
        assert_eq!(s.timeout(), Duration::from_millis(2500));
    }

    #[tokio::test]
    async fn interactive_notes_go_to_stdout() {
        let mut s = session(true);
        let r = run(&mut s, "context user_id=7").await;
        assert_eq!(r.out, "context {\"user_id\":7}\n");
        let r = run(&mut s, "help").await;
        assert!(r.out.contains("n.rpc.person.list(limit=10)"), "{}", r.out);
        let r = run(&mut s, "timeout 5").await;
        assert_eq!(r.out, "timeout 5 (seconds per call)\n");
        let r = run(&mut s, "person.fail(1)").await;
        assert!(
            r.err.starts_with("RemoteError PersonNotFound: "),
            "{}",
            r.err
        );
    }

    #[tokio::test]
    async fn background_calls_are_collected_by_wait() {
        let mut s = session(true);
        let r = run(&mut s, "async svc.echo(1)").await;
        assert_eq!(r.out, "[1] svc.echo started; `wait` prints its result\n");
        run(&mut s, "svc.fail.call_async(2)").await;
        run(&mut s, "n.rpc.svc.echo.call_async(3)").await;
        assert_eq!(s.pending(), 3);
        let r = run(&mut s, "jobs").await;
        assert_eq!(r.out, "[1] svc.echo\n[2] svc.fail\n[3] svc.echo\n");
        let r = run(&mut s, "wait 3").await;
        assert_eq!(r.out, "[3] svc.echo:\n{\"args\":[3],\"kwargs\":{}}\n");
        let r = run(&mut s, "wait 3").await;
        assert_eq!(r.status, EXIT_USAGE);
        assert!(r.err.contains("no pending call [3]"), "{}", r.err);
        let r = run(&mut s, "wait").await;
        assert_eq!(r.status, EXIT_REMOTE, "the first failure's status");
        assert_eq!(r.out, "[1] svc.echo:\n{\"args\":[1],\"kwargs\":{}}\n");
        assert!(
            r.err
                .starts_with("[2] svc.fail: RemoteError PersonNotFound"),
            "{}",
            r.err
        );
        assert_eq!(s.pending(), 0);
        let r = run(&mut s, "wait").await;
        assert_eq!((r.out.as_str(), r.status), ("no calls pending\n", 0));
    }

    #[tokio::test]
    async fn background_results_in_a_script_are_bare_json() {
        let mut s = session(false);
        let r = run(&mut s, "async svc.echo(1)").await;
        assert_eq!((r.out.as_str(), r.err.as_str()), ("", ""));
        let r = run(&mut s, "wait").await;
        assert_eq!(r.out, "{\"args\":[1],\"kwargs\":{}}\n");
    }

    #[tokio::test]
    async fn dispatch_and_exit() {
        let mut s = session(true);
        let r = run(
            &mut s,
            "n.dispatch_event('person', 'person_created', {'id': 1})",
        )
        .await;
        assert_eq!(r.out, "dispatched person_created from person\n");
        assert_eq!(
            s.backend().events,
            [("person".into(), "person_created".into(), json!({"id": 1}))]
        );
        let r = run(&mut s, "exit").await;
        assert!(r.exit);
        let r = run(&mut s, "  # nothing").await;
        assert!(!r.exit && r.status == 0 && r.out.is_empty());
        s.close().await;
    }
}
