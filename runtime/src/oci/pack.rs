//! Writing an image archive (OCI image layout, one layer) from a directory:
//! how the samples and tests make runc images without Docker or a registry.

use std::io::Write;
use std::path::Path;

use flate2::write::GzEncoder;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::layout::ImageConfig;

/// Packs `rootfs` as the single layer of an image whose run configuration
/// is `config`, and writes the archive to `out`.
pub fn pack_dir(rootfs: &Path, config: &ImageConfig, out: &Path) -> std::io::Result<()> {
    let mut layer_tar = tar::Builder::new(Vec::new());
    // Symlinks stay symlinks (busybox's applets are links to it).
    layer_tar.follow_symlinks(false);
    layer_tar.mode(tar::HeaderMode::Deterministic);
    layer_tar.append_dir_all(".", rootfs)?;
    let layer_tar = layer_tar.into_inner()?;
    let diff_id = sha256(&layer_tar);
    let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&layer_tar)?;
    let layer = gz.finish()?;
    let image_config = serde_json::to_vec(&json!({
        "architecture": go_arch(),
        "os": "linux",
        "config": config.to_json(),
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{diff_id}")]},
    }))?;
    let descriptor = |media: &str, bytes: &[u8]| -> Value {
        json!({"mediaType": media, "digest": format!("sha256:{}", sha256(bytes)), "size": bytes.len()})
    };
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptor("application/vnd.oci.image.config.v1+json", &image_config),
        "layers": [descriptor("application/vnd.oci.image.layer.v1.tar+gzip", &layer)],
    }))?;
    let mut entry = descriptor("application/vnd.oci.image.manifest.v1+json", &manifest);
    entry["platform"] = json!({"architecture": go_arch(), "os": "linux"});
    let index = serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [entry]}))?;
    let mut archive = tar::Builder::new(std::fs::File::create(out)?);
    let mut add = |name: String, bytes: &[u8]| -> std::io::Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        archive.append_data(&mut h, name, bytes)
    };
    add("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    add("index.json".into(), &index)?;
    for blob in [&manifest, &image_config, &layer] {
        add(format!("blobs/sha256/{}", sha256(blob)), blob)?;
    }
    archive.into_inner()?.sync_all()
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub(crate) fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}
