//! Deleting a namespace deletes everything in it, and only then the
//! namespace.

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::ListParams;
use kube::Api;
use shoal_tests::{sample, Server};

use super::{deployment_yaml, wait_ready_pods};

#[tokio::test]
async fn deleting_a_namespace_empties_it_first() -> anyhow::Result<()> {
    let s = Server::up(&[])?;
    let client = s.client().await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "scratch");
    let namespaces: Api<Namespace> = Api::all(client);
    // `kubectl create namespace` sends protobuf, which Shoal does not
    // read yet; apply sends JSON.
    let ns_yaml = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: scratch\n";
    s.kubectl_in(&["apply", "-f", "-"], Some(ns_yaml))?;
    let yaml = deployment_yaml("web", 3, &sample("ticker")?, "  namespace: scratch\n", "");
    s.kubectl_in(&["apply", "-f", "-"], Some(&yaml))?;
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  namespace: scratch\ndata:\n  a: b\n";
    s.kubectl_in(&["apply", "-f", "-"], Some(cm))?;
    wait_ready_pods(&pods, "web", 3).await?;

    // kubectl waits until the namespace is gone.
    s.kubectl(&["delete", "namespace", "scratch", "--timeout=90s"])?;
    assert!(namespaces.get_opt("scratch").await?.is_none());
    assert!(pods.list(&ListParams::default()).await?.items.is_empty());
    let err = s.kubectl_err(&["get", "configmap", "settings", "-n", "scratch"], None)?;
    assert!(
        err.contains("NotFound") || err.contains("not found"),
        "{err}"
    );
    // The name is free again.
    s.kubectl_in(&["apply", "-f", "-"], Some(ns_yaml))?;
    Ok(())
}
