//! Registry image references as Docker and containerd read them:
//! `[host[:port]/]path[:tag][@sha256:<hex>]`, where a first component with
//! a dot or a port, or `localhost`, names the registry, and anything else
//! is on Docker Hub (`nginx` is `docker.io/library/nginx:latest`).

use std::fmt;

/// Docker Hub's name in references, and the host its API answers on.
const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_API: &str = "registry-1.docker.io";

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// `host[:port]` as written (`docker.io` for Docker Hub).
    pub registry: String,
    /// `library/nginx`, `team/app`.
    pub repository: String,
    pub tag: Option<String>,
    /// Lower-case hex of a pinned manifest digest.
    pub digest: Option<String>,
}

impl Reference {
    /// Parses a reference; the error says which part is wrong.
    pub fn parse(s: &str) -> Result<Reference, String> {
        let (name, digest) = match s.split_once('@') {
            Some((name, d)) => {
                let hex = d
                    .strip_prefix("sha256:")
                    .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
                    .ok_or("a digest is sha256: followed by 64 hexadecimal digits")?;
                (name, Some(hex.to_ascii_lowercase()))
            }
            None => (s, None),
        };
        // A tag follows the last ':' only if no '/' comes after it; before
        // that, a ':' is the registry's port.
        let (name, tag) = match name.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => (n, Some(t.to_string())),
            _ => (name, None),
        };
        if let Some(t) = &tag {
            let ok = t.len() <= 128
                && t.bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
            if !ok {
                return Err(format!(
                    "tag {t:?}: at most 128 letters, digits, '_', '.' and '-', not starting with '.' or '-'"
                ));
            }
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), rest.to_string())
            }
            _ if !name.contains('/') => (DOCKER_HUB.to_string(), format!("library/{name}")),
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        if registry.is_empty()
            || registry
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b == b'@')
        {
            return Err(format!("registry {registry:?} is not a host[:port]"));
        }
        for part in path.split('/') {
            let ok = !part.is_empty()
                && part
                    .bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_alphanumeric())
                && part
                    .bytes()
                    .last()
                    .is_some_and(|b| b.is_ascii_alphanumeric())
                && part.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
                });
            if !ok {
                return Err(format!(
                    "repository {path:?}: each '/'-separated part is lower-case letters, digits, '.', '_' and '-', starting and ending with a letter or digit"
                ));
            }
        }
        Ok(Reference {
            registry,
            repository: path,
            tag,
            digest,
        })
    }

    /// The host the registry's API answers on.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// What `/v2/<repo>/manifests/<this>` asks for: the digest when pinned,
    /// else the tag (`latest` when none is given).
    pub fn manifest_ref(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(hex), _) => format!("sha256:{hex}"),
            (None, Some(tag)) => tag.clone(),
            (None, None) => "latest".to_string(),
        }
    }

    /// `registry/repository:tag` (the digest left out): the key a tag's
    /// resolution is remembered under.
    pub fn tagged(&self) -> String {
        format!(
            "{}/{}:{}",
            self.registry,
            self.repository,
            self.tag.as_deref().unwrap_or("latest")
        )
    }

    /// Loopback registries speak plain HTTP, as Docker assumes for
    /// 127.0.0.0/8: a local registry has no certificate to offer.
    pub fn is_loopback(&self) -> bool {
        let host = match self.registry.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => self.registry.as_str(),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@sha256:{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_references_as_docker_does() {
        let r = Reference::parse("nginx").expect("valid");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("docker.io", "library/nginx", None)
        );
        assert_eq!(r.manifest_ref(), "latest");
        assert_eq!(r.api_host(), "registry-1.docker.io");
        assert_eq!(r.tagged(), "docker.io/library/nginx:latest");

        let r = Reference::parse("127.0.0.1:5000/team/app:v1.2").expect("valid");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("127.0.0.1:5000", "team/app", Some("v1.2"))
        );
        assert!(r.is_loopback());

        let hex = "ab".repeat(32);
        let r = Reference::parse(&format!("ghcr.io/o/x:1@sha256:{hex}")).expect("valid");
        assert_eq!(r.manifest_ref(), format!("sha256:{hex}"));
        assert!(!r.is_loopback());
        assert_eq!(r.to_string(), format!("ghcr.io/o/x:1@sha256:{hex}"));

        let r = Reference::parse("localhost/app").expect("valid");
        assert_eq!(r.registry, "localhost");
        assert!(r.is_loopback());
        let r = Reference::parse("team/app:2").expect("valid");
        assert_eq!(r.repository, "team/app");
        assert_eq!(r.registry, "docker.io");
    }

    #[test]
    fn bad_references_name_the_part() {
        let e = Reference::parse("Upper/app").expect_err("upper case");
        assert!(e.contains("repository"), "{e}");
        assert!(Reference::parse("app:bad tag")
            .expect_err("tag")
            .contains("tag"));
        assert!(Reference::parse("app@sha256:12")
            .expect_err("digest")
            .contains("digest"));
        assert!(Reference::parse("reg.io//app").is_err());
        assert!(Reference::parse("").is_err());
    }
}
