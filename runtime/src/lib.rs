//! Executes workloads for a node agent, knowing nothing of the API server.
//!
//! Empty until the node-agent work lands: the `Backend` trait and its Wasm
//! (wasmtime) and OCI (runc) implementations live here, keeping wasmtime's
//! types out of the orchestrator.
