//! Controller benchmarks on `shoal up`, printed as one JSON object:
//! - scale-up: the Deployment's `scale` subresource set from 0 to N (what
//!   `kubectl scale` sends) → `readyReplicas == N` seen on a watch; with
//!   `-- --stages`, also when the pods were created, bound and Ready;
//! - rolling update: a new image for N replicas with `maxSurge: 25%` →
//!   the rollout complete (`NewReplicaSetAvailable`, all replicas updated
//!   and available);
//! - self-healing: a pod's deletion → its replacement Ready, one pod at a
//!   time.
//!
//! `cargo bench -p shoal-benches --bench controllers` runs it in full
//! against `target/release/shoal` (`cargo build --release --bin shoal`
//! first; `SHOAL_BIN` must then point there). Under `cargo test` a small
//! smoke version runs so CI keeps it working.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use serde_json::json;
use shoal_tests::{sample, Server};

mod common;
use common::{ms, percentile};

struct Sizes {
    scale_to: i32,
    rolling: i32,
    replacements: usize,
}

const TIMEOUT: Duration = Duration::from_secs(300);

fn deployment(name: &str, replicas: i32, image: &str) -> anyhow::Result<Deployment> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "terminationGracePeriodSeconds": 0,
                    "containers": [{"name": "main", "image": image}],
                },
            },
        },
    }))?)
}

fn ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Watches Deployment `name` from `rv` until `done` holds.
async fn until_deployment(
    api: &Api<Deployment>,
    name: &str,
    rv: &str,
    done: impl Fn(&Deployment) -> bool,
) -> anyhow::Result<()> {
    let wp = WatchParams::default()
        .fields(&format!("metadata.name={name}"))
        .timeout(290);
    let mut stream = api.watch(&wp, rv).await?.boxed();
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let ev = tokio::time::timeout_at(deadline, stream.try_next()).await??;
        match ev {
            Some(WatchEvent::Added(d)) | Some(WatchEvent::Modified(d)) if done(&d) => return Ok(()),
            Some(WatchEvent::Error(e)) => {
                anyhow::bail!("watch of deployment {name} ended: {}", e.message)
            }
            None => anyhow::bail!("watch of deployment {name} closed"),
            _ => {}
        }
    }
}

async fn rv_of(api: &Api<Deployment>) -> anyhow::Result<String> {
    Ok(api
        .list_metadata(&ListParams::default().limit(1))
        .await?
        .metadata
        .resource_version
        .unwrap_or_default())
}

/// When each stage of the scale-up was reached, per pod, as seen on a pod
/// watch: the pipeline's breakdown, to tell which hop the time goes to.
#[derive(Default)]
struct Stages {
    created: Vec<f64>,
    bound: Vec<f64>,
    ready: Vec<f64>,
}

impl Stages {
    fn report(mut self) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        for (name, v) in [
            ("created", &mut self.created),
            ("bound", &mut self.bound),
            ("ready", &mut self.ready),
        ] {
            v.sort_by(f64::total_cmp);
            out.insert(
                name.into(),
                json!({
                    "pods": v.len(),
                    "ms_p50": percentile(v, 0.5),
                    "ms_last": percentile(v, 1.0),
                }),
            );
        }
        serde_json::Value::Object(out)
    }
}

/// Records, from `start`, when each pod labelled `app=<name>` was first
/// seen, first bound to a node and first Ready, until `n` are Ready.
async fn watch_stages(
    pods: Api<Pod>,
    name: &str,
    rv: String,
    start: Instant,
    n: usize,
) -> anyhow::Result<Stages> {
    let wp = WatchParams::default()
        .labels(&format!("app={name}"))
        .timeout(290);
    let mut stream = pods.watch(&wp, &rv).await?.boxed();
    let (mut seen, mut bound, mut readied) = (HashSet::new(), HashSet::new(), HashSet::new());
    let mut stages = Stages::default();
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while readied.len() < n {
        let p = match tokio::time::timeout_at(deadline, stream.try_next()).await?? {
            Some(WatchEvent::Added(p)) | Some(WatchEvent::Modified(p)) => p,
            Some(WatchEvent::Error(e)) => anyhow::bail!("pod watch ended: {}", e.message),
            None => anyhow::bail!("pod watch closed"),
            _ => continue,
        };
        let at = ms(start.elapsed());
        let pod = p.metadata.name.clone().unwrap_or_default();
        if seen.insert(pod.clone()) {
            stages.created.push(at);
        }
        let on_node = p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
        if on_node && bound.insert(pod.clone()) {
            stages.bound.push(at);
        }
        if ready(&p) && readied.insert(pod) {
            stages.ready.push(at);
        }
    }
    Ok(stages)
}

/// 0 → `n` replicas through the scale subresource; time to all Ready, and
/// with `stages`, when the pods were created, bound and Ready on the way.
/// The stage watch decodes every pod event in this process, which takes
/// CPU from the cluster it measures, so it is not on by default.
async fn scale_up(
    client: &kube::Client,
    api: &Api<Deployment>,
    image: &str,
    n: i32,
    stages: bool,
) -> anyhow::Result<(f64, Option<Stages>)> {
    api.create(&PostParams::default(), &deployment("scale", 0, image)?)
        .await?;
    let rv = rv_of(api).await?;
    let start = Instant::now();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let stages = stages.then(|| {
        tokio::spawn(watch_stages(
            pods,
            "scale",
            rv.clone(),
            start,
            usize::try_from(n).unwrap_or(0),
        ))
    });
    api.patch_scale(
        "scale",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": n}})),
    )
    .await?;
    until_deployment(api, "scale", &rv, |d| {
        d.status.as_ref().and_then(|s| s.ready_replicas) == Some(n)
    })
    .await?;
    let took = ms(start.elapsed());
    let stages = match stages {
        Some(task) => Some(task.await??),
        None => None,
    };
    api.patch_scale(
        "scale",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 0}})),
    )
    .await?;
    Ok((took, stages))
}

fn complete(d: &Deployment, n: i32) -> bool {
    let Some(s) = d.status.as_ref() else {
        return false;
    };
    s.observed_generation >= d.metadata.generation
        && s.updated_replicas == Some(n)
        && s.available_replicas == Some(n)
        && s.replicas == Some(n)
        && s.conditions.iter().flatten().any(|c| {
            c.type_ == "Progressing" && c.reason.as_deref() == Some("NewReplicaSetAvailable")
        })
}

/// A rolling update of `n` ready replicas to a new image; its duration.
async fn rolling(api: &Api<Deployment>, v1: &str, v2: &str, n: i32) -> anyhow::Result<f64> {
    let rv = rv_of(api).await?;
    api.create(&PostParams::default(), &deployment("roll", n, v1)?)
        .await?;
    until_deployment(api, "roll", &rv, |d| complete(d, n)).await?;
    let rv = rv_of(api).await?;
    let start = Instant::now();
    let patch =
        json!({"spec": {"template": {"spec": {"containers": [{"name": "main", "image": v2}]}}}});
    api.patch("roll", &PatchParams::default(), &Patch::Strategic(patch))
        .await?;
    until_deployment(api, "roll", &rv, |d| {
        complete(d, n) && d.metadata.generation == Some(2)
    })
    .await?;
    Ok(ms(start.elapsed()))
}

/// Deletes one pod of a ready Deployment at a time and times until a new
/// pod is Ready in its place.
async fn replacements(
    client: &kube::Client,
    deploys: &Api<Deployment>,
    image: &str,
    samples: usize,
) -> anyhow::Result<Vec<f64>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let rv = rv_of(deploys).await?;
    deploys
        .create(&PostParams::default(), &deployment("heal", 5, image)?)
        .await?;
    until_deployment(deploys, "heal", &rv, |d| complete(d, 5)).await?;
    let lp = ListParams::default().labels("app=heal");
    let mut out = Vec::new();
    for _ in 0..samples {
        let list = pods.list(&lp).await?;
        let known: HashSet<String> = list
            .items
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        let victim = list
            .items
            .iter()
            .find(|p| ready(p))
            .and_then(|p| p.metadata.name.clone())
            .ok_or_else(|| anyhow::anyhow!("no ready pod to delete"))?;
        let wp = WatchParams::default().labels("app=heal").timeout(290);
        let mut stream = pods
            .watch(&wp, &list.metadata.resource_version.unwrap_or_default())
            .await?
            .boxed();
        let start = Instant::now();
        pods.delete(&victim, &DeleteParams::default()).await?;
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, stream.try_next()).await?? {
                Some(WatchEvent::Added(p)) | Some(WatchEvent::Modified(p))
                    if ready(&p)
                        && !known.contains(p.metadata.name.as_deref().unwrap_or_default()) =>
                {
                    out.push(ms(start.elapsed()));
                    break;
                }
                None => anyhow::bail!("pod watch closed"),
                _ => {}
            }
        }
        // Let the deleted pod finish leaving before the next sample.
        let deadline = Instant::now() + TIMEOUT;
        while pods.get_opt(&victim).await?.is_some() {
            anyhow::ensure!(Instant::now() < deadline, "pod {victim} never went away");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    Ok(out)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let full = std::env::args().any(|a| a == "--bench");
    // `-- --stages`: when pods were created, bound and Ready in the scale-up.
    let with_stages = std::env::args().any(|a| a == "--stages");
    let sizes = if full {
        Sizes {
            scale_to: 1000,
            rolling: 100,
            replacements: 50,
        }
    } else {
        Sizes {
            scale_to: 20,
            rolling: 8,
            replacements: 3,
        }
    };
    let v1 = sample("ticker")?;
    let up = Server::up(&[])?;
    let v2_path = up.data_dir().join("ticker-v2.wasm");
    std::fs::copy(v1.trim_start_matches("file://"), &v2_path)?;
    let v2 = format!("file://{}", v2_path.display());
    let client = up.client().await?;
    // Measured on a running cluster, as a user's `kubectl scale` is: the
    // node's own start-up is not part of any figure.
    up.wait_nodes_ready(&[shoal_tests::UP_NODE]).await?;
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let run = async {
        let (scale_ms, stages) =
            scale_up(&client, &deploys, &v1, sizes.scale_to, with_stages).await?;
        let rolling_ms = rolling(&deploys, &v1, &v2, sizes.rolling).await?;
        let mut heal = replacements(&client, &deploys, &v1, sizes.replacements).await?;
        heal.sort_by(f64::total_cmp);
        anyhow::Ok((scale_ms, stages, rolling_ms, heal))
    };
    let (scale_ms, stages, rolling_ms, heal) = match run.await {
        Ok(r) => r,
        Err(e) => {
            let saved = std::env::temp_dir().join("shoal-controllers-bench-up.log");
            let _ = std::fs::write(&saved, up.logs());
            return Err(e.context(format!("the server's log is in {}", saved.display())));
        }
    };
    let report = json!({
        "benchmark": "controllers",
        "mode": if full { "full" } else { "smoke" },
        "shoal": shoal_tests::shoal_bin().display().to_string(),
        "scale_up": {
            "from": 0,
            "to": sizes.scale_to,
            "ms_to_all_ready": scale_ms,
            "stages": stages.map(Stages::report),
        },
        "rolling_update": {"replicas": sizes.rolling, "max_surge": "25%", "max_unavailable": "25%", "ms": rolling_ms},
        "replacement": {
            "samples": heal.len(),
            "ms_p50": percentile(&heal, 0.5),
            "ms_p99": percentile(&heal, 0.99),
            "ms_max": percentile(&heal, 1.0),
        },
    });
    anyhow::ensure!(
        heal.len() == sizes.replacements,
        "not every replacement was seen"
    );
    println!("{report}");
    Ok(())
}
