//! A standalone client, like nameko's `ClusterRpcProxy`: a typed client,
//! several calls in flight at once, and the errors a call can end with.
//!
//! ```text
//! cargo run -p rpc-core --example minimal_service &
//! cargo run -p rpc-core --example client
//! ```

use rpc_core::{Args, CallError, Config, RpcProxy};
use std::time::Duration;

/// The greeter of `minimal_service`: its client is written from this
/// description (a service in Python would be described the same way).
#[rpc_core::client(service = "greeter")]
trait Greeter {
    async fn hello(&self, name: String, #[default] punctuation: Option<String>) -> String;
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let uri =
        std::env::var("AMQP_URI").unwrap_or_else(|_| rpc_core::config::DEFAULT_AMQP_URI.to_owned());
    let mut config = Config::new(&uri)?;
    // A command-line tool should fail fast rather than retry forever.
    config.connect_retry = rpc_core::RetryPolicy::once();
    let proxy = RpcProxy::connect(config).await?;
    let greeter = GreeterClient::new(proxy.clone());

    println!("{}", greeter.hello("Ada".into(), None).await?);

    // Many calls in flight on one reply queue, collected later.
    let mut pending = Vec::new();
    for name in ["Alan", "Grace", "Edsger"] {
        pending.push(greeter.hello_async(name.into(), Some("?".into())).await?);
    }
    for call in pending {
        println!("{}", call.result().await?);
    }

    // How failures look.
    match greeter.hello(String::new(), None).await {
        Err(CallError::Remote(e)) => println!("remote error: {} ({})", e, e.exc_path),
        other => println!("unexpected: {other:?}"),
    }
    // Untyped calls, for services known only at run time.
    match proxy.call("no_such_service", "x", Args::new()).await {
        Err(e @ CallError::UnknownService(_)) => println!("{e}"),
        other => println!("unexpected: {other:?}"),
    }
    let quick = GreeterClient::new(proxy.with_timeout(Duration::from_millis(1)));
    if let Err(e @ CallError::Timeout { .. }) = quick.hello("x".into(), None).await {
        println!("{e}");
    }

    proxy.close().await;
    Ok(())
}
