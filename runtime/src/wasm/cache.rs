//! Compiled artifacts on disk, keyed by the image digest and the engine's
//! compatibility hash: a module is compiled once per node and engine build,
//! and a node restart costs a file map instead of a Cranelift run.

use std::borrow::Cow;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use wasmtime::component::Component;
use wasmtime::{Engine, Module};

pub(crate) struct CompileCache {
    dir: PathBuf,
}

impl CompileCache {
    pub(crate) fn new(root: &Path, engine: &Engine) -> std::io::Result<CompileCache> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        let dir = root.join("compiled").join(format!("{:016x}", h.finish()));
        std::fs::create_dir_all(&dir)?;
        Ok(CompileCache { dir })
    }

    fn path(&self, digest: &str, kind: &str) -> PathBuf {
        self.dir.join(format!("{digest}.{kind}.cwasm"))
    }

    pub(crate) fn module(
        &self,
        engine: &Engine,
        digest: &str,
        wasm: &[u8],
    ) -> wasmtime::Result<Module> {
        let path = self.path(digest, "module");
        if path.exists() {
            match load_module(engine, &path) {
                Ok(m) => return Ok(m),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "discarding unusable compiled module")
                }
            }
        }
        let compiled = engine.precompile_module(wasm)?;
        self.save(&path, &compiled);
        load_module(engine, &path).or_else(|_| Module::new(engine, wasm))
    }

    /// `source` makes the component's bytes; it runs only when nothing
    /// usable is cached, since making them may itself cost (a core module
    /// wrapped with an adapter).
    pub(crate) fn component<'a>(
        &self,
        engine: &Engine,
        digest: &str,
        source: impl FnOnce() -> wasmtime::Result<Cow<'a, [u8]>>,
    ) -> wasmtime::Result<Component> {
        let path = self.path(digest, "component");
        if path.exists() {
            match load_component(engine, &path) {
                Ok(c) => return Ok(c),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "discarding unusable compiled component")
                }
            }
        }
        let wasm = source()?;
        let compiled = engine.precompile_component(&wasm)?;
        self.save(&path, &compiled);
        load_component(engine, &path).or_else(|_| Component::new(engine, &wasm))
    }

    /// Best effort: a cache that cannot be written only costs a recompile
    /// next time. Temporary name plus rename, so a crash never leaves a torn
    /// artifact under a valid name.
    fn save(&self, path: &Path, bytes: &[u8]) {
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let res = std::fs::write(&tmp, bytes).and_then(|_| std::fs::rename(&tmp, path));
        if let Err(e) = res {
            tracing::warn!(path = %path.display(), error = %e, "could not cache compiled artifact");
        }
    }
}

// SAFETY (both functions): the files are produced by `Engine::precompile_*`
// of this very process or an earlier run of it, written into the node's own
// data directory under a temporary name and renamed into place. wasmtime
// checks the header and engine compatibility itself; what it cannot check is
// that the machine code is ours, and only someone who already controls the
// node's data directory could swap it.
#[allow(unsafe_code)]
fn load_module(engine: &Engine, path: &Path) -> wasmtime::Result<Module> {
    unsafe { Module::deserialize_file(engine, path) }
}

#[allow(unsafe_code)]
fn load_component(engine: &Engine, path: &Path) -> wasmtime::Result<Component> {
    unsafe { Component::deserialize_file(engine, path) }
}
