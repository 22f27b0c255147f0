//! Exporters: where the node's conditions and events go. Each reads what the
//! detector publishes and never talks back to a monitor.

pub mod external;
pub mod http;
pub mod k8s;
pub mod log;
pub mod prometheus;
