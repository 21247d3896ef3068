//! Shoal's integration tests: one binary, a module per area.

mod api;
mod controllers;
mod demo;
mod multinode;
mod node;
mod node_failure;
mod scheduler;
mod services;
mod volumes;
