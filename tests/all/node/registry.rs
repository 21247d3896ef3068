//! Images pulled from a real OCI registry (Debian's `docker-registry`):
//! Wasm OCI artifacts for wasmtime pods and container images for runc
//! pods, both pushed with `shoal push`; pull policies; pull secrets for a
//! registry that wants a password; and each way a pull can fail.

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use shoal_tests::{
    busybox_image, fresh_wasm, sample, Registry, RegistryAuth, Server, REGISTRY_PASSWORD,
    REGISTRY_USER,
};

use super::{first_container, phase, wait_logs, wait_pod, waiting};

fn pod(name: &str, image: &str, spec: &str, container: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  restartPolicy: Never\n  terminationGracePeriodSeconds: 1\n{spec}  containers:\n  - name: main\n    image: {image}\n{container}---\n"
    )
}

/// The digest part of `shoal push`'s `name@sha256:<hex>`.
fn digest_of(pushed: &str) -> String {
    pushed.rsplit('@').next().unwrap_or_default().to_string()
}

fn image_id(p: &Pod) -> String {
    first_container(p)
        .map(|c| c.image_id.clone())
        .unwrap_or_default()
}

async fn wait_waiting(pods: &Api<Pod>, name: &str, reasons: &[&str]) -> anyhow::Result<String> {
    let p = wait_pod(pods, name, &format!("to wait with {reasons:?}"), |p| {
        waiting(p).is_some_and(|(r, _)| reasons.contains(&r.as_str()))
    })
    .await?;
    Ok(waiting(&p).map(|(_, m)| m).unwrap_or_default())
}

/// A private registry's image: pushed only with credentials; a pod
/// without a pull secret is refused, one with it runs.
async fn private_pulls(s: &Server, pods: &Api<Pod>, r: &Registry, n: usize) -> anyhow::Result<()> {
    let image = format!("{}/team/hello:v1", r.host);
    let err = r
        .push(&sample("hello")?, &image, false)
        .await
        .expect_err("anonymous push");
    assert!(err.to_string().contains("refused"), "{err}");
    r.push(&sample("hello")?, &image, true).await?;
    let secret = format!("regcred-{n}");
    s.kubectl(&[
        "create",
        "secret",
        "docker-registry",
        &secret,
        &format!("--docker-server={}", r.host),
        &format!("--docker-username={REGISTRY_USER}"),
        &format!("--docker-password={REGISTRY_PASSWORD}"),
    ])?;
    // Anonymous first: once the node holds the image, IfNotPresent lets
    // any pod use it, as kubelet does.
    let anonymous = format!("anonymous-{n}");
    s.kubectl_in(
        &["apply", "-f", "-"],
        Some(&pod(&anonymous, &image, "", "")),
    )?;
    let m = wait_waiting(pods, &anonymous, &["ErrImagePull", "ImagePullBackOff"]).await?;
    assert!(m.contains("refused access anonymously"), "{m}");
    let with_secret = format!("with-secret-{n}");
    let spec = if n == 0 {
        format!("  imagePullSecrets:\n  - name: {secret}\n")
    } else {
        // The second way: the ServiceAccount carries the secret, and
        // admission gives it to pods that name none of their own.
        let patch = format!(r#"{{"imagePullSecrets":[{{"name":"{secret}"}}]}}"#);
        s.kubectl(&["patch", "serviceaccount", "default", "-p", &patch])?;
        String::new()
    };
    s.kubectl_in(
        &["apply", "-f", "-"],
        Some(&pod(&with_secret, &image, &spec, "")),
    )?;
    let p = wait_pod(pods, &with_secret, "to succeed", |p| {
        phase(p) == "Succeeded"
    })
    .await?;
    let named: Vec<String> = p
        .spec
        .and_then(|s| s.image_pull_secrets)
        .unwrap_or_default()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(named, vec![secret.clone()]);
    Ok(())
}

#[tokio::test]
async fn pods_pull_wasm_artifacts_and_container_images_from_registries() -> anyhow::Result<()> {
    let open = Registry::start(RegistryAuth::Open).await?;
    let basic = Registry::start(RegistryAuth::Basic).await?;
    let tokens = Registry::start(RegistryAuth::Token).await?;
    let s = Server::up_on("127.0.9.4", &[])?;
    let pods: Api<Pod> = Api::namespaced(s.client().await?, "default");
    let reg = &open.host;

    let hello = open
        .push(&sample("hello")?, &format!("{reg}/demo/hello:v1"), false)
        .await?;
    assert!(
        hello.starts_with(&format!("{reg}/demo/hello@sha256:")),
        "{hello}"
    );
    let busybox = open
        .push(&busybox_image()?, &format!("{reg}/demo/busybox:1.0"), false)
        .await?;

    // A Wasm artifact on wasmtime, a container image on runc.
    let manifest = [
        pod("wasm", &format!("{reg}/demo/hello:v1"), "", ""),
        pod(
            "bb",
            &format!("{reg}/demo/busybox:1.0"),
            "  runtimeClassName: runc\n",
            "    command: [sh, -c, 'echo pulled; cat /www/index.html']\n",
        ),
    ]
    .concat();
    s.kubectl_in(&["apply", "-f", "-"], Some(&manifest))?;
    wait_logs(&s, &["wasm"], "Hello from Shoal").await?;
    let logs = wait_logs(&s, &["bb"], "hello from a runc pod").await?;
    assert_eq!(logs, "pulled\nhello from a runc pod\n");
    let p = wait_pod(&pods, "wasm", "to succeed", |p| phase(p) == "Succeeded").await?;
    assert_eq!(image_id(&p), digest_of(&hello));
    let p = wait_pod(&pods, "bb", "to succeed", |p| phase(p) == "Succeeded").await?;
    assert_eq!(image_id(&p), digest_of(&busybox));
    let events = s.kubectl(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=bb",
    ])?;
    assert!(events.contains("Pulled"), "{events}");

    // The tag moves. IfNotPresent (the default for a tag that is not
    // `latest`) keeps what this node pulled; Always asks the registry.
    let moved = open
        .push(&sample("ticker")?, &format!("{reg}/demo/hello:v1"), false)
        .await?;
    assert_ne!(digest_of(&moved), digest_of(&hello));
    let manifest = [
        pod("kept", &format!("{reg}/demo/hello:v1"), "", ""),
        pod(
            "fresh",
            &format!("{reg}/demo/hello:v1"),
            "",
            "    imagePullPolicy: Always\n",
        ),
    ]
    .concat();
    s.kubectl_in(&["apply", "-f", "-"], Some(&manifest))?;
    let p = wait_pod(&pods, "kept", "to succeed", |p| phase(p) == "Succeeded").await?;
    assert_eq!(image_id(&p), digest_of(&hello));
    let p = wait_pod(&pods, "fresh", "to run the new image", |p| {
        phase(p) == "Running"
    })
    .await?;
    assert_eq!(image_id(&p), digest_of(&moved));

    // Replicas starting together pull their image once: one manifest
    // and two blobs (the artifact's config and its layer) leave the
    // registry, not five of each.
    // (a ticker no earlier step stored here)
    let fresh = fresh_wasm(&sample("ticker")?, s.data_dir(), "many")?;
    open.push(
        &fresh.display().to_string(),
        &format!("{reg}/demo/many:v1"),
        false,
    )
    .await?;
    s.kubectl(&[
        "create",
        "deployment",
        "many",
        &format!("--image={reg}/demo/many:v1"),
        "--replicas=5",
    ])?;
    s.kubectl(&["rollout", "status", "deployment/many", "--timeout=60s"])?;
    let log = open.log();
    let gets = |what: &str| {
        log.lines()
            .filter(|l| l.contains(&format!("\"GET /v2/demo/many/{what}")))
            .count()
    };
    assert_eq!((gets("manifests/"), gets("blobs/")), (1, 2), "{log}");

    // Registries that want a password, by Basic auth and by tokens from
    // a token service: refused without the pod's pull secret, pulled with
    // it.
    for (i, r) in [&basic, &tokens].into_iter().enumerate() {
        private_pulls(&s, &pods, r, i).await?;
    }

    // Each way a pull fails, with kubelet's reason and a message that
    // says why.
    let manifest = [
        pod("missing", &format!("{reg}/demo/missing:v1"), "", ""),
        pod(
            "never",
            &format!("{reg}/demo/elsewhere:v1"),
            "",
            "    imagePullPolicy: Never\n",
        ),
        pod("upper", &format!("{reg}/Demo/Hello:v1"), "", ""),
        pod("not-wasm", &format!("{reg}/demo/busybox:1.0"), "", ""),
        pod(
            "not-container",
            &format!("{reg}/demo/hello:v1"),
            "  runtimeClassName: runc\n",
            "",
        ),
    ]
    .concat();
    s.kubectl_in(&["apply", "-f", "-"], Some(&manifest))?;
    let m = wait_waiting(&pods, "missing", &["ErrImagePull", "ImagePullBackOff"]).await?;
    assert!(m.contains("not found"), "{m}");
    let m = wait_waiting(&pods, "never", &["ErrImageNeverPull"]).await?;
    assert!(m.contains("imagePullPolicy is Never"), "{m}");
    let m = wait_waiting(&pods, "upper", &["InvalidImageName"]).await?;
    assert!(m.contains("repository"), "{m}");
    let m = wait_waiting(&pods, "not-wasm", &["CreateContainerError"]).await?;
    assert!(m.contains("runtimeClassName: runc"), "{m}");
    let m = wait_waiting(&pods, "not-container", &["CreateContainerError"]).await?;
    assert!(m.contains("runtimeClassName: wasmtime"), "{m}");
    s.kubectl(&["delete", "pods", "--all", "--wait=false"])?;
    Ok(())
}
