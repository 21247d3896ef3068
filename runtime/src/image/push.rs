//! `shoal push`: puts a Wasm module or component (as a Wasm OCI artifact)
//! or an image archive (as a container image) into a registry, so pods can
//! name it by reference.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::registry::{Credentials, Registry};
use super::{hex, http_client, ImageError, Reference};
use crate::oci::layout;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// The CNCF Wasm OCI artifact's config type.
const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
const IMAGE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// Pushes `file` to `target` (`registry/repo:tag`); returns the pushed
/// manifest's `sha256:<hex>`.
pub async fn push(file: &Path, target: &str, creds: &[Credentials]) -> Result<String, ImageError> {
    let r = Reference::parse(target).map_err(|reason| ImageError::InvalidName {
        image: target.to_string(),
        reason,
    })?;
    if r.digest.is_some() {
        return Err(ImageError::InvalidName {
            image: target.to_string(),
            reason: "push to a tag; the digest is what the push gives".into(),
        });
    }
    let failed = |reason: String| ImageError::Push { reason };
    let bytes = tokio::fs::read(file)
        .await
        .map_err(|source| ImageError::Read {
            path: file.display().to_string(),
            source,
        })?;
    let (config, layers) = if bytes.starts_with(b"\0asm") {
        wasm_artifact(Bytes::from(bytes))
    } else {
        let file = file.to_path_buf();
        tokio::task::spawn_blocking(move || archive_image(&file))
            .await
            .map_err(|e| failed(format!("reading the archive: {e}")))?
            .map_err(failed)?
    };
    let registry = Registry::new(http_client()?);
    let descriptor = |media: &str, b: &Bytes| json!({"mediaType": media, "digest": format!("sha256:{}", hex(&Sha256::digest(b))), "size": b.len()});
    let mut layer_list = Vec::new();
    for (media, blob) in &layers {
        registry
            .push_blob(&r, blob.clone(), creds)
            .await
            .map_err(failed)?;
        layer_list.push(descriptor(media, blob));
    }
    registry
        .push_blob(&r, config.1.clone(), creds)
        .await
        .map_err(failed)?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(config.0, &config.1),
        "layers": layer_list,
    }))
    .map_err(|e| failed(e.to_string()))?;
    let manifest = Bytes::from(manifest);
    let digest = format!("sha256:{}", hex(&Sha256::digest(&manifest)));
    registry
        .push_manifest(&r, &r.manifest_ref(), OCI_MANIFEST, manifest, creds)
        .await
        .map_err(failed)?;
    Ok(digest)
}

type Blobs = ((&'static str, Bytes), Vec<(&'static str, Bytes)>);

/// A Wasm file as the CNCF Wasm OCI artifact: one `application/wasm`
/// layer, a config that says which WASI it targets.
fn wasm_artifact(wasm: Bytes) -> Blobs {
    // Byte 6 of the preamble: 0x01 is a component's layer, 0x00 a module's.
    let os = if wasm.get(6) == Some(&1) {
        "wasip2"
    } else {
        "wasip1"
    };
    let layer_digest = format!("sha256:{}", hex(&Sha256::digest(&wasm)));
    let config = json!({
        "architecture": "wasm",
        "os": os,
        "layerDigests": [layer_digest],
    });
    let config = Bytes::from(config.to_string());
    (
        (WASM_CONFIG, config),
        vec![(super::WASM_LAYER_TYPES[0], wasm)],
    )
}

/// An image archive's config and layers, as they are.
fn archive_image(file: &Path) -> Result<Blobs, String> {
    let dir = Scratch::new()?;
    let f = std::fs::File::open(file).map_err(|e| format!("opening {}: {e}", file.display()))?;
    tar::Archive::new(std::io::BufReader::new(f))
        .unpack(&dir.0)
        .map_err(|e| {
            format!(
                "{} is neither Wasm nor a tar archive of an image: {e}",
                file.display()
            )
        })?;
    let (config, layers) = layout::parts(&dir.0)?;
    let read = |p: &Path| {
        std::fs::read(p)
            .map(Bytes::from)
            .map_err(|e| format!("reading {}: {e}", p.display()))
    };
    let config = read(&config)?;
    serde_json::from_slice::<Value>(&config)
        .map_err(|e| format!("the image's config is not JSON: {e}"))?;
    let mut out = Vec::new();
    for (path, media) in layers {
        out.push((media, read(&path)?));
    }
    Ok(((IMAGE_CONFIG, config), out))
}

/// A temporary directory removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Scratch, String> {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("shoal-push-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
