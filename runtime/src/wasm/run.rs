//! Starting one sandbox and watching it to the end.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use tokio::sync::{oneshot, Notify};
use wasmtime::{Engine, Store, UpdateDeadline};
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

use super::engine::EPOCH_TICK;
use super::host::{GuestOutput, Limits, P1Host, P2Host};
use super::http::WasmHttp;
use super::Loaded;
use crate::backend::{Container, ContainerSpec, Exit};
use crate::meter::CpuMeter;
use crate::output::StdStream;
use crate::RuntimeError;

/// Instantiates the guest on the caller's task (so link and start-up
/// failures come back as `CreateContainerError`), then runs it on its own
/// task until it ends or is killed.
pub(crate) async fn start(
    engine: &Engine,
    loaded: &Arc<Loaded>,
    image: &str,
    spec: ContainerSpec,
) -> Result<Container, RuntimeError> {
    let create = |reason: String| RuntimeError::Create {
        image: image.to_string(),
        reason,
    };
    let memory = Arc::new(AtomicU64::new(0));
    let limits = Limits {
        memory_limit: spec
            .memory_limit
            .map(|l| usize::try_from(l).unwrap_or(usize::MAX)),
        oom: false,
        memory: memory.clone(),
    };
    let mut wasi = wasi_builder(&spec).map_err(create)?;
    // A command's stdin (an HTTP component's instances get none).
    if let Some(r) = spec.stdin.as_ref().and_then(|s| s.take()) {
        wasi.stdin(wasmtime_wasi::cli::AsyncStdinStream::new(r));
    }
    let kill = Arc::new(Notify::new());
    let (tx, rx) = oneshot::channel();
    let cpu = spec.cpu_limit_millis;
    let meter = CpuMeter::default();
    match &**loaded {
        Loaded::Module(pre) => {
            let mut store = Store::new(
                engine,
                P1Host {
                    wasi: wasi.build_p1(),
                    limits,
                },
            );
            store.limiter(|h| &mut h.limits);
            budget_cpu(&mut store, cpu);
            let instance = pre
                .instantiate_async(&mut store)
                .await
                .map_err(|e| create(describe(&e)))?;
            let entry = instance
                .get_typed_func::<(), ()>(&mut store, "_start")
                .map_err(|e| create(format!("no WASI `_start` export: {}", describe(&e))))?;
            let stop = kill.clone();
            let charged = meter.clone();
            tokio::spawn(async move {
                let exit = tokio::select! {
                    r = charged.meter(entry.call_async(&mut store, ())) => classify(r, store.data().limits.oom),
                    _ = stop.notified() => Exit::Killed,
                };
                let _ = tx.send(exit);
            });
        }
        Loaded::Command(pre) => {
            let mut store = Store::new(
                engine,
                P2Host::new(wasi.build(), limits, spec.outbound.clone()),
            );
            store.limiter(|h| &mut h.limits);
            budget_cpu(&mut store, cpu);
            let command = pre
                .instantiate_async(&mut store)
                .await
                .map_err(|e| create(describe(&e)))?;
            let stop = kill.clone();
            let charged = meter.clone();
            tokio::spawn(async move {
                let exit = tokio::select! {
                    r = charged.meter(command.wasi_cli_run().call_run(&mut store)) => {
                        let oom = store.data().limits.oom;
                        match r {
                            Ok(Ok(())) => Exit::Code(0),
                            // wasi:cli/run carries only ok/err: any failure is 1.
                            Ok(Err(())) => Exit::Code(1),
                            Err(e) => classify(Err(e), oom),
                        }
                    }
                    _ = stop.notified() => Exit::Killed,
                };
                let _ = tx.send(exit);
            });
        }
        Loaded::Http(pre) => {
            let svc = Arc::new(WasmHttp::new(
                engine.clone(),
                pre.clone(),
                spec,
                memory.clone(),
                meter.clone(),
            ));
            // Building one request's sandbox up front turns a bad mount
            // or limit into a start failure rather than a 500 per request.
            svc.probe_store().map_err(create)?;
            let stop = kill.clone();
            let draining = svc.clone();
            tokio::spawn(async move {
                stop.notified().await;
                draining.drain().await;
                let _ = tx.send(Exit::Killed);
            });
            return Ok(Container {
                exit: Some(rx),
                kill,
                memory,
                cpu: meter,
                http: Some(svc),
                on_network: false,
                exec: None,
            });
        }
    }
    Ok(Container {
        exit: Some(rx),
        kill,
        memory,
        cpu: meter,
        http: None,
        on_network: false,
        exec: None,
    })
}

/// The WASI context every sandbox of this container gets: argv, env,
/// stdout/stderr to the node's sink, and only the declared mounts.
pub(crate) fn wasi_builder(spec: &ContainerSpec) -> Result<WasiCtxBuilder, String> {
    let mut wasi = WasiCtxBuilder::new();
    wasi.args(&spec.argv)
        .envs(&spec.env)
        .stdout(GuestOutput {
            sink: spec.output.clone(),
            stream: StdStream::Stdout,
        })
        .stderr(GuestOutput {
            sink: spec.output.clone(),
            stream: StdStream::Stderr,
        });
    for m in &spec.mounts {
        let perms = if m.read_only {
            FsPerms::ReadOnly
        } else {
            FsPerms::ReadWrite
        };
        wasi.preopened_dir(&m.host_path, &m.guest_path, perms)
            .map_err(|e| {
                format!(
                    "mounting {} at {}: {}",
                    m.host_path.display(),
                    m.guest_path,
                    describe(&e)
                )
            })?;
    }
    Ok(wasi)
}

/// Every tick the guest runs, the epoch callback decides when it runs
/// next: at once after a yield (so a spinning guest cannot hold an executor
/// thread), or after a pause that keeps it within its CPU limit.
pub(crate) fn budget_cpu<T: Send + 'static>(store: &mut Store<T>, cpu_millis: Option<u64>) {
    store.set_epoch_deadline(1);
    let pause = match cpu_millis {
        Some(m) if m < 1000 => {
            let m = m.max(1);
            Some(EPOCH_TICK * u32::try_from((1000 - m) / m).unwrap_or(u32::MAX))
        }
        _ => None,
    };
    store.epoch_deadline_callback(move |_| {
        Ok(match pause {
            None => UpdateDeadline::Yield(1),
            Some(p) => UpdateDeadline::YieldCustom(1, Box::pin(tokio::time::sleep(p))),
        })
    });
}

fn classify(result: wasmtime::Result<()>, oom: bool) -> Exit {
    match result {
        Ok(()) => Exit::Code(0),
        Err(e) => {
            if let Some(exit) = e.downcast_ref::<I32Exit>() {
                Exit::Code(exit.0)
            } else if oom {
                Exit::OomKilled
            } else {
                Exit::Trap(describe(&e))
            }
        }
    }
}

/// One line naming the cause: wasmtime's top-level message plus its chain
/// ("error while executing at wasm backtrace ... : wasm trap: unreachable").
pub(crate) fn describe(e: &wasmtime::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string();
        // Backtraces are many lines; the first names the function.
        let first = text.lines().next().unwrap_or_default().trim().to_string();
        if !first.is_empty() && !parts.contains(&first) {
            parts.push(first);
        }
    }
    parts.join(": ")
}
