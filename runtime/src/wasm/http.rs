//! `wasi:http/incoming-handler` components: one fresh instance per request
//! from a pre-linked `ProxyPre`, on the engine's pooling allocator, so a
//! request costs an instantiation (microseconds) and nothing leaks between
//! requests.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use http::StatusCode;
use http_body_util::{BodyExt, Limited};
use tokio::sync::{Notify, Semaphore};
use tracing::debug;
use wasmtime::{Engine, Store};
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::{WasiBody, WasiHttpHooks};

use super::host::{Limits, P2Host};
use super::run::{budget_cpu, describe, wasi_builder};
use crate::backend::ContainerSpec;
use crate::http::{text_response, Body, BoxError, HttpService, Outbound, OutboundError};
use crate::meter::CpuMeter;

/// A running HTTP pod: the pre-linked component plus what every request's
/// sandbox is built from.
pub(crate) struct WasmHttp {
    engine: Engine,
    pre: ProxyPre<P2Host>,
    spec: ContainerSpec,
    permits: Semaphore,
    in_flight: AtomicUsize,
    draining: AtomicBool,
    idle: Notify,
    /// Linear memory of the requests in flight, for `Container::stats`.
    memory: Arc<AtomicU64>,
    /// Time spent building sandboxes and running the guest, per request.
    cpu: CpuMeter,
}

impl WasmHttp {
    pub(crate) fn new(
        engine: Engine,
        pre: ProxyPre<P2Host>,
        spec: ContainerSpec,
        memory: Arc<AtomicU64>,
        cpu: CpuMeter,
    ) -> WasmHttp {
        WasmHttp {
            engine,
            pre,
            permits: Semaphore::new(spec.http.max_concurrency.max(1)),
            spec,
            in_flight: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            idle: Notify::new(),
            memory,
            cpu,
        }
    }

    /// Stops taking requests; returns once those in flight are answered.
    pub(crate) async fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        loop {
            let idle = self.idle.notified();
            if self.in_flight.load(Ordering::SeqCst) == 0 {
                return;
            }
            idle.await;
        }
    }

    fn store(&self) -> Result<Store<P2Host>, String> {
        let mut wasi = wasi_builder(&self.spec)?;
        let limits = Limits {
            memory_limit: self
                .spec
                .memory_limit
                .map(|l| usize::try_from(l).unwrap_or(usize::MAX)),
            oom: false,
            memory: self.memory.clone(),
        };
        let host = P2Host::new(wasi.build(), limits, self.spec.outbound.clone());
        let mut store = Store::new(&self.engine, host);
        store.limiter(|h| &mut h.limits);
        budget_cpu(&mut store, self.spec.cpu_limit_millis);
        Ok(store)
    }

    /// Builds one request's sandbox without running it.
    pub(crate) fn probe_store(&self) -> Result<(), String> {
        self.store().map(|_| ())
    }

    /// Runs the guest on one request; every failure becomes a response.
    async fn handle(&self, req: http::Request<Body>) -> http::Response<Body> {
        let limit = self.spec.http.max_body_bytes;
        // Content-Length, or the body's own size where it is known (hyper
        // reports Content-Length there too).
        let declared = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .or_else(|| http_body::Body::size_hint(req.body()).exact());
        if declared.is_some_and(|n| n > limit) {
            return text_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body exceeds this pod's limit of {limit} bytes"),
            );
        }
        let building = std::time::Instant::now();
        let built = self.store();
        self.cpu.add(building.elapsed());
        let mut store = match built {
            Ok(s) => s,
            Err(e) => return text_response(StatusCode::INTERNAL_SERVER_ERROR, e),
        };
        // A body without Content-Length is cut off at the limit: the guest
        // sees its read fail.
        let req = req.map(|b| {
            Limited::new(b, usize::try_from(limit).unwrap_or(usize::MAX))
                .map_err(|e| wasmtime_wasi_http::Error::InternalError(Some(e.to_string())))
        });
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (req, out) = {
            let mut view = wasmtime_wasi_http::WasiHttpView::http(store.data_mut());
            let req = view.new_incoming_request(Scheme::Http, req);
            let out = view.new_response_outparam(tx);
            match (req, out) {
                (Ok(r), Ok(o)) => (r, o),
                (Err(e), _) | (_, Err(e)) => {
                    return text_response(StatusCode::BAD_REQUEST, describe(&e));
                }
            }
        };
        let pre = self.pre.clone();
        let timeout = self.spec.http.timeout;
        // The guest runs on its own task so it can keep streaming the body
        // after the headers went out; the timeout bounds the whole of it,
        // and dropping the store at the deadline ends a spinning guest.
        let guest = async move {
            let run = async {
                let proxy = pre.instantiate_async(&mut store).await?;
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, req, out)
                    .await
            };
            match tokio::time::timeout(timeout, run).await {
                Ok(r) => r.map_err(|e| describe(&e)),
                Err(_) => Err(format!("no answer within {}s", timeout.as_secs_f64())),
            }
        };
        // The guest runs on this task until it answers: handing it to
        // another worker thread and back cost more than the guest itself.
        let mut guest = Box::pin(self.cpu.meter(guest));
        let mut rx = rx;
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut finished = false;
        let answered = tokio::select! {
            r = &mut rx => Some(r),
            done = &mut guest => {
                finished = true;
                // Returned (or failed) first: whatever it set is in `rx` by
                // now, as the store, and with it the sender, is gone.
                match rx.await {
                    Ok(r) => Some(Ok(r)),
                    Err(_) => return failed_before_answering(done),
                }
            }
            _ = &mut deadline => None,
        };
        match answered {
            Some(Ok(Ok(resp))) => {
                // The body may still be coming: finish the guest here if it
                // can without waiting, else on a task of its own.
                let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
                if !finished && std::future::Future::poll(guest.as_mut(), &mut cx).is_pending() {
                    tokio::spawn(guest);
                }
                resp.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed_unsync())
            }
            Some(Ok(Err(code))) => text_response(
                StatusCode::BAD_GATEWAY,
                format!("the guest answered with an error: {code:?}"),
            ),
            // The guest dropped the outparam without answering.
            Some(Err(_)) => failed_before_answering(guest.await),
            None => text_response(
                StatusCode::GATEWAY_TIMEOUT,
                format!("the guest did not answer within {}s", timeout.as_secs_f64()),
            ),
        }
    }
}

/// The answer for a guest that ended without setting a response.
fn failed_before_answering(done: Result<(), String>) -> http::Response<Body> {
    match done {
        Err(e) if e.starts_with("no answer within") => {
            text_response(StatusCode::GATEWAY_TIMEOUT, e)
        }
        Err(e) => text_response(
            StatusCode::BAD_GATEWAY,
            format!("the guest failed before answering: {e}"),
        ),
        Ok(()) => text_response(
            StatusCode::BAD_GATEWAY,
            "the guest returned without setting a response",
        ),
    }
}

/// Counts a request in flight from admission to its answer, and wakes a
/// drain when the last one leaves.
struct InFlight<'a>(&'a WasmHttp);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

#[async_trait::async_trait]
impl HttpService for WasmHttp {
    async fn serve(
        &self,
        req: http::Request<Body>,
    ) -> Result<http::Response<Body>, http::Request<Body>> {
        if self.draining.load(Ordering::SeqCst) {
            return Err(req);
        }
        let Ok(_permit) = self.permits.try_acquire() else {
            debug!("at the concurrency limit; turning a request away");
            return Err(req);
        };
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let _counted = InFlight(self);
        // Checked again: a drain that began between the two loads must not
        // miss this request.
        if self.draining.load(Ordering::SeqCst) {
            return Err(req);
        }
        Ok(self.handle(req).await)
    }

    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }
}

/// The guest's outbound requests, handed to the node's router.
pub(crate) struct Hooks {
    pub(crate) outbound: Option<Arc<dyn Outbound>>,
}

type IoFuture = Box<dyn std::future::Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>;

impl WasiHttpHooks for Hooks {
    fn default_scheme(&mut self) -> Option<http::uri::Scheme> {
        // Service names are plain HTTP inside the cluster.
        Some(http::uri::Scheme::HTTP)
    }

    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: IoFuture,
    ) -> Box<
        dyn std::future::Future<
                Output = Result<(http::Response<WasiBody>, IoFuture), wasmtime_wasi_http::Error>,
            > + Send,
    > {
        let outbound = self.outbound.clone();
        Box::new(async move {
            let host = request
                .uri()
                .authority()
                .map(|a| a.to_string())
                .unwrap_or_default();
            let Some(outbound) = outbound else {
                return Err(wasmtime_wasi_http::Error::HttpRequestDenied);
            };
            let request = request.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed_unsync());
            match outbound.send(request).await {
                Ok(resp) => {
                    let resp = resp.map(|b| {
                        b.map_err(|e| wasmtime_wasi_http::Error::InternalError(Some(e.to_string())))
                            .boxed_unsync()
                    });
                    Ok((resp, Box::new(async { Ok(()) }) as IoFuture))
                }
                Err(e) => {
                    debug!(host = %host, error = %e, "outbound request not answered");
                    Err(match e {
                        OutboundError::Denied(_) => wasmtime_wasi_http::Error::HttpRequestDenied,
                        OutboundError::NotFound(_) => {
                            wasmtime_wasi_http::Error::DestinationNotFound
                        }
                        OutboundError::Unavailable(_) => {
                            wasmtime_wasi_http::Error::DestinationUnavailable
                        }
                        OutboundError::Timeout => wasmtime_wasi_http::Error::ConnectionTimeout,
                        OutboundError::Failed(m) => {
                            wasmtime_wasi_http::Error::InternalError(Some(m))
                        }
                    })
                }
            }
        })
    }
}
