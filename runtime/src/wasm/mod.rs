//! The Wasm backend: WASI preview-1 modules (`_start`), WASI 0.2 command
//! components (`wasi:cli/run`) and `wasi:http` handlers (components, or
//! preview-1 modules wrapped at load) on one pooled, epoch-interrupted engine.

mod adapt;
mod cache;
mod engine;
mod host;
mod http;
mod run;

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;

use wasmtime::component::Linker as ComponentLinker;
use wasmtime::{Engine, InstancePre, Linker};
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::backend::{Backend, Container, ContainerSpec, Prepared};
use crate::image::{ImageStore, PullOptions, Pulled};
use crate::once::PerDigest;
use crate::RuntimeError;
pub use engine::{WasmConfig, EPOCH_TICK};
use host::{P1Host, P2Host};

/// A compiled image, pre-linked against the host so starting a sandbox is
/// only an instantiation.
pub(crate) enum Loaded {
    Module(InstancePre<P1Host>),
    Command(CommandPre<P2Host>),
    /// A `wasi:http/incoming-handler` component: instantiated per request.
    Http(ProxyPre<P2Host>),
}

pub struct WasmBackend {
    engine: Engine,
    config: WasmConfig,
    images: ImageStore,
    cache: Arc<cache::CompileCache>,
    p1: Linker<P1Host>,
    p2: ComponentLinker<P2Host>,
    /// Keyed by digest; a cell per digest so concurrent pods of one image
    /// compile it once.
    loaded: PerDigest<Arc<Loaded>>,
    _ticker: engine::EpochTicker,
}

/// What can go wrong building the backend itself (not a pod's problem).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("configuring the wasmtime engine: {0}")]
    Engine(String),
    #[error("preparing {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Image(#[from] crate::ImageError),
}

impl WasmBackend {
    /// `root` holds the image store and the compile cache.
    pub fn new(root: &Path, config: WasmConfig) -> Result<WasmBackend, SetupError> {
        let engine = engine::build(&config).map_err(|e| SetupError::Engine(e.to_string()))?;
        let io = |source| SetupError::Io {
            path: root.display().to_string(),
            source,
        };
        let cache = Arc::new(cache::CompileCache::new(root, &engine).map_err(io)?);
        let images = ImageStore::new(root.join("images"))?;
        let mut p1 = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut p1, |h: &mut P1Host| &mut h.wasi)
            .map_err(|e| SetupError::Engine(e.to_string()))?;
        let mut p2 = ComponentLinker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut p2)
            .map_err(|e| SetupError::Engine(e.to_string()))?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut p2)
            .map_err(|e| SetupError::Engine(e.to_string()))?;
        let ticker = engine::EpochTicker::start(engine.clone()).map_err(io)?;
        Ok(WasmBackend {
            engine,
            config,
            images,
            cache,
            p1,
            p2,
            loaded: PerDigest::new(),
            _ticker: ticker,
        })
    }

    pub fn config(&self) -> &WasmConfig {
        &self.config
    }

    /// Compiles (or loads from the disk cache) and pre-links an image.
    async fn load(
        &self,
        image: &str,
        digest: &str,
        path: &Path,
    ) -> Result<Arc<Loaded>, RuntimeError> {
        let create = |reason: String| RuntimeError::Create {
            image: image.to_string(),
            reason,
        };
        let bytes = tokio::fs::read(path)
            .await
            .map_err(|e| create(format!("reading {}: {e}", path.display())))?;
        let kind = wasm_kind(&bytes).map_err(|r| create(r.to_string()))?;
        let engine = self.engine.clone();
        let digest_owned = digest.to_string();
        let cache = self.cache.clone();
        // Compiling is CPU work measured in milliseconds to seconds: keep it
        // off the threads that run guests and answer the API.
        let compiled = tokio::task::spawn_blocking(move || match kind {
            WasmKind::Module => cache
                .module(&engine, &digest_owned, &bytes)
                .map(Compiled::Module),
            WasmKind::Component => cache
                .component(&engine, &digest_owned, || Ok(Cow::Borrowed(&bytes)))
                .map(Compiled::Component),
            WasmKind::HttpModule => cache
                .component(&engine, &digest_owned, || {
                    adapt::proxy_component(&bytes)
                        .map(Cow::Owned)
                        .map_err(wasmtime::Error::msg)
                })
                .map(Compiled::Component),
        })
        .await
        .map_err(|e| create(format!("compiler task failed: {e}")))?
        .map_err(|e| create(format!("compiling: {}", run::describe(&e))))?;
        let loaded = match compiled {
            Compiled::Module(m) => Loaded::Module(
                self.p1
                    .instantiate_pre(&m)
                    .map_err(|e| create(run::describe(&e)))?,
            ),
            Compiled::Component(c) => {
                let pre = self
                    .p2
                    .instantiate_pre(&c)
                    .map_err(|e| create(run::describe(&e)))?;
                // An HTTP handler is served per request; anything else must
                // be a command that runs to its end.
                if exports_http_handler(&self.engine, &c) {
                    Loaded::Http(ProxyPre::new(pre).map_err(|e| create(run::describe(&e)))?)
                } else {
                    Loaded::Command(CommandPre::new(pre).map_err(|e| {
                        create(format!(
                            "not a WASI command (no wasi:cli/run export) nor an HTTP handler (no wasi:http/incoming-handler export): {}",
                            run::describe(&e)
                        ))
                    })?)
                }
            }
        };
        Ok(Arc::new(loaded))
    }
}

enum Compiled {
    Module(wasmtime::Module),
    Component(wasmtime::component::Component),
}

fn exports_http_handler(engine: &Engine, c: &wasmtime::component::Component) -> bool {
    c.component_type()
        .exports(engine)
        .any(|(name, _)| name.starts_with("wasi:http/incoming-handler@0.2"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WasmKind {
    Module,
    Component,
    /// A core module exporting a `wasi:http` handler: served as the
    /// component the proxy adapter makes of it.
    HttpModule,
}

/// Tells a core module from a component by the preamble, before handing
/// bytes to Cranelift.
fn wasm_kind(bytes: &[u8]) -> Result<WasmKind, &'static str> {
    match bytes.get(0..8) {
        Some([0, b'a', b's', b'm', 1, 0, 0, 0]) if adapt::exports_http_handler(bytes) => {
            Ok(WasmKind::HttpModule)
        }
        Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => Ok(WasmKind::Module),
        Some([0, b'a', b's', b'm', _, _, 1, 0]) => Ok(WasmKind::Component),
        Some([0, b'a', b's', b'm', ..]) => Err("unsupported WebAssembly binary version"),
        _ => Err("not a WebAssembly module or component (no \\0asm header)"),
    }
}

#[async_trait::async_trait]
impl Backend for WasmBackend {
    fn runtime_class(&self) -> &'static str {
        "wasmtime"
    }

    async fn prepare_with(
        &self,
        image: &str,
        pull: &PullOptions,
    ) -> Result<Prepared, RuntimeError> {
        let pulled = self.images.pull(image, pull).await?;
        let digest = pulled.image_digest();
        let blob = match pulled {
            Pulled::File(blob) => blob,
            Pulled::Manifest(m) => match m.wasm_layer() {
                Some(layer) => layer.blob.clone(),
                None => {
                    return Err(RuntimeError::Create {
                        image: image.to_string(),
                        reason: format!(
                            "not a Wasm OCI artifact (no application/wasm layer; its layers are {}): a container image runs with runtimeClassName: runc",
                            m.layer_types()
                        ),
                    })
                }
            },
        };
        let cell = self.loaded.cell(&blob.digest);
        let loaded = cell
            .get_or_try_init(|| self.load(image, &blob.digest, &blob.path))
            .await?
            .clone();
        Ok(Prepared {
            image: image.to_string(),
            digest,
            inner: loaded,
        })
    }

    async fn start(
        &self,
        prepared: &Prepared,
        spec: ContainerSpec,
    ) -> Result<Container, RuntimeError> {
        let loaded =
            prepared
                .inner
                .clone()
                .downcast::<Loaded>()
                .map_err(|_| RuntimeError::Create {
                    image: prepared.image.clone(),
                    reason: "prepared by a different backend".into(),
                })?;
        if let Some(limit) = spec.memory_limit {
            if limit > self.config.max_memory_bytes {
                return Err(RuntimeError::Create {
                    image: prepared.image.clone(),
                    reason: format!(
                        "resources.limits.memory {limit} exceeds this node's per-sandbox maximum of {} bytes",
                        self.config.max_memory_bytes
                    ),
                });
            }
        }
        run::start(&self.engine, &loaded, &prepared.image, spec).await
    }
}

#[cfg(test)]
mod tests;
