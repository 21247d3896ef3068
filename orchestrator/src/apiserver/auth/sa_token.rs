//! ServiceAccount tokens: JWTs the server issues through the TokenRequest
//! API (`kubectl create token`) and accepts as bearer tokens. A token names
//! its ServiceAccount by uid and may be bound to a Pod or Secret; it stops
//! working when it expires or when either is deleted, as in Kubernetes.
//!
//! Signed with HMAC-SHA256 under a key in the data directory: only this
//! server verifies them, so a shared secret does (Kubernetes signs with an
//! asymmetric key so that other parties can verify through OIDC discovery).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::hmac;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::user::UserInfo;

/// Who tokens are for unless a request names other audiences; a token
/// without it is for someone else and does not sign in here.
pub const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// An object a token is bound to: the token dies with it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Bound {
    pub name: String,
    pub uid: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServiceAccountRef {
    pub name: String,
    pub uid: String,
}

/// The `kubernetes.io` claim.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct KubernetesClaim {
    pub namespace: String,
    pub serviceaccount: ServiceAccountRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<Bound>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<Bound>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: Vec<String>,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: KubernetesClaim,
}

impl Claims {
    /// The user the token signs in as.
    pub fn user(&self) -> UserInfo {
        let ns = &self.kubernetes.namespace;
        UserInfo::new(
            format!(
                "system:serviceaccount:{ns}:{}",
                self.kubernetes.serviceaccount.name
            ),
            self.kubernetes.serviceaccount.uid.clone(),
            vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{ns}"),
            ],
        )
    }
}

pub struct Signer {
    key: hmac::Key,
}

impl Signer {
    pub fn new(secret: &[u8]) -> Signer {
        Signer {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    pub fn sign(&self, claims: &Claims) -> String {
        let header = URL_SAFE_NO_PAD.encode(json!({"alg": "HS256", "typ": "JWT"}).to_string());
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
        let signed = format!("{header}.{payload}");
        let tag = hmac::sign(&self.key, signed.as_bytes());
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    /// The claims of a token this server signed that is valid at `now`
    /// (seconds) for the API server's audience; None for anything else.
    pub fn verify(&self, token: &str, now: i64) -> Option<Claims> {
        let (signed, tag) = token.rsplit_once('.')?;
        let (header, payload) = signed.split_once('.')?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        hmac::verify(&self.key, signed.as_bytes(), &tag).ok()?;
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).ok()?).ok()?;
        if header.get("alg").and_then(|a| a.as_str()) != Some("HS256") {
            return None;
        }
        let claims: Claims = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
        let fresh = claims.nbf <= now && now < claims.exp;
        let ours = claims.iss == ISSUER && claims.aud.iter().any(|a| a == API_AUDIENCE);
        (fresh && ours).then_some(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(aud: &str, exp: i64) -> Claims {
        Claims {
            iss: ISSUER.into(),
            sub: "system:serviceaccount:team:bot".into(),
            aud: vec![aud.into()],
            exp,
            iat: 100,
            nbf: 100,
            jti: "j".into(),
            kubernetes: KubernetesClaim {
                namespace: "team".into(),
                serviceaccount: ServiceAccountRef {
                    name: "bot".into(),
                    uid: "u".into(),
                },
                ..KubernetesClaim::default()
            },
        }
    }

    #[test]
    fn tokens_verify_only_while_valid_and_for_this_server() {
        let s = Signer::new(b"secret");
        let t = s.sign(&claims(API_AUDIENCE, 1000));
        let c = s.verify(&t, 500).expect("valid");
        assert_eq!(c.user().name, "system:serviceaccount:team:bot");
        assert!(c.user().in_group("system:serviceaccounts:team"));
        assert!(s.verify(&t, 1000).is_none(), "expired");
        assert!(s.verify(&t, 50).is_none(), "not yet valid");
        assert!(
            Signer::new(b"other").verify(&t, 500).is_none(),
            "another key"
        );
        let elsewhere = s.sign(&claims("https://vault.example", 1000));
        assert!(s.verify(&elsewhere, 500).is_none(), "another audience");
        let mut forged = t.clone();
        forged.insert(t.find('.').expect("a dot") + 3, 'x');
        assert!(s.verify(&forged, 500).is_none(), "tampered");
        assert!(s.verify("not-a-jwt", 500).is_none());
    }
}
