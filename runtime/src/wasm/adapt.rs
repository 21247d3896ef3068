//! Core modules that export a `wasi:http` handler become components at
//! load time, wrapped with wasmtime's preview-1 adapter, as Spin does with
//! core modules: a handler built for `wasm32-wasip1` (Rust with the `wasi`
//! crate, or any toolchain that stops at preview 1) deploys as it is.
//!
//! The *reactor* adapter, not the smaller *proxy* one: the proxy world has
//! no `wasi:cli/environment`, so a pod's `env` (the Service variables
//! included) would vanish. Measured on the Rust hello handler, the proxy
//! adapter's component serves a request ~10% faster, all of it from the
//! imports it leaves out; the reactor adapter's costs what the
//! `wasm32-wasip2` build of the same handler costs.

use wasmparser::{Parser, Payload};

/// Core export names wit-bindgen gives a handler: `<interface>#<function>`.
const HANDLER_INTERFACE: &str = "wasi:http/incoming-handler@0.2.";
const HANDLER_FUNCTION: &str = "#handle";

/// Whether a core module exports `wasi:http/incoming-handler#handle`.
/// Anything that does not parse answers false: compiling it as a plain
/// module then reports the problem.
pub(crate) fn exports_http_handler(core: &[u8]) -> bool {
    for payload in Parser::new(0).parse_all(core) {
        match payload {
            Ok(Payload::ExportSection(exports)) => {
                return exports.into_iter().flatten().any(|e| {
                    e.name.starts_with(HANDLER_INTERFACE) && e.name.ends_with(HANDLER_FUNCTION)
                });
            }
            // Exports come before code: a module that reached its code
            // without an export section exports nothing.
            Ok(Payload::CodeSectionStart { .. }) | Err(_) => return false,
            Ok(_) => {}
        }
    }
    false
}

/// The component of a handler module: the module plus the reactor adapter.
pub(crate) fn proxy_component(core: &[u8]) -> Result<Vec<u8>, String> {
    wit_component::ComponentEncoder::default()
        .module(core)
        .and_then(|e| {
            e.adapter(
                "wasi_snapshot_preview1",
                wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
            )
        })
        .and_then(|e| e.validate(true).encode())
        .map_err(|e| {
            format!(
                "the module exports a wasi:http handler but could not be made a component with the preview-1 adapter: {e:#}"
            )
        })
}
