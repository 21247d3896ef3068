//! Images: where a module's bytes come from and where they are kept.
//!
//! An image names a Wasm file by URL: `file:///abs/path.wasm` or
//! `https://host/path.wasm`, optionally pinned with `@sha256:<hex>`. Bytes
//! land in a content-addressed store on the node (`blobs/sha256/<hex>`), so
//! a module fetched once is never fetched again while its digest is known.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use http_body_util::{BodyExt, Empty, Limited};
use sha2::{Digest, Sha256};

/// Largest image we accept; a bigger "module" is a mistake or an attack.
const MAX_IMAGE_BYTES: usize = 256 * 1024 * 1024;
const FETCH_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("invalid image name {image:?}: {reason}")]
    InvalidName { image: String, reason: String },
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
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
        } else {
            return Err(invalid(
                "an image is a file:///abs/path or https://host/path URL (a .wasm file, or for runc an OCI image archive), optionally with @sha256:<digest>; registry references are not supported yet",
            ));
        };
        Ok(ImageRef { location, digest })
    }
}

/// The node's content-addressed image store.
pub struct ImageStore {
    root: PathBuf,
    /// Files already hashed, keyed by path, size and mtime: a second pod of
    /// the same local module skips reading it again.
    known_files: Mutex<HashMap<PathBuf, (u64, SystemTime, String)>>,
    /// Pinned URLs already in the store need no network at all.
    client: hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        Empty<bytes::Bytes>,
    >,
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
        let blobs = root.join("blobs").join("sha256");
        std::fs::create_dir_all(&blobs).map_err(|source| ImageError::Store {
            image: String::new(),
            path: blobs.display().to_string(),
            source,
        })?;
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(|e| ImageError::Fetch {
                url: String::new(),
                reason: format!("loading the system's CA certificates: {e}"),
            })?
            .https_or_http()
            .enable_http1()
            .build();
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(https);
        Ok(ImageStore {
            root,
            known_files: Mutex::new(HashMap::new()),
            client,
        })
    }

    fn blob_path(&self, hex: &str) -> PathBuf {
        self.root.join("blobs").join("sha256").join(hex)
    }

    /// Makes the image's bytes available locally and returns where.
    pub async fn pull(&self, image: &str) -> Result<Blob, ImageError> {
        let r = ImageRef::parse(image)?;
        if let Some(hex) = &r.digest {
            let path = self.blob_path(hex);
            if path.exists() {
                return Ok(Blob {
                    digest: hex.clone(),
                    path,
                });
            }
        }
        match &r.location {
            Location::File(path) => self.pull_file(image, path, r.digest.as_deref()).await,
            Location::Http(url) => {
                let bytes = self.fetch(url).await?;
                self.store(image, &bytes, r.digest.as_deref())
            }
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
        let resp = tokio::time::timeout(FETCH_TIMEOUT, self.client.get(uri))
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
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            std::fs::write(&tmp, bytes).map_err(store_err)?;
            std::fs::rename(&tmp, &path).map_err(store_err)?;
        }
        Ok(Blob {
            digest: actual,
            path,
        })
    }
}

/// hyper's client errors print as "client error (Connect)"; the cause chain
/// says what actually happened (connection refused, DNS, TLS).
fn describe_client_error(e: &dyn std::error::Error) -> String {
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
        assert!(ImageRef::parse("nginx:latest").is_err());
        assert!(ImageRef::parse("https://h/x.wasm@sha256:12").is_err());
    }

    #[tokio::test]
    async fn verifies_digests() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("m.wasm");
        std::fs::write(&file, b"\0asm\x01\0\0\0").expect("write");
        let store = ImageStore::new(dir.path().join("store")).expect("store");
        let url = format!("file://{}", file.display());
        let blob = store.pull(&url).await.expect("pull");
        assert!(blob.path.exists());
        let wrong = format!("{url}@sha256:{}", "0".repeat(64));
        let err = store.pull(&wrong).await.expect_err("mismatch");
        assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
        let missing = store
            .pull("file:///nonexistent/x.wasm")
            .await
            .expect_err("missing");
        assert!(
            missing.to_string().contains("/nonexistent/x.wasm"),
            "{missing}"
        );
    }
}
