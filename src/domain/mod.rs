//! Validated types and the rules of the product. No I/O here: time is passed in.

pub mod admin;
pub mod audit;
pub mod ids;
pub mod key;
pub mod key_change;
pub mod limits;
pub mod login_guard;
pub mod org;
pub mod policy;
pub mod tier;
pub mod time;

/// A value that failed validation: which field, and why, in words a client can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}
