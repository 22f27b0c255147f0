//! The fleet-wide circuit breaker: before the detector quarantines its
//! Node, it counts the nodes npd-ext has already quarantined (those with
//! [`QUARANTINE_LABEL`]`=true`) and the nodes in the cluster, and refuses
//! past the policy's `maxShare` or `maxCount`. There is no central
//! controller; every detector counts for itself.
//!
//! Counting is two small list calls, metadata only, never a list of every
//! node:
//! - the cluster's size: `GET /api/v1/nodes?limit=1`; the one item plus
//!   `metadata.remainingItemCount`;
//! - the quarantined: `GET /api/v1/nodes?labelSelector=npd-ext.io/quarantined=true&limit=L+1`
//!   with `L` the most the policy allows. kube-apiserver leaves
//!   `remainingItemCount` unset for a list with a selector (its etcd store
//!   and its watch cache alike: "instead of returning inaccurate count for
//!   non-empty selectors, we return nil"), and a full page sets `continue`
//!   whenever any node follows, so `limit=1` would say only "one or more".
//!   Asking for at most `L+1` items answers the only question asked —
//!   fewer than `L` or not — exactly, in one call of a few small items; a
//!   count the server does give is used.
//!
//! A count that cannot be made (an API error, a server that does not say
//! how many nodes there are) refuses: the breaker fails closed, and the
//! condition is on the Node either way.
//!
//! Two detectors deciding at once may both see room for one more: the
//! fleet can overshoot by at most the number deciding at once. A random
//! wait of up to `jitter` before counting spreads detectors that saw the
//! same fault at the same moment, so each counts the others' labels.

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};

use super::K8sMetrics;
use super::client::bounded;
use super::limiter::Limiter;
use crate::config::taint_policy::{QUARANTINE_LABEL, TaintPolicy};

/// What a count found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counts {
    /// Nodes in the cluster.
    pub nodes: u64,
    /// Nodes already quarantined; with `at_least`, a floor.
    pub quarantined: u64,
    pub at_least: bool,
    /// The most the policy allows of `nodes`.
    pub limit: u64,
}

impl Counts {
    /// Whether one more node may be quarantined.
    pub fn room(&self) -> bool {
        !self.at_least && self.quarantined < self.limit
    }

    /// "2 of 20 nodes are quarantined; the policy allows 2 (maxShare 10%)".
    pub fn describe(&self, policy: &TaintPolicy) -> String {
        let q = if self.at_least {
            format!("at least {}", self.quarantined)
        } else {
            self.quarantined.to_string()
        };
        let count = policy
            .max_count
            .map(|c| format!(", maxCount {c}"))
            .unwrap_or_default();
        format!(
            "{q} of {} nodes are quarantined ({QUARANTINE_LABEL}=true); the policy allows {} (maxShare {}{count})",
            self.nodes, self.limit, policy.max_share
        )
    }
}

/// Counts the cluster's nodes and its quarantined ones (see the module).
pub async fn count(
    nodes: &Api<Node>,
    policy: &TaintPolicy,
    limiter: &Limiter,
    metrics: &K8sMetrics,
) -> Result<Counts, String> {
    let all = list(nodes, &ListParams::default().limit(1), limiter, metrics).await?;
    let total = match (all.continue_.as_deref(), all.remaining) {
        (None | Some(""), _) => all.items,
        (Some(_), Some(rest)) => all.items + rest,
        (Some(_), None) => {
            return Err("the API server did not say how many nodes there are (no remainingItemCount in a list with limit=1)".into());
        }
    };
    let limit = policy.limit(total);
    if limit == 0 {
        return Ok(Counts {
            nodes: total,
            quarantined: 0,
            at_least: true,
            limit,
        });
    }
    let selector = format!("{QUARANTINE_LABEL}=true");
    // One more than the limit: a fleet at the limit is counted exactly
    // (a full page says only "at least"), one past it is at least over.
    let ask = u32::try_from(limit.saturating_add(1)).unwrap_or(u32::MAX);
    let q = list(
        nodes,
        &ListParams::default().labels(&selector).limit(ask),
        limiter,
        metrics,
    )
    .await?;
    let more = q.continue_.as_deref().is_some_and(|c| !c.is_empty());
    let (quarantined, at_least) = match (more, q.remaining) {
        (false, _) => (q.items, false),
        (true, Some(rest)) => (q.items + rest, false),
        (true, None) => (q.items, true),
    };
    Ok(Counts {
        nodes: total,
        quarantined,
        at_least,
        limit,
    })
}

struct Page {
    items: u64,
    continue_: Option<String>,
    remaining: Option<u64>,
}

async fn list(
    nodes: &Api<Node>,
    params: &ListParams,
    limiter: &Limiter,
    metrics: &K8sMetrics,
) -> Result<Page, String> {
    limiter.acquire().await;
    match bounded(nodes.list_metadata(params)).await {
        Ok(l) => {
            metrics.request("list_nodes", "ok");
            Ok(Page {
                items: l.items.len() as u64,
                continue_: l.metadata.continue_,
                remaining: l
                    .metadata
                    .remaining_item_count
                    .and_then(|r| u64::try_from(r).ok()),
            })
        }
        Err(e) => {
            metrics.request("list_nodes", "error");
            Err(format!("cannot count nodes: {e}"))
        }
    }
}
