//! A minimal service: `greeter.hello(name, punctuation="!")`.
//!
//! ```text
//! cargo run -p rpc-core --example minimal_service
//! rpc call greeter.hello Ada          # or from `nameko shell`: n.rpc.greeter.hello("Ada")
//! ```
//! Set `AMQP_URI` to use another broker. Stop with Ctrl-C: calls in flight
//! finish first.

use rpc_core::{Config, Context, RpcError, Service, Signature};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let uri =
        std::env::var("AMQP_URI").unwrap_or_else(|_| rpc_core::config::DEFAULT_AMQP_URI.to_owned());

    let service = Service::builder("greeter")
        .method(
            "hello",
            Signature::new().param("name").optional("punctuation", "!"),
            |_ctx: Context, (name, punctuation): (String, String)| async move {
                if name.is_empty() {
                    // An application error: Python sees RemoteError("EmptyName", ...).
                    return Err(RpcError::new(
                        "EmptyName",
                        "greeter.exceptions.EmptyName",
                        vec![],
                    ));
                }
                Ok(format!("Hello, {name}{punctuation}"))
            },
        )
        .build();

    service
        .run(Config::new(&uri)?, rpc_core::shutdown::on_signal())
        .await?;
    Ok(())
}
