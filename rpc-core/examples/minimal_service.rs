//! A minimal service: `greeter.hello(name, punctuation="!")`.
//!
//! ```text
//! cargo run -p rpc-core --example minimal_service
//! rpc call greeter.hello Ada          # or from `nameko shell`: n.rpc.greeter.hello("Ada")
//! ```
//! Set `AMQP_URI` to use another broker. Stop with Ctrl-C: calls in flight
//! finish first.

use rpc_core::{Config, RpcError};
use std::sync::atomic::{AtomicU64, Ordering};

/// Shared state lives in the value: every call sees the same counter.
#[derive(Default)]
pub struct Greeter {
    greeted: AtomicU64,
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
        if name.is_empty() {
            // An application error: Python sees RemoteError("EmptyName", ...).
            return Err(
                RpcError::new("EmptyName", "greeter.exceptions.EmptyName", vec![])
                    .with_value("a name is needed"),
            );
        }
        let n = self.greeted.fetch_add(1, Ordering::Relaxed) + 1;
        Ok(format!("Hello, {name}{punctuation} (greeting #{n})"))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let uri =
        std::env::var("AMQP_URI").unwrap_or_else(|_| rpc_core::config::DEFAULT_AMQP_URI.to_owned());
    Greeter::default()
        .into_service()
        .run(Config::new(&uri)?, rpc_core::shutdown::on_signal())
        .await?;
    Ok(())
}
