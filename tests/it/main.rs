//! The one integration-test binary: every suite is a module here.

mod harness;
mod smoke;
