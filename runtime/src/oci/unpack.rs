//! Turning an image archive into a root filesystem on disk: the archive is
//! unpacked, its layers applied base first with OCI whiteouts, and the
//! result kept as `<dest>/rootfs` plus `<dest>/image.json`. Built in a
//! temporary directory and renamed into place, so a crash mid-way leaves
//! nothing that looks finished.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Component, Path, PathBuf};

use flate2::read::GzDecoder;

use super::layout::{self, ImageConfig};

/// Name of the run configuration kept beside an unpacked root.
const IMAGE_JSON: &str = "image.json";

/// An image ready to start containers from.
#[derive(Debug, Clone)]
pub(crate) struct Unpacked {
    pub rootfs: PathBuf,
    pub config: ImageConfig,
}

/// Reads what an earlier unpack left in `dest`, if it finished.
pub(crate) fn existing(dest: &Path) -> Option<Unpacked> {
    let bytes = std::fs::read(dest.join(IMAGE_JSON)).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let rootfs = dest.join("rootfs");
    rootfs.is_dir().then(|| Unpacked {
        rootfs,
        config: ImageConfig::from_json(&v),
    })
}

/// What a root filesystem is built from.
#[derive(Debug)]
pub(crate) enum Source {
    /// An image archive (OCI image layout or `docker save`).
    Archive(PathBuf),
    /// A registry image's config blob and layer blobs, base first.
    Layers {
        config: PathBuf,
        layers: Vec<PathBuf>,
    },
}

/// Builds the root filesystem of `source` into `dest` (blocking: run it
/// off the async executor).
pub(crate) fn unpack(source: &Source, dest: &Path) -> Result<Unpacked, String> {
    if let Some(done) = existing(dest) {
        return Ok(done);
    }
    let tmp = dest.with_extension("partial");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| format!("clearing {}: {e}", tmp.display()))?;
    }
    let files = tmp.join("archive");
    let rootfs = tmp.join("rootfs");
    for d in [&files, &rootfs] {
        std::fs::create_dir_all(d).map_err(|e| format!("creating {}: {e}", d.display()))?;
    }
    let (config, layers) = match source {
        Source::Archive(archive) => {
            let f =
                File::open(archive).map_err(|e| format!("opening {}: {e}", archive.display()))?;
            tar::Archive::new(BufReader::new(f))
                .unpack(&files)
                .map_err(|e| format!("not a tar archive of an image: {e}"))?;
            let layout = layout::read(&files)?;
            (layout.config, layout.layers)
        }
        Source::Layers { config, layers } => {
            let bytes =
                std::fs::read(config).map_err(|e| format!("reading the image config: {e}"))?;
            let v: serde_json::Value = serde_json::from_slice(&bytes)
                .map_err(|e| format!("the image config is not JSON: {e}"))?;
            let config =
                ImageConfig::from_json(v.get("config").unwrap_or(&serde_json::Value::Null));
            (config, layers.clone())
        }
    };
    for (i, layer) in layers.iter().enumerate() {
        apply_layer(&rootfs, layer).map_err(|e| format!("applying layer {}: {e}", i + 1))?;
    }
    std::fs::remove_dir_all(&files).map_err(|e| format!("clearing {}: {e}", files.display()))?;
    let json = serde_json::to_vec(&config.to_json()).map_err(|e| e.to_string())?;
    std::fs::write(tmp.join(IMAGE_JSON), json).map_err(|e| format!("writing image.json: {e}"))?;
    if dest.exists() {
        std::fs::remove_dir_all(dest).map_err(|e| format!("clearing {}: {e}", dest.display()))?;
    }
    std::fs::rename(&tmp, dest).map_err(|e| format!("moving the image into place: {e}"))?;
    Ok(Unpacked {
        rootfs: dest.join("rootfs"),
        config,
    })
}

/// Applies one layer file (tar, gzip-compressed or not) onto `rootfs`.
fn apply_layer(rootfs: &Path, layer: &Path) -> Result<(), String> {
    let mut f = File::open(layer).map_err(|e| format!("opening {}: {e}", layer.display()))?;
    let mut magic = [0u8; 4];
    let n = f.read(&mut magic).map_err(|e| e.to_string())?;
    let f = File::open(layer).map_err(|e| format!("opening {}: {e}", layer.display()))?;
    let reader: Box<dyn Read> = match &magic[..n] {
        [0x1f, 0x8b, ..] => Box::new(GzDecoder::new(BufReader::new(f))),
        [0x28, 0xb5, 0x2f, 0xfd] => return Err("zstd-compressed layers are not supported".into()),
        _ => Box::new(BufReader::new(f)),
    };
    apply(rootfs, reader)
}

/// Applies a layer's tar stream: whiteouts delete what lower layers put
/// there, everything else is written over it.
pub(crate) fn apply(rootfs: &Path, reader: impl Read) -> Result<(), String> {
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    archive.set_unpack_xattrs(false);
    let entries = archive.entries().map_err(|e| e.to_string())?;
    for entry in entries {
        let mut entry = entry.map_err(|e| e.to_string())?;
        let path = entry.path().map_err(|e| e.to_string())?.into_owned();
        let rel = relative(&path)?;
        let Some(name) = rel.file_name().and_then(|n| n.to_str()) else {
            continue; // the layer's root itself
        };
        if let Some(hidden) = name.strip_prefix(".wh.") {
            let parent = rel.parent().unwrap_or(Path::new(""));
            let dir = safe_dir(rootfs, parent);
            if hidden == ".wh..opq" {
                // Opaque directory: nothing below from lower layers shows.
                if let Some(dir) = dir {
                    for child in std::fs::read_dir(&dir).map_err(|e| e.to_string())? {
                        remove(&child.map_err(|e| e.to_string())?.path())?;
                    }
                }
            } else if let Some(dir) = dir {
                remove(&dir.join(hidden))?;
            }
            continue;
        }
        // Only a directory over a directory merges; anything else replaces
        // what is there, and is removed first so that writing a file never
        // follows a symlink a lower layer left at its name.
        if let Some(dir) = safe_dir(rootfs, rel.parent().unwrap_or(Path::new(""))) {
            let target = dir.join(name);
            if let Ok(meta) = std::fs::symlink_metadata(&target) {
                if !(meta.is_dir() && entry.header().entry_type().is_dir()) {
                    remove(&target)?;
                }
            }
        }
        entry
            .unpack_in(rootfs)
            .map_err(|e| format!("{}: {e}", rel.display()))?;
    }
    Ok(())
}

/// The entry's path relative to the root, refusing `..` and the like.
fn relative(path: &Path) -> Result<PathBuf, String> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir | Component::RootDir => {}
            _ => return Err(format!("layer path {} leaves the image", path.display())),
        }
    }
    Ok(out)
}

/// `rootfs/rel` when it is a real directory reached without following a
/// symlink (a layer could otherwise delete host files through a link it
/// planted); `None` otherwise.
fn safe_dir(rootfs: &Path, rel: &Path) -> Option<PathBuf> {
    let mut at = rootfs.to_path_buf();
    for c in rel.components() {
        at.push(c);
        match std::fs::symlink_metadata(&at) {
            // Through a symlink nothing is removed: the entry itself is
            // then written by the tar crate, which keeps it inside the root.
            Ok(m) if m.is_dir() && !m.file_type().is_symlink() => {}
            _ => return None,
        }
    }
    Some(at)
}

fn remove(path: &Path) -> Result<(), String> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(_) => Ok(()),
    }
    .map_err(|e| format!("removing {}: {e}", path.display()))
}
