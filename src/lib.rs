//! keygate: one cloud service API key per organization.
//!
//! `domain` holds validated types and rules (no I/O), `crypto` the secret handling,
//! `store` the databases behind one trait, `service` the operations both HTTP APIs share,
//! `http` the routers, `cli` the command line, `config` the settings.

pub mod cli;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod domain;
pub mod http;
pub mod server;
pub mod service;
pub mod store;
pub mod telemetry;
pub mod tls;

pub use server::{App, serve};
