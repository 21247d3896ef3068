//! Pods with `runtimeClassName: runc`: the real runc (installed by
//! `.ci/run`) running Debian's static busybox, packed by `shoal
//! pack-image`, beside Wasm pods on the same `shoal up` node.

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use shoal_tests::{busybox_image, http_get, sample, wait_for, Server, UP_NODE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{first_container, phase, terminated, wait_logs, wait_pod, wait_running, PATIENCE};

fn runc_pod(name: &str, image: &str, extra_spec: &str, container: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  runtimeClassName: runc\n  terminationGracePeriodSeconds: 1\n{extra_spec}  containers:\n  - name: main\n    image: {image}\n{container}"
    )
}

#[tokio::test]
async fn runc_pods_run_log_restart_and_stop() -> anyhow::Result<()> {
    let s = Server::up_on("127.0.9.1", &[])?;
    let image = busybox_image()?;
    let client = s.client().await?;
    let pods: Api<Pod> = Api::namespaced(client, "default");

    // Config reaches the process as env and as files; the image's Cmd is
    // replaced by args, its Entrypoint by command.
    let manifest = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  greeting: hello from runc\n---\n{}---\n{}",
        runc_pod(
            "bb",
            &image,
            "  volumes:\n  - name: cfg\n    configMap: {name: settings}\n",
            "    command: [sh, -c]\n    args: ['echo $GREETING; cat /cfg/greeting; echo; hostname; exec sleep 3600']\n    env:\n    - name: GREETING\n      valueFrom: {configMapKeyRef: {name: settings, key: greeting}}\n    volumeMounts:\n    - {name: cfg, mountPath: /cfg}\n"
        ),
        wasm_neighbour()?,
    );
    s.kubectl_in(&["apply", "-f", "-"], Some(&manifest))?;
    let p = wait_running(&pods, "bb").await?;
    assert_eq!(
        p.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        Some(UP_NODE)
    );
    let c = first_container(&p).cloned().unwrap_or_default();
    assert!(
        c.container_id
            .as_deref()
            .unwrap_or_default()
            .starts_with("runc://"),
        "{c:?}"
    );
    assert!(c.image_id.starts_with("sha256:"), "{c:?}");
    let logs = wait_logs(&s, &["bb"], "bb\n").await?;
    assert_eq!(logs, "hello from runc\nhello from runc\nbb\n");
    wait_running(&pods, "ticker").await?;
    let wide = s.kubectl(&["get", "pods", "-o", "wide"])?;
    assert!(wide.contains("bb") && wide.contains("ticker"), "{wide}");

    // kubectl exec: a command beside the container's process, with its
    // environment and mounts; its streams apart and its exit code kept.
    let out = s.kubectl_raw(
        &[
            "exec",
            "bb",
            "--",
            "sh",
            "-c",
            "echo $GREETING; cat /cfg/greeting; echo oops >&2; exit 3",
        ],
        None,
    )?;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from runc\nhello from runc"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).starts_with("oops\n"),
        "{out:?}"
    );
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let piped = s.kubectl_in(&["exec", "-i", "bb", "--", "cat"], Some("piped in\n"))?;
    assert_eq!(piped, "piped in\n");
    // kubectl cp is tar through exec, both ways.
    let (there, back) = (s.data_dir().join("cp-in"), s.data_dir().join("cp-out"));
    std::fs::write(&there, "copied\n")?;
    s.kubectl(&["cp", &there.display().to_string(), "bb:/tmp/copied"])?;
    assert_eq!(
        s.kubectl(&["exec", "bb", "--", "cat", "/tmp/copied"])?,
        "copied\n"
    );
    s.kubectl(&["cp", "bb:/tmp/copied", &back.display().to_string()])?;
    assert_eq!(std::fs::read_to_string(&back)?, "copied\n");
    // kubectl exec -it: the command gets a terminal, sized as kubectl's
    // own (`script` gives kubectl one to read its size from).
    let inner = format!(
        "stty cols 91 rows 13; kubectl --kubeconfig {} exec -it bb -- sh -c 'tty; for i in 1 2 3 4 5 6 7 8 9 10; do [ \"$(stty size)\" = \"13 91\" ] && break; sleep 0.2; done; stty size; exit 4'",
        s.kubeconfig().display()
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &inner, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()?;
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("/dev/pts/"), "{out:?}");
    assert!(shown.contains("13 91"), "{out:?}");
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    // Typed input reaches an interactive shell through the terminal.
    let mut shell = std::process::Command::new("script")
        .args([
            "-qec",
            &format!(
                "kubectl --kubeconfig {} exec -it bb -- sh",
                s.kubeconfig().display()
            ),
            "/dev/null",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    if let Some(mut typed) = shell.stdin.take() {
        use std::io::Write;
        typed.write_all(b"echo $((6 * 7))\nexit 9\n")?;
    }
    let out = shell.wait_with_output()?;
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("42"), "{out:?}");
    assert_eq!(out.status.code(), Some(9), "{out:?}");
    // A Wasm sandbox has no processes to exec into, and says so.
    let err = s.kubectl_err(&["exec", "ticker", "--", "sh"], None)?;
    assert!(err.contains("no processes to exec into"), "{err}");

    // Exit codes and reasons as kubelet reports them.
    let endings = [
        runc_pod(
            "exits",
            &image,
            "  restartPolicy: Never\n",
            "    command: [sh, -c, 'echo bye; exit 3']\n",
        ),
        runc_pod(
            "hog",
            &image,
            "  restartPolicy: Never\n",
            "    command: [sh, -c, 'x=a; while true; do x=$x$x; done']\n    resources:\n      limits: {memory: 16Mi}\n",
        ),
        runc_pod(
            "nobin",
            &image,
            "  restartPolicy: Never\n",
            "    command: [/bin/no-such-program]\n",
        ),
    ]
    .join("---\n");
    s.kubectl_in(&["apply", "-f", "-"], Some(&endings))?;
    for (name, code, reason, message) in [
        ("exits", 3, "Error", ""),
        ("hog", 137, "OOMKilled", ""),
        ("nobin", 128, "StartError", "/bin/no-such-program"),
    ] {
        let p = wait_pod(&pods, name, "to fail", |p| phase(p) == "Failed").await?;
        let t = terminated(&p).cloned().unwrap_or_default();
        assert_eq!(
            (t.exit_code, t.reason.as_deref()),
            (code, Some(reason)),
            "{name}: {t:?}"
        );
        assert!(
            t.message.as_deref().unwrap_or_default().contains(message),
            "{name}: {t:?}"
        );
    }
    assert_eq!(s.kubectl(&["logs", "exits"])?, "bye\n");

    // The pod's securityContext, with the container's over it.
    s.kubectl_in(
        &["apply", "-f", "-"],
        Some(&runc_pod(
            "locked",
            &image,
            "  restartPolicy: Never\n  securityContext: {runAsUser: 1000, runAsGroup: 3000}\n",
            "    command: [sh, -c, 'id -u; id -g; touch /x 2>/dev/null || echo read-only root']\n    securityContext: {runAsUser: 2000, readOnlyRootFilesystem: true, allowPrivilegeEscalation: false}\n",
        )),
    )?;
    wait_pod(&pods, "locked", "to succeed", |p| phase(p) == "Succeeded").await?;
    assert_eq!(
        s.kubectl(&["logs", "locked"])?,
        "2000\n3000\nread-only root\n"
    );

    // A crashing container restarts with back-off, its earlier run's log
    // kept for --previous.
    s.kubectl_in(
        &["apply", "-f", "-"],
        Some(&runc_pod(
            "crasher",
            &image,
            "",
            "    command: [sh, -c, 'echo run; exit 1']\n",
        )),
    )?;
    wait_pod(&pods, "crasher", "to restart", |p| {
        first_container(p).is_some_and(|c| c.restart_count >= 2)
    })
    .await?;
    assert_eq!(s.kubectl(&["logs", "crasher", "--previous"])?, "run\n");

    // Deletion: SIGTERM, then SIGKILL after the 1 s grace (a shell as PID 1
    // ignores SIGTERM), and the container is gone from runc.
    s.kubectl(&[
        "delete", "pod", "bb", "crasher", "exits", "hog", "nobin", "locked",
    ])?;
    let state = s.data_dir().join("node/oci/state");
    wait_for("runc to hold no containers", PATIENCE, || async {
        let out = std::process::Command::new("runc")
            .arg("--root")
            .arg(&state)
            .args(["list", "-q"])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .is_empty()
            .then_some(())
    })
    .await?;
    Ok(())
}

const OUTSIDE_IP: &str = "192.168.213.2";
const OUTSIDE_NS: &str = "shoal-test-outside";
/// Not named `shoal…`: the node masquerades only what leaves through
/// interfaces other than its pod bridges.
const OUTSIDE_LINK: &str = "tout213";

/// A network beyond the node, as a host outside the cluster: a namespace on
/// its own veth and subnet, serving a page with busybox's httpd.
struct Outside {
    httpd: std::process::Child,
}

impl Outside {
    fn start(dir: &std::path::Path) -> anyhow::Result<Outside> {
        let ip = |args: &[&str]| -> anyhow::Result<()> {
            let st = std::process::Command::new("ip").args(args).status()?;
            anyhow::ensure!(st.success(), "ip {args:?} failed");
            Ok(())
        };
        Outside::remove();
        ip(&["netns", "add", OUTSIDE_NS])?;
        ip(&[
            "link",
            "add",
            OUTSIDE_LINK,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            OUTSIDE_NS,
        ])?;
        ip(&["addr", "add", "192.168.213.1/24", "dev", OUTSIDE_LINK])?;
        ip(&["link", "set", OUTSIDE_LINK, "up"])?;
        ip(&[
            "-n",
            OUTSIDE_NS,
            "addr",
            "add",
            &format!("{OUTSIDE_IP}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", OUTSIDE_NS, "link", "set", "eth0", "up"])?;
        let www = dir.join("outside-www");
        std::fs::create_dir_all(&www)?;
        std::fs::write(www.join("outside.html"), "beyond the node\n")?;
        let httpd = std::process::Command::new("ip")
            .args([
                "netns", "exec", OUTSIDE_NS, "busybox", "httpd", "-f", "-p", "8080", "-h",
            ])
            .arg(&www)
            .spawn()?;
        Ok(Outside { httpd })
    }

    fn remove() {
        for args in [["link", "del", OUTSIDE_LINK], ["netns", "del", OUTSIDE_NS]] {
            let _ = std::process::Command::new("ip")
                .args(args)
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = self.httpd.kill();
        let _ = self.httpd.wait();
        Outside::remove();
    }
}

/// A Wasm pod beside the runc ones: one node serves both runtimes.
pub fn wasm_neighbour() -> anyhow::Result<String> {
    Ok(shoal_tests::pod_yaml("ticker", &sample("ticker")?, "", ""))
}

#[tokio::test]
async fn runc_pods_have_their_own_network_and_serve_services() -> anyhow::Result<()> {
    let s = Server::up_on("127.0.9.2", &[])?;
    let image = busybox_image()?;
    // Both replicas on the one node listen on the same port: each pod has
    // a network namespace and an IP of its own.
    let manifest = format!(
        "apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      runtimeClassName: runc
      terminationGracePeriodSeconds: 1
      containers:
      - name: httpd
        image: {image}
        command: [httpd, -f, -p, '8080', -h, /www]
        ports: [{{containerPort: 8080}}]
        readinessProbe:
          httpGet: {{path: /index.html, port: 8080}}
          periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  type: NodePort
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080, nodePort: 30091}}]
"
    );
    s.kubectl_in(&["apply", "-f", "-"], Some(&manifest))?;
    s.kubectl(&["rollout", "status", "deployment/web", "--timeout=60s"])?;
    let cidr = s.kubectl(&["get", "node", UP_NODE, "-o", "jsonpath={.spec.podCIDR}"])?;
    let (net, _) = cidr
        .rsplit_once('.')
        .ok_or_else(|| anyhow::anyhow!("podCIDR {cidr:?}"))?;
    let ips = s.kubectl(&[
        "get",
        "endpoints",
        "web",
        "-o",
        "jsonpath={.subsets[0].addresses[*].ip}",
    ])?;
    let ips: Vec<&str> = ips.split_whitespace().collect();
    assert_eq!(ips.len(), 2, "{ips:?}");
    assert_ne!(ips[0], ips[1]);
    for ip in &ips {
        assert!(ip.starts_with(&format!("{net}.")), "{ip} is not in {cidr}");
    }
    let (code, body) = wait_for("the NodePort to answer", PATIENCE, || async {
        http_get("127.0.9.2:30091", "/")
            .await
            .ok()
            .filter(|(c, _)| *c == 200)
    })
    .await?;
    assert_eq!((code, body.as_str()), (200, "hello from a runc pod\n"));

    // kubectl port-forward dials the pod's own IP. 2 MiB each way is far
    // past SPDY's initial 64 KiB window, which kubectl never reopens.
    let web = s.kubectl(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ])?;
    s.kubectl(&[
        "exec",
        &web,
        "--",
        "dd",
        "if=/dev/urandom",
        "of=/www/big",
        "bs=1024",
        "count=2048",
    ])?;
    let want = s
        .kubectl_raw(&["exec", &web, "--", "cat", "/www/big"], None)?
        .stdout;
    assert_eq!(want.len(), 2048 * 1024);
    let pf = s.port_forward(&[&format!("pod/{web}"), ":8080"], &[])?;
    let mut conn = tokio::net::TcpStream::connect(&pf.local).await?;
    conn.write_all(b"GET /big HTTP/1.0\r\n\r\n").await?;
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).await?;
    let at = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no HTTP answer through port-forward"))?;
    let head = String::from_utf8_lossy(&raw[..at]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(raw[at + 4..] == want[..], "the file came through whole");
    // And the other way: a CGI script counts what it is sent.
    s.kubectl_in(
        &[
            "exec",
            "-i",
            &web,
            "--",
            "sh",
            "-c",
            "mkdir -p /www/cgi-bin && cat > /www/cgi-bin/count && chmod +x /www/cgi-bin/count",
        ],
        Some("#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n'\nhead -c \"$CONTENT_LENGTH\" | wc -c\n"),
    )?;
    let upload = "x".repeat(2 << 20);
    let mut conn = tokio::net::TcpStream::connect(&pf.local).await?;
    conn.write_all(
        format!(
            "POST /cgi-bin/count HTTP/1.0\r\nContent-Length: {}\r\n\r\n{upload}",
            upload.len()
        )
        .as_bytes(),
    )
    .await?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer).await?;
    assert_eq!(
        answer.rsplit("\r\n\r\n").next().map(str::trim),
        Some("2097152"),
        "{answer}"
    );
    drop(pf);

    // Pods reach each other by pod IP; the downward API and /etc/hosts
    // know the pod's own address; a hostNetwork pod keeps the node's.
    let probe = |name: &str, host_network: bool, script: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  runtimeClassName: runc\n  restartPolicy: Never\n  hostNetwork: {host_network}\n  containers:\n  - name: main\n    image: {image}\n    command: [sh, -c, '{script}']\n    env:\n    - name: POD_IP\n      valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}\n"
        )
    };
    let caller = probe(
        "caller",
        false,
        &format!(
            "printf \"GET /index.html HTTP/1.0\\r\\n\\r\\n\" | nc -w 5 {} 8080 | tail -n 1; grep \"^$POD_IP\" /etc/hosts | grep -cw caller",
            ips[0]
        ),
    );
    let on_host = probe("on-host", true, "echo $POD_IP");
    // Beyond the node: the reply comes back only if the pod's packets were
    // forwarded and masqueraded (the outside network has no route to pods).
    let _outside = Outside::start(s.data_dir())?;
    let egress = probe(
        "egress",
        false,
        &format!(
            "printf \"GET /outside.html HTTP/1.0\\r\\n\\r\\n\" | nc -w 5 {OUTSIDE_IP} 8080 | tail -n 1"
        ),
    );
    s.kubectl_in(
        &["apply", "-f", "-"],
        Some(&format!("{caller}---\n{on_host}---\n{egress}")),
    )?;
    let client = s.client().await?;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    for name in ["caller", "on-host", "egress"] {
        wait_pod(&pods, name, "to succeed", |p| phase(p) == "Succeeded").await?;
    }
    assert_eq!(s.kubectl(&["logs", "egress"])?, "beyond the node\n");
    assert_eq!(
        s.kubectl(&["logs", "caller"])?,
        "hello from a runc pod\n1\n"
    );
    assert_eq!(s.kubectl(&["logs", "on-host"])?, "127.0.9.2\n");
    let caller_ip = s.kubectl(&["get", "pod", "caller", "-o", "jsonpath={.status.podIP}"])?;
    assert!(caller_ip.starts_with(&format!("{net}.")), "{caller_ip}");
    Ok(())
}

#[tokio::test]
async fn exec_probes_and_hooks_run_in_runc_containers() -> anyhow::Result<()> {
    let s = Server::up_on("127.0.9.3", &[])?;
    let image = busybox_image()?;
    let client = s.client().await?;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    // postStart writes a file; readiness waits for another one; liveness
    // fails once /tmp/dead exists, and the container restarts.
    let pod = runc_pod(
        "probed",
        &image,
        "",
        "    command: [sh, -c, 'exec sleep 3600']\n    lifecycle:\n      postStart:\n        exec: {command: [sh, -c, 'echo started > /tmp/hooked']}\n    readinessProbe:\n      exec: {command: [cat, /tmp/ready]}\n      periodSeconds: 1\n    livenessProbe:\n      exec: {command: [sh, -c, 'test ! -e /tmp/dead']}\n      periodSeconds: 1\n      failureThreshold: 1\n",
    );
    s.kubectl_in(&["apply", "-f", "-"], Some(&pod))?;
    // Running, and not Ready: its readiness probe fails for now.
    wait_pod(&pods, "probed", "to run", |p| {
        first_container(p).is_some_and(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
    })
    .await?;
    assert_eq!(
        s.kubectl(&["exec", "probed", "--", "cat", "/tmp/hooked"])?,
        "started\n"
    );
    let ready = |p: &Pod| first_container(p).is_some_and(|c| c.ready);
    let p = pods.get("probed").await?;
    assert!(!ready(&p), "ready before its probe passed: {p:?}");
    s.kubectl(&["exec", "probed", "--", "touch", "/tmp/ready"])?;
    wait_pod(&pods, "probed", "to be ready", ready).await?;
    s.kubectl(&["exec", "probed", "--", "touch", "/tmp/dead"])?;
    let p = wait_pod(
        &pods,
        "probed",
        "to be restarted by its liveness probe",
        |p| first_container(p).is_some_and(|c| c.restart_count >= 1),
    )
    .await?;
    let described = s.kubectl(&["describe", "pod", "probed"])?;
    assert!(
        described.contains("Liveness probe failed"),
        "{described}\n{p:?}"
    );
    Ok(())
}
