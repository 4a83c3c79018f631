//! A service that calls another one: `frontend.welcome(name)` calls
//! `greeter.hello` through a typed client over its context, so the call-id
//! stack and context data (e.g. `user_id`) travel with the call; and a
//! timer that does the same every ten seconds.
//!
//! ```text
//! cargo run -p rpc-core --example minimal_service &
//! cargo run -p rpc-core --example calling_service &
//! rpc call frontend.welcome Ada --context user_id=u42
//! ```

use rpc_core::{json, Config, Context, RpcError, Value};

/// The greeter of `minimal_service`, as this service calls it.
#[rpc_core::client(service = "greeter")]
trait Greeter {
    async fn hello(&self, name: String, #[default] punctuation: Option<String>) -> String;
}

struct Frontend;

#[rpc_core::service(name = "frontend")]
impl Frontend {
    #[rpc]
    async fn welcome(&self, ctx: &Context, name: String) -> Result<Value, RpcError> {
        // `?` sends what nameko would if the greeter's error passed through
        // a Python service (RemoteError, UnknownService, ...).
        let greeting = GreeterClient::new(ctx.rpc()).hello(name, None).await?;
        Ok(json!({
            "greeting": greeting,
            "user_id": ctx.get("user_id"),
            "call_id_stack": ctx.call_id_stack(),
        }))
    }

    #[timer(interval = 10)]
    async fn heartbeat(&self, ctx: &Context) -> Result<(), RpcError> {
        let reply = self.welcome(ctx, "timer".into()).await?;
        tracing::info!(%reply, "tick");
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let uri =
        std::env::var("AMQP_URI").unwrap_or_else(|_| rpc_core::config::DEFAULT_AMQP_URI.to_owned());
    Frontend
        .into_service()
        .run(Config::new(&uri)?, rpc_core::shutdown::on_signal())
        .await?;
    Ok(())
}
