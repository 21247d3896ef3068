//! Reading an image archive: an OCI image layout (`index.json`,
//! `blobs/sha256/…`, as `skopeo copy … oci-archive:` or `docker save` write
//! it) or Docker's older `docker save` layout (`manifest.json`). Gives the
//! image's run configuration and its layers, base first.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// What the image's config says about running it (the fields kubelet uses).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `NAME=value` entries.
    pub env: Vec<String>,
    pub working_dir: String,
    /// `uid[:gid]`; names are not resolved (no passwd lookup yet).
    pub user: String,
}

impl ImageConfig {
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "Entrypoint": self.entrypoint, "Cmd": self.cmd, "Env": self.env,
            "WorkingDir": self.working_dir, "User": self.user,
        })
    }

    /// Reads the `config` object of an image config blob (or our own copy).
    pub fn from_json(v: &Value) -> ImageConfig {
        let strings = |key: &str| -> Vec<String> {
            v.get(key)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()
        };
        let text = |key: &str| {
            v.get(key)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        ImageConfig {
            entrypoint: strings("Entrypoint"),
            cmd: strings("Cmd"),
            env: strings("Env"),
            working_dir: text("WorkingDir"),
            user: text("User"),
        }
    }
}

/// An archive unpacked into `dir`, read.
#[derive(Debug)]
pub(crate) struct Layout {
    pub config: ImageConfig,
    /// Layer files, base first.
    pub layers: Vec<PathBuf>,
}

const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// Reads the layout unpacked in `dir`.
pub(crate) fn read(dir: &Path) -> Result<Layout, String> {
    let (config, layers) = files(dir)?;
    let config = read_json(&config)?;
    Ok(Layout {
        config: ImageConfig::from_json(config.get("config").unwrap_or(&Value::Null)),
        layers,
    })
}

/// Layer files with their media types.
pub(crate) type TypedLayers = Vec<(PathBuf, &'static str)>;

/// The config file and the layer files (base first) with their media
/// types, read off each file's first bytes: what pushing the image to a
/// registry needs.
pub(crate) fn parts(dir: &Path) -> Result<(PathBuf, TypedLayers), String> {
    let (config, layers) = files(dir)?;
    let mut typed = Vec::new();
    for layer in layers {
        let mut magic = [0u8; 4];
        let n = std::fs::File::open(&layer)
            .and_then(|mut f| std::io::Read::read(&mut f, &mut magic))
            .map_err(|e| format!("reading {}: {e}", layer.display()))?;
        let media = match &magic[..n] {
            [0x1f, 0x8b, ..] => "application/vnd.oci.image.layer.v1.tar+gzip",
            [0x28, 0xb5, 0x2f, 0xfd] => "application/vnd.oci.image.layer.v1.tar+zstd",
            _ => "application/vnd.oci.image.layer.v1.tar",
        };
        typed.push((layer, media));
    }
    Ok((config, typed))
}

/// The config file and layer files (base first) of either layout.
fn files(dir: &Path) -> Result<(PathBuf, Vec<PathBuf>), String> {
    if dir.join("index.json").exists() {
        oci_files(dir)
    } else if dir.join("manifest.json").exists() {
        docker_files(dir)
    } else {
        Err("not an image archive: it has neither index.json (OCI image layout) nor manifest.json (docker save)".into())
    }
}

/// The config file and layer files (base first) of an OCI image layout.
fn oci_files(dir: &Path) -> Result<(PathBuf, Vec<PathBuf>), String> {
    let index = read_json(&dir.join("index.json"))?;
    let manifest = pick_manifest(dir, &index, 0)?;
    let config = manifest
        .pointer("/config/digest")
        .and_then(Value::as_str)
        .ok_or("the image manifest has no config.digest")?;
    let layers = each(
        manifest.get("layers"),
        "the image manifest has no layers",
        |l| {
            l.get("digest")
                .and_then(Value::as_str)
                .ok_or_else(|| "an image layer has no digest".to_string())
                .and_then(|d| blob(dir, d))
        },
    )?;
    Ok((blob(dir, config)?, layers))
}

/// The same for the older `docker save` format's `manifest.json`.
fn docker_files(dir: &Path) -> Result<(PathBuf, Vec<PathBuf>), String> {
    let manifest = read_json(&dir.join("manifest.json"))?;
    let first = manifest
        .as_array()
        .and_then(|a| a.first())
        .ok_or("manifest.json lists no image")?;
    let config = first
        .get("Config")
        .and_then(Value::as_str)
        .ok_or("manifest.json names no Config")?;
    let layers = each(first.get("Layers"), "manifest.json names no Layers", |l| {
        l.as_str()
            .ok_or_else(|| "a layer in manifest.json is not a path".to_string())
            .and_then(|p| inside(dir, p))
    })?;
    Ok((inside(dir, config)?, layers))
}

/// `f` over every item of a JSON array that must be there.
fn each<T>(
    list: Option<&Value>,
    missing: &str,
    f: impl Fn(&Value) -> Result<T, String>,
) -> Result<Vec<T>, String> {
    list.and_then(Value::as_array)
        .ok_or_else(|| missing.to_string())?
        .iter()
        .map(f)
        .collect()
}

/// The manifest for this machine's platform, following one level of
/// nested index as registries' multi-platform images have.
fn pick_manifest(dir: &Path, index: &Value, depth: u8) -> Result<Value, String> {
    let manifests = index
        .get("manifests")
        .and_then(Value::as_array)
        .ok_or("index.json lists no manifests")?;
    let arch = super::pack::go_arch();
    let chosen = manifests
        .iter()
        .find(|m| crate::image::platform_fits(m, false))
        .ok_or_else(|| format!("the image has no manifest for linux/{arch}"))?;
    let digest = chosen
        .get("digest")
        .and_then(Value::as_str)
        .ok_or("an index entry has no digest")?;
    let body = read_json(&blob(dir, digest)?)?;
    let media = chosen
        .get("mediaType")
        .or_else(|| body.get("mediaType"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    if INDEX_TYPES.contains(&media) || body.get("manifests").is_some() {
        if depth > 0 {
            return Err("image indexes nest deeper than one level".into());
        }
        return pick_manifest(dir, &body, depth + 1);
    }
    Ok(body)
}

/// The file of a `sha256:<hex>` blob, refusing anything that is not a
/// plain digest (a crafted digest must not name a path outside `dir`).
fn blob(dir: &Path, digest: &str) -> Result<PathBuf, String> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| format!("unsupported blob digest {digest:?} (sha256 only)"))?;
    let path = dir.join("blobs").join("sha256").join(hex);
    if !path.is_file() {
        return Err(format!("the archive lacks blob {digest}"));
    }
    Ok(path)
}

/// A relative path from `manifest.json`, kept inside `dir`.
fn inside(dir: &Path, rel: &str) -> Result<PathBuf, String> {
    let p = Path::new(rel);
    if p.components()
        .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(format!(
            "manifest.json names a path outside the archive: {rel:?}"
        ));
    }
    Ok(dir.join(p))
}

fn read_json(path: &Path) -> Result<Value, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("parsing {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const C: &str = "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";
    const D: &str = "dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd";

    fn write(dir: &Path, rel: &str, v: &Value) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, serde_json::to_vec(v).expect("json")).expect("write");
    }

    fn config() -> Value {
        json!({"config": {"Entrypoint": ["/bin/sh"], "Env": ["A=1"]}})
    }

    #[test]
    fn a_multi_platform_oci_layout_resolves_to_this_machines_manifest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let arch = super::super::pack::go_arch();
        write(dir.path(), &format!("blobs/sha256/{C}"), &config());
        write(dir.path(), &format!("blobs/sha256/{A}"), &json!({}));
        write(
            dir.path(),
            &format!("blobs/sha256/{B}"),
            &json!({"config": {"digest": format!("sha256:{C}")},
                "layers": [{"digest": format!("sha256:{A}")}]}),
        );
        write(
            dir.path(),
            &format!("blobs/sha256/{D}"),
            &json!({"mediaType": INDEX_TYPES[0], "manifests": [
                {"digest": format!("sha256:{A}"), "platform": {"os": "linux", "architecture": "no-such-arch"}},
                {"digest": format!("sha256:{B}"), "platform": {"os": "linux", "architecture": arch}},
            ]}),
        );
        write(
            dir.path(),
            "index.json",
            &json!({"manifests": [{"digest": format!("sha256:{D}")}]}),
        );
        let l = read(dir.path()).expect("layout");
        assert_eq!(l.config.entrypoint, vec!["/bin/sh".to_string()]);
        assert_eq!(l.layers, vec![dir.path().join("blobs/sha256").join(A)]);
    }

    #[test]
    fn docker_save_archives_read_and_paths_stay_inside() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "cfg.json", &config());
        write(dir.path(), "l1/layer.tar", &json!({}));
        write(
            dir.path(),
            "manifest.json",
            &json!([{"Config": "cfg.json", "Layers": ["l1/layer.tar"]}]),
        );
        let l = read(dir.path()).expect("layout");
        assert_eq!(l.config.env, vec!["A=1".to_string()]);
        assert_eq!(l.layers, vec![dir.path().join("l1/layer.tar")]);

        write(
            dir.path(),
            "manifest.json",
            &json!([{"Config": "cfg.json", "Layers": ["../../etc/passwd"]}]),
        );
        let e = read(dir.path()).expect_err("escaping layer path");
        assert!(e.contains("outside the archive"), "{e}");
    }

    #[test]
    fn digests_must_be_plain_sha256() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(
            dir.path(),
            "index.json",
            &json!({"manifests": [{"digest": "sha256:../../../etc/passwd"}]}),
        );
        let e = read(dir.path()).expect_err("crafted digest");
        assert!(e.contains("unsupported blob digest"), "{e}");
        let empty = tempfile::tempdir().expect("tempdir");
        assert!(read(empty.path())
            .expect_err("no layout")
            .contains("not an image archive"));
    }
}
