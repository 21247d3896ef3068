//! Turns a container's spec into what the runtime needs: argv by
//! Kubernetes' command/args rules, env with ConfigMap/Secret/field
//! references and `$(VAR)` expansion, volumes materialised as directories.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret, Service, Volume};
use kube::Api;
use shoal_runtime::{HttpLimits, Mount};
use shoal_sdk::http_annotations as ann;
use shoal_sdk::quantity;

/// Why a container's configuration could not be assembled. Kubelet's
/// waiting reason for all of these is `CreateContainerConfigError`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// The resolved pieces of one container.
pub struct Resolved {
    pub argv: Vec<String>,
    /// `command` and `args` apart, for images that carry an entrypoint.
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub mounts: Vec<Mount>,
    pub memory_limit: Option<u64>,
    pub cpu_limit_millis: Option<u64>,
    pub http: HttpLimits,
    /// Hosts outside the cluster the guest may call.
    pub allowed_outbound: Vec<String>,
    pub security: shoal_runtime::Security,
}

/// ConfigMaps and Secrets fetched once per pod start, and the Services
/// of the pod's namespace (for their environment variables).
pub struct Sources {
    client: kube::Client,
    namespace: String,
    services: Vec<Arc<Service>>,
    config_maps: HashMap<String, Option<ConfigMap>>,
    secrets: HashMap<String, Option<Secret>>,
    /// The directories behind the pod's PersistentVolumeClaims, by volume
    /// name, found before any container is resolved.
    pub claims: HashMap<String, crate::node::volumes::ClaimDir>,
}

impl Sources {
    pub fn new(client: kube::Client, namespace: &str, services: Vec<Arc<Service>>) -> Self {
        Sources {
            client,
            namespace: namespace.to_string(),
            services,
            config_maps: HashMap::new(),
            secrets: HashMap::new(),
            claims: HashMap::new(),
        }
    }

    async fn config_map(&mut self, name: &str) -> Result<Option<&ConfigMap>, ConfigError> {
        if !self.config_maps.contains_key(name) {
            let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
            let cm = api
                .get_opt(name)
                .await
                .map_err(|e| ConfigError(format!("reading configmap {name:?}: {e}")))?;
            self.config_maps.insert(name.to_string(), cm);
        }
        Ok(self.config_maps.get(name).and_then(Option::as_ref))
    }

    pub(crate) async fn secret(&mut self, name: &str) -> Result<Option<&Secret>, ConfigError> {
        if !self.secrets.contains_key(name) {
            let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
            let s = api
                .get_opt(name)
                .await
                .map_err(|e| ConfigError(format!("reading secret {name:?}: {e}")))?;
            self.secrets.insert(name.to_string(), s);
        }
        Ok(self.secrets.get(name).and_then(Option::as_ref))
    }

    /// All keys of a ConfigMap (text and binary) as bytes.
    async fn config_map_data(
        &mut self,
        name: &str,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, ConfigError> {
        Ok(self.config_map(name).await?.map(|cm| {
            let mut out: BTreeMap<String, Vec<u8>> = cm
                .data
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
                .collect();
            for (k, v) in cm.binary_data.iter().flatten() {
                out.insert(k.clone(), v.0.clone());
            }
            out
        }))
    }

    async fn secret_data(
        &mut self,
        name: &str,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, ConfigError> {
        Ok(self.secret(name).await?.map(|s| {
            let mut out: BTreeMap<String, Vec<u8>> = s
                .data
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.0.clone()))
                .collect();
            for (k, v) in s.string_data.iter().flatten() {
                out.insert(k.clone(), v.clone().into_bytes());
            }
            out
        }))
    }
}

/// Resolves one container. `pod_dir` is where this pod's volumes live.
pub async fn resolve(
    pod: &Pod,
    container: &Container,
    sources: &mut Sources,
    pod_dir: &Path,
    ips: Addresses<'_>,
) -> Result<Resolved, ConfigError> {
    let env = resolve_env(pod, container, sources, ips).await?;
    let lookup: HashMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let expand_all = |v: &Option<Vec<String>>| -> Vec<String> {
        v.iter().flatten().map(|s| expand(s, &lookup)).collect()
    };
    let command = expand_all(&container.command);
    let args = expand_all(&container.args);
    // No image metadata to supply an entrypoint: argv[0] is the command's
    // first word if given, else the container's name.
    let argv = if command.is_empty() {
        std::iter::once(container.name.clone())
            .chain(args.iter().cloned())
            .collect()
    } else {
        command.iter().chain(&args).cloned().collect()
    };
    let volumes = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default();
    let mut mounts = Vec::new();
    for vm in container.volume_mounts.iter().flatten() {
        let Some(volume) = volumes.iter().find(|v| v.name == vm.name) else {
            return Err(ConfigError(format!(
                "volumeMount {:?} refers to no volume of the pod",
                vm.name
            )));
        };
        let (mut host_path, source_read_only) = materialise(volume, sources, pod_dir).await?;
        if let Some(sub) = vm.sub_path.as_deref().filter(|s| !s.is_empty()) {
            if Path::new(sub)
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
            {
                return Err(ConfigError(format!(
                    "subPath {sub:?} must be a relative path without '..'"
                )));
            }
            host_path = host_path.join(sub);
            std::fs::create_dir_all(&host_path).map_err(|e| {
                ConfigError(format!("creating subPath {}: {e}", host_path.display()))
            })?;
        }
        mounts.push(Mount {
            host_path,
            guest_path: vm.mount_path.clone(),
            read_only: source_read_only || vm.read_only.unwrap_or(false),
        });
    }
    let limits = container.resources.as_ref().and_then(|r| r.limits.as_ref());
    let memory_limit = limits
        .and_then(|l| l.get("memory"))
        .and_then(|q| quantity::base_units(&q.0))
        .and_then(|v| u64::try_from(v).ok());
    let cpu_limit_millis = limits
        .and_then(|l| l.get("cpu"))
        .and_then(|q| quantity::cpu_millis(&q.0))
        .and_then(|v| u64::try_from(v).ok());
    Ok(Resolved {
        argv,
        command,
        args,
        env,
        mounts,
        memory_limit,
        cpu_limit_millis,
        http: http_limits(pod)?,
        allowed_outbound: allowed_outbound(pod),
        security: security(pod, container),
    })
}

/// The container's `securityContext` over the pod's (container settings
/// win, as in Kubernetes). Ids that do not fit a uid are left unset;
/// admission validates them.
pub fn security(pod: &Pod, container: &Container) -> shoal_runtime::Security {
    let pod_sc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let sc = container.security_context.as_ref();
    let id = |v: Option<i64>| v.and_then(|n| u32::try_from(n).ok());
    let caps = sc.and_then(|s| s.capabilities.as_ref());
    shoal_runtime::Security {
        run_as_user: id(sc
            .and_then(|s| s.run_as_user)
            .or_else(|| pod_sc.and_then(|s| s.run_as_user))),
        run_as_group: id(sc
            .and_then(|s| s.run_as_group)
            .or_else(|| pod_sc.and_then(|s| s.run_as_group))),
        run_as_non_root: sc
            .and_then(|s| s.run_as_non_root)
            .or_else(|| pod_sc.and_then(|s| s.run_as_non_root))
            .unwrap_or(false),
        read_only_root: sc
            .and_then(|s| s.read_only_root_filesystem)
            .unwrap_or(false),
        no_new_privileges: sc.and_then(|s| s.allow_privilege_escalation) == Some(false),
        add_capabilities: caps.and_then(|c| c.add.clone()).unwrap_or_default(),
        drop_capabilities: caps.and_then(|c| c.drop.clone()).unwrap_or_default(),
    }
}

/// The pod's `shoal.dev/allowed-outbound-hosts`, lower-cased.
pub fn allowed_outbound(pod: &Pod) -> Vec<String> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ann::ALLOWED_OUTBOUND_HOSTS))
        .map(|v| {
            v.split(',')
                .map(|h| h.trim().to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// Docker-link style variables for every Service with a cluster IP in the
/// pod's namespace, as kubelet sets them when `enableServiceLinks` holds:
/// `WEB_SERVICE_HOST`, `WEB_SERVICE_PORT`, `WEB_PORT_80_TCP_ADDR`, ….
pub fn service_env(services: &[Arc<Service>]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut sorted: Vec<&Arc<Service>> = services.iter().collect();
    sorted.sort_by_key(|s| s.metadata.name.clone());
    for svc in sorted {
        let spec = svc.spec.clone().unwrap_or_default();
        let Some(ip) = spec.cluster_ip.filter(|ip| !ip.is_empty() && ip != "None") else {
            continue;
        };
        let ports = spec.ports.unwrap_or_default();
        let Some(first) = ports.first() else {
            continue;
        };
        let prefix = svc
            .metadata
            .name
            .as_deref()
            .unwrap_or_default()
            .to_ascii_uppercase()
            .replace('-', "_");
        out.push((format!("{prefix}_SERVICE_HOST"), ip.clone()));
        out.push((format!("{prefix}_SERVICE_PORT"), first.port.to_string()));
        for p in &ports {
            if let Some(n) = p.name.as_deref().filter(|n| !n.is_empty()) {
                out.push((
                    format!(
                        "{prefix}_SERVICE_PORT_{}",
                        n.to_ascii_uppercase().replace('-', "_")
                    ),
                    p.port.to_string(),
                ));
            }
        }
        let proto = |p: &k8s_openapi::api::core::v1::ServicePort| {
            p.protocol.clone().unwrap_or_else(|| "TCP".into())
        };
        out.push((
            format!("{prefix}_PORT"),
            format!(
                "{}://{ip}:{}",
                proto(first).to_ascii_lowercase(),
                first.port
            ),
        ));
        for p in &ports {
            let base = format!("{prefix}_PORT_{}_{}", p.port, proto(p));
            let url = format!("{}://{ip}:{}", proto(p).to_ascii_lowercase(), p.port);
            out.push((base.clone(), url));
            out.push((format!("{base}_PROTO"), proto(p).to_ascii_lowercase()));
            out.push((format!("{base}_PORT"), p.port.to_string()));
            out.push((format!("{base}_ADDR"), ip.clone()));
        }
    }
    out
}

/// The pod's HTTP bounds from its `shoal.dev/http-*` annotations.
pub fn http_limits(pod: &Pod) -> Result<HttpLimits, ConfigError> {
    let mut limits = HttpLimits::default();
    let annotations = pod.metadata.annotations.as_ref();
    let number = |key: &str| -> Result<Option<u64>, ConfigError> {
        match annotations.and_then(|a| a.get(key)) {
            None => Ok(None),
            Some(v) => match v.trim().parse::<u64>() {
                Ok(n) if n > 0 => Ok(Some(n)),
                _ => Err(ConfigError(format!(
                    "annotation {key}: {v:?} is not a positive whole number"
                ))),
            },
        }
    };
    if let Some(n) = number(ann::MAX_CONCURRENCY)? {
        limits.max_concurrency = usize::try_from(n).unwrap_or(usize::MAX);
    }
    if let Some(n) = number(ann::TIMEOUT_SECONDS)? {
        limits.timeout = std::time::Duration::from_secs(n);
    }
    if let Some(n) = number(ann::MAX_BODY_BYTES)? {
        limits.max_body_bytes = n;
    }
    Ok(limits)
}

async fn resolve_env(
    pod: &Pod,
    container: &Container,
    sources: &mut Sources,
    ips: Addresses<'_>,
) -> Result<Vec<(String, String)>, ConfigError> {
    // What a container runtime sets from the sandbox's hostname, which
    // Kubernetes makes the pod's name.
    let mut env: Vec<(String, String)> = pod
        .metadata
        .name
        .iter()
        .map(|n| ("HOSTNAME".to_string(), n.clone()))
        .collect();
    let links = pod
        .spec
        .as_ref()
        .and_then(|s| s.enable_service_links)
        .unwrap_or(true);
    if links {
        env.extend(service_env(&sources.services));
    }
    let set = |env: &mut Vec<(String, String)>, k: String, v: String| match env
        .iter_mut()
        .find(|(name, _)| *name == k)
    {
        Some(slot) => slot.1 = v,
        None => env.push((k, v)),
    };
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let data = if let Some(r) = &from.config_map_ref {
            match sources.config_map_data(&r.name).await? {
                Some(d) => d,
                None if r.optional == Some(true) => continue,
                None => return Err(ConfigError(format!("configmap {:?} not found", r.name))),
            }
        } else if let Some(r) = &from.secret_ref {
            match sources.secret_data(&r.name).await? {
                Some(d) => d,
                None if r.optional == Some(true) => continue,
                None => return Err(ConfigError(format!("secret {:?} not found", r.name))),
            }
        } else {
            continue;
        };
        for (k, v) in data {
            set(
                &mut env,
                format!("{prefix}{k}"),
                String::from_utf8_lossy(&v).into_owned(),
            );
        }
    }
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (_, Some(from)) => match value_from(pod, container, from, sources, ips).await? {
                Some(v) => v,
                None => continue,
            },
            (Some(v), None) => {
                let lookup: HashMap<&str, &str> =
                    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                expand(v, &lookup)
            }
            (None, None) => String::new(),
        };
        set(&mut env, var.name.clone(), value);
    }
    Ok(env)
}

/// One `valueFrom`; `None` when an optional source is missing.
async fn value_from(
    pod: &Pod,
    container: &Container,
    from: &k8s_openapi::api::core::v1::EnvVarSource,
    sources: &mut Sources,
    ips: Addresses<'_>,
) -> Result<Option<String>, ConfigError> {
    if let Some(r) = &from.config_map_key_ref {
        let data = sources.config_map_data(&r.name).await?;
        let source = KeySource {
            kind: "ConfigMap",
            namespace: &sources.namespace,
            name: &r.name,
        };
        return source.value(data, &r.key, r.optional == Some(true));
    }
    if let Some(r) = &from.secret_key_ref {
        let data = sources.secret_data(&r.name).await?;
        let source = KeySource {
            kind: "Secret",
            namespace: &sources.namespace,
            name: &r.name,
        };
        return source.value(data, &r.key, r.optional == Some(true));
    }
    if let Some(f) = &from.field_ref {
        return field_value(pod, &f.field_path, ips).map(Some);
    }
    if let Some(r) = &from.resource_field_ref {
        let limits = container.resources.as_ref().and_then(|r| r.limits.as_ref());
        let q = limits.and_then(|l| l.get(r.resource.trim_start_matches("limits.")));
        let requests = container
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref());
        let q = if r.resource.starts_with("requests.") {
            requests.and_then(|l| l.get(r.resource.trim_start_matches("requests.")))
        } else {
            q
        };
        return Ok(Some(q.map(|q| q.0.clone()).unwrap_or_default()));
    }
    Ok(None)
}

/// A ConfigMap or Secret an env var takes one key from.
struct KeySource<'a> {
    kind: &'static str,
    namespace: &'a str,
    name: &'a str,
}

impl KeySource<'_> {
    /// The key's value; `None` when the source or key is missing but the
    /// reference is optional. Messages are kubelet's.
    fn value(
        &self,
        data: Option<BTreeMap<String, Vec<u8>>>,
        key: &str,
        optional: bool,
    ) -> Result<Option<String>, ConfigError> {
        let Some(data) = data else {
            return if optional {
                Ok(None)
            } else {
                Err(ConfigError(format!(
                    "{} {:?} not found",
                    self.kind.to_ascii_lowercase(),
                    self.name
                )))
            };
        };
        match data.get(key) {
            Some(v) => Ok(Some(String::from_utf8_lossy(v).into_owned())),
            None if optional => Ok(None),
            None => Err(ConfigError(format!(
                "couldn't find key {key} in {} {}/{}",
                self.kind, self.namespace, self.name
            ))),
        }
    }
}

/// The node's and the pod's IP, for the downward API.
#[derive(Debug, Clone, Copy)]
pub struct Addresses<'a> {
    pub host: &'a str,
    pub pod: &'a str,
}

/// The downward API's field paths.
fn field_value(pod: &Pod, path: &str, ips: Addresses<'_>) -> Result<String, ConfigError> {
    let m = &pod.metadata;
    let spec = pod.spec.as_ref();
    let keyed = |prefix: &str, map: &Option<BTreeMap<String, String>>| -> Option<String> {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(
            map.as_ref()
                .and_then(|m| m.get(key))
                .cloned()
                .unwrap_or_default(),
        )
    };
    let v = match path {
        "metadata.name" => m.name.clone(),
        "metadata.namespace" => m.namespace.clone(),
        "metadata.uid" => m.uid.clone(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()),
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()),
        "status.hostIP" => Some(ips.host.to_string()),
        "status.podIP" => Some(ips.pod.to_string()),
        _ => keyed("metadata.labels['", &m.labels)
            .or_else(|| keyed("metadata.annotations['", &m.annotations)),
    };
    v.ok_or_else(|| ConfigError(format!("unsupported fieldRef fieldPath {path:?}")))
}

/// Kubernetes' `$(VAR)` expansion: known names are replaced, `$$` escapes,
/// anything else stays as written.
pub fn expand(input: &str, vars: &HashMap<&str, &str>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(end) => {
                    let name = &inner[..end];
                    match vars.get(name) {
                        Some(v) => out.push_str(v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &inner[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = inner;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Makes a volume a directory on the node; returns it and whether the
/// volume is read-only by nature (ConfigMaps and Secrets are).
async fn materialise(
    volume: &Volume,
    sources: &mut Sources,
    pod_dir: &Path,
) -> Result<(PathBuf, bool), ConfigError> {
    let dir = pod_dir.join("volumes").join(&volume.name);
    let mkdir = |p: &Path| {
        std::fs::create_dir_all(p)
            .map_err(|e| ConfigError(format!("creating {}: {e}", p.display())))
    };
    if volume.empty_dir.is_some() {
        mkdir(&dir)?;
        return Ok((dir, false));
    }
    if volume.persistent_volume_claim.is_some() || volume.ephemeral.is_some() {
        return match sources.claims.get(&volume.name) {
            Some(c) => Ok((c.path.clone(), c.read_only)),
            None => Err(ConfigError(format!(
                "volume {:?}: its claim was not mounted",
                volume.name
            ))),
        };
    }
    if let Some(hp) = &volume.host_path {
        let path = PathBuf::from(&hp.path);
        match hp.type_.as_deref().unwrap_or("") {
            "DirectoryOrCreate" => mkdir(&path)?,
            "" | "Directory" if path.is_dir() => {}
            "" | "Directory" => {
                return Err(ConfigError(format!("hostPath {} is not a directory", hp.path)))
            }
            other => {
                return Err(ConfigError(format!(
                    "hostPath type {other:?} is not supported for Wasm pods: a guest mounts directories only"
                )))
            }
        }
        return Ok((path, false));
    }
    let (data, items, optional, what) = if let Some(cm) = &volume.config_map {
        (
            sources.config_map_data(&cm.name).await?,
            cm.items.clone(),
            cm.optional == Some(true),
            format!("configmap {:?}", cm.name),
        )
    } else if let Some(s) = &volume.secret {
        let name = s.secret_name.clone().unwrap_or_default();
        (
            sources.secret_data(&name).await?,
            s.items.clone(),
            s.optional == Some(true),
            format!("secret {name:?}"),
        )
    } else {
        return Err(ConfigError(format!(
            "volume {:?}: only emptyDir, hostPath, configMap, secret, persistentVolumeClaim and ephemeral volumes are supported",
            volume.name
        )));
    };
    let data = match data {
        Some(d) => d,
        None if optional => BTreeMap::new(),
        None => return Err(ConfigError(format!("{what} not found"))),
    };
    // Write into a fresh directory, then swap it in, so a guest never sees
    // half an update.
    let staging = pod_dir
        .join("volumes")
        .join(format!(".{}.new", volume.name));
    let _ = std::fs::remove_dir_all(&staging);
    mkdir(&staging)?;
    let files: Vec<(String, &Vec<u8>)> = match &items {
        Some(items) => items
            .iter()
            .map(|i| {
                data.get(&i.key)
                    .map(|v| (i.path.clone(), v))
                    .ok_or_else(|| ConfigError(format!("{what} has no key {:?}", i.key)))
            })
            .collect::<Result<_, _>>()?,
        None => data.iter().map(|(k, v)| (k.clone(), v)).collect(),
    };
    for (rel, bytes) in files {
        if Path::new(&rel)
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(ConfigError(format!(
                "{what}: item path {rel:?} must be relative without '..'"
            )));
        }
        let target = staging.join(&rel);
        if let Some(parent) = target.parent() {
            mkdir(parent)?;
        }
        std::fs::write(&target, bytes)
            .map_err(|e| ConfigError(format!("writing {}: {e}", target.display())))?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&staging, &dir)
        .map_err(|e| ConfigError(format!("placing {}: {e}", dir.display())))?;
    Ok((dir, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_like_kubernetes() {
        let vars: HashMap<&str, &str> = [("A", "1"), ("B", "two")].into_iter().collect();
        assert_eq!(expand("$(A)-$(B)", &vars), "1-two");
        assert_eq!(expand("$$(A) $(C) $", &vars), "$(A) $(C) $");
        assert_eq!(expand("$(A", &vars), "$(A");
    }
}
