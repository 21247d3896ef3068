//! Per-sandbox host state: WASI context, memory limiter, output streams.
//! Built fresh for every instance, as wasmtime's examples do.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime::component::ResourceTable;
use wasmtime::ResourceLimiter;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::http::Hooks;
use crate::http::Outbound;
use crate::output::{OutputSink, StdStream};

/// Caps a sandbox's linear memory and remembers whether the guest hit the
/// cap, which is how an ending becomes `OOMKilled` rather than a crash.
pub(crate) struct Limits {
    pub(crate) memory_limit: Option<usize>,
    pub(crate) oom: bool,
    /// Total linear memory of the sandbox, shared with `Container::stats`.
    pub(crate) memory: Arc<AtomicU64>,
}

impl ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.memory.load(Ordering::Relaxed) as usize;
        let after = total.saturating_sub(current).saturating_add(desired);
        if self.memory_limit.is_some_and(|limit| after > limit) {
            self.oom = true;
            // A trap, not a failed grow: most guests abort on a failed
            // allocation anyway, and a trap ends them at the real cause.
            return Err(wasmtime::format_err!(
                "memory limit exceeded: growing to {after} bytes, limit {}",
                self.memory_limit.unwrap_or_default()
            ));
        }
        self.memory.store(after as u64, Ordering::Relaxed);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        _desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(true)
    }
}

/// State of a WASI preview-1 module's store.
pub(crate) struct P1Host {
    pub(crate) wasi: WasiP1Ctx,
    pub(crate) limits: Limits,
}

/// State of a WASI 0.2 component's store: a command's, or one HTTP
/// request's.
pub(crate) struct P2Host {
    pub(crate) ctx: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limits: Limits,
    pub(crate) http: WasiHttpCtx,
    pub(crate) hooks: Hooks,
}

impl P2Host {
    pub(crate) fn new(ctx: WasiCtx, limits: Limits, outbound: Option<Arc<dyn Outbound>>) -> P2Host {
        P2Host {
            ctx,
            table: ResourceTable::new(),
            limits,
            http: WasiHttpCtx::new(),
            hooks: Hooks { outbound },
        }
    }
}

impl WasiHttpView for P2Host {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

impl WasiView for P2Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }
}

/// A guest's stdout or stderr, handed straight to the node's sink: no
/// buffer and no background task per stream, which matters at thousands of
/// sandboxes.
#[derive(Clone)]
pub(crate) struct GuestOutput {
    pub(crate) sink: Arc<dyn OutputSink>,
    pub(crate) stream: StdStream,
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

/// Writes of any size are accepted at once; the sink appends them.
const WRITE_PERMIT: usize = 64 * 1024;

#[async_trait::async_trait]
impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        self.sink.write(self.stream, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_PERMIT)
    }
}

#[async_trait::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl AsyncWrite for GuestOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.sink.write(self.stream, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
