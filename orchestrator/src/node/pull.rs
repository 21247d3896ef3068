//! How a container's image is pulled: its `imagePullPolicy`, and the
//! registry credentials in the pod's `imagePullSecrets`
//! (`kubernetes.io/dockerconfigjson` or the older `dockercfg`).

use base64::Engine as _;
use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::Value;
use shoal_runtime::{Credentials, PullOptions, PullPolicy};
use tracing::warn;

use super::config::Sources;

/// The pull options for one container of `pod`. A pull secret that is
/// missing or unreadable is skipped, as kubelet does: the pull may still
/// work anonymously, and if not, its error says the registry refused.
pub async fn options(sources: &mut Sources, pod: &Pod, c: &Container) -> PullOptions {
    let mut credentials = Vec::new();
    let names = pod
        .spec
        .as_ref()
        .and_then(|s| s.image_pull_secrets.as_ref())
        .into_iter()
        .flatten()
        .map(|r| r.name.clone());
    for name in names {
        match sources.secret(&name).await {
            Ok(Some(secret)) => {
                for (key, value) in secret.data.iter().flatten() {
                    match key.as_str() {
                        ".dockerconfigjson" => credentials.extend(docker_config(&value.0, true)),
                        ".dockercfg" => credentials.extend(docker_config(&value.0, false)),
                        _ => {}
                    }
                }
            }
            Ok(None) => warn!(secret = %name, "image pull secret not found; pulling without it"),
            Err(e) => warn!(secret = %name, error = %e, "image pull secret unreadable"),
        }
    }
    PullOptions {
        policy: PullPolicy::parse(c.image_pull_policy.as_deref()),
        credentials,
    }
}

/// The credentials in a Docker config file: `{"auths": {server: entry}}`
/// (`config.json`, `nested`) or `{server: entry}` (`.dockercfg`), where an
/// entry has `username` and `password`, or `auth` as base64 `user:pass`.
pub fn docker_config(bytes: &[u8], nested: bool) -> Vec<Credentials> {
    let Ok(v) = serde_json::from_slice::<Value>(bytes) else {
        return Vec::new();
    };
    let servers = if nested { v.get("auths") } else { Some(&v) };
    let Some(servers) = servers.and_then(Value::as_object) else {
        return Vec::new();
    };
    servers
        .iter()
        .filter_map(|(server, entry)| {
            let field = |k: &str| {
                entry
                    .get(k)
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
            };
            let (username, password) = match (field("username"), field("password")) {
                (Some(u), Some(p)) => (u.to_string(), p.to_string()),
                _ => {
                    let decoded = base64::engine::general_purpose::STANDARD
                        .decode(field("auth")?)
                        .ok()?;
                    let text = String::from_utf8(decoded).ok()?;
                    let (u, p) = text.split_once(':')?;
                    (u.to_string(), p.to_string())
                }
            };
            Some(Credentials {
                server: server.clone(),
                username,
                password,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_docker_config_shapes() {
        let json = br#"{"auths": {"127.0.0.1:5000": {"username": "u", "password": "p"},
            "https://index.docker.io/v1/": {"auth": "YWxpY2U6czNjcjp0"}}}"#;
        let mut c = docker_config(json, true);
        c.sort_by(|a, b| a.server.cmp(&b.server));
        assert_eq!(c.len(), 2);
        assert_eq!((c[0].username.as_str(), c[0].password.as_str()), ("u", "p"));
        // A password may hold ':'; only the first one splits.
        assert_eq!(
            (c[1].username.as_str(), c[1].password.as_str()),
            ("alice", "s3cr:t")
        );
        let old = br#"{"reg.example": {"auth": "Ym9iOnB3"}}"#;
        let c = docker_config(old, false);
        assert_eq!(c[0].username, "bob");
        assert!(docker_config(b"not json", true).is_empty());
        assert!(docker_config(br#"{"auths": {"r": {"auth": "!!"}}}"#, true).is_empty());
    }
}
