//! The one integration-test binary: every suite is a module here.

mod browser;
mod cli_client;
mod cloud_api;
mod durability;
mod enforcement;
mod harness;
mod input;
mod metrics;
mod multinode;
mod nginx;
mod openapi;
mod race;
mod rules;
mod smoke;
mod zia_status;
