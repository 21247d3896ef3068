//! The OCI distribution API, client side: manifests and blobs pulled (and
//! pushed) over HTTP, with the registry's own auth dance — a 401 names a
//! token service (`Bearer realm=…`) or asks for Basic credentials, and the
//! request is sent once more with what that gave.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tracing::debug;

use super::reference::Reference;

/// Manifests and indexes are small documents; a bigger one is not one.
const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;
/// How long one request may take to begin answering.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a whole blob may take to arrive.
const BLOB_TIMEOUT: Duration = Duration::from_secs(600);
const MAX_REDIRECTS: usize = 5;

/// Every manifest shape we read, most specific first.
pub const MANIFEST_TYPES: [&str; 4] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

pub(crate) type HttpClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

/// A user name and password for one registry, as a
/// `kubernetes.io/dockerconfigjson` Secret carries them.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The registry they are for: `host[:port]`, or as Docker writes it
    /// (`https://index.docker.io/v1/`).
    pub server: String,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("server", &self.server)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Whether these are for `r`'s registry (Docker Hub answers to several
    /// names in config files).
    fn matches(&self, r: &Reference) -> bool {
        let server = self
            .server
            .trim_start_matches("https://")
            .trim_start_matches("http://");
        let host = server.split('/').next().unwrap_or_default();
        let hub = |h: &str| matches!(h, "docker.io" | "index.docker.io" | "registry-1.docker.io");
        host == r.registry || (hub(host) && hub(&r.registry))
    }
}

/// The registry client: one connection pool and the tokens it was given.
pub(crate) struct Registry {
    client: HttpClient,
    /// `Authorization` values that worked, by registry, scope and the
    /// user they were got as (a pod without that pull secret must not
    /// borrow them); reused until a 401 says a token expired.
    tokens: Mutex<HashMap<(String, String, String), String>>,
}

/// One challenge from `WWW-Authenticate`.
#[derive(Debug, PartialEq, Eq)]
struct Challenge {
    scheme: String,
    params: HashMap<String, String>,
}

impl Registry {
    pub(crate) fn new(client: HttpClient) -> Registry {
        Registry {
            client,
            tokens: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn client(&self) -> &HttpClient {
        &self.client
    }

    fn base(r: &Reference) -> String {
        let scheme = if r.is_loopback() { "http" } else { "https" };
        format!("{scheme}://{}/v2/{}", r.api_host(), r.repository)
    }

    /// Fetches a manifest by tag or digest (its type is in the document).
    pub(crate) async fn manifest(
        &self,
        r: &Reference,
        reference: &str,
        creds: &[Credentials],
    ) -> Result<Bytes, String> {
        let url = format!("{}/manifests/{reference}", Self::base(r));
        let accept = MANIFEST_TYPES.join(", ");
        let resp = self
            .send(
                r,
                Method::GET,
                &url,
                &[(header::ACCEPT, &accept)],
                Bytes::new(),
                creds,
                false,
            )
            .await?;
        let status = resp.status();
        if status == StatusCode::NOT_FOUND {
            return Err(format!("manifest {reference} not found in the registry"));
        }
        if !status.is_success() {
            return Err(refused(&format!("manifest {reference}"), resp).await);
        }
        let body = tokio::time::timeout(
            REQUEST_TIMEOUT,
            Limited::new(resp.into_body(), MAX_MANIFEST_BYTES).collect(),
        )
        .await
        .map_err(|_| "the manifest did not arrive in time".to_string())?
        .map_err(|e| format!("reading the manifest: {e}"))?
        .to_bytes();
        Ok(body)
    }

    /// Streams blob `sha256:<hex>` into `dest`, checking its digest and
    /// size on the way; `dest` is left only if both hold.
    pub(crate) async fn blob_to(
        &self,
        r: &Reference,
        hex: &str,
        size: Option<u64>,
        limit: u64,
        dest: &Path,
        creds: &[Credentials],
    ) -> Result<(), String> {
        let url = format!("{}/blobs/sha256:{hex}", Self::base(r));
        let resp = self
            .send(r, Method::GET, &url, &[], Bytes::new(), creds, false)
            .await?;
        if !resp.status().is_success() {
            return Err(refused(&format!("blob sha256:{hex}"), resp).await);
        }
        let fetch = async {
            let mut file = tokio::fs::File::create(dest)
                .await
                .map_err(|e| format!("creating {}: {e}", dest.display()))?;
            let mut hasher = Sha256::new();
            let mut got: u64 = 0;
            let mut body = resp.into_body();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| format!("reading blob sha256:{hex}: {e}"))?;
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                got += data.len() as u64;
                if got > limit || size.is_some_and(|s| got > s) {
                    return Err(format!(
                        "blob sha256:{hex} is larger than {}",
                        size.map_or(format!("the limit of {limit} bytes"), |s| format!(
                            "its descriptor's {s} bytes"
                        ))
                    ));
                }
                hasher.update(&data);
                file.write_all(&data)
                    .await
                    .map_err(|e| format!("writing {}: {e}", dest.display()))?;
            }
            file.sync_all()
                .await
                .map_err(|e| format!("writing {}: {e}", dest.display()))?;
            if size.is_some_and(|s| s != got) {
                return Err(format!(
                    "blob sha256:{hex} ended after {got} bytes, short of its descriptor's size"
                ));
            }
            let actual = super::hex(&hasher.finalize());
            if actual != hex {
                return Err(format!(
                    "blob sha256:{hex} arrived with digest sha256:{actual}"
                ));
            }
            Ok(())
        };
        let done = tokio::time::timeout(BLOB_TIMEOUT, fetch)
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "blob sha256:{hex} did not arrive within {}s",
                    BLOB_TIMEOUT.as_secs()
                ))
            });
        if done.is_err() {
            let _ = tokio::fs::remove_file(dest).await;
        }
        done
    }

    /// Uploads a blob unless the registry has it (monolithic upload: POST
    /// for a session, PUT with the digest).
    pub(crate) async fn push_blob(
        &self,
        r: &Reference,
        bytes: Bytes,
        creds: &[Credentials],
    ) -> Result<(), String> {
        let hex = super::hex(&Sha256::digest(&bytes));
        let base = Self::base(r);
        let head = self
            .send(
                r,
                Method::HEAD,
                &format!("{base}/blobs/sha256:{hex}"),
                &[],
                Bytes::new(),
                creds,
                true,
            )
            .await?;
        if head.status().is_success() {
            return Ok(());
        }
        let started = self
            .send(
                r,
                Method::POST,
                &format!("{base}/blobs/uploads/"),
                &[],
                Bytes::new(),
                creds,
                true,
            )
            .await?;
        if started.status() != StatusCode::ACCEPTED {
            return Err(refused("starting an upload", started).await);
        }
        let location = started
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| "the registry gave no upload location".to_string())?;
        let mut url = absolute(&base, location);
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str(&format!("digest=sha256%3A{hex}"));
        let what = format!("uploading blob sha256:{hex}");
        self.put(r, &url, "application/octet-stream", bytes, creds, &what)
            .await
    }

    /// Puts a manifest under `reference` (a tag, or its own digest).
    pub(crate) async fn push_manifest(
        &self,
        r: &Reference,
        reference: &str,
        media_type: &str,
        bytes: Bytes,
        creds: &[Credentials],
    ) -> Result<(), String> {
        let url = format!("{}/manifests/{reference}", Self::base(r));
        self.put(r, &url, media_type, bytes, creds, "putting the manifest")
            .await
    }

    /// A PUT the registry must answer 201 Created.
    async fn put(
        &self,
        r: &Reference,
        url: &str,
        content_type: &str,
        bytes: Bytes,
        creds: &[Credentials],
        what: &str,
    ) -> Result<(), String> {
        let headers = [(header::CONTENT_TYPE, content_type)];
        let put = self
            .send(r, Method::PUT, url, &headers, bytes, creds, true)
            .await?;
        if put.status() != StatusCode::CREATED {
            return Err(refused(what, put).await);
        }
        Ok(())
    }

    /// Sends a request, answering one auth challenge and following
    /// redirects (blob downloads are often redirected to storage).
    #[allow(clippy::too_many_arguments)]
    async fn send(
        &self,
        r: &Reference,
        method: Method,
        url: &str,
        headers: &[(header::HeaderName, &str)],
        body: Bytes,
        creds: &[Credentials],
        push: bool,
    ) -> Result<Response<Incoming>, String> {
        let scope = format!(
            "repository:{}:{}",
            r.repository,
            if push { "pull,push" } else { "pull" }
        );
        let cred = creds.iter().find(|c| c.matches(r));
        let user = cred
            .map(|c| format!("{}:{}", c.username, c.password))
            .unwrap_or_default();
        let key = (r.registry.clone(), scope.clone(), user);
        let mut auth = self.tokens.lock().ok().and_then(|t| t.get(&key).cloned());
        let mut challenged = false;
        let mut url = url.to_string();
        let mut redirects = 0;
        loop {
            let mut req = Request::builder().method(method.clone()).uri(&url);
            for (name, value) in headers {
                req = req.header(name, *value);
            }
            // Credentials go only to the registry itself, not to whatever
            // storage it redirects to.
            let same_host = url
                .parse::<http::Uri>()
                .ok()
                .and_then(|u| u.authority().map(|a| a.to_string()))
                .is_some_and(|a| a == r.api_host());
            if let (Some(a), true) = (&auth, same_host) {
                req = req.header(header::AUTHORIZATION, a);
            }
            let req = req
                .body(Full::new(body.clone()))
                .map_err(|e| format!("building a request for {url}: {e}"))?;
            let resp = tokio::time::timeout(REQUEST_TIMEOUT, self.client.request(req))
                .await
                .map_err(|_| format!("{url} did not answer within {}s", REQUEST_TIMEOUT.as_secs()))?
                .map_err(|e| format!("{url}: {}", super::describe_client_error(&e)))?;
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED && !challenged {
                challenged = true;
                let challenge = resp
                    .headers()
                    .get(header::WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_challenge)
                    .ok_or_else(|| {
                        "the registry answered 401 without a usable WWW-Authenticate".to_string()
                    })?;
                let value = self.authorize(r, &challenge, &scope, cred).await?;
                if let Ok(mut t) = self.tokens.lock() {
                    t.insert(key.clone(), value.clone());
                }
                auth = Some(value);
                continue;
            }
            if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                let who = match cred {
                    Some(c) => format!("as {:?}", c.username),
                    None => format!(
                        "anonymously (none was given for {}; pods give them in imagePullSecrets)",
                        r.registry
                    ),
                };
                return Err(format!("the registry refused access {who}: {status}"));
            }
            if status.is_redirection() && redirects < MAX_REDIRECTS {
                if let Some(next) = resp
                    .headers()
                    .get(header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                {
                    debug!(from = %url, to = %next, "registry redirect");
                    url = absolute(&url, next);
                    redirects += 1;
                    continue;
                }
            }
            return Ok(resp);
        }
    }

    /// The `Authorization` value a challenge asks for.
    async fn authorize(
        &self,
        r: &Reference,
        challenge: &Challenge,
        scope: &str,
        cred: Option<&Credentials>,
    ) -> Result<String, String> {
        let basic = cred.map(|c| {
            let pair = format!("{}:{}", c.username, c.password);
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            )
        });
        match challenge.scheme.to_ascii_lowercase().as_str() {
            "basic" => basic.ok_or_else(|| {
                format!(
                    "the registry refused access anonymously: it asks for a user name and password, and none was given for {} (pods give them in imagePullSecrets)",
                    r.registry
                )
            }),
            "bearer" => {
                let realm = challenge
                    .params
                    .get("realm")
                    .ok_or_else(|| "the registry's Bearer challenge names no realm".to_string())?;
                let join = if realm.contains('?') { '&' } else { '?' };
                let mut url = format!("{realm}{join}scope={}", encode(scope));
                if let Some(service) = challenge.params.get("service") {
                    url.push_str(&format!("&service={}", encode(service)));
                }
                let mut req = Request::builder().method(Method::GET).uri(&url);
                if let Some(b) = &basic {
                    req = req.header(header::AUTHORIZATION, b);
                }
                let req = req
                    .body(Full::new(Bytes::new()))
                    .map_err(|e| format!("token request to {realm}: {e}"))?;
                let resp = tokio::time::timeout(REQUEST_TIMEOUT, self.client.request(req))
                    .await
                    .map_err(|_| format!("the token service {realm} did not answer"))?
                    .map_err(|e| format!("token service {realm}: {}", super::describe_client_error(&e)))?;
                if !resp.status().is_success() {
                    return Err(format!("the token service {realm} answered {}", resp.status()));
                }
                let body = Limited::new(resp.into_body(), 1 << 20)
                    .collect()
                    .await
                    .map_err(|e| format!("reading the token: {e}"))?
                    .to_bytes();
                let v: serde_json::Value = serde_json::from_slice(&body)
                    .map_err(|e| format!("the token service's answer is not JSON: {e}"))?;
                let token = v
                    .get("token")
                    .or_else(|| v.get("access_token"))
                    .and_then(|t| t.as_str())
                    .ok_or_else(|| "the token service's answer has no token".to_string())?
                    .to_string();
                Ok(format!("Bearer {token}"))
            }
            other => Err(format!("the registry asks for {other} authentication, which Shoal does not speak")),
        }
    }
}

/// Why a request failed, in the registry's words: its status, and a few
/// words of the body, where registries explain themselves in JSON
/// (`{"errors":[{"code":"MANIFEST_UNKNOWN",…}]}`).
async fn refused(what: &str, resp: Response<Incoming>) -> String {
    let status = resp.status();
    let body = tokio::time::timeout(
        Duration::from_secs(5),
        Limited::new(resp.into_body(), 4096).collect(),
    )
    .await;
    let text = match body {
        Ok(Ok(b)) => String::from_utf8_lossy(&b.to_bytes()).trim().to_string(),
        _ => String::new(),
    };
    if text.is_empty() {
        format!("{what}: the registry answered {status}")
    } else {
        let hint: String = text.chars().take(300).collect();
        format!("{what}: the registry answered {status}: {hint}")
    }
}

/// `next` made absolute against `base` (a Location may be a path).
fn absolute(base: &str, next: &str) -> String {
    if next.starts_with("http://") || next.starts_with("https://") {
        return next.to_string();
    }
    let origin_end = base
        .find("://")
        .and_then(|i| base[i + 3..].find('/').map(|j| i + 3 + j))
        .unwrap_or(base.len());
    format!("{}{}", &base[..origin_end], next)
}

/// Percent-encodes a query value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Reads `Bearer realm="…",service="…",scope="…"` (values may hold commas
/// inside their quotes).
fn parse_challenge(v: &str) -> Option<Challenge> {
    let v = v.trim();
    let (scheme, rest) = v.split_once(' ').unwrap_or((v, ""));
    let mut params = HashMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=')).collect();
        if key.is_empty() || chars.next().is_none() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = std::iter::from_fn(|| chars.next_if(|c| *c != ',')).collect();
        }
        params.insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
    }
    Some(Challenge {
        scheme: scheme.to_string(),
        params,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse_with_commas_inside_quotes() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        )
        .expect("challenge");
        assert_eq!(c.scheme, "Bearer");
        assert_eq!(c.params["realm"], "https://auth.example/token");
        assert_eq!(c.params["scope"], "repository:a/b:pull,push");
        let c = parse_challenge(r#"Basic realm="Registry Realm""#).expect("basic");
        assert_eq!(c.scheme, "Basic");
        assert_eq!(c.params["realm"], "Registry Realm");
    }

    #[test]
    fn credentials_match_their_registry() {
        let cred = |server: &str| Credentials {
            server: server.into(),
            username: "u".into(),
            password: "s3cret".into(),
        };
        let hub = Reference::parse("nginx").expect("ref");
        assert!(cred("https://index.docker.io/v1/").matches(&hub));
        let local = Reference::parse("127.0.0.1:5000/a").expect("ref");
        assert!(cred("127.0.0.1:5000").matches(&local));
        assert!(cred("http://127.0.0.1:5000").matches(&local));
        assert!(!cred("127.0.0.1:5001").matches(&local));
        assert!(
            !format!("{:?}", cred("x")).contains("s3cret"),
            "the password stays out of Debug"
        );
    }

    #[test]
    fn locations_resolve_against_the_registry() {
        assert_eq!(
            absolute(
                "http://h:5000/v2/a/blobs/uploads/",
                "/v2/a/blobs/uploads/u1?_state=x"
            ),
            "http://h:5000/v2/a/blobs/uploads/u1?_state=x"
        );
        assert_eq!(absolute("http://h/v2", "https://s3/x"), "https://s3/x");
        assert_eq!(encode("repository:a/b:pull"), "repository%3Aa%2Fb%3Apull");
    }
}
