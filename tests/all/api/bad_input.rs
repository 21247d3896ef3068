//! Every bad input gets the right status code and a message naming the
//! problem, and nothing stored changes.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use shoal_tests::Server;

use super::raw;

const CM: &str = "/api/v1/namespaces/default/configmaps";

#[tokio::test]
async fn bad_requests_get_status_and_store_nothing() -> anyhow::Result<()> {
    let s = Server::start()?;
    let c = s.client().await?;
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "default");
    let before = cms.list(&ListParams::default()).await?.items.len();

    // (what, method, content type, body, expected code, message fragment)
    type Case = (
        &'static str,
        &'static str,
        &'static str,
        Vec<u8>,
        u16,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            "malformed JSON",
            "POST",
            "application/json",
            br#"{"metadata": {"name": "#.to_vec(),
            400,
            "invalid JSON",
        ),
        (
            "malformed YAML",
            "POST",
            "application/yaml",
            b"metadata: [\n  name: x\n".to_vec(),
            400,
            "invalid YAML",
        ),
        (
            "not an object",
            "POST",
            "application/json",
            b"[1, 2]".to_vec(),
            400,
            "must be a JSON object",
        ),
        (
            "unknown body type",
            "POST",
            "text/plain",
            b"{}".to_vec(),
            415,
            "unknown format",
        ),
        (
            "wrong kind",
            "POST",
            "application/json",
            br#"{"kind": "Secret", "metadata": {"name": "a"}}"#.to_vec(),
            400,
            "does not match the expected kind",
        ),
        (
            "wrong version",
            "POST",
            "application/json",
            br#"{"apiVersion": "v2", "metadata": {"name": "a"}}"#.to_vec(),
            400,
            "does not match the expected API version",
        ),
        (
            "upper-case name",
            "POST",
            "application/json",
            br#"{"metadata": {"name": "Hello"}}"#.to_vec(),
            422,
            "metadata.name: Invalid value: \"Hello\"",
        ),
        (
            "name too long",
            "POST",
            "application/json",
            format!(r#"{{"metadata": {{"name": "{}"}}}}"#, "a".repeat(254)).into_bytes(),
            422,
            "must be no more than 253 characters",
        ),
        (
            "no name",
            "POST",
            "application/json",
            br#"{"metadata": {}}"#.to_vec(),
            422,
            "metadata.name: Required value",
        ),
        (
            "namespace disagrees",
            "POST",
            "application/json",
            br#"{"metadata": {"name": "a", "namespace": "kube-system"}}"#.to_vec(),
            400,
            "does not match the namespace",
        ),
        (
            "wrong field type",
            "POST",
            "application/json",
            br#"{"metadata": {"name": "a"}, "data": {"k": 5}}"#.to_vec(),
            400,
            "data.k: invalid type",
        ),
        (
            "bad label",
            "POST",
            "application/json",
            br#"{"metadata": {"name": "a", "labels": {"k": "no spaces"}}}"#.to_vec(),
            422,
            "metadata.labels[k]",
        ),
        (
            "too large",
            "POST",
            "application/json",
            format!(
                r#"{{"metadata": {{"name": "big"}}, "data": {{"a": "{}"}}}}"#,
                "x".repeat(3 * 1024 * 1024 + 1)
            )
            .into_bytes(),
            413,
            "Request entity too large",
        ),
    ];
    for (what, method, ct, body, code, needle) in cases {
        let (got, status) = raw(&c, method, CM, ct, body).await?;
        assert_eq!(got, code, "{what}: {status}");
        let msg = status["message"].as_str().unwrap_or_default();
        assert!(
            msg.contains(needle),
            "{what}: message {msg:?} should contain {needle:?}"
        );
        assert_eq!(
            status["reason"].as_str().map(str::is_empty),
            Some(false),
            "{what}: {status}"
        );
    }

    // Invalid objects list a cause per field.
    let (code, status) = raw(&c, "POST", "/apis/apps/v1/namespaces/default/deployments", "application/json",
        serde_json::to_vec(&json!({"metadata": {"name": "d"}, "spec": {"replicas": -1,
            "selector": {"matchLabels": {"app": "a"}},
            "template": {"metadata": {"labels": {"app": "b"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}}}}))?).await?;
    assert_eq!(code, 422);
    let fields: Vec<&str> = status["details"]["causes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["field"].as_str())
        .collect();
    assert_eq!(
        fields,
        vec!["spec.replicas", "spec.template.metadata.labels"],
        "{status}"
    );

    // Unknown resources, versions and groups are 404s.
    for path in [
        "/api/v1/namespaces/default/widgets",
        "/apis/apps/v9/deployments",
        "/apis/nope.io/v1/things",
    ] {
        let (code, _) = raw(&c, "GET", path, "application/json", vec![]).await?;
        assert_eq!(code, 404, "{path}");
    }
    // A patch in an unsupported content type is a 415.
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "keep"}, "data": {"a": "1"}}))?,
    )
    .await?;
    let (code, _) = raw(
        &c,
        "PATCH",
        &format!("{CM}/keep"),
        "application/xml",
        b"{}".to_vec(),
    )
    .await?;
    assert_eq!(code, 415);
    let (code, _) = raw(
        &c,
        "PATCH",
        &format!("{CM}/keep"),
        "application/merge-patch+json",
        b"{not json".to_vec(),
    )
    .await?;
    assert_eq!(code, 400);

    // Nothing but the one good create landed, and it is unchanged.
    let after = cms.list(&ListParams::default()).await?.items;
    assert_eq!(after.len(), before + 1);
    assert_eq!(
        cms.get("keep")
            .await?
            .data
            .and_then(|d| d.get("a").cloned()),
        Some("1".into())
    );
    Ok(())
}

/// A patch without a resourceVersion is applied to whatever is current,
/// however many writers race it (Kubernetes retries it server-side); one
/// that names a stale resourceVersion is a 409.
#[tokio::test]
async fn patches_race_other_writers_without_conflict() -> anyhow::Result<()> {
    let s = Server::start()?;
    let deploys: Api<Deployment> = Api::namespaced(s.client().await?, "default");
    deploys
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "raced"},
                "spec": {
                    "replicas": 0,
                    "selector": {"matchLabels": {"app": "raced"}},
                    "template": {
                        "metadata": {"labels": {"app": "raced"}},
                        "spec": {"containers": [{"name": "main", "image": "file:///nowhere.wasm"}]},
                    },
                },
            }))?,
        )
        .await?;
    let pp = PatchParams::default();
    // Annotation patches and scale patches, interleaved from many tasks.
    let writers = (0..40).map(|i| {
        let (deploys, pp) = (deploys.clone(), pp.clone());
        async move {
            if i % 2 == 0 {
                let patch = json!({"metadata": {"annotations": {format!("n{i}"): "x"}}});
                deploys
                    .patch("raced", &pp, &Patch::Merge(patch))
                    .await
                    .map(|_| ())
            } else {
                let patch = json!({"spec": {"replicas": i}});
                deploys
                    .patch_scale("raced", &pp, &Patch::Merge(patch))
                    .await
                    .map(|_| ())
            }
        }
    });
    let results = futures::future::join_all(writers).await;
    let failed: Vec<String> = results
        .into_iter()
        .filter_map(|r| r.err().map(|e| e.to_string()))
        .collect();
    assert!(failed.is_empty(), "patches failed: {failed:?}");
    let d = deploys.get("raced").await?;
    let annotations = d.metadata.annotations.unwrap_or_default();
    assert_eq!(
        annotations.keys().filter(|k| k.starts_with('n')).count(),
        20,
        "every annotation patch landed: {annotations:?}"
    );

    // A resourceVersion in the patch is a precondition.
    let stale = json!({"metadata": {"resourceVersion": "1"}, "spec": {"replicas": 3}});
    match deploys
        .patch_scale("raced", &pp, &Patch::Merge(stale))
        .await
    {
        Err(kube::Error::Api(s)) => assert_eq!((s.code, s.reason.as_str()), (409, "Conflict")),
        other => panic!("expected a conflict, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn conflicts_are_409() -> anyhow::Result<()> {
    let s = Server::start()?;
    let c = s.client().await?;
    let cms: Api<ConfigMap> = Api::namespaced(c, "default");
    let created = cms
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "c"}}))?,
        )
        .await?;
    let mut first = created.clone();
    first.data = Some([("v".to_string(), "1".to_string())].into());
    cms.replace("c", &PostParams::default(), &first).await?;
    // The second writer still holds the old resourceVersion.
    let mut stale = created;
    stale.data = Some([("v".to_string(), "2".to_string())].into());
    match cms.replace("c", &PostParams::default(), &stale).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 409);
            assert_eq!(s.reason, "Conflict");
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    // Creating what exists is AlreadyExists, also a 409.
    match cms
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "c"}}))?,
        )
        .await
    {
        Err(kube::Error::Api(s)) => assert_eq!((s.code, s.reason.as_str()), (409, "AlreadyExists")),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    // kubectl reports the conflict the way users know it.
    let yaml = s.kubectl(&["get", "configmap", "c", "-o", "yaml"])?;
    s.kubectl(&["patch", "configmap", "c", "-p", r#"{"data":{"v":"3"}}"#])?;
    let err = s.kubectl_err(&["replace", "-f", "-"], Some(&yaml))?;
    assert!(
        err.contains("Conflict") && err.contains("the object has been modified"),
        "{err}"
    );

    // Without a token: 401 with a Status body.
    let out = std::process::Command::new("curl")
        .args(["-sk", &format!("https://{}/api/v1/namespaces", s.addr)])
        .output()?;
    let body: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(
        (body["code"].as_u64(), body["reason"].as_str()),
        (Some(401), Some("Unauthorized"))
    );
    Ok(())
}

#[tokio::test]
async fn kubectl_reports_invalid_and_unknown_fields() -> anyhow::Result<()> {
    let s = Server::start()?;
    let err = s.kubectl_err(
        &["apply", "-f", "-"],
        Some("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: u\nbogus: 1\n"),
    )?;
    assert!(err.contains("unknown field \"bogus\""), "{err}");
    let err = s.kubectl_err(&["apply", "-f", "-"], Some(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: d\nspec:\n  selector: {matchLabels: {app: a}}\n  strategy: {rollingUpdate: {maxSurge: 0, maxUnavailable: 0}}\n  template:\n    metadata: {labels: {app: a}}\n    spec: {containers: [{name: c, image: x}]}\n",
    ))?;
    assert!(
        err.contains("spec.strategy.rollingUpdate.maxUnavailable")
            && err.contains("may not be 0 when `maxSurge` is 0"),
        "{err}"
    );
    let err = s.kubectl_err(&["apply", "-f", "-"], Some("apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  namespace: nowhere\nspec:\n  containers: [{name: c, image: x}]\n"))?;
    assert!(err.contains("namespaces \"nowhere\" not found"), "{err}");
    let err = s.kubectl_err(&["apply", "-f", "-"], Some("apiVersion: batch/v1\nkind: CronJob\nmetadata:\n  name: cj\nspec:\n  schedule: \"61 * * * *\"\n  jobTemplate:\n    spec:\n      template:\n        spec:\n          restartPolicy: Never\n          containers: [{name: c, image: x}]\n"))?;
    assert!(err.contains("spec.schedule"), "{err}");
    Ok(())
}
