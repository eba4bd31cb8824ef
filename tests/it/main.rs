//! The one integration-test binary: every suite is a module here.

mod browser;
mod cli_client;
mod cloud_api;
mod config_file;
mod connections;
mod console_sessions;
mod durability;
mod enforcement;
mod global_limits;
mod harness;
mod input;
mod login_guard;
mod metrics;
mod multinode;
mod nginx;
mod openapi;
mod operators;
mod pg_retries;
mod race;
mod readyz;
mod rules;
mod smoke;
mod tiers;
mod tls;
mod topology;
mod zia_status;
