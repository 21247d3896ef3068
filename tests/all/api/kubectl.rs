//! The everyday kubectl workflow: apply, get, re-apply, patch, scale, delete.

use shoal_tests::Server;

const MANIFEST: &str = include_str!("../../fixtures/app.yaml");

#[tokio::test]
async fn apply_get_reapply_patch_delete() -> anyhow::Result<()> {
    let s = Server::start()?;
    let out = s.kubectl_in(&["apply", "-f", "-"], Some(MANIFEST))?;
    for line in [
        "namespace/demo created",
        "configmap/greeting created",
        "secret/token created",
        "deployment.apps/hello created",
        "service/hello created",
        "pod/ticker created",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
    // Applying the same manifest again changes nothing that kubectl can see.
    let again = s.kubectl_in(&["apply", "-f", "-"], Some(MANIFEST))?;
    assert!(again.contains("deployment.apps/hello unchanged"), "{again}");

    // get -o yaml round-trips: what comes back replaces cleanly and leaves
    // the spec and generation as they were.
    let view = [
        "-n",
        "demo",
        "get",
        "deployment",
        "hello",
        "-o",
        "jsonpath={.metadata.generation} {.spec}",
    ];
    let before = s.kubectl(&view)?;
    let yaml = s.kubectl(&["-n", "demo", "get", "deployment", "hello", "-o", "yaml"])?;
    assert!(
        yaml.contains("kind: Deployment") && yaml.contains("maxSurge: 25%"),
        "{yaml}"
    );
    s.kubectl_in(&["replace", "-f", "-"], Some(&yaml))?;
    assert_eq!(s.kubectl(&view)?, before);

    // Re-apply a changed manifest: strategic merge keeps the env list and
    // server defaults, changes replicas and image, bumps generation.
    let changed = MANIFEST
        .replace("replicas: 3", "replicas: 5")
        .replace("hello.wasm", "hello-v2.wasm");
    let out = s.kubectl_in(&["apply", "-f", "-"], Some(&changed))?;
    assert!(out.contains("deployment.apps/hello configured"), "{out}");
    let got = s.kubectl(&[
        "-n", "demo", "get", "deploy", "hello", "-o",
        "jsonpath={.spec.replicas} {.spec.template.spec.containers[0].image} {.spec.template.spec.containers[0].env[0].name} {.metadata.generation} {.spec.template.spec.terminationGracePeriodSeconds}",
    ])?;
    assert_eq!(
        got,
        "5 file:///opt/shoal/samples/hello-v2.wasm GREETING 2 30"
    );

    // Each patch type.
    s.kubectl(&[
        "-n",
        "demo",
        "patch",
        "deploy",
        "hello",
        "--type=merge",
        "-p",
        r#"{"spec":{"replicas":2}}"#,
    ])?;
    s.kubectl(&[
        "-n",
        "demo",
        "patch",
        "deploy",
        "hello",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/replicas","value":4}]"#,
    ])?;
    s.kubectl(&[
        "-n",
        "demo",
        "patch",
        "deploy",
        "hello",
        "--type=strategic",
        "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"hello","image":"v3"}]}}}}"#,
    ])?;
    let got = s.kubectl(&["-n", "demo", "get", "deploy", "hello", "-o",
        "jsonpath={.spec.replicas} {.spec.template.spec.containers[0].image} {.spec.template.spec.containers[0].env[0].name}"])?;
    assert_eq!(
        got, "4 v3 GREETING",
        "strategic patch must merge the container by name"
    );

    // The scale subresource, as `kubectl scale` drives it.
    s.kubectl(&[
        "-n",
        "demo",
        "scale",
        "deployment",
        "hello",
        "--replicas=50",
    ])?;
    let table = s.kubectl(&["-n", "demo", "get", "deployments"])?;
    assert!(
        table.starts_with("NAME") && table.contains("READY") && table.contains("0/50"),
        "{table}"
    );

    // Server-side tables for the kinds kubectl users look at most.
    let pods = s.kubectl(&["-n", "demo", "get", "pods", "-o", "wide"])?;
    assert!(
        pods.contains("ticker") && pods.contains("Pending") && pods.contains("NOMINATED NODE"),
        "{pods}"
    );
    let svc = s.kubectl(&["-n", "demo", "get", "services"])?;
    assert!(svc.contains("80/TCP") && svc.contains("ClusterIP"), "{svc}");
    let all = s.kubectl(&["-n", "demo", "get", "all"])?;
    assert!(
        all.contains("pod/ticker")
            && all.contains("deployment.apps/hello")
            && all.contains("service/hello"),
        "{all}"
    );
    let desc = s.kubectl(&["-n", "demo", "describe", "deployment", "hello"])?;
    assert!(
        desc.contains("Replicas:") && desc.contains("50 desired"),
        "{desc}"
    );

    // Delete: gone from the API, and `get` says NotFound.
    let out = s.kubectl(&["-n", "demo", "delete", "pod", "ticker"])?;
    assert!(out.contains("pod \"ticker\" deleted"), "{out}");
    let err = s.kubectl_err(&["-n", "demo", "get", "pod", "ticker"], None)?;
    assert!(
        err.contains("NotFound") && err.contains("\"ticker\" not found"),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn built_in_objects_and_discovery() -> anyhow::Result<()> {
    let s = Server::start()?;
    let ns = s.kubectl(&["get", "namespaces", "-o", "name"])?;
    for n in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(ns.contains(&format!("namespace/{n}")), "{ns}");
    }
    let rc = s.kubectl(&["get", "runtimeclasses"])?;
    assert!(rc.contains("wasmtime") && rc.contains("runc"), "{rc}");
    let resources = s.kubectl(&["api-resources", "-o", "name"])?;
    for r in [
        "pods",
        "nodes",
        "events",
        "configmaps",
        "secrets",
        "services",
        "endpoints",
        "serviceaccounts",
        "deployments.apps",
        "replicasets.apps",
        "daemonsets.apps",
        "statefulsets.apps",
        "controllerrevisions.apps",
        "jobs.batch",
        "cronjobs.batch",
        "horizontalpodautoscalers.autoscaling",
        "ingresses.networking.k8s.io",
        "ingressclasses.networking.k8s.io",
        "endpointslices.discovery.k8s.io",
        "leases.coordination.k8s.io",
        "runtimeclasses.node.k8s.io",
        "poddisruptionbudgets.policy",
        "resourcequotas",
        "namespaces",
    ] {
        assert!(
            resources.lines().any(|l| l == r),
            "{r} missing from:\n{resources}"
        );
    }
    let version = s.kubectl(&["version", "-o", "json"])?;
    assert!(version.contains("\"serverVersion\""), "{version}");
    // `kubectl explain` reads the schemas from the OpenAPI v3 documents.
    let field = s.kubectl(&["explain", "deployment.spec.strategy"])?;
    assert!(
        field.contains("KIND:       Deployment")
            && field.contains("rollingUpdate\t<RollingUpdateDeployment>"),
        "{field}"
    );
    let nested = s.kubectl(&["explain", "pods.spec.containers.image"])?;
    assert!(nested.contains("FIELD: image <string>"), "{nested}");
    let wrong = s.kubectl_err(&["explain", "pods.spec.nosuchfield"], None)?;
    assert!(wrong.contains("nosuchfield"), "{wrong}");
    // Access reviews are answered, not stored (kubectl sends them as protobuf).
    assert_eq!(
        s.kubectl(&["auth", "can-i", "create", "pods"])?.trim(),
        "yes"
    );
    let rules = s.kubectl(&["auth", "can-i", "--list"])?;
    assert!(rules.contains("*.*"), "{rules}");
    let me = s.kubectl(&["auth", "whoami"])?;
    assert!(
        me.contains("admin") && me.contains("system:masters"),
        "{me}"
    );
    let listed = s.kubectl_err(&["get", "selfsubjectaccessreviews"], None)?;
    assert!(listed.contains("MethodNotAllowed"), "{listed}");
    Ok(())
}

/// kubectl's imperative `create` commands send protobuf bodies: each
/// kind they make is stored as the JSON equivalent.
#[tokio::test]
async fn imperative_creates_send_protobuf() -> anyhow::Result<()> {
    let s = Server::start()?;
    let image = "file:///samples/hello.wasm";
    for args in [
        vec!["create", "namespace", "imperative"],
        vec![
            "create",
            "deployment",
            "web",
            "--image",
            image,
            "--replicas=0",
            "--port=8080",
        ],
        vec!["create", "configmap", "cm", "--from-literal=greeting=hi"],
        vec![
            "create",
            "secret",
            "generic",
            "token",
            "--from-literal=token=s3cr3t",
        ],
        vec!["create", "service", "nodeport", "np", "--tcp=80:8080"],
        vec!["create", "job", "once", "--image", image],
        vec![
            "create",
            "cronjob",
            "tick",
            "--image",
            image,
            "--schedule=*/5 * * * *",
        ],
        vec!["create", "ingress", "ing", "--rule=web.example/=np:80"],
        vec!["create", "serviceaccount", "robot"],
        vec![
            "create",
            "poddisruptionbudget",
            "pdb",
            "--selector=app=web",
            "--min-available=1",
        ],
    ] {
        let mut full = vec!["-n", "imperative"];
        full.extend(args.iter().copied());
        let out = s.kubectl(&full)?;
        assert!(out.contains("created"), "{args:?}: {out}");
    }
    let get = |args: &[&str]| {
        let mut full = vec!["-n", "imperative", "get"];
        full.extend(args);
        s.kubectl(&full)
    };
    // `--replicas=0` is kept (a zero on the wire is not "unset" here).
    assert_eq!(
        get(&["deployment", "web", "-o", "jsonpath={.spec.replicas} {.spec.template.spec.containers[0].image} {.spec.template.spec.containers[0].ports[0].containerPort} {.spec.strategy.rollingUpdate.maxSurge}"])?,
        format!("0 {image} 8080 25%")
    );
    assert_eq!(
        get(&["configmap", "cm", "-o", "jsonpath={.data.greeting}"])?,
        "hi"
    );
    // Secret bytes arrive raw and are stored base64, as JSON has them.
    assert_eq!(
        get(&["secret", "token", "-o", "jsonpath={.data.token}"])?,
        "czNjcjN0"
    );
    // nodePort 0 on the wire means "allocate one".
    let np = get(&[
        "service",
        "np",
        "-o",
        "jsonpath={.spec.type} {.spec.ports[0].nodePort} {.spec.ports[0].targetPort}",
    ])?;
    let parts: Vec<&str> = np.split(' ').collect();
    assert_eq!((parts[0], parts[2]), ("NodePort", "8080"), "{np}");
    let port: u16 = parts[1].parse()?;
    assert!((30000..=32767).contains(&port), "{np}");
    assert_eq!(
        get(&["cronjob", "tick", "-o", "jsonpath={.spec.schedule}"])?,
        "*/5 * * * *"
    );
    // The rule's embedded struct (ingressRuleValue) is inline in JSON.
    assert_eq!(
        get(&[
            "ingress",
            "ing",
            "-o",
            "jsonpath={.spec.rules[0].host} {.spec.rules[0].http.paths[0].backend.service.name}"
        ])?,
        "web.example np"
    );
    assert_eq!(
        get(&["pdb", "pdb", "-o", "jsonpath={.spec.minAvailable}"])?,
        "1"
    );
    // `kubectl run` sends a Pod (it checks the image name itself, so an
    // OCI reference; nothing schedules it on this node-less server).
    s.kubectl(&[
        "-n",
        "imperative",
        "run",
        "one",
        "--image=registry.example/hello:1",
        "--env=GREETING=hi",
        "--labels=app=one",
    ])?;
    assert_eq!(
        get(&["pod", "one", "-o", "jsonpath={.metadata.labels.app} {.spec.containers[0].env[0].value} {.spec.restartPolicy}"])?,
        "one hi Always"
    );
    // Validation still applies to protobuf bodies: a bad name is a 422.
    let err = s.kubectl_err(&["create", "configmap", "Bad_Name"], None)?;
    assert!(
        err.contains("Bad_Name") && err.contains("metadata.name"),
        "{err}"
    );
    Ok(())
}
