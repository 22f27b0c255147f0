//! The operator's XID policy (`gpu-monitor --xid-policy`, read by
//! `config::xid_policy`) over the catalog: a plain entry replaces the
//! catalog's classes of its XID (promote to a condition class, or demote to
//! an event); a repeat entry raises its class when the XID comes back in
//! N bursts on one GPU within a window, in place of the compiled-in repeat
//! rule. Entries may be limited to a range of driver versions (the one
//! NVML reported). Every condition or event an entry changes names the
//! policy file and the entry, so an operator sees who raised it.

use std::collections::VecDeque;
use std::time::SystemTime;

use super::HealthModel;
use super::REASON_XID_REPEATED;
use super::driver::Driver;
use super::xid::count_burst;
use crate::config::duration::format_go;
use crate::config::xid_policy::{Raise, XidPolicy, XidRule};
use crate::gpu::xid::{self as catalog, Classes};
use crate::problem::Severity;

impl HealthModel {
    /// The driver version NVML reported; empty while unknown.
    pub(super) fn driver_version(&self) -> &str {
        match &self.driver {
            Driver::Ready { version } => version,
            Driver::NotReady { .. } => "",
        }
    }

    /// What the policy's plain entry for `xid` raises under this driver,
    /// and the words that name the entry.
    pub(super) fn policy_classes(&self, xid: u32) -> Option<(Classes, String)> {
        let p = self.policy.as_ref()?;
        let rule = p.rule(xid, self.driver_version(), false)?;
        Some((classes_of(rule.raise), owner(p, rule)))
    }

    /// Counts a report toward the policy's repeat entry for `xid`; false
    /// when it has none (the compiled-in rule applies). Replayed reports
    /// count and raise, silently.
    pub(super) fn policy_repeat(
        &mut self,
        pos: usize,
        xid: u32,
        at: SystemTime,
        replay: bool,
    ) -> bool {
        let Some(p) = self.policy.clone() else {
            return false;
        };
        let Some((rule, r)) = p
            .rule(xid, self.driver_version(), true)
            .and_then(|rule| rule.repeat.map(|r| (rule, r)))
        else {
            return false;
        };
        let history = self.gpus[pos]
            .policy_bursts
            .entry(rule.index)
            .or_insert((at, VecDeque::new()));
        let keep = (r.count as usize).max(catalog::REPEAT_BURSTS_KEPT);
        let Some(bursts) = count_burst(history, at, r.burst_gap, r.window, keep) else {
            return true;
        };
        if bursts < r.count as usize {
            return true;
        }
        let classes = classes_of(rule.raise);
        let evidence = format!(
            "{} in {bursts} bursts within {}; {}",
            catalog::lookup(xid).title(),
            format_go(r.window),
            owner(&p, rule)
        );
        let action = if rule.raise == Raise::Event {
            catalog::REPEAT_ACTION
        } else {
            classes.action()
        };
        self.raise(
            pos,
            classes,
            &format!("Xid{xid}Repeated"),
            &evidence,
            action,
            at,
        );
        if !replay {
            let g = &self.gpus[pos];
            let message = format!("{}: {evidence}; action: {action}", g.id);
            let key = format!("{}/{xid}", g.id.pci_bus_id);
            self.emit(Severity::Warn, at, REASON_XID_REPEATED, &key, message);
        }
        true
    }
}

fn classes_of(r: Raise) -> Classes {
    match r {
        Raise::Event => Classes::EVENT,
        Raise::Reset => Classes::RESET,
        Raise::Reboot => Classes::REBOOT,
        Raise::Memory => Classes::MEMORY,
        Raise::Hardware => Classes::HARDWARE,
        Raise::Nvlink => Classes::NVLINK_DEGRADED,
        Raise::NvlinkDown => Classes::NVLINK_DOWN,
    }
}

/// "raised by the XID policy /etc/npd-ext/xid-policy.json (xids[2]: XID 31 ×3 within 1h0m0s → reset)"
fn owner(p: &XidPolicy, rule: &XidRule) -> String {
    let verb = if rule.raise == Raise::Event {
        "demoted to an event"
    } else {
        "raised"
    };
    format!(
        "{verb} by the XID policy {} ({})",
        p.file.display(),
        rule.describe()
    )
}
