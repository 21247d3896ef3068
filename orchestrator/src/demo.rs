//! `shoal up --demo`: the sample modules (compiled from WAT at build time)
//! and their manifests, written out and applied through the API like any
//! `kubectl apply`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, PostParams};
use kube::Client;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The modules, by file name.
pub const MODULES: &[(&str, &[u8])] = &[
    (
        "hello.wasm",
        include_bytes!(concat!(env!("OUT_DIR"), "/hello.wasm")),
    ),
    (
        "ticker.wasm",
        include_bytes!(concat!(env!("OUT_DIR"), "/ticker.wasm")),
    ),
    (
        "crasher.wasm",
        include_bytes!(concat!(env!("OUT_DIR"), "/crasher.wasm")),
    ),
    (
        "hog.wasm",
        include_bytes!(concat!(env!("OUT_DIR"), "/hog.wasm")),
    ),
    (
        "spinner.wasm",
        include_bytes!(concat!(env!("OUT_DIR"), "/spinner.wasm")),
    ),
    (
        "config-reader.wasm",
        include_bytes!(concat!(env!("OUT_DIR"), "/config-reader.wasm")),
    ),
    // Counts its starts in a file on a persistent volume.
    (
        "journal.wasm",
        include_bytes!(concat!(env!("OUT_DIR"), "/journal.wasm")),
    ),
    // A wasi:http component: served per request behind a Service.
    (
        "http-hello.wasm",
        include_bytes!(concat!(env!("OUT_DIR"), "/http-hello.wasm")),
    ),
];

const MANIFEST: &str = include_str!("../../samples/manifests/wasm-pods.yaml");

/// Writes the modules and the rendered manifest into `dir`; returns the
/// manifest's path.
pub fn write_samples(dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    for (name, bytes) in MODULES {
        let path = dir.join(name);
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    let manifest = dir.join("demo.yaml");
    let text = MANIFEST.replace("${SAMPLES}", &dir.display().to_string());
    std::fs::write(&manifest, text).with_context(|| format!("writing {}", manifest.display()))?;
    Ok(manifest)
}

const RUNC_MANIFEST: &str = include_str!("../../samples/manifests/runc-pods.yaml");

/// Where Debian's busybox-static puts its one static binary.
const BUSYBOX: &str = "/bin/busybox";

/// Packs a busybox image into `dir` and renders the runc manifest beside
/// it; `None` (and why) when this machine cannot run the runc demo.
pub fn write_runc_sample(dir: &Path) -> anyhow::Result<Result<PathBuf, String>> {
    let runc = std::process::Command::new("runc").arg("--version").output();
    if !runc.is_ok_and(|o| o.status.success()) {
        return Ok(Err("runc is not installed (apt install runc)".into()));
    }
    let listed = std::process::Command::new(BUSYBOX).arg("--list").output();
    let Ok(listed) = listed.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()) else {
        return Ok(Err(format!(
            "{BUSYBOX} is missing (apt install busybox-static)"
        )));
    };
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let root = dir.join("busybox-root");
    if root.exists() {
        std::fs::remove_dir_all(&root).with_context(|| format!("clearing {}", root.display()))?;
    }
    for d in ["bin", "etc", "tmp", "www"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy(BUSYBOX, root.join("bin/busybox"))?;
    for applet in listed.lines().filter(|a| *a != "busybox") {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n")?;
    std::fs::write(
        root.join("www/index.html"),
        "hello from a runc container, beside the Wasm pods\n",
    )?;
    let archive = dir.join("busybox.tar");
    let config = shoal_runtime::oci::ImageConfig {
        cmd: vec!["sh".into()],
        ..Default::default()
    };
    shoal_runtime::oci::pack_dir(&root, &config, &archive)
        .with_context(|| format!("packing {}", archive.display()))?;
    std::fs::remove_dir_all(&root).with_context(|| format!("clearing {}", root.display()))?;
    let manifest = dir.join("runc-demo.yaml");
    let text = RUNC_MANIFEST.replace("${IMAGE}", &format!("file://{}", archive.display()));
    std::fs::write(&manifest, text).with_context(|| format!("writing {}", manifest.display()))?;
    Ok(Ok(manifest))
}

/// Creates every object in the manifest that does not exist yet.
pub async fn apply(client: &Client, manifest: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(manifest)
        .with_context(|| format!("reading {}", manifest.display()))?;
    // Parse every document first: the YAML parser is not Send.
    let docs = serde_yaml_ng::Deserializer::from_str(&text)
        .map(serde::Deserialize::deserialize)
        .collect::<Result<Vec<serde_json::Value>, _>>()
        .with_context(|| format!("parsing {}", manifest.display()))?;
    for value in docs {
        let kind = value
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or_default()
            .to_string();
        let ns = value
            .pointer("/metadata/namespace")
            .and_then(|n| n.as_str())
            .unwrap_or("default")
            .to_string();
        match kind.as_str() {
            "Namespace" => create::<Namespace>(Api::all(client.clone()), value).await?,
            "ConfigMap" => create::<ConfigMap>(Api::namespaced(client.clone(), &ns), value).await?,
            "Secret" => create::<Secret>(Api::namespaced(client.clone(), &ns), value).await?,
            "Pod" => create::<Pod>(Api::namespaced(client.clone(), &ns), value).await?,
            "Deployment" => {
                create::<Deployment>(Api::namespaced(client.clone(), &ns), value).await?
            }
            "StatefulSet" => {
                create::<StatefulSet>(Api::namespaced(client.clone(), &ns), value).await?
            }
            "Service" => create::<Service>(Api::namespaced(client.clone(), &ns), value).await?,
            "Ingress" => create::<Ingress>(Api::namespaced(client.clone(), &ns), value).await?,
            "" => continue,
            other => {
                anyhow::bail!("the demo manifest holds a {other}, which the demo does not apply")
            }
        }
    }
    Ok(())
}

async fn create<K>(api: Api<K>, value: serde_json::Value) -> anyhow::Result<()>
where
    K: kube::Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(value)?;
    match api.create(&PostParams::default(), &obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}
