//! The steps that plans are made of.

pub mod approve;
pub mod chain;
pub mod complete;
pub mod failover;
pub mod id;
pub mod member;
pub mod resync;
pub mod switchover;

pub use id::StepId;
