//! The sessions of this process, for [`AdminClient::local`](super::AdminClient::local) (and
//! the only way to see sessions that have no broker).

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock, Weak};

use parking_lot::Mutex;

use super::{FleetDemandRow, SessionPage};
use crate::error::{Error, Result};
use crate::queue::inspect::{self as view, Target};
use crate::queue::scheduler::Scheduler;

struct Hosted {
    scheduler: Weak<Scheduler>,
    tenant: String,
}

fn registry() -> &'static Mutex<BTreeMap<String, Hosted>> {
    static SESSIONS: OnceLock<Mutex<BTreeMap<String, Hosted>>> = OnceLock::new();
    SESSIONS.get_or_init(Default::default)
}

/// A session opened in this process.
pub(crate) fn register(scheduler: &Arc<Scheduler>, tenant: &str) {
    registry().lock().insert(
        scheduler.session_id().to_owned(),
        Hosted {
            scheduler: Arc::downgrade(scheduler),
            tenant: tenant.to_owned(),
        },
    );
}

/// A session of this process closed (only its own entry: a later session may reuse the id).
pub(crate) fn unregister(scheduler: &Scheduler) {
    let mut sessions = registry().lock();
    if let Some(h) = sessions.get(scheduler.session_id())
        && std::ptr::eq(h.scheduler.as_ptr(), scheduler)
    {
        sessions.remove(scheduler.session_id());
    }
}

fn target(id: &str, h: &Hosted) -> Option<Target> {
    let scheduler = h.scheduler.upgrade().filter(|s| !s.is_closed())?;
    debug_assert_eq!(scheduler.session_id(), id);
    Some(Target {
        scheduler,
        tenant: h.tenant.clone(),
        hub: None,
    })
}

pub(crate) fn session(id: &str) -> Result<Target> {
    registry()
        .lock()
        .get(id)
        .and_then(|h| target(id, h))
        .ok_or_else(|| Error::SessionNotFound {
            session_id: id.to_owned(),
        })
}

pub(crate) fn sessions(
    tenant: Option<&str>,
    cursor: Option<&str>,
    limit: usize,
) -> Result<SessionPage> {
    use std::ops::Bound;
    let targets: Vec<Target> = {
        let sessions = registry().lock();
        let from = cursor.map_or(Bound::Unbounded, |c| Bound::Excluded(c.to_owned()));
        sessions
            .range((from, Bound::Unbounded))
            .filter(|(_, h)| tenant.is_none_or(|t| h.tenant == t))
            .filter_map(|(id, h)| target(id, h))
            .take(limit + 1)
            .collect()
    };
    let more = targets.len() > limit;
    let sessions: Vec<_> = targets.iter().take(limit).map(view::summary).collect();
    Ok(SessionPage {
        next: more
            .then(|| sessions.last().map(|s| s.session_id.clone()))
            .flatten(),
        sessions,
    })
}

/// Worker slots this process's sessions need, per tenant, lane and label set.
pub(crate) fn demand() -> Vec<FleetDemandRow> {
    let targets: Vec<Target> = {
        let sessions = registry().lock();
        sessions
            .iter()
            .filter_map(|(id, h)| target(id, h))
            .collect()
    };
    let mut sum: BTreeMap<(String, crate::lane::SessionLane, String), usize> = BTreeMap::new();
    for t in targets {
        for (lane, labels, n) in t.scheduler.worker_demand() {
            *sum.entry((t.tenant.clone(), lane, labels)).or_default() += n;
        }
    }
    sum.into_iter()
        .map(|((tenant, lane, labels), slots)| FleetDemandRow {
            tenant,
            lane,
            labels,
            slots,
        })
        .collect()
}
