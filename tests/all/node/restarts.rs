//! Restart policies, back-off, OOMKilled.

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use shoal_tests::{pod_yaml, sample, Server};

use super::{phase, restarts, terminated, wait_logs, wait_pod};

fn with_policy(name: &str, image: &str, policy: &str) -> String {
    pod_yaml(name, image, &format!("  restartPolicy: {policy}\n"), "")
}

#[tokio::test]
async fn crashers_restart_by_policy_with_backoff() -> anyhow::Result<()> {
    let s = Server::up(&[])?;
    let pods: Api<Pod> = Api::namespaced(s.client().await?, "default");
    let crasher = sample("crasher")?;
    for (name, policy) in [
        ("always", "Always"),
        ("onfailure", "OnFailure"),
        ("never", "Never"),
    ] {
        s.kubectl_in(
            &["apply", "-f", "-"],
            Some(&with_policy(name, &crasher, policy)),
        )?;
    }
    s.kubectl_in(
        &["apply", "-f", "-"],
        Some(&with_policy("done", &sample("hello")?, "OnFailure")),
    )?;

    // Always: the count rises, the waits show CrashLoopBackOff, and the
    // last ending is remembered.
    let p = wait_pod(&pods, "always", "to restart 3 times", |p| restarts(p) >= 3).await?;
    let last = super::first_container(&p)
        .and_then(|c| c.last_state.as_ref())
        .and_then(|s| s.terminated.as_ref())
        .map(|t| (t.exit_code, t.reason.clone()));
    assert_eq!(last, Some((1, Some("Error".to_string()))));
    wait_pod(&pods, "always", "to show CrashLoopBackOff", |p| {
        super::waiting(p).is_some_and(|(r, m)| r == "CrashLoopBackOff" && m.contains("back-off"))
    })
    .await?;
    wait_logs(
        &s,
        &["always", "--previous"],
        "crasher: something went wrong",
    )
    .await?;
    let events = s.kubectl(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=always",
    ])?;
    assert!(events.contains("BackOff"), "{events}");

    // OnFailure restarts a failing container too; Never does not.
    wait_pod(&pods, "onfailure", "to restart", |p| restarts(p) >= 2).await?;
    let p = wait_pod(&pods, "never", "to fail", |p| phase(p) == "Failed").await?;
    assert_eq!(restarts(&p), 0);
    assert_eq!(terminated(&p).map(|t| t.exit_code), Some(1));
    // OnFailure leaves a successful container done.
    let p = wait_pod(&pods, "done", "to succeed", |p| phase(p) == "Succeeded").await?;
    assert_eq!(restarts(&p), 0);
    assert_eq!(
        terminated(&p).and_then(|t| t.reason.clone()).as_deref(),
        Some("Completed")
    );
    let table = s.kubectl(&["get", "pod", "done", "never"])?;
    assert!(
        table.contains("Completed") && table.contains("Error"),
        "{table}"
    );
    Ok(())
}

#[tokio::test]
async fn memory_limit_ends_in_oomkilled() -> anyhow::Result<()> {
    let s = Server::up(&[])?;
    let pods: Api<Pod> = Api::namespaced(s.client().await?, "default");
    let yaml = pod_yaml(
        "hog",
        &sample("hog")?,
        "  restartPolicy: Never\n",
        "    resources:\n      limits:\n        memory: 16Mi\n",
    );
    s.kubectl_in(&["apply", "-f", "-"], Some(&yaml))?;
    let p = wait_pod(&pods, "hog", "to be OOMKilled", |p| phase(p) == "Failed").await?;
    let t = terminated(&p).cloned().unwrap_or_default();
    assert_eq!(t.reason.as_deref(), Some("OOMKilled"), "{t:?}");
    assert_eq!(t.exit_code, 137);
    let table = s.kubectl(&["get", "pod", "hog"])?;
    assert!(table.contains("OOMKilled"), "{table}");
    Ok(())
}

#[tokio::test]
async fn init_containers_run_in_order_first() -> anyhow::Result<()> {
    let s = Server::up(&[])?;
    let pods: Api<Pod> = Api::namespaced(s.client().await?, "default");
    let hello = sample("hello")?;
    let ticker = sample("ticker")?;
    let crasher = sample("crasher")?;
    let yaml = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: staged\nspec:\n  initContainers:\n  - name: first\n    image: {hello}\n  - name: second\n    image: {hello}\n  containers:\n  - name: main\n    image: {ticker}\n"
    );
    s.kubectl_in(&["apply", "-f", "-"], Some(&yaml))?;
    let p = super::wait_running(&pods, "staged").await?;
    let inits = p
        .status
        .as_ref()
        .and_then(|s| s.init_container_statuses.clone())
        .unwrap_or_default();
    let names: Vec<&str> = inits.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["first", "second"]);
    for c in &inits {
        let t = c.state.as_ref().and_then(|s| s.terminated.as_ref());
        assert_eq!(t.map(|t| t.exit_code), Some(0), "{c:?}");
    }
    let first_done = inits[0]
        .state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .and_then(|t| t.finished_at.clone());
    let second_start = inits[1]
        .state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .and_then(|t| t.started_at.clone());
    assert!(
        first_done <= second_start,
        "second started before first finished: {inits:?}"
    );
    assert_eq!(
        s.kubectl(&["logs", "staged", "-c", "first"])?
            .lines()
            .count(),
        1
    );

    // A failing init container under Never fails the pod; the app never runs.
    let yaml = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: blocked\nspec:\n  restartPolicy: Never\n  initContainers:\n  - name: broken\n    image: {crasher}\n  containers:\n  - name: main\n    image: {ticker}\n"
    );
    s.kubectl_in(&["apply", "-f", "-"], Some(&yaml))?;
    let p = wait_pod(&pods, "blocked", "to fail", |p| phase(p) == "Failed").await?;
    let main_ran = super::first_container(&p)
        .and_then(|c| c.state.as_ref())
        .is_some_and(|s| s.running.is_some() || s.terminated.is_some());
    assert!(!main_ran, "{:?}", p.status);
    let table = s.kubectl(&["get", "pod", "blocked"])?;
    assert!(table.contains("Init:"), "{table}");
    Ok(())
}
