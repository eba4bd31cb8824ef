//! The one integration-test binary: every suite is a module here.

mod cli_client;
mod cloud_api;
mod durability;
mod enforcement;
mod harness;
mod input;
mod nginx;
mod race;
mod rules;
mod smoke;
