//! Shoal's control plane (API server, store) and, later, node agent.

pub mod apiserver;
pub mod metrics;
pub mod scheduler;
pub mod server;
pub mod store;
