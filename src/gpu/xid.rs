//! XID catalog: what each XID means and what to do about it.
//!
//! Source: NVIDIA's XID catalog (immediate actions) as summarised in
//! `shared/reference/gpu-peers.md` §3. This is the subset the skeleton acts on;
//! an XID not listed is still reported, as an event.

/// What an XID asks the operator to do first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Informational; the GPU is fine.
    Ignore,
    /// An application fault; restart the job.
    RestartApp,
    /// The GPU needs a reset before it can be trusted.
    ResetGpu,
    /// The GPU is gone from the bus; only a node reboot brings it back.
    RebootNode,
    /// Needs a decision workflow (decode registers, look at neighbours).
    Investigate,
}

impl Action {
    pub fn describe(self) -> &'static str {
        match self {
            Self::Ignore => "no action needed",
            Self::RestartApp => "restart the application",
            Self::ResetGpu => "drain the node and reset the GPU",
            Self::RebootNode => "drain the node and reboot it",
            Self::Investigate => "investigate (see NVIDIA's XID catalog)",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XidInfo {
    pub xid: u32,
    pub mnemonic: &'static str,
    pub action: Action,
}

const CATALOG: &[XidInfo] = &[
    x(13, "graphics engine exception", Action::RestartApp),
    x(31, "GPU memory page fault", Action::RestartApp),
    x(
        43,
        "channel verification error (application fault)",
        Action::Ignore,
    ),
    x(
        45,
        "preemptive cleanup after another error",
        Action::Investigate,
    ),
    x(48, "double-bit ECC error", Action::ResetGpu),
    x(62, "internal micro-controller halt", Action::ResetGpu),
    x(
        63,
        "row remapping or page retirement recorded",
        Action::Ignore,
    ),
    x(64, "row remapping failure", Action::ResetGpu),
    x(74, "NVLink error", Action::Investigate),
    x(79, "GPU has fallen off the bus", Action::RebootNode),
    x(92, "high single-bit ECC error rate", Action::Ignore),
    x(94, "contained memory error", Action::RestartApp),
    x(95, "uncontained memory error", Action::ResetGpu),
    x(109, "context-switch timeout", Action::Investigate),
    x(119, "GSP RPC timeout", Action::ResetGpu),
    x(120, "GSP error", Action::ResetGpu),
    x(140, "unrecoverable ECC error escape", Action::ResetGpu),
];

const fn x(xid: u32, mnemonic: &'static str, action: Action) -> XidInfo {
    XidInfo {
        xid,
        mnemonic,
        action,
    }
}

/// The catalog entry, or an `Investigate` entry for an XID we do not know.
pub fn lookup(xid: u32) -> XidInfo {
    CATALOG
        .iter()
        .find(|i| i.xid == xid)
        .copied()
        .unwrap_or(XidInfo {
            xid,
            mnemonic: "unknown XID",
            action: Action::Investigate,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_is_sorted_and_unique() {
        assert!(CATALOG.windows(2).all(|w| w[0].xid < w[1].xid));
    }

    #[test]
    fn classifies_the_skeleton_xids() {
        assert_eq!(lookup(79).action, Action::RebootNode);
        assert_eq!(lookup(48).action, Action::ResetGpu);
        assert_eq!(lookup(13).action, Action::RestartApp);
        assert_eq!(lookup(9999).action, Action::Investigate);
    }
}
