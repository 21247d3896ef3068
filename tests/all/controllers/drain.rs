//! `kubectl drain`: the node is cordoned and its pods evicted through
//! `pods/eviction`, which refuses what a PodDisruptionBudget cannot spare.

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use shoal_tests::{sample, wait_for, Server, UP_NODE};

use super::{app_pods, deployment_yaml, is_ready, wait_ready_pods, PATIENCE};

const PDB: &str = "apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: web}
spec:
  minAvailable: 2
  selector: {matchLabels: {app: web}}
";

#[tokio::test]
async fn drain_evicts_within_the_disruption_budget() -> anyhow::Result<()> {
    let s = Server::up(&[])?;
    let client = s.client().await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let yaml = deployment_yaml("web", 3, &sample("ticker")?, "", "");
    s.kubectl_in(&["apply", "-f", "-"], Some(&yaml))?;
    wait_ready_pods(&pods, "web", 3).await?;
    s.kubectl_in(&["apply", "-f", "-"], Some(PDB))?;
    // The disruption controller fills in the budget's status.
    wait_pdb(&s, "3 2 3 1 True SufficientPods").await?;
    let table = s.kubectl(&["get", "pdb", "web"])?;
    assert!(
        table.contains("MIN AVAILABLE")
            && table.contains("ALLOWED DISRUPTIONS")
            && table.lines().nth(1).is_some_and(|l| {
                l.split_whitespace().take(4).collect::<Vec<_>>() == ["web", "2", "N/A", "1"]
            }),
        "{table}"
    );

    // Three healthy pods and a budget of two: one may go, the next is
    // refused until the drain gives up. The replacement cannot be
    // scheduled on the cordoned node.
    let err = s.kubectl_err(
        &["drain", UP_NODE, "--ignore-daemonsets", "--timeout=5s"],
        None,
    )?;
    assert!(err.contains("disruption budget"), "{err}");
    assert_eq!(
        s.kubectl(&[
            "get",
            "node",
            UP_NODE,
            "-o",
            "jsonpath={.spec.unschedulable}"
        ])?,
        "true"
    );
    let ready = wait_for("one pod evicted", PATIENCE, || async {
        let list = app_pods(&pods, "web").await.ok()?;
        let ready = list.iter().filter(|p| is_ready(p)).count();
        let pending = list
            .iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_none())
            .count();
        (ready == 2 && pending == 1).then_some(ready)
    })
    .await?;
    assert_eq!(ready, 2);
    // Two healthy of the three expected: nothing more to spare.
    wait_pdb(&s, "3 2 2 0 False InsufficientPods").await?;

    // Without the budget the drain empties the node; uncordoned, the
    // Deployment comes back whole.
    s.kubectl(&["delete", "pdb", "web"])?;
    let out = s.kubectl(&["drain", UP_NODE, "--ignore-daemonsets", "--timeout=60s"])?;
    assert!(out.contains("drained"), "{out}");
    wait_for("no pod of web running", PATIENCE, || async {
        let list = app_pods(&pods, "web").await.ok()?;
        list.iter().all(|p| !is_ready(p)).then_some(())
    })
    .await?;
    s.kubectl(&["uncordon", UP_NODE])?;
    wait_ready_pods(&pods, "web", 3).await?;

    // Evicting a pod that does not exist is a 404, as a delete would be.
    let err = s.kubectl_err(
        &[
            "create",
            "-f",
            "-",
            "--raw",
            "/api/v1/namespaces/default/pods/nope/eviction",
        ],
        Some(
            "{\"apiVersion\":\"policy/v1\",\"kind\":\"Eviction\",\"metadata\":{\"name\":\"nope\"}}",
        ),
    )?;
    assert!(err.contains("not found"), "{err}");
    Ok(())
}

/// Waits until budget `web`'s status reads `want`: expected, desired and
/// current healthy pods, allowed disruptions, and the DisruptionAllowed
/// condition's status and reason.
async fn wait_pdb(s: &Server, want: &str) -> anyhow::Result<()> {
    let jsonpath = "jsonpath={.status.expectedPods} {.status.desiredHealthy} \
        {.status.currentHealthy} {.status.disruptionsAllowed} \
        {.status.conditions[?(@.type==\"DisruptionAllowed\")].status} \
        {.status.conditions[?(@.type==\"DisruptionAllowed\")].reason}";
    let mut last = String::new();
    let seen = wait_for(&format!("budget status {want}"), PATIENCE, || {
        let got = s
            .kubectl(&["get", "pdb", "web", "-o", jsonpath])
            .unwrap_or_default();
        last = got.clone();
        async move { (got == want).then_some(()) }
    })
    .await;
    seen.map_err(|e| anyhow::anyhow!("{e}; last status: {last:?}"))
}
