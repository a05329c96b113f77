//! Talking to PostgreSQL: conninfo parsing, secrets, TLS and connections.

pub mod advisory;
pub mod alive;
pub mod conn;
pub mod conninfo;
pub mod lsn;
pub mod secret;
pub mod server;
pub mod service;
pub mod session;
pub mod sql;
pub mod tls;

pub use conn::{connect, Endpoint};
pub use conninfo::Conninfo;
pub use lsn::Lsn;
pub use secret::{Secret, SecretRef};
pub use session::{session, Session};
