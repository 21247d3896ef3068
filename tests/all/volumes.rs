//! Persistent volumes: a StatefulSet's claims provisioned as local-path
//! volumes on the node of each claim's first pod, the data outliving the
//! pod, the claim pinning its replacement to that node, and the directory
//! removed once the claim is deleted; static volumes bound by class and
//! size; the bad inputs.

use std::path::PathBuf;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{DeleteParams, ListParams};
use kube::Api;
use shoal_tests::{pod_yaml, rust_sample, wait_for, Node, Server};

use crate::node::{wait_logs, wait_pod, wait_running, PATIENCE};

fn claim_phase(c: &PersistentVolumeClaim) -> &str {
    c.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn volume_phase(v: &PersistentVolume) -> &str {
    v.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn node_of(p: &Pod) -> String {
    p.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default()
}

/// The API handles every test here uses.
struct Apis {
    pods: Api<Pod>,
    claims: Api<PersistentVolumeClaim>,
    volumes: Api<PersistentVolume>,
}

async fn apis(s: &Server) -> anyhow::Result<Apis> {
    let client = s.client().await?;
    Ok(Apis {
        pods: Api::namespaced(client.clone(), "default"),
        claims: Api::namespaced(client.clone(), "default"),
        volumes: Api::all(client),
    })
}

/// A pod of `image` mounting claim `claim` at /data.
fn claim_pod(name: &str, image: &str, claim: &str) -> String {
    pod_yaml(
        name,
        image,
        &format!(
            "  volumes:\n  - name: store\n    persistentVolumeClaim:\n      claimName: {claim}\n"
        ),
        "    volumeMounts:\n    - name: store\n      mountPath: /data\n",
    )
}

/// Waits for an Event about pod `name` whose text contains `needle`.
async fn wait_event(s: &Server, name: &str, needle: &str) -> anyhow::Result<()> {
    let selector = format!("involvedObject.name={name}");
    wait_for(
        &format!("an Event of {name} saying {needle:?}"),
        PATIENCE,
        || async {
            let ev = s
                .kubectl(&["get", "events", "--field-selector", &selector])
                .ok()?;
            ev.contains(needle).then_some(())
        },
    )
    .await
}

fn sts_yaml(image: &str, replicas: i32) -> String {
    format!(
        "apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: web
spec:
  serviceName: web
  replicas: {replicas}
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      containers:
      - name: main
        image: {image}
        volumeMounts:
        - name: data
          mountPath: /data
  volumeClaimTemplates:
  - metadata:
      name: data
    spec:
      accessModes: [ReadWriteOnce]
      resources:
        requests:
          storage: 16Mi
"
    )
}

#[tokio::test]
async fn statefulset_claims_keep_their_data_on_their_node() -> anyhow::Result<()> {
    let Some(counter) = rust_sample("p1", "counter")? else {
        return Ok(());
    };
    let s = Server::start()?;
    let a = Node::start(&s, "vol-a", "127.0.10.1", &[])?;
    let b = Node::start(&s, "vol-b", "127.0.10.2", &[])?;
    s.wait_nodes_ready(&["vol-a", "vol-b"]).await?;
    let data_dir = |node: &str| -> PathBuf {
        if node == a.name {
            a.data_dir().join("volumes")
        } else {
            b.data_dir().join("volumes")
        }
    };
    let Apis {
        pods,
        claims,
        volumes,
    } = apis(&s).await?;

    let classes = s.kubectl(&["get", "storageclass"])?;
    assert!(
        classes.contains("local-path (default)") && classes.contains("WaitForFirstConsumer"),
        "{classes}"
    );
    s.kubectl_in(&["apply", "-f", "-"], Some(&sts_yaml(&counter, 2)))?;
    let first = wait_running(&pods, "web-0").await?;
    wait_running(&pods, "web-1").await?;
    wait_logs(&s, &["web-0"], "start 1\n").await?;
    wait_logs(&s, &["web-1"], "start 1\n").await?;

    // Each pod has its own claim, bound to a volume made on its node.
    let bound = wait_for("both claims bound", PATIENCE, || async {
        let list = claims.list(&ListParams::default()).await.ok()?;
        let mut names: Vec<String> = list
            .items
            .iter()
            .filter(|c| claim_phase(c) == "Bound")
            .filter_map(|c| c.metadata.name.clone())
            .collect();
        names.sort();
        (names == ["data-web-0", "data-web-1"]).then_some(list.items)
    })
    .await?;
    let table = s.kubectl(&["get", "pvc"])?;
    assert!(
        table.contains("data-web-0") && table.contains("Bound") && table.contains("RWO"),
        "{table}"
    );
    assert!(table.contains("local-path"), "{table}");
    let c0 = bound
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some("data-web-0"))
        .ok_or_else(|| anyhow::anyhow!("data-web-0 missing"))?;
    let pv_name = c0
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .unwrap_or_default();
    assert_eq!(
        pv_name,
        format!("pvc-{}", c0.metadata.uid.clone().unwrap_or_default())
    );
    let pv = volumes.get(&pv_name).await?;
    assert_eq!(volume_phase(&pv), "Bound");
    let home = node_of(&first);
    assert_eq!(
        pv.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("volumes.shoal.dev/node"))
            .map(String::as_str),
        Some(home.as_str())
    );
    let pvs = s.kubectl(&["get", "pv"])?;
    assert!(
        pvs.contains(&pv_name) && pvs.contains("default/data-web-0") && pvs.contains("Delete"),
        "{pvs}"
    );

    // The data outlives the pod, and the replacement runs where it is.
    pods.delete("web-0", &DeleteParams::default()).await?;
    let again = wait_pod(&pods, "web-0", "to come back with its data", |p| {
        p.metadata.uid != first.metadata.uid
            && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
    })
    .await?;
    assert_eq!(node_of(&again), home);
    wait_logs(&s, &["web-0"], "start 2\n").await?;
    let count_file = data_dir(&home).join(&pv_name).join("count");
    assert_eq!(std::fs::read_to_string(&count_file)?.trim(), "2");

    // Scaling down keeps the claim (retention policy Retain, the default);
    // scaling up again finds the data.
    s.kubectl(&["scale", "statefulset", "web", "--replicas=1"])?;
    wait_for("web-1 to go", PATIENCE, || async {
        pods.get_opt("web-1").await.ok()?.is_none().then_some(())
    })
    .await?;
    assert!(claims.get_opt("data-web-1").await?.is_some());
    s.kubectl(&["scale", "statefulset", "web", "--replicas=2"])?;
    wait_running(&pods, "web-1").await?;
    wait_logs(&s, &["web-1"], "start 2\n").await?;

    // Deleting the set leaves the claims; deleting the claims deletes the
    // volumes (reclaim policy Delete) and their directories on the nodes.
    s.kubectl(&["delete", "statefulset", "web", "--wait=true"])?;
    wait_for("the pods to go", PATIENCE, || async {
        let left = pods.list(&ListParams::default()).await.ok()?;
        left.items.is_empty().then_some(())
    })
    .await?;
    assert_eq!(claims.list(&ListParams::default()).await?.items.len(), 2);
    // An operator keeps web-1's data by switching its volume to Retain.
    let kept = claims
        .get("data-web-1")
        .await?
        .spec
        .and_then(|s| s.volume_name)
        .unwrap_or_default();
    s.kubectl(&[
        "patch",
        "pv",
        &kept,
        "-p",
        r#"{"spec":{"persistentVolumeReclaimPolicy":"Retain"}}"#,
    ])?;
    s.kubectl(&["delete", "pvc", "--all"])?;
    wait_for("web-0's volume to be deleted", PATIENCE, || async {
        volumes
            .get_opt(&pv_name)
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await?;
    assert!(
        !count_file.exists(),
        "{} outlived its volume",
        count_file.display()
    );
    wait_for("web-1's volume to be released", PATIENCE, || async {
        let v = volumes.get(&kept).await.ok()?;
        (volume_phase(&v) == "Released").then_some(())
    })
    .await?;
    // Deleting a Retain volume's object leaves its data on the node.
    let kept_home = volumes
        .get(&kept)
        .await?
        .metadata
        .labels
        .and_then(|l| l.get("volumes.shoal.dev/node").cloned())
        .unwrap_or_default();
    s.kubectl(&["delete", "pv", &kept])?;
    assert!(data_dir(&kept_home).join(&kept).join("count").exists());
    Ok(())
}

const STATIC: &str = "apiVersion: v1
kind: PersistentVolume
metadata:
  name: small
  labels: {size: small}
spec:
  storageClassName: manual
  capacity: {storage: 100Mi}
  accessModes: [ReadWriteOnce]
  hostPath: {path: DIR/small}
---
apiVersion: v1
kind: PersistentVolume
metadata:
  name: big
spec:
  storageClassName: manual
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  hostPath: {path: DIR/big}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: claim
spec:
  storageClassName: manual
  accessModes: [ReadWriteOnce]
  resources:
    requests: {storage: 50Mi}
";

#[tokio::test]
async fn static_volumes_bind_by_class_and_size() -> anyhow::Result<()> {
    let Some(counter) = rust_sample("p1", "counter")? else {
        return Ok(());
    };
    let s = Server::up(&[])?;
    let Apis {
        pods,
        claims,
        volumes,
    } = apis(&s).await?;
    let dir = tempfile::tempdir()?;
    let manifest = STATIC.replace("DIR", &dir.path().display().to_string());
    s.kubectl_in(&["apply", "-f", "-"], Some(&manifest))?;

    // The smallest volume that fits is the one bound.
    let c = wait_for("the claim to bind", PATIENCE, || async {
        let c = claims.get("claim").await.ok()?;
        (claim_phase(&c) == "Bound").then_some(c)
    })
    .await?;
    assert_eq!(
        c.spec.as_ref().and_then(|s| s.volume_name.as_deref()),
        Some("small")
    );
    let pvs = s.kubectl(&["get", "pv"])?;
    assert!(pvs.contains("default/claim"), "{pvs}");
    assert_eq!(volume_phase(&volumes.get("big").await?), "Available");

    // A pod writes through the claim into the volume's directory.
    s.kubectl_in(
        &["apply", "-f", "-"],
        Some(&claim_pod("writer", &counter, "claim")),
    )?;
    wait_running(&pods, "writer").await?;
    wait_logs(&s, &["writer"], "start 1\n").await?;
    assert_eq!(
        std::fs::read_to_string(dir.path().join("small/count"))?.trim(),
        "1"
    );

    // A pod whose claim does not exist waits, and says why.
    s.kubectl_in(
        &["apply", "-f", "-"],
        Some(&claim_pod("orphan", &counter, "nope")),
    )?;
    wait_event(&s, "orphan", "persistentvolumeclaim \"nope\" not found").await?;

    // Bad input is refused with the field named, and nothing changes.
    let err = s.kubectl_err(
        &["apply", "-f", "-"],
        Some("apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: sizeless\nspec:\n  accessModes: [ReadWriteOnce]\n"),
    )?;
    assert!(
        err.contains("spec.resources.requests.storage: Required value"),
        "{err}"
    );
    let err = s.kubectl_err(
        &["apply", "-f", "-"],
        Some("apiVersion: v1\nkind: PersistentVolume\nmetadata:\n  name: remote\nspec:\n  capacity: {storage: 1Gi}\n  accessModes: [ReadWriteMany]\n  nfs: {server: nas, path: /}\n"),
    )?;
    assert!(err.contains("spec.nfs"), "{err}");
    let err = s.kubectl_err(
        &[
            "patch",
            "pvc",
            "claim",
            "-p",
            r#"{"spec":{"resources":{"requests":{"storage":"2Gi"}}}}"#,
        ],
        None,
    )?;
    assert!(err.contains("cannot be resized"), "{err}");
    assert!(s.kubectl(&["get", "pv", "remote"]).is_err());

    // A volume no claim holds is deleted at once; a bound one is kept
    // (pv-protection) while its claim lasts.
    s.kubectl(&["delete", "pv", "big"])?;
    assert!(volumes.get_opt("big").await?.is_none());
    s.kubectl(&["delete", "pv", "small", "--wait=false"])?;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let held = volumes.get("small").await?;
    assert!(held.metadata.deletion_timestamp.is_some());
    assert_eq!(volume_phase(&held), "Bound");

    // With its claim gone, the Retain volume is Released, and then let go;
    // a hostPath volume's files are never Shoal's to remove.
    s.kubectl(&["delete", "pod", "writer", "orphan", "--wait=true"])?;
    s.kubectl(&["delete", "pvc", "claim"])?;
    wait_for("the released volume to go", PATIENCE, || async {
        volumes.get_opt("small").await.ok()?.is_none().then_some(())
    })
    .await?;
    assert!(dir.path().join("small/count").exists());

    // Without a deletion, a Retain volume outlives its claim as Released.
    s.kubectl_in(&["apply", "-f", "-"], Some(&manifest))?;
    wait_for("the claim to bind again", PATIENCE, || async {
        let c = claims.get("claim").await.ok()?;
        (claim_phase(&c) == "Bound").then_some(())
    })
    .await?;
    s.kubectl(&["delete", "pvc", "claim"])?;
    wait_for("the volume to be released", PATIENCE, || async {
        let v = volumes.get("small").await.ok()?;
        (volume_phase(&v) == "Released").then_some(())
    })
    .await?;

    // A claim may name its volume before the volume exists: it waits, then
    // binds to it and to no other.
    s.kubectl_in(
        &["apply", "-f", "-"],
        Some("apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: early\nspec:\n  storageClassName: manual\n  volumeName: later\n  accessModes: [ReadWriteOnce]\n  resources:\n    requests: {storage: 1Mi}\n"),
    )?;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(claim_phase(&claims.get("early").await?), "Pending");
    s.kubectl_in(
        &["apply", "-f", "-"],
        Some(&format!("apiVersion: v1\nkind: PersistentVolume\nmetadata:\n  name: later\nspec:\n  storageClassName: manual\n  capacity: {{storage: 1Mi}}\n  accessModes: [ReadWriteOnce]\n  hostPath: {{path: {}/later}}\n", dir.path().display())),
    )?;
    let early = wait_for("the early claim to bind", PATIENCE, || async {
        let c = claims.get("early").await.ok()?;
        (claim_phase(&c) == "Bound").then_some(c)
    })
    .await?;
    // "big" (Available, same class, larger) was there all along.
    assert_eq!(
        early.spec.as_ref().and_then(|s| s.volume_name.as_deref()),
        Some("later")
    );

    // persistentVolumeClaimRetentionPolicy Delete: claims go with the
    // pods scaled away, and the rest with the set.
    let counted = format!(
        "apiVersion: apps/v1\nkind: StatefulSet\nmetadata:\n  name: brief\nspec:\n  serviceName: brief\n  replicas: 2\n  podManagementPolicy: Parallel\n  persistentVolumeClaimRetentionPolicy: {{whenDeleted: Delete, whenScaled: Delete}}\n  selector:\n    matchLabels: {{app: brief}}\n  template:\n    metadata:\n      labels: {{app: brief}}\n    spec:\n      containers:\n      - name: main\n        image: {counter}\n        volumeMounts:\n        - {{name: data, mountPath: /data}}\n  volumeClaimTemplates:\n  - metadata: {{name: data}}\n    spec:\n      accessModes: [ReadWriteOnce]\n      resources: {{requests: {{storage: 1Mi}}}}\n"
    );
    s.kubectl_in(&["apply", "-f", "-"], Some(&counted))?;
    wait_running(&pods, "brief-1").await?;
    s.kubectl(&["scale", "statefulset", "brief", "--replicas=1"])?;
    wait_for("the scaled-away claim to go", PATIENCE, || async {
        claims
            .get_opt("data-brief-1")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await?;
    assert!(claims.get_opt("data-brief-0").await?.is_some());
    s.kubectl(&["delete", "statefulset", "brief"])?;
    wait_for("the set's claims to go with it", PATIENCE, || async {
        claims
            .get_opt("data-brief-0")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await?;

    // Deleting a namespace takes its claims, their pods and (class
    // local-path, reclaim Delete) their volumes with it.
    let scratch = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: scratch\n---\n\
         apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: tmp\n  namespace: scratch\n\
         spec:\n  accessModes: [ReadWriteOnce]\n  resources:\n    requests: {{storage: 1Mi}}\n---\n{}",
        claim_pod("user", &counter, "tmp").replace("  name: user\n", "  name: user\n  namespace: scratch\n")
    );
    s.kubectl_in(&["apply", "-f", "-"], Some(&scratch))?;
    let in_scratch: Api<Pod> = Api::namespaced(s.client().await?, "scratch");
    wait_running(&in_scratch, "user").await?;
    let provisioned = wait_for("the scratch volume", PATIENCE, || async {
        let list = volumes.list(&ListParams::default()).await.ok()?;
        list.items.into_iter().find(|v| {
            v.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with("pvc-"))
        })
    })
    .await?;
    let name = provisioned.metadata.name.clone().unwrap_or_default();
    let data = s.data_dir().join("node/volumes").join(&name);
    assert!(data.join("count").exists(), "{}", data.display());
    s.kubectl(&["delete", "namespace", "scratch", "--wait=false"])?;
    wait_for("the namespace and its volume to go", PATIENCE, || async {
        let ns_gone = s.kubectl(&["get", "namespace", "scratch"]).is_err();
        let pv_gone = volumes.get_opt(&name).await.ok()?.is_none();
        (ns_gone && pv_gone).then_some(())
    })
    .await?;
    assert!(!data.exists(), "{} outlived its namespace", data.display());
    Ok(())
}

#[tokio::test]
async fn a_claim_is_shared_by_runc_and_wasm_pods_on_its_node() -> anyhow::Result<()> {
    let Some(counter) = rust_sample("p1", "counter")? else {
        return Ok(());
    };
    let s = Server::up_on("127.0.10.3", &[])?;
    let image = shoal_tests::busybox_image()?;
    let Apis { pods, claims, .. } = apis(&s).await?;
    let manifest = format!(
        "apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: shared
spec:
  accessModes: [ReadWriteOnce]
  resources:
    requests: {{storage: 8Mi}}
---
apiVersion: v1
kind: Pod
metadata:
  name: box
spec:
  runtimeClassName: runc
  terminationGracePeriodSeconds: 1
  volumes:
  - name: store
    persistentVolumeClaim: {{claimName: shared}}
  containers:
  - name: main
    image: {image}
    command: [sh, -c]
    args: ['echo from runc > /data/note; cat /data/note; exec sleep 3600']
    volumeMounts:
    - {{name: store, mountPath: /data}}
"
    );
    s.kubectl_in(&["apply", "-f", "-"], Some(&manifest))?;
    wait_running(&pods, "box").await?;
    wait_logs(&s, &["box"], "from runc\n").await?;
    let c = claims.get("shared").await?;
    assert_eq!(claim_phase(&c), "Bound");
    assert_eq!(
        c.spec
            .as_ref()
            .and_then(|s| s.storage_class_name.as_deref()),
        Some("local-path"),
        "the default class is filled in"
    );

    // A Wasm pod mounting the same claim sees the runc pod's file, and the
    // runc pod sees what the Wasm guest writes.
    s.kubectl_in(
        &["apply", "-f", "-"],
        Some(&claim_pod("counter", &counter, "shared")),
    )?;
    wait_running(&pods, "counter").await?;
    wait_logs(&s, &["counter"], "start 1\n").await?;
    assert_eq!(
        s.kubectl(&["exec", "box", "--", "cat", "/data/note", "/data/count"])?,
        "from runc\n1"
    );

    // A claim in use is not taken from its pods: deleting it leaves it
    // Terminating (pvc-protection) with the data in place until they go.
    s.kubectl(&["delete", "pvc", "shared", "--wait=false"])?;
    let doomed = claims.get("shared").await?;
    assert!(doomed.metadata.deletion_timestamp.is_some());
    assert_eq!(
        doomed.metadata.finalizers.as_deref(),
        Some(&["kubernetes.io/pvc-protection".to_string()][..])
    );
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(claims.get_opt("shared").await?.is_some());
    assert_eq!(
        s.kubectl(&["exec", "box", "--", "cat", "/data/count"])?,
        "1"
    );
    s.kubectl(&["delete", "pod", "box", "counter"])?;
    wait_for("the claim to go with its pods", PATIENCE, || async {
        claims.get_opt("shared").await.ok()?.is_none().then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn ephemeral_volumes_live_and_die_with_their_pod() -> anyhow::Result<()> {
    let Some(counter) = rust_sample("p1", "counter")? else {
        return Ok(());
    };
    let s = Server::up(&[])?;
    let Apis {
        pods,
        claims,
        volumes,
    } = apis(&s).await?;
    let ephemeral = "  volumes:\n  - name: scratch\n    ephemeral:\n      volumeClaimTemplate:\n        metadata:\n          labels: {purpose: scratch}\n        spec:\n          accessModes: [ReadWriteOnce]\n          resources:\n            requests: {storage: 4Mi}\n";
    let mount = "    volumeMounts:\n    - name: scratch\n      mountPath: /data\n";
    s.kubectl_in(
        &["apply", "-f", "-"],
        Some(&pod_yaml("worker", &counter, ephemeral, mount)),
    )?;
    wait_running(&pods, "worker").await?;
    wait_logs(&s, &["worker"], "start 1\n").await?;
    let claim = claims.get("worker-scratch").await?;
    assert_eq!(claim_phase(&claim), "Bound");
    let owner = claim
        .metadata
        .owner_references
        .clone()
        .unwrap_or_default()
        .into_iter()
        .next()
        .map(|r| (r.kind, r.name));
    assert_eq!(owner, Some(("Pod".to_string(), "worker".to_string())));
    let pv = claim
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .unwrap_or_default();
    let data = s.data_dir().join("node/volumes").join(&pv);
    assert!(data.join("count").exists(), "{}", data.display());

    // A claim of that name made by someone else is not handed to the pod.
    s.kubectl_in(
        &["apply", "-f", "-"],
        Some("apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: squatter-scratch\nspec:\n  accessModes: [ReadWriteOnce]\n  resources:\n    requests: {storage: 1Mi}\n"),
    )?;
    s.kubectl_in(
        &["apply", "-f", "-"],
        Some(&pod_yaml("squatter", &counter, ephemeral, mount)),
    )?;
    wait_event(&s, "squatter", "was not created for").await?;

    // Invalid templates are refused with the field named.
    let bad = "  volumes:\n  - name: scratch\n    ephemeral:\n      volumeClaimTemplate:\n        spec:\n          accessModes: [ReadWriteOnce]\n";
    let err = s.kubectl_err(
        &["apply", "-f", "-"],
        Some(&pod_yaml("broken", &counter, bad, mount)),
    )?;
    assert!(
        err.contains(
            "spec.volumes[0].ephemeral.volumeClaimTemplate.spec.resources.requests.storage"
        ),
        "{err}"
    );

    // The pod's deletion takes its claim, the volume and the data.
    s.kubectl(&["delete", "pod", "worker"])?;
    wait_for("the ephemeral volume to go", PATIENCE, || async {
        let claim_gone = claims.get_opt("worker-scratch").await.ok()?.is_none();
        let pv_gone = volumes.get_opt(&pv).await.ok()?.is_none();
        (claim_gone && pv_gone).then_some(())
    })
    .await?;
    assert!(!data.exists(), "{} outlived its pod", data.display());
    Ok(())
}

#[tokio::test]
async fn a_read_write_once_pod_claim_admits_one_pod_at_a_time() -> anyhow::Result<()> {
    let s = Server::up_on("127.0.10.4", &[])?;
    let ticker = shoal_tests::sample("ticker")?;
    let Apis { pods, .. } = apis(&s).await?;
    let claim = "apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: solo
spec:
  accessModes: [ReadWriteOncePod]
  resources:
    requests: {storage: 8Mi}
";
    s.kubectl_in(
        &["apply", "-f", "-"],
        Some(&format!(
            "{claim}---\n{}",
            claim_pod("first", &ticker, "solo")
        )),
    )?;
    wait_running(&pods, "first").await?;

    // A second pod waits, saying why, as Kubernetes' scheduler does.
    s.kubectl_in(
        &["apply", "-f", "-"],
        Some(&claim_pod("second", &ticker, "solo")),
    )?;
    wait_event(&s, "second", "ReadWriteOncePod access mode").await?;
    assert_eq!(node_of(&pods.get("second").await?), "");

    // Once the first is gone, the second runs.
    s.kubectl(&["delete", "pod", "first"])?;
    wait_running(&pods, "second").await?;
    Ok(())
}
