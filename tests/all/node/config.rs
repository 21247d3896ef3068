//! Configuration from ConfigMaps and Secrets, as env and as mounted files.

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use shoal_tests::{sample, Server};

use super::{phase, wait_pod};

fn reader(name: &str, image: &str, volume: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels:
    team: edge
spec:
  restartPolicy: OnFailure
  containers:
  - name: main
    image: {image}
    env:
    - name: GREETING
      valueFrom:
        configMapKeyRef:
          name: settings
          key: greeting
    - name: PASSWORD
      valueFrom:
        secretKeyRef:
          name: creds
          key: password
    - name: TEAM
      valueFrom:
        fieldRef:
          fieldPath: metadata.labels['team']
    - name: COMBINED
      value: "$(GREETING) and $$(NOT_EXPANDED)"
    envFrom:
    - configMapRef:
        name: settings
      prefix: CFG_
    volumeMounts:
    - name: files
      mountPath: /etc/app
  volumes:
  - name: files
{volume}
"#
    )
}

#[tokio::test]
async fn configmaps_and_secrets_arrive_as_env_and_files() -> anyhow::Result<()> {
    let s = Server::up(&[])?;
    let pods: Api<Pod> = Api::namespaced(s.client().await?, "default");
    s.kubectl_in(
        &["apply", "-f", "-"],
        Some(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  greeting: hello there\n  message: from the configmap\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: creds\nstringData:\n  password: hunter2\n  message: from the secret\n",
        ),
    )?;
    let image = sample("config-reader")?;
    s.kubectl_in(
        &["apply", "-f", "-"],
        Some(&reader(
            "from-cm",
            &image,
            "    configMap:\n      name: settings\n",
        )),
    )?;
    s.kubectl_in(
        &["apply", "-f", "-"],
        Some(&reader(
            "from-secret",
            &image,
            "    secret:\n      secretName: creds\n",
        )),
    )?;
    for name in ["from-cm", "from-secret"] {
        wait_pod(&pods, name, "to complete", |p| phase(p) == "Succeeded").await?;
    }
    let out = s.kubectl(&["logs", "from-cm"])?;
    for line in [
        "GREETING=hello there",
        "PASSWORD=hunter2",
        "TEAM=edge",
        "COMBINED=hello there and $(NOT_EXPANDED)",
        "CFG_greeting=hello there",
        "from the configmap",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
    let out = s.kubectl(&["logs", "from-secret"])?;
    assert!(out.contains("from the secret"), "{out}");

    // A missing ConfigMap keeps the pod waiting with kubelet's reason.
    s.kubectl_in(
        &["apply", "-f", "-"],
        Some(
            &reader("missing", &image, "    configMap:\n      name: nope\n")
                .replace("settings", "absent"),
        ),
    )?;
    let p = wait_pod(&pods, "missing", "to report its config error", |p| {
        super::waiting(p).is_some_and(|(r, _)| r == "CreateContainerConfigError")
    })
    .await?;
    let (_, msg) = super::waiting(&p).unwrap_or_default();
    assert!(msg.contains("absent") && msg.contains("not found"), "{msg}");
    // Creating it lets the pod start: config errors are retried.
    s.kubectl_in(
        &["apply", "-f", "-"],
        Some(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: absent\ndata:\n  greeting: late\n",
        ),
    )?;
    s.kubectl_in(
        &["apply", "-f", "-"],
        Some("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: nope\ndata:\n  message: late file\n"),
    )?;
    wait_pod(
        &pods,
        "missing",
        "to complete once its config exists",
        |p| phase(p) == "Succeeded",
    )
    .await?;
    Ok(())
}
