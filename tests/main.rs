//! Integration tests: one binary, against real PostgreSQL, PgBouncer and sshd started by the
//! project's own harness on loopback.

mod support;

mod compose;
mod conn;
pub mod cutover;
mod docs;
mod engine;
mod failover;
mod ha;
mod hooks;
mod host_local;
mod host_ssh;
mod hostile;
mod journal_compat;
mod lab;
mod pgbackrest;
mod plan;
mod rehearse;
pub mod replication;
mod route;
mod spec_fixtures;
mod traffic;
