//! Images: where a workload's bytes come from and where they are kept.
//!
//! An image is a URL — `file:///abs/path.wasm`, `https://host/path.wasm`
//! (a module, a component, or for runc an image archive), optionally
//! pinned with `@sha256:<hex>` — or a registry reference
//! (`registry:5000/team/app:v1`, `nginx`), pulled over the OCI distribution
//! API: a container image for runc, or a Wasm OCI artifact (a layer of
//! type `application/wasm`) for wasmtime. Bytes land in a
//! content-addressed store on the node (`blobs/sha256/<hex>`), so nothing
//! fetched once is fetched again while its digest is known; what a tag
//! last resolved to is remembered under `tags/`.

mod push;
pub mod reference;
mod registry;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use serde_json::Value;
use sha2::{Digest, Sha256};

pub use push::push;
pub use reference::Reference;
pub use registry::Credentials;
use registry::Registry;

/// Largest image we accept; a bigger "module" is a mistake or an attack.
const MAX_IMAGE_BYTES: usize = 256 * 1024 * 1024;
const FETCH_TIMEOUT: Duration = Duration::from_secs(60);

/// Largest blob (layer, module) taken from a registry.
const MAX_BLOB_BYTES: u64 = 4 * 1024 * 1024 * 1024;

/// Layer media types that carry a Wasm module or component: the CNCF Wasm
/// OCI artifact's, and the older `wasm-to-oci` one.
pub const WASM_LAYER_TYPES: [&str; 3] = [
    "application/wasm",
    "application/vnd.wasm.content.layer.v1+wasm",
    "application/vnd.module.wasm.content.layer.v1+wasm",
];

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image {image} is not on this node and its imagePullPolicy is Never")]
    NeverPull { image: String },
    #[error("invalid image name {image:?}: {reason}")]
    InvalidName { image: String, reason: String },
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{reason}")]
    Push { reason: String },
    #[error("fetching {url}: {reason}")]
    Fetch { url: String, reason: String },
    #[error("digest mismatch for {image}: expected sha256:{expected}, got sha256:{actual}")]
    DigestMismatch {
        image: String,
        expected: String,
        actual: String,
    },
    #[error("storing image {image} in {path}: {source}")]
    Store {
        image: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// A parsed image name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    pub location: Location,
    /// Lower-case hex of the expected sha256, when the name pins one.
    pub digest: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    File(PathBuf),
    Http(String),
    Registry(Reference),
}

impl ImageRef {
    pub fn parse(image: &str) -> Result<ImageRef, ImageError> {
        let invalid = |reason: &str| ImageError::InvalidName {
            image: image.to_string(),
            reason: reason.to_string(),
        };
        let (base, digest) = match image.rsplit_once("@sha256:") {
            Some((base, hex)) => {
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(invalid("a sha256 digest is 64 hexadecimal digits"));
                }
                (base, Some(hex.to_ascii_lowercase()))
            }
            None => (image, None),
        };
        let location = if let Some(path) = base.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(invalid(
                    "a file:// image needs an absolute path (file:///abs/path.wasm)",
                ));
            }
            Location::File(PathBuf::from(path))
        } else if base.starts_with("https://") || base.starts_with("http://") {
            base.parse::<http::Uri>()
                .map_err(|e| invalid(&format!("not a URL: {e}")))?;
            Location::Http(base.to_string())
        } else if base.contains("://") {
            return Err(invalid(
                "an image is a file:// or https:// URL, or a registry reference (registry:5000/team/app:v1)",
            ));
        } else {
            Location::Registry(Reference::parse(image).map_err(|e| invalid(&e))?)
        };
        Ok(ImageRef { location, digest })
    }
}

/// Kubernetes' `imagePullPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PullPolicy {
    /// Ask the registry what the tag names now (layers already here are
    /// not fetched again).
    Always,
    /// Use what the tag named when it was last pulled on this node.
    #[default]
    IfNotPresent,
    /// Never reach the registry.
    Never,
}

impl PullPolicy {
    /// The policy a container spec names (admission has defaulted it).
    pub fn parse(s: Option<&str>) -> PullPolicy {
        match s {
            Some("Always") => PullPolicy::Always,
            Some("Never") => PullPolicy::Never,
            _ => PullPolicy::IfNotPresent,
        }
    }
}

/// How to pull one image.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    pub policy: PullPolicy,
    /// From the pod's `imagePullSecrets`; the one naming the image's
    /// registry is used.
    pub credentials: Vec<Credentials>,
}

/// What a pull gave.
#[derive(Debug, Clone)]
pub enum Pulled {
    /// One file (`file://`, `https://`): a module, a component, or an
    /// image archive.
    File(Blob),
    /// An image from a registry.
    Manifest(Manifest),
}

impl Pulled {
    /// `sha256:<hex>` of what the image name resolved to, as kubelet
    /// reports `imageID`: the file, or the registry's top manifest.
    pub fn image_digest(&self) -> String {
        match self {
            Pulled::File(b) => format!("sha256:{}", b.digest),
            Pulled::Manifest(m) => format!("sha256:{}", m.image_digest),
        }
    }
}

/// A registry image's manifest for this machine, with its blobs in the
/// store.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// Hex digest of the name's manifest (an index, for multi-platform
    /// images).
    pub image_digest: String,
    /// Hex digest of the platform's own manifest.
    pub digest: String,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

impl Manifest {
    /// The layer holding a Wasm module or component, if this is a Wasm
    /// artifact.
    pub fn wasm_layer(&self) -> Option<&Descriptor> {
        self.layers
            .iter()
            .find(|l| WASM_LAYER_TYPES.contains(&l.media_type.as_str()))
    }

    /// The layers' media types, for messages.
    pub fn layer_types(&self) -> String {
        let types: Vec<&str> = self.layers.iter().map(|l| l.media_type.as_str()).collect();
        types.join(", ")
    }
}

/// One blob of a manifest, in the store.
#[derive(Debug, Clone)]
pub struct Descriptor {
    pub media_type: String,
    pub blob: Blob,
}

/// Whether an index entry's platform runs here: Linux on this machine's
/// architecture, or (with `wasm`) a Wasm artifact's `wasm`; an entry
/// without a platform fits anything.
pub(crate) fn platform_fits(entry: &Value, wasm: bool) -> bool {
    let arch = crate::oci::pack::go_arch();
    match entry.get("platform") {
        None => true,
        Some(p) => {
            let a = p
                .get("architecture")
                .and_then(Value::as_str)
                .unwrap_or(arch);
            let os = p.get("os").and_then(Value::as_str).unwrap_or("linux");
            (wasm && a == "wasm") || (os == "linux" && a == arch)
        }
    }
}

/// The node's content-addressed image store.
pub struct ImageStore {
    root: PathBuf,
    /// Files already hashed, keyed by path, size and mtime: a second pod of
    /// the same local module skips reading it again.
    known_files: Mutex<HashMap<PathBuf, (u64, SystemTime, String)>>,
    /// Plain URLs and registries share one connection pool.
    registry: Registry,
    /// Makes temporary names unique.
    temp: AtomicU64,
    /// A Deployment's replicas starting together pull its image once.
    flights: crate::once::Flights,
}

/// An image's bytes, in the store.
#[derive(Debug, Clone)]
pub struct Blob {
    /// Lower-case hex sha256.
    pub digest: String,
    pub path: PathBuf,
}

impl ImageStore {
    pub fn new(root: impl Into<PathBuf>) -> Result<ImageStore, ImageError> {
        let root = root.into();
        for dir in [root.join("blobs").join("sha256"), root.join("tags")] {
            std::fs::create_dir_all(&dir).map_err(|source| ImageError::Store {
                image: String::new(),
                path: dir.display().to_string(),
                source,
            })?;
        }
        Ok(ImageStore {
            root,
            known_files: Mutex::new(HashMap::new()),
            registry: Registry::new(http_client()?),
            temp: AtomicU64::new(0),
            flights: crate::once::Flights::new(),
        })
    }

    fn blob_path(&self, hex: &str) -> PathBuf {
        self.root.join("blobs").join("sha256").join(hex)
    }

    fn temp_path(&self, hex: &str) -> PathBuf {
        let n = self.temp.fetch_add(1, Ordering::Relaxed);
        self.blob_path(hex)
            .with_extension(format!("tmp{}-{n}", std::process::id()))
    }

    /// Makes the image's bytes available locally and returns what they are.
    pub async fn pull(&self, image: &str, opts: &PullOptions) -> Result<Pulled, ImageError> {
        let r = ImageRef::parse(image)?;
        match &r.location {
            Location::Registry(reference) => self
                .pull_registry(image, reference, opts)
                .await
                .map(Pulled::Manifest),
            Location::File(path) => match self.pinned(&r) {
                Some(b) => Ok(Pulled::File(b)),
                None => self
                    .pull_file(image, path, r.digest.as_deref())
                    .await
                    .map(Pulled::File),
            },
            Location::Http(url) => match self.pinned(&r) {
                Some(b) => Ok(Pulled::File(b)),
                None if opts.policy == PullPolicy::Never => Err(ImageError::NeverPull {
                    image: image.to_string(),
                }),
                None => {
                    let bytes = self.fetch(url).await?;
                    self.store(image, &bytes, r.digest.as_deref())
                        .map(Pulled::File)
                }
            },
        }
    }

    /// A pinned file image already in the store.
    fn pinned(&self, r: &ImageRef) -> Option<Blob> {
        let hex = r.digest.as_ref()?;
        let path = self.blob_path(hex);
        path.exists().then(|| Blob {
            digest: hex.clone(),
            path,
        })
    }

    /// Resolves a registry reference to this platform's manifest and makes
    /// sure every blob it names is in the store.
    async fn pull_registry(
        &self,
        image: &str,
        r: &Reference,
        opts: &PullOptions,
    ) -> Result<Manifest, ImageError> {
        let fetch_err = fetch_error(image);
        // Whoever waited here finds the tag resolved and the blobs stored
        // (with Always, only the manifest is asked again).
        let _turn = self.flights.lock(&format!("image:{image}")).await;
        let remembered = match (&r.digest, opts.policy) {
            (Some(hex), _) => Some(hex.clone()),
            (None, PullPolicy::Always) => None,
            (None, _) => self.remembered(&r.tagged()),
        };
        let local = remembered.and_then(|h| self.read_blob(&h).map(|b| (h, b)));
        let (image_digest, top) = match local {
            Some(found) => found,
            None if opts.policy == PullPolicy::Never => {
                return Err(ImageError::NeverPull {
                    image: image.to_string(),
                })
            }
            None => {
                let bytes = self
                    .registry
                    .manifest(r, &r.manifest_ref(), &opts.credentials)
                    .await
                    .map_err(fetch_err)?;
                let blob = self.store(image, &bytes, r.digest.as_deref())?;
                if r.digest.is_none() {
                    self.remember(&r.tagged(), &blob.digest);
                }
                (blob.digest, bytes)
            }
        };
        let top: Value = serde_json::from_slice(&top)
            .map_err(|e| fetch_err(format!("the manifest is not JSON: {e}")))?;
        let (digest, manifest) = if let Some(entries) = top.get("manifests") {
            let entries = entries
                .as_array()
                .ok_or_else(|| fetch_err("the index's manifests is not a list".into()))?;
            let chosen = entries
                .iter()
                .find(|e| platform_fits(e, true))
                .ok_or_else(|| {
                    fetch_err(format!(
                        "the image has no manifest for linux/{} or wasm (it has {})",
                        crate::oci::pack::go_arch(),
                        platforms(entries)
                    ))
                })?;
            let hex = digest_hex(chosen).map_err(fetch_err)?;
            let bytes = match self.read_blob(&hex) {
                Some(b) => b,
                None if opts.policy == PullPolicy::Never => {
                    return Err(ImageError::NeverPull {
                        image: image.to_string(),
                    })
                }
                None => {
                    let reference = format!("sha256:{hex}");
                    let bytes = self
                        .registry
                        .manifest(r, &reference, &opts.credentials)
                        .await
                        .map_err(fetch_err)?;
                    self.store(image, &bytes, Some(&hex))?;
                    bytes
                }
            };
            let v: Value = serde_json::from_slice(&bytes)
                .map_err(|e| fetch_err(format!("the platform's manifest is not JSON: {e}")))?;
            (hex, v)
        } else {
            (image_digest.clone(), top)
        };
        let config = manifest
            .get("config")
            .ok_or_else(|| fetch_err("the manifest has no config".into()))?;
        let config = self.descriptor(image, r, config, opts).await?;
        let mut layers = Vec::new();
        for l in manifest
            .get("layers")
            .and_then(Value::as_array)
            .ok_or_else(|| fetch_err("the manifest lists no layers".into()))?
        {
            layers.push(self.descriptor(image, r, l, opts).await?);
        }
        Ok(Manifest {
            image_digest,
            digest,
            config,
            layers,
        })
    }

    /// One blob of a manifest: from the store, or fetched into it.
    async fn descriptor(
        &self,
        image: &str,
        r: &Reference,
        d: &Value,
        opts: &PullOptions,
    ) -> Result<Descriptor, ImageError> {
        let fetch_err = fetch_error(image);
        let hex = digest_hex(d).map_err(fetch_err)?;
        let media_type = d
            .get("mediaType")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let path = self.blob_path(&hex);
        // Images that share a layer, pulled at once, fetch it once.
        let _turn = self.flights.lock(&format!("blob:{hex}")).await;
        if !path.exists() {
            if opts.policy == PullPolicy::Never {
                return Err(ImageError::NeverPull {
                    image: image.to_string(),
                });
            }
            let size = d.get("size").and_then(Value::as_u64);
            let tmp = self.temp_path(&hex);
            self.registry
                .blob_to(r, &hex, size, MAX_BLOB_BYTES, &tmp, &opts.credentials)
                .await
                .map_err(fetch_err)?;
            std::fs::rename(&tmp, &path).map_err(|source| ImageError::Store {
                image: image.to_string(),
                path: path.display().to_string(),
                source,
            })?;
        }
        Ok(Descriptor {
            media_type,
            blob: Blob { digest: hex, path },
        })
    }

    fn read_blob(&self, hex: &str) -> Option<Bytes> {
        std::fs::read(self.blob_path(hex)).ok().map(Bytes::from)
    }

    fn tag_path(&self, tagged: &str) -> PathBuf {
        self.root
            .join("tags")
            .join(hex(&Sha256::digest(tagged.as_bytes())))
    }

    /// What `tagged` last resolved to here.
    fn remembered(&self, tagged: &str) -> Option<String> {
        let text = std::fs::read_to_string(self.tag_path(tagged)).ok()?;
        let hex = text.trim();
        (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| hex.to_string())
    }

    fn remember(&self, tagged: &str, hex: &str) {
        let path = self.tag_path(tagged);
        let tmp = path.with_extension(format!("tmp{}", self.temp.fetch_add(1, Ordering::Relaxed)));
        // Losing this only costs a registry round trip next time.
        if std::fs::write(&tmp, hex)
            .and_then(|_| std::fs::rename(&tmp, &path))
            .is_err()
        {
            tracing::debug!(tag = tagged, "could not remember a tag's digest");
        }
    }

    async fn pull_file(
        &self,
        image: &str,
        path: &Path,
        expected: Option<&str>,
    ) -> Result<Blob, ImageError> {
        let read_err = |source| ImageError::Read {
            path: path.display().to_string(),
            source,
        };
        let meta = tokio::fs::metadata(path).await.map_err(read_err)?;
        let stamp = (meta.len(), meta.modified().map_err(read_err)?);
        let known = self
            .known_files
            .lock()
            .ok()
            .and_then(|k| k.get(path).cloned());
        if let Some((len, mtime, hex)) = known {
            if (len, mtime) == stamp && expected.is_none_or(|e| e == hex) {
                let blob = self.blob_path(&hex);
                if blob.exists() {
                    return Ok(Blob {
                        digest: hex,
                        path: blob,
                    });
                }
            }
        }
        let bytes = tokio::fs::read(path).await.map_err(read_err)?;
        let blob = self.store(image, &bytes, expected)?;
        if let Ok(mut k) = self.known_files.lock() {
            k.insert(path.to_path_buf(), (stamp.0, stamp.1, blob.digest.clone()));
        }
        Ok(blob)
    }

    async fn fetch(&self, url: &str) -> Result<Vec<u8>, ImageError> {
        let err = |reason: String| ImageError::Fetch {
            url: url.to_string(),
            reason,
        };
        let uri: http::Uri = url.parse().map_err(|e| err(format!("{e}")))?;
        let req = http::Request::get(uri)
            .body(Full::new(Bytes::new()))
            .map_err(|e| err(format!("{e}")))?;
        let resp = tokio::time::timeout(FETCH_TIMEOUT, self.registry.client().request(req))
            .await
            .map_err(|_| err(format!("no answer within {}s", FETCH_TIMEOUT.as_secs())))?
            .map_err(|e| err(describe_client_error(&e)))?;
        if !resp.status().is_success() {
            return Err(err(format!("server answered {}", resp.status())));
        }
        let body = tokio::time::timeout(
            FETCH_TIMEOUT,
            Limited::new(resp.into_body(), MAX_IMAGE_BYTES).collect(),
        )
        .await
        .map_err(|_| err("download did not finish in time".into()))?
        .map_err(|e| err(format!("reading the body: {e}")))?;
        Ok(body.to_bytes().to_vec())
    }

    /// Verifies `bytes` against the expected digest and writes them into the
    /// store under their own digest (write to a temporary name, then rename,
    /// so a crash never leaves a torn blob under a valid name).
    fn store(&self, image: &str, bytes: &[u8], expected: Option<&str>) -> Result<Blob, ImageError> {
        let actual = hex(&Sha256::digest(bytes));
        if let Some(expected) = expected {
            if expected != actual {
                return Err(ImageError::DigestMismatch {
                    image: image.to_string(),
                    expected: expected.to_string(),
                    actual,
                });
            }
        }
        let path = self.blob_path(&actual);
        if !path.exists() {
            let store_err = |source| ImageError::Store {
                image: image.to_string(),
                path: path.display().to_string(),
                source,
            };
            let tmp = self.temp_path(&actual);
            std::fs::write(&tmp, bytes).map_err(store_err)?;
            std::fs::rename(&tmp, &path).map_err(store_err)?;
        }
        Ok(Blob {
            digest: actual,
            path,
        })
    }
}

/// Turns a registry client's reason into the pull's error.
fn fetch_error(image: &str) -> impl Fn(String) -> ImageError + Copy + '_ {
    move |reason| ImageError::Fetch {
        url: image.to_string(),
        reason,
    }
}

/// The HTTPS (or, for loopback registries, HTTP) client every pull uses.
fn http_client() -> Result<registry::HttpClient, ImageError> {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .map_err(|e| ImageError::Fetch {
            url: String::new(),
            reason: format!("loading the system's CA certificates: {e}"),
        })?
        .https_or_http()
        .enable_http1()
        .build();
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(https),
    )
}

/// The hex of a descriptor's `sha256:` digest, refusing anything else (a
/// crafted digest must not name a path outside the store).
fn digest_hex(d: &Value) -> Result<String, String> {
    let digest = d
        .get("digest")
        .and_then(Value::as_str)
        .ok_or("a descriptor has no digest")?;
    digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_ascii_lowercase)
        .ok_or_else(|| format!("unsupported digest {digest:?} (sha256 only)"))
}

/// An index's platforms, for a message.
fn platforms(entries: &[Value]) -> String {
    let list: Vec<String> = entries
        .iter()
        .map(|e| {
            let p = e.get("platform");
            let get = |k: &str| {
                p.and_then(|p| p.get(k))
                    .and_then(Value::as_str)
                    .unwrap_or("?")
                    .to_string()
            };
            format!("{}/{}", get("os"), get("architecture"))
        })
        .collect();
    list.join(", ")
}

/// hyper's client errors print as "client error (Connect)"; the cause chain
/// says what actually happened (connection refused, DNS, TLS).
pub(crate) fn describe_client_error(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names() {
        let r = ImageRef::parse("file:///a/b.wasm").expect("valid");
        assert_eq!(r.location, Location::File("/a/b.wasm".into()));
        let d = "ab".repeat(32);
        let r = ImageRef::parse(&format!("https://h/x.wasm@sha256:{d}")).expect("valid");
        assert_eq!(r.digest.as_deref(), Some(d.as_str()));
        assert!(ImageRef::parse("file://rel/x.wasm").is_err());
        let r = ImageRef::parse("nginx:latest").expect("a registry reference");
        assert!(matches!(r.location, Location::Registry(_)), "{r:?}");
        assert!(ImageRef::parse("Nginx:latest").is_err());
        assert!(ImageRef::parse("ftp://h/x.wasm").is_err());
        assert!(ImageRef::parse("https://h/x.wasm@sha256:12").is_err());
    }

    #[tokio::test]
    async fn verifies_digests() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("m.wasm");
        std::fs::write(&file, b"\0asm\x01\0\0\0").expect("write");
        let store = ImageStore::new(dir.path().join("store")).expect("store");
        let url = format!("file://{}", file.display());
        let opts = PullOptions::default();
        let Pulled::File(blob) = store.pull(&url, &opts).await.expect("pull") else {
            panic!("a file:// image is one file");
        };
        assert!(blob.path.exists());
        let wrong = format!("{url}@sha256:{}", "0".repeat(64));
        let err = store.pull(&wrong, &opts).await.expect_err("mismatch");
        assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
        let missing = store
            .pull("file:///nonexistent/x.wasm", &opts)
            .await
            .expect_err("missing");
        assert!(
            missing.to_string().contains("/nonexistent/x.wasm"),
            "{missing}"
        );
    }
}
