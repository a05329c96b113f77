//! `migrate`: move a live PostgreSQL cluster to new hosts by chained streaming replication.
//!
//! Library code never writes to the terminal; only [`ui`] does.

pub mod app;
pub mod cli;
pub mod commands;
pub mod engine;
pub mod exit;
pub mod files;
pub mod ha;
pub mod hooks;
pub mod host;
pub mod lab;
mod memo;
pub mod pg;
pub mod plans;
pub mod preflight;
pub mod redact;
pub mod rehearse;
pub mod replication;
pub mod route;
pub mod runbook;
pub mod spec;
pub mod steps;
pub mod ui;
pub mod units;
