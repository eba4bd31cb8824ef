//! The one integration-test binary: every suite is a module here.

mod cli_client;
mod durability;
mod harness;
mod input;
mod rules;
mod smoke;
