//! person-service: a database of people (first name, last name, age, club
//! member) served over nameko-compatible RPC, stored in SQLite (one host) or
//! PostgreSQL (several instances on one database).
//!
//! # Modules
//! * [`domain`]: people and their validation rules, shared by every face.
//! * [`store`]: one interface over two backends. SQLite, off the async
//!   executor: one writer thread with group commit, a pool of readers, WAL,
//!   durable commits. PostgreSQL: pooled connections, a transaction per
//!   write, the outbox shared by `FOR UPDATE SKIP LOCKED`.
//! * [`people`]: the operations both faces share, and what each change
//!   leaves behind (its event, its request record).
//! * [`outbox`]: the relay that publishes committed events.
//! * [`rpc`]: the RPC methods over rpc-core, and the errors they send.
//! * [`http`]: the same records over REST (axum), with health, metrics and
//!   an OpenAPI document.
//! * [`metrics`]: Prometheus metrics of both faces.
//! * [`settings`]: command line and environment.
//! * [`app`]: wiring and lifecycle ([`Application::build`], `start`,
//!   `run_until_stopped`).
//! * [`telemetry`]: logging, filtered by `RUST_LOG`, as text or JSON.

#![warn(missing_docs)]

pub mod app;
pub mod domain;
pub mod http;
pub mod metrics;
pub mod outbox;
pub mod people;
pub mod rpc;
pub mod settings;
pub mod store;
pub mod telemetry;

pub use app::{AppError, Application, RunningApp};
pub use settings::Settings;
