//! A standalone client, like nameko's `ClusterRpcProxy`: one call, several
//! calls in flight at once, and the errors a call can end with.
//!
//! ```text
//! cargo run -p rpc-core --example minimal_service &
//! cargo run -p rpc-core --example client
//! ```

use rpc_core::{Args, CallError, Config, RpcProxy};
use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let uri =
        std::env::var("AMQP_URI").unwrap_or_else(|_| rpc_core::config::DEFAULT_AMQP_URI.to_owned());
    let mut config = Config::new(&uri)?;
    // A command-line tool should fail fast rather than retry forever.
    config.connect_retry = rpc_core::RetryPolicy::once();
    let proxy = RpcProxy::connect(config).await?;

    let greeting = proxy
        .call("greeter", "hello", Args::new().arg("Ada"))
        .await?;
    println!("{greeting}");

    // Many calls in flight on one reply queue, collected later.
    let mut pending = Vec::new();
    for name in ["Alan", "Grace", "Edsger"] {
        pending.push(
            proxy
                .call_async(
                    "greeter",
                    "hello",
                    Args::new().arg(name).kwarg("punctuation", "?"),
                )
                .await?,
        );
    }
    for call in pending {
        println!("{}", call.result().await?);
    }

    // How failures look.
    match proxy.call("greeter", "hello", Args::new().arg("")).await {
        Err(CallError::Remote(e)) => println!("remote error: {} ({})", e, e.exc_path),
        other => println!("unexpected: {other:?}"),
    }
    match proxy.call("no_such_service", "x", Args::new()).await {
        Err(e @ CallError::UnknownService(_)) => println!("{e}"),
        other => println!("unexpected: {other:?}"),
    }
    let quick = proxy.with_timeout(Duration::from_millis(1));
    if let Err(e @ CallError::Timeout { .. }) =
        quick.call("greeter", "hello", Args::new().arg("x")).await
    {
        println!("{e}");
    }

    proxy.close().await;
    Ok(())
}
