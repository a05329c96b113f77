//! The steps that plans are made of.

pub mod chain;
pub mod complete;
pub mod member;
pub mod switchover;
