//! Secret handling: key sealing at rest, password hashing, random tokens.

pub mod cipher;
pub mod password;
pub mod token;

pub use cipher::{KeyCipher, MasterKey};
pub use password::PasswordHasher;
