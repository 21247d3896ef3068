//! Shoal's integration tests: one binary, a module per area.

mod api;
mod controllers;
mod demo;
mod multinode;
mod node;
mod scheduler;
mod services;
