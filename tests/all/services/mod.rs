//! Services in front of `wasi:http` pods: NodePorts on every node, traffic
//! forwarded between node gateways, guests calling Services by name, bad
//! input at the gateway, and rolling updates under load.

mod ingress;
mod nodeport;
mod portforward;
mod probes;
mod rollout;

use std::time::Duration;

use shoal_tests::{wait_for, Server};

pub const PATIENCE: Duration = Duration::from_secs(90);

/// The HTTP samples manifest with `${SAMPLES}` filled in.
pub fn http_manifest(p2_dir: &str) -> anyhow::Result<String> {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples/manifests/http.yaml");
    Ok(std::fs::read_to_string(path)?.replace("${SAMPLES}", p2_dir))
}

/// The directory of a Rust sample's image (`file:///…/x.wasm` → `/…`).
pub fn sample_dir(image: &str) -> String {
    let path = image.trim_start_matches("file://");
    std::path::Path::new(path)
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// Waits until `n` endpoints of Service `name` are ready.
pub async fn wait_endpoints(s: &Server, ns: &str, name: &str, n: usize) -> anyhow::Result<()> {
    wait_for(
        &format!("{n} ready endpoints of service {ns}/{name}"),
        PATIENCE,
        || async {
            let out = s
                .kubectl(&[
                    "get",
                    "endpointslices",
                    "-n",
                    ns,
                    "-l",
                    &format!("kubernetes.io/service-name={name}"),
                    "-o",
                    "jsonpath={range .items[*].endpoints[*]}{.conditions.ready}{\"\\n\"}{end}",
                ])
                .ok()?;
            (out.lines().filter(|l| *l == "true").count() == n).then_some(())
        },
    )
    .await
}

/// The pod name in a hello answer ("hello from <pod> (GET /)").
pub fn pod_of(body: &str) -> Option<String> {
    let rest = body
        .strip_prefix("hello from ")
        .or_else(|| body.split("hello from ").nth(1))?;
    rest.split_whitespace().next().map(str::to_string)
}
