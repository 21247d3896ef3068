//! Startup, readiness and liveness probes on HTTP pods: a pod is Ready (and
//! an endpoint) only once its readiness probe passes, a failing one stays
//! out of the Service, a failing liveness probe restarts the container, and
//! a startup probe holds the container unstarted (and its liveness probe
//! back) until it passes, restarting it if it never does.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use shoal_tests::{pod_yaml, rust_sample, wait_for, Server};

use super::PATIENCE;
use crate::node::{first_container, phase, restarts, wait_pod};

fn probed(name: &str, image: &str, probe: &str) -> String {
    let mut pod = pod_yaml(
        name,
        image,
        "",
        &format!("    ports:\n    - {{name: http, containerPort: 8080}}\n{probe}"),
    );
    pod = pod.replacen(
        "metadata:\n",
        "metadata:\n  labels: {app: probed}\n  annotations: {shoal.dev/http-timeout-seconds: \"5\"}\n",
        1,
    );
    pod
}

#[tokio::test]
async fn probes_gate_readiness_and_restart_dead_pods() -> anyhow::Result<()> {
    let Some(hello) = rust_sample("p2", "http-hello")? else {
        return Ok(());
    };
    let s = Server::up(&[])?;
    let pods: Api<Pod> = Api::namespaced(s.client().await?, "default");
    let ready = "    readinessProbe:\n      httpGet: {path: /healthz, port: http}\n      periodSeconds: 1\n";
    let never = "    readinessProbe:\n      httpGet: {path: /trap, port: 8080}\n      periodSeconds: 1\n      failureThreshold: 1\n";
    let dead = "    livenessProbe:\n      httpGet: {path: /hang, port: 8080}\n      periodSeconds: 1\n      timeoutSeconds: 1\n      failureThreshold: 2\n";
    let starts =
        "    startupProbe:\n      httpGet: {path: /healthz, port: http}\n      periodSeconds: 1\n";
    // The liveness probe would fail at once; the startup probe fails first
    // and holds it back.
    let nostart = "    startupProbe:\n      httpGet: {path: /trap, port: 8080}\n      periodSeconds: 1\n      failureThreshold: 3\n    livenessProbe:\n      httpGet: {path: /trap, port: 8080}\n      failureThreshold: 1\n";
    for (name, probe) in [
        ("ready", ready),
        ("never", never),
        ("dead", dead),
        ("starts", starts),
        ("nostart", nostart),
    ] {
        s.kubectl_in(&["apply", "-f", "-"], Some(&probed(name, &hello, probe)))?;
    }
    s.kubectl_in(
        &["apply", "-f", "-"],
        Some("apiVersion: v1\nkind: Service\nmetadata:\n  name: probed\nspec:\n  selector: {app: probed}\n  ports:\n  - {port: 80, targetPort: http}\n"),
    )?;
    wait_pod(&pods, "ready", "to pass its readiness probe", |p| {
        first_container(p).is_some_and(|c| c.ready)
    })
    .await?;

    // The liveness probe times out twice and the container is restarted.
    let p = restarted_saying(
        &s,
        &pods,
        "dead",
        &[
            "Liveness probe failed",
            "failed liveness probe, will be restarted",
        ],
    )
    .await?;
    assert_eq!(phase(&p), "Running");

    // A startup probe that passes: started, and Ready with no readiness
    // probe of its own.
    wait_pod(&pods, "starts", "to pass its startup probe", |p| {
        first_container(p).is_some_and(|c| c.started == Some(true) && c.ready)
    })
    .await?;
    // One that never passes: running but not started, then restarted by
    // the startup probe, not the liveness probe.
    let p = pods.get("nostart").await?;
    if restarts(&p) == 0 && phase(&p) == "Running" {
        let c = first_container(&p);
        assert!(
            c.is_some_and(|c| c.started != Some(true) && !c.ready),
            "started before its startup probe passed: {c:?}"
        );
    }
    let _ = restarted_saying(
        &s,
        &pods,
        "nostart",
        &[
            "Startup probe failed",
            "failed startup probe, will be restarted",
        ],
    )
    .await?;
    let described = s.kubectl(&["describe", "pod", "nostart"])?;
    assert!(!described.contains("Liveness probe failed"), "{described}");

    lifecycle_hooks(&s, &pods, &hello).await?;

    // `never` runs but is never Ready, and is no ready endpoint: the
    // Service's ready endpoints are `ready` and `dead` (between restarts).
    let p = pods.get("never").await?;
    assert_eq!(phase(&p), "Running");
    assert!(!first_container(&p).is_some_and(|c| c.ready));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let p = pods.get("never").await?;
    assert!(
        !first_container(&p).is_some_and(|c| c.ready),
        "never passed a failing probe"
    );
    let table = s.kubectl(&["get", "pod", "never"])?;
    assert!(table.contains("0/1"), "{table}");
    wait_for("the endpoints to follow readiness", PATIENCE, || async {
        let slice = s
            .kubectl(&[
                "get",
                "endpointslice",
                "probed",
                "-o",
                "jsonpath={range .endpoints[*]}{.targetRef.name}={.conditions.ready} {end}",
            ])
            .ok()?;
        (slice.contains("never=false") && slice.contains("ready=true")).then_some(())
    })
    .await?;
    Ok(())
}

/// Lifecycle hooks. A postStart hook that passes lets the container run;
/// one that fails is a `FailedPostStartHook` Event and a restart. A preStop
/// hook runs when the pod is deleted, before its container is stopped: a
/// `sleep` holds the deletion for its length, and a failing `httpGet` is a
/// `FailedPreStopHook` Event, the pod going anyway.
async fn lifecycle_hooks(s: &Server, pods: &Api<Pod>, hello: &str) -> anyhow::Result<()> {
    let sleeper = "    lifecycle:\n      postStart:\n        httpGet: {path: /healthz, port: http}\n      preStop:\n        sleep: {seconds: 2}\n";
    let failing = "    lifecycle:\n      preStop:\n        httpGet: {path: /trap, port: http}\n";
    let badstart = "    lifecycle:\n      postStart:\n        httpGet: {path: /trap, port: http}\n";
    s.kubectl_in(
        &["apply", "-f", "-"],
        Some(&probed("badstart", hello, badstart)),
    )?;
    for (name, hook) in [("sleeper", sleeper), ("failing", failing)] {
        s.kubectl_in(&["apply", "-f", "-"], Some(&probed(name, hello, hook)))?;
        wait_pod(pods, name, "to be Ready", |p| {
            first_container(p).is_some_and(|c| c.ready)
        })
        .await?;
    }
    let _ = restarted_saying(
        s,
        pods,
        "badstart",
        &["FailedPostStartHook", "statuscode: 502"],
    )
    .await?;
    s.kubectl(&["delete", "pod", "badstart", "--wait=false"])?;
    let started = std::time::Instant::now();
    s.kubectl(&["delete", "pod", "sleeper", "--wait=true"])?;
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "deleted after {:?}, before its preStop sleep ended",
        started.elapsed()
    );
    s.kubectl(&["delete", "pod", "failing", "--wait=true"])?;
    wait_for("the FailedPreStopHook Event", PATIENCE, || async {
        let events = s
            .kubectl(&[
                "get",
                "events",
                "--field-selector",
                "involvedObject.name=failing,reason=FailedPreStopHook",
                "-o",
                "jsonpath={.items[*].message}",
            ])
            .ok()?;
        events.contains("statuscode: 502").then_some(())
    })
    .await?;
    Ok(())
}

/// Waits until pod `name` has restarted, then checks that `describe` tells
/// why in every one of `says`; returns the pod.
async fn restarted_saying(
    s: &Server,
    pods: &Api<Pod>,
    name: &str,
    says: &[&str],
) -> anyhow::Result<Pod> {
    let p = wait_pod(pods, name, "to be restarted", |p| restarts(p) >= 1).await?;
    let described = s.kubectl(&["describe", "pod", name])?;
    for needle in says {
        assert!(
            described.contains(needle),
            "{needle:?} missing: {described}"
        );
    }
    Ok(p)
}
