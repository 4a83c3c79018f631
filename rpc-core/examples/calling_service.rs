//! A service that calls another one: `frontend.welcome(name)` calls
//! `greeter.hello` through its context, so the call-id stack and context
//! data (e.g. `user_id`) travel with the call; and a timer that does the
//! same every ten seconds.
//!
//! ```text
//! cargo run -p rpc-core --example minimal_service &
//! cargo run -p rpc-core --example calling_service &
//! rpc call frontend.welcome Ada --context user_id=u42
//! ```

use rpc_core::{json, Args, Config, Context, RpcError, Service, Signature, Timer};
use std::time::Duration;

async fn welcome(ctx: Context, name: String) -> Result<rpc_core::Value, RpcError> {
    let greeting = ctx
        .rpc()
        .call("greeter", "hello", Args::new().arg(name))
        .await
        .map_err(|e| {
            RpcError::new(
                "GreeterUnavailable",
                "frontend.exceptions.GreeterUnavailable",
                vec![e.to_string().into()],
            )
        })?;
    Ok(json!({
        "greeting": greeting,
        "user_id": ctx.get("user_id"),
        "call_id_stack": ctx.call_id_stack(),
    }))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let uri =
        std::env::var("AMQP_URI").unwrap_or_else(|_| rpc_core::config::DEFAULT_AMQP_URI.to_owned());

    let service = Service::builder("frontend")
        .method(
            "welcome",
            Signature::new().param("name"),
            |ctx: Context, (name,): (String,)| welcome(ctx, name),
        )
        .timer(
            "heartbeat",
            Timer::every(Duration::from_secs(10)),
            |ctx: Context| async move {
                let reply = welcome(ctx, "timer".into()).await?;
                tracing::info!(%reply, "tick");
                Ok::<_, RpcError>(())
            },
        )
        .build();

    service
        .run(Config::new(&uri)?, rpc_core::shutdown::on_signal())
        .await?;
    Ok(())
}
