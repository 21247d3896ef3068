//! Server-side apply: `kubectl apply --server-side` and the kube client's
//! `Patch::Apply`, field ownership, conflicts and forcing them.

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{json, Value};
use shoal_tests::Server;

use super::raw;

const DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: default
  labels: {app: web, tier: front}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: main
        image: file:///opt/shoal/samples/hello.wasm
        env: [{name: A, value: \"1\"}, {name: B, value: \"2\"}]
";

fn managers(obj: &Value) -> Vec<(String, String)> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .map(|l| {
            l.iter()
                .map(|e| {
                    (
                        e["manager"].as_str().unwrap_or_default().to_string(),
                        e["operation"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn kubectl_server_side_apply_owns_removes_and_conflicts() -> anyhow::Result<()> {
    let s = Server::start_with(&["--disable-scheduler"])?;
    let out = s.kubectl_in(&["apply", "--server-side", "-f", "-"], Some(DEPLOYMENT))?;
    assert!(
        out.contains("deployment.apps/web serverside-applied"),
        "{out}"
    );
    let live: Value = serde_json::from_str(&s.kubectl(&[
        "get",
        "deploy",
        "web",
        "-o",
        "json",
        "--show-managed-fields",
    ])?)?;
    assert!(
        managers(&live).contains(&("kubectl".into(), "Apply".into())),
        "{:?}",
        managers(&live)
    );
    // Defaults are the server's: the apply did not have to send them.
    assert_eq!(live["spec"]["strategy"]["type"], "RollingUpdate");

    // Fields left out of the next apply are removed: a label, an env var.
    let smaller = DEPLOYMENT
        .replace(", tier: front", "")
        .replace(", {name: B, value: \"2\"}", "");
    s.kubectl_in(&["apply", "--server-side", "-f", "-"], Some(&smaller))?;
    let got = s.kubectl(&[
        "get",
        "deploy",
        "web",
        "-o",
        "jsonpath={.metadata.labels} {.spec.template.spec.containers[0].env[*].name}",
    ])?;
    assert_eq!(got, "{\"app\":\"web\"} A");

    // `kubectl scale` takes .spec.replicas; applying another value conflicts,
    // and nothing changes until the apply forces it.
    s.kubectl(&["scale", "deploy", "web", "--replicas=5"])?;
    let three = smaller.replace("replicas: 2", "replicas: 3");
    let err = s.kubectl_err(&["apply", "--server-side", "-f", "-"], Some(&three))?;
    assert!(
        err.contains("Apply failed with 1 conflict") && err.contains(".spec.replicas"),
        "{err}"
    );
    let replicas = ["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"];
    assert_eq!(s.kubectl(&replicas)?, "5");
    s.kubectl_in(
        &["apply", "--server-side", "--force-conflicts", "-f", "-"],
        Some(&three),
    )?;
    assert_eq!(s.kubectl(&replicas)?, "3");
    // An apply that leaves replicas out gives them up without a conflict.
    s.kubectl(&["scale", "deploy", "web", "--replicas=4"])?;
    let no_replicas = three.replace("  replicas: 3\n", "");
    s.kubectl_in(&["apply", "--server-side", "-f", "-"], Some(&no_replicas))?;
    assert_eq!(s.kubectl(&replicas)?, "4");

    // Moving a client-side-applied object to server-side apply does not
    // conflict with the fields kubectl applied before.
    // Nor does it drop what others added meanwhile or the client-side
    // annotation (kubectl hands that to `kubectl-last-applied`), and
    // client-side apply still finds it afterwards.
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {mode: a}\n";
    s.kubectl_in(&["apply", "-f", "-"], Some(cm))?;
    s.kubectl(&["label", "cm", "settings", "extra=yes"])?;
    let out = s.kubectl_raw(
        &["apply", "--server-side", "-f", "-"],
        Some(&cm.replace("mode: a", "mode: b")),
    )?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.is_empty(), "{stderr}");
    let live: Value = serde_json::from_str(&s.kubectl(&[
        "get",
        "cm",
        "settings",
        "-o",
        "json",
        "--show-managed-fields",
    ])?)?;
    assert_eq!(live["data"]["mode"], "b");
    assert_eq!(live["metadata"]["labels"]["extra"], "yes");
    assert!(live["metadata"]["annotations"]
        .get("kubectl.kubernetes.io/last-applied-configuration")
        .is_some());
    assert!(
        managers(&live).contains(&("kubectl-last-applied".into(), "Apply".into())),
        "{:?}",
        managers(&live)
    );
    let out = s.kubectl_raw(&["apply", "-f", "-"], Some(cm))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.is_empty(), "{stderr}");
    Ok(())
}

#[tokio::test]
async fn kube_client_apply_shares_fields_and_names_conflicts() -> anyhow::Result<()> {
    let s = Server::start_with(&["--disable-scheduler"])?;
    let client = s.client().await?;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let alice = PatchParams::apply("alice");
    let bob = PatchParams::apply("bob");
    let cm = |data: Value| {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "shared"}, "data": data})
    };
    // Applying to a missing object creates it.
    cms.patch(
        "shared",
        &alice,
        &Patch::Apply(cm(json!({"a": "1", "b": "2"}))),
    )
    .await?;
    // Bob owns a key of his own and co-owns one at the same value.
    let both = cms
        .patch(
            "shared",
            &bob,
            &Patch::Apply(cm(json!({"b": "2", "c": "3"}))),
        )
        .await?;
    assert_eq!(
        both.data.clone().unwrap_or_default().len(),
        3,
        "{:?}",
        both.data
    );
    // Changing a field alice owns is refused with the field named.
    let refused = cms
        .patch("shared", &bob, &Patch::Apply(cm(json!({"a": "9"}))))
        .await;
    let Err(kube::Error::Api(status)) = refused else {
        anyhow::bail!("expected a conflict, got {refused:?}");
    };
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
    let status_json = serde_json::to_value(&*status)?;
    assert_eq!(
        status_json.pointer("/details/causes/0"),
        Some(
            &json!({"reason": "FieldManagerConflict", "message": "conflict with \"alice\"", "field": ".data.a"})
        ),
        "{status_json}"
    );
    // Forced, bob takes it; c and b are no longer in bob's apply, but b is
    // still alice's, so only c goes.
    let forced = cms
        .patch(
            "shared",
            &bob.clone().force(),
            &Patch::Apply(cm(json!({"a": "9"}))),
        )
        .await?;
    let data = forced.data.unwrap_or_default();
    assert_eq!(
        (
            data.get("a").map(String::as_str),
            data.get("b").map(String::as_str),
            data.get("c")
        ),
        (Some("9"), Some("2"), None)
    );

    // Bad input: no field manager, managed fields in the body, not YAML.
    let path = "/api/v1/namespaces/default/configmaps/shared";
    let yaml = b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: shared}\n".to_vec();
    let (code, body) = raw(&client, "PATCH", path, "application/apply-patch+yaml", yaml).await?;
    assert_eq!(code, 422, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("fieldManager"),
        "{body}"
    );
    let with_fields =
        b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: shared, managedFields: [{manager: x}]}\n"
            .to_vec();
    let (code, body) = raw(
        &client,
        "PATCH",
        &format!("{path}?fieldManager=eve"),
        "application/apply-patch+yaml",
        with_fields,
    )
    .await?;
    assert_eq!(code, 422, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("metadata.managedFields"),
        "{body}"
    );
    let (code, body) = raw(
        &client,
        "PATCH",
        &format!("{path}?fieldManager=eve"),
        "application/apply-patch+yaml",
        b"data: [unclosed".to_vec(),
    )
    .await?;
    assert_eq!(code, 400, "{body}");
    let after = cms.get("shared").await?;
    assert_eq!(after.data.unwrap_or_default().len(), 2);

    // A plain write may reset ownership, as in Kubernetes: `[{}]` clears
    // it, and the next apply finds every field `before-first-apply`'s.
    let reset = json!([{"op": "replace", "path": "/metadata/managedFields", "value": [{}]}]);
    let (code, cleared) = raw(
        &client,
        "PATCH",
        path,
        "application/json-patch+json",
        serde_json::to_vec(&reset)?,
    )
    .await?;
    assert_eq!(code, 200, "{cleared}");
    assert_eq!(cleared.pointer("/metadata/managedFields"), None);
    let refused = cms
        .patch("shared", &bob, &Patch::Apply(cm(json!({"b": "7"}))))
        .await;
    match refused {
        Err(kube::Error::Api(s)) if s.message.contains("\"before-first-apply\"") => {}
        other => anyhow::bail!("expected a conflict with before-first-apply, got {other:?}"),
    }
    Ok(())
}
