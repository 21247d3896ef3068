//! Shoal's control plane (API server, store, scheduler) and node agent.

pub mod apiserver;
pub mod controllers;
pub mod demo;
pub mod events;
pub mod metrics;
pub mod node;
pub mod scheduler;
pub mod server;
pub mod store;
