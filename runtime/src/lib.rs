//! Executes workloads for a node agent, knowing nothing of the API server.
//!
//! The node agent speaks to every runtime through [`Backend`]: prepare an
//! image once (fetch, verify, compile), then start any number of containers
//! from it. wasmtime's types stay inside this crate.

pub mod backend;
pub mod exec;
pub mod http;
pub mod image;
pub mod meter;
pub mod oci;
mod once;
pub mod output;
pub mod wasm;

pub use backend::{
    Backend, Container, ContainerSpec, ContainerStats, Exit, KillHandle, Mount, Prepared, Security,
};
pub use http::{Body, HttpLimits, HttpService, Outbound, OutboundError};
pub use image::{Credentials, ImageError, ImageRef, ImageStore, PullOptions, PullPolicy};
pub use meter::CpuMeter;
pub use oci::{OciBackend, OciConfig};
pub use output::{OutputSink, StdStream};
pub use wasm::{WasmBackend, WasmConfig};

/// Why a container could not be prepared or started, in the words kubelet
/// uses for the waiting reason.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{0}")]
    Image(#[from] ImageError),
    /// The image is fine as bytes but cannot become a running sandbox: not
    /// Wasm, imports the host does not provide, an unusable limit.
    #[error("cannot create a container from {image}: {reason}")]
    Create { image: String, reason: String },
}

impl RuntimeError {
    /// The Kubernetes waiting reason for this failure.
    pub fn reason(&self) -> &'static str {
        match self {
            RuntimeError::Image(ImageError::InvalidName { .. }) => "InvalidImageName",
            RuntimeError::Image(ImageError::NeverPull { .. }) => "ErrImageNeverPull",
            RuntimeError::Image(_) => "ErrImagePull",
            RuntimeError::Create { .. } => "CreateContainerError",
        }
    }
}

/// The wasmtime release this crate is built on (reported as the node's
/// container runtime version).
pub const WASMTIME_VERSION: &str = "48.0.8";
