//! `#[rpc_core::service]` without a broker: the methods stay ordinary
//! methods, `LocalService` runs the entrypoints with the wire's binding and
//! error objects, stubs answer the calls handlers make, dispatched events
//! are recorded, and the typed client lays out its arguments as a Python
//! caller would.

use rpc_core::testing::LocalService;
use rpc_core::{json, Args, CallError, Context, RpcError, Value};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    id: i64,
    name: String,
}

/// A service written elsewhere (Python, say), described for its client.
#[rpc_core::client(service = "legacy")]
trait Legacy {
    async fn get(&self, id: i64) -> Record;
    async fn find(&self, name: String, #[default] limit: Option<u32>) -> Vec<Record>;
}

#[derive(Default)]
pub struct Greeter {
    greeted: AtomicU64,
    ticks: AtomicU64,
    seen: Mutex<Vec<Record>>,
}

#[rpc_core::service(name = "greeter")]
impl Greeter {
    /// Python: hello(name, punctuation="!")
    #[rpc]
    async fn hello(
        &self,
        name: String,
        #[default("!")] punctuation: String,
    ) -> Result<String, RpcError> {
        self.greeted.fetch_add(1, Ordering::Relaxed);
        Ok(format!("Hello, {name}{punctuation}"))
    }

    /// `Option<T>` defaults to None; the context is not an argument.
    #[rpc]
    async fn whoami(&self, ctx: &Context, shout: Option<bool>) -> Result<String, RpcError> {
        let user = ctx
            .get("user_id")
            .and_then(Value::as_str)
            .unwrap_or("nobody")
            .to_owned();
        Ok(if shout == Some(true) {
            user.to_uppercase()
        } else {
            user
        })
    }

    /// Calls the legacy service through a typed client over `ctx.rpc()`:
    /// `?` on its error sends what nameko would.
    #[rpc]
    async fn describe(&self, ctx: &Context, id: i64) -> Result<String, RpcError> {
        let record = LegacyClient::new(ctx.rpc()).get(id).await?;
        ctx.dispatch("described", &record)
            .await
            .map_err(|e| RpcError::internal(e.to_string()))?;
        Ok(record.name)
    }

    /// A wire name of its own, and a numeric default of the parameter's
    /// type.
    #[rpc(name = "count")]
    async fn greeted_count(&self, #[default(1)] times: u8) -> Result<u64, RpcError> {
        Ok(self.greeted.load(Ordering::Relaxed) * u64::from(times))
    }

    #[timer(interval = 5)]
    async fn tick(&self) -> Result<(), String> {
        self.ticks.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    #[event_handler(
        source = "legacy",
        event = "created",
        handler_type = "broadcast",
        reliable_delivery = false
    )]
    async fn on_created(&self, payload: Record, ctx: &Context) -> Result<(), String> {
        if payload.id < 0 {
            return Err(format!("{} has a negative id", ctx.call_id()));
        }
        self.seen.lock().unwrap().push(payload);
        Ok(())
    }

    /// Not an entrypoint: an ordinary helper.
    fn total(&self) -> u64 {
        self.greeted.load(Ordering::Relaxed)
    }
}

#[tokio::test]
async fn methods_stay_ordinary_methods() {
    let greeter = Greeter::default();
    assert_eq!(
        greeter.hello("Ada".into(), "?".into()).await.unwrap(),
        "Hello, Ada?"
    );
    assert_eq!(greeter.total(), 1);
    assert_eq!(Greeter::SERVICE_NAME, "greeter");
}

#[tokio::test]
async fn a_local_service_binds_and_answers_as_the_wire_does() {
    let local = LocalService::new(Greeter::default().into_service());
    assert_eq!(
        local.call("hello", Args::new().arg("Ada")).await.unwrap(),
        json!("Hello, Ada!")
    );
    assert_eq!(
        local
            .call("hello", Args::new().arg("Ada").kwarg("punctuation", "."))
            .await
            .unwrap(),
        json!("Hello, Ada.")
    );
    // The same IncorrectSignature texts as nameko (self counted).
    let err = local.call("hello", Args::new()).await.unwrap_err();
    assert_eq!(
        (err.exc_type.as_str(), err.value.as_str()),
        (
            "IncorrectSignature",
            "hello() missing 1 required positional argument: 'name'"
        )
    );
    let err = local
        .call("hello", Args::new().arg("a").arg("b").arg("c"))
        .await
        .unwrap_err();
    assert_eq!(
        err.value,
        "hello() takes from 2 to 3 positional arguments but 4 were given"
    );
    // A wrong type names the parameter.
    let err = local.call("hello", Args::new().arg(5)).await.unwrap_err();
    assert_eq!(err.exc_type, "InvalidArgument");
    assert_eq!(err.exc_args[0], json!("name"));
    let err = local.call("nosuch", Args::new()).await.unwrap_err();
    assert_eq!(
        (err.exc_type.as_str(), err.exc_path.as_str()),
        ("MethodNotFound", "nameko.exceptions.MethodNotFound")
    );
    // The wire name, and a default of the parameter's own type.
    assert_eq!(local.call("count", Args::new()).await.unwrap(), json!(2));
    assert_eq!(
        local.call("count", Args::new().arg(3)).await.unwrap(),
        json!(6)
    );
    let err = local.call("count", Args::new().arg(300)).await.unwrap_err();
    assert_eq!(err.exc_args[0], json!("times"));
    assert!(local.call("greeted_count", Args::new()).await.is_err());
}

#[tokio::test]
async fn context_data_is_the_tests_to_set() {
    let mut data = BTreeMap::new();
    data.insert("user_id".to_owned(), json!("ada"));
    let local = LocalService::new(Greeter::default().into_service()).with_context_data(data);
    assert_eq!(
        local.call("whoami", Args::new()).await.unwrap(),
        json!("ada")
    );
    assert_eq!(
        local
            .call("whoami", Args::new().kwarg("shout", true))
            .await
            .unwrap(),
        json!("ADA")
    );
    let anonymous = LocalService::new(Greeter::default().into_service());
    assert_eq!(
        anonymous.call("whoami", Args::new()).await.unwrap(),
        json!("nobody")
    );
}

#[tokio::test]
async fn stubs_answer_the_handlers_calls_and_events_are_recorded() {
    let local = LocalService::new(Greeter::default().into_service())
        .with_call_id_stack(vec!["caller.method.1".into()]);
    // Nothing stubbed: the call fails as one to a service with no queue,
    // and the error reaches the caller as nameko reports UnknownService.
    let err = local
        .call("describe", Args::new().arg(1))
        .await
        .unwrap_err();
    assert_eq!(
        (
            err.exc_type.as_str(),
            err.exc_path.as_str(),
            err.value.as_str()
        ),
        (
            "UnknownService",
            "nameko.exceptions.UnknownService",
            "Unknown service `legacy`"
        )
    );
    local.stub("legacy", "get", |args| {
        let id = args.positional_args()[0].as_i64().unwrap_or(0);
        if id == 404 {
            Err(
                RpcError::new("NotFound", "legacy.exceptions.NotFound", vec![json!(id)])
                    .with_value("no record 404")
                    .to_error_object()
                    .into(),
            )
        } else {
            Ok(json!({"id": id, "name": format!("record {id}")}))
        }
    });
    assert_eq!(
        local.call("describe", Args::new().arg(7)).await.unwrap(),
        json!("record 7")
    );
    // A remote error nameko has no class for arrives as RemoteError.
    let err = local
        .call("describe", Args::new().arg(404))
        .await
        .unwrap_err();
    assert_eq!(
        (err.exc_type.as_str(), err.exc_path.as_str()),
        ("RemoteError", "nameko.exceptions.RemoteError")
    );
    assert_eq!(err.value, "NotFound no record 404");
    assert_eq!(err.exc_args, vec![json!("NotFound no record 404")]);
    let calls = local.calls_made();
    assert_eq!(calls.len(), 3);
    assert_eq!(
        (calls[1].service.as_str(), calls[1].method.as_str()),
        ("legacy", "get")
    );
    assert_eq!(calls[1].args.positional_args(), &[json!(7)]);
    assert_eq!(calls[1].call_id_stack[0], "caller.method.1");
    assert!(calls[1].call_id_stack[1].starts_with("greeter.describe."));
    let events = local.dispatched();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (
            events[0].source_service.as_str(),
            events[0].event_type.as_str()
        ),
        ("greeter", "described")
    );
    assert_eq!(events[0].data, json!({"id": 7, "name": "record 7"}));
}

#[tokio::test]
async fn timers_and_event_handlers_run_on_demand() {
    let local = LocalService::new(Greeter::default().into_service());
    local.tick("tick").await.unwrap();
    assert!(local.tick("nosuch").await.is_err());
    local
        .handle_event("on_created", json!({"id": 3, "name": "three"}))
        .await
        .unwrap();
    let failed = local
        .handle_event("on_created", json!({"id": -1, "name": "bad"}))
        .await
        .unwrap_err();
    assert!(failed.contains("greeter.on_created."), "{failed}");
    let undecodable = local
        .handle_event("on_created", json!("not a record"))
        .await
        .unwrap_err();
    assert!(undecodable.contains("does not fit"), "{undecodable}");
}

#[tokio::test]
async fn the_typed_client_sends_what_a_python_caller_would() {
    let local = LocalService::new(Greeter::default().into_service());
    let client = GreeterClient::new(&local);
    assert_eq!(
        client.hello("Ada".into(), None).await.unwrap(),
        "Hello, Ada!"
    );
    assert_eq!(
        client.hello("Ada".into(), Some("?".into())).await.unwrap(),
        "Hello, Ada?"
    );
    assert_eq!(client.whoami(Some(true)).await.unwrap(), "NOBODY");
    let pending = client.greeted_count_async(Some(2)).await.unwrap();
    assert_eq!(pending.result().await.unwrap(), 4);
    // A client of the same service under another name.
    let elsewhere = GreeterClient::for_service(&local, "greeter-staging");
    assert!(matches!(
        elsewhere.hello("Ada".into(), None).await,
        Err(CallError::UnknownService(s)) if s == "greeter-staging"
    ));
}

/// A service defined by a trait (as an API crate would publish it, without
/// the implementation's dependencies), implemented elsewhere.
#[rpc_core::service(name = "calc", client = CalcApiClient)]
pub trait CalcApi {
    /// a + b, b defaulting to 0.
    #[rpc]
    async fn add(&self, a: i64, #[default(0)] b: i64) -> Result<i64, RpcError>;

    /// Rust calls it `parent`; on the wire it is `new`, a name the client
    /// keeps for its constructor.
    #[rpc(name = "new")]
    async fn parent(&self, ctx: &Context) -> Result<Option<String>, RpcError>;
}

struct Calculator;

impl CalcApi for Calculator {
    async fn add(&self, a: i64, b: i64) -> Result<i64, RpcError> {
        a.checked_add(b)
            .ok_or_else(|| RpcError::new("OverflowError", "builtins.OverflowError", vec![]))
    }

    async fn parent(&self, ctx: &Context) -> Result<Option<String>, RpcError> {
        Ok(ctx.parent_call_id().map(str::to_owned))
    }
}

#[tokio::test]
async fn a_service_defined_by_a_trait() {
    let local = LocalService::new(Calculator.into_service())
        .with_call_id_stack(vec!["someone.call.1".into()]);
    let client = CalcApiClient::new(&local);
    assert_eq!(client.add(2, None).await.unwrap(), 2);
    assert_eq!(client.add(2, Some(3)).await.unwrap(), 5);
    let err = client.add(i64::MAX, Some(1)).await.unwrap_err();
    assert_eq!(
        err.remote().map(|r| r.exc_type.as_str()),
        Some("OverflowError")
    );
    assert_eq!(
        client.parent().await.unwrap().as_deref(),
        Some("someone.call.1")
    );
    assert_eq!(
        local.call("new", Args::new()).await.unwrap(),
        json!("someone.call.1")
    );
    assert_eq!(<Calculator as CalcApi>::SERVICE_NAME, "calc");
    let named = Calculator.into_service_builder("calc-2").build();
    assert_eq!(named.name(), "calc-2");
}
