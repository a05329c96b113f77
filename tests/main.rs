//! Integration tests: one binary, against real PostgreSQL, PgBouncer and sshd started by the
//! project's own harness on loopback.

mod support;

mod conn;
mod cutover;
mod engine;
mod host_local;
mod host_ssh;
mod lab;
mod plan;
pub mod replication;
mod route;
mod rehearse;
mod spec_fixtures;
mod traffic;
