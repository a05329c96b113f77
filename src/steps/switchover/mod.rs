//! The zero-loss switchover (docs/pitfalls.md, "The switchover, in brief"), in one
//! direction: `from` is the serving primary, `to` the standby that takes over; `followers` are
//! the other standbys, which must follow the new timeline. The same steps, with roles swapped,
//! are the rollback after the point of no return (`switchback`).
//!
//! One file per step, each with its output type; the go / no-go decisions are pure functions
//! beside them ([`window::decide`], [`proof::verdict`], [`retry::BACKOFF_MS`]).

pub mod certificate;
pub mod fence;
pub(crate) mod follow;
pub mod followers;
pub mod guard;
pub mod ha;
pub mod hold;
pub mod promote;
pub mod proof;
pub mod release;
pub mod retry;
pub mod reverse;
pub mod route;
pub mod stage;
pub mod stop;
mod watch;
pub mod window;

use std::future::Future;

/// The steps' in-process hand-overs (see [`crate::memo`]).
use crate::memo;
use std::time::Duration;

use anyhow::{anyhow, Result};

use super::member::Member;

pub use certificate::{certificate_path, Certificate, CertificateDoc};
pub use fence::{Fence, FenceOut};
pub use followers::Followers;
pub use ha::{HaPause, HaPauseOut, HaResume, HaResumeOut};
pub use hold::{Hold, HoldOut};
pub use promote::{Others, Promote, PromoteOut};
pub use proof::{Proof, ProofOut};
pub use release::{Release, ReleaseOut};
pub use reverse::Reverse;
pub use route::{RouteOut, VerifyPrimary};
pub use stage::Stage;
pub use stop::StopPrimary;
pub use window::WaitForWindow;

/// Who hands over to whom.
#[derive(Clone)]
pub struct Direction {
    pub from: Member,
    pub to: Member,
    pub followers: Vec<Member>,
    /// The traffic layer (`kind = "none"` routes are left out).
    pub routes: Vec<crate::spec::Route>,
    /// The time limit of each database, console or host call inside the switchover, so that a
    /// node that stops answering (a frozen host, a cut link) cannot hang the tool.
    pub limit: Duration,
}

impl Direction {
    fn routers(&self) -> Result<Vec<Box<dyn crate::route::Router>>> {
        crate::route::open(&self.routes)
    }

    /// `work` under [`Direction::limit`].
    pub(crate) async fn bounded<T>(
        &self,
        what: &str,
        work: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        tokio::time::timeout(self.limit, work)
            .await
            .map_err(|_| anyhow!("{what}: no answer within {:?}", self.limit))?
    }

    /// `from` as a standby of `to`.
    pub(crate) fn demoted(&self) -> Member {
        self.from.with_upstream(&self.to.node)
    }
}
