//! The traffic layer: where clients connect, moved from the old primary to the new one.
//! One trait, one module per provider.

pub mod pgbouncer;

use anyhow::Result;
use async_trait::async_trait;
use serde_json::Value;

use crate::spec::{Node, Route};

#[async_trait]
pub trait Router: Send + Sync {
    fn describe(&self) -> String;
    /// What it points at now (journaled before any change).
    async fn current(&self) -> Result<Value>;
    /// Hold clients (they wait, they do not fail). Idempotent.
    async fn hold(&self) -> Result<()>;
    /// Let held clients go on. Idempotent.
    async fn release(&self) -> Result<()>;
    /// Point at `to`. Idempotent.
    async fn point(&self, to: &Node) -> Result<Value>;
    /// Prove, through the route itself, that it reaches `to` as a writable primary.
    async fn verify(&self, to: &Node) -> Result<Value>;
}

/// The routers of a spec (`kind = "none"` has none).
pub fn open(routes: &[Route]) -> Result<Vec<Box<dyn Router>>> {
    let mut out: Vec<Box<dyn Router>> = Vec::new();
    for r in routes {
        match r {
            Route::None => {}
            Route::PgBouncer(p) => out.push(Box::new(pgbouncer::PgBouncer::new((**p).clone())?)),
        }
    }
    Ok(out)
}
