//! `serviceaccounts/token`, the TokenRequest API: issues a ServiceAccount
//! token (`kubectl create token NAME`), optionally bound to a Pod or Secret.
//! Nothing is stored; the token carries everything its check needs.

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use k8s_openapi::jiff::Timestamp;
use serde_json::{json, Value};

use super::{object_name, respond};
use crate::apiserver::auth::live_uid;
use crate::apiserver::auth::sa_token::{
    Bound, Claims, KubernetesClaim, ServiceAccountRef, API_AUDIENCE, ISSUER,
};
use crate::apiserver::error::{ApiError, ApiResult, Cause};
use crate::apiserver::request::{self, Target};
use crate::apiserver::ApiState;

const KIND: &str = "TokenRequest";
const API_VERSION: &str = "authentication.k8s.io/v1";
/// Kubernetes' default, and its floor of ten minutes.
const DEFAULT_SECONDS: i64 = 3600;
const MIN_SECONDS: i64 = 600;
const MAX_SECONDS: i64 = 1 << 32;

/// The uid of a live core/v1 object, or its 404.
async fn uid_of(st: &ApiState, plural: &str, namespace: &str, name: &str) -> ApiResult<String> {
    live_uid(st, plural, namespace, name)
        .await?
        .ok_or_else(|| ApiError::not_found(plural, name))
}

pub async fn create(
    st: &ApiState,
    t: &Target<'_>,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let req = request::read_object(headers, body).await?;
    let kind = req.get("kind").and_then(Value::as_str).unwrap_or(KIND);
    if kind != KIND {
        return Err(ApiError::bad_request(format!(
            "the body must be a {KIND}, not a {kind}"
        )));
    }
    let namespace = t.namespace.clone().unwrap_or_default();
    let account = object_name(t).to_string();
    let spec = req.get("spec").cloned().unwrap_or_else(|| json!({}));
    let mut causes = Vec::new();
    let seconds = match spec.get("expirationSeconds") {
        None | Some(Value::Null) => DEFAULT_SECONDS,
        Some(v) => match v.as_i64() {
            Some(n) if n < MIN_SECONDS => {
                causes.push(Cause::invalid(
                    "spec.expirationSeconds",
                    n,
                    "may not specify a duration less than 10 minutes",
                ));
                n
            }
            Some(n) if n > MAX_SECONDS => {
                causes.push(Cause::invalid(
                    "spec.expirationSeconds",
                    n,
                    "may not specify a duration larger than 2^32 seconds",
                ));
                n
            }
            Some(n) => n,
            None => {
                causes.push(Cause::invalid(
                    "spec.expirationSeconds",
                    v,
                    "must be a whole number of seconds",
                ));
                0
            }
        },
    };
    let mut audiences: Vec<String> = spec
        .get("audiences")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(String::from))
        .collect();
    if audiences.is_empty() {
        audiences.push(API_AUDIENCE.to_string());
    }
    let bound_ref = spec.get("boundObjectRef").filter(|b| !b.is_null());
    let bound_kind = bound_ref
        .and_then(|b| b.get("kind"))
        .and_then(Value::as_str)
        .unwrap_or("");
    if bound_ref.is_some() && !matches!(bound_kind, "Pod" | "Secret") {
        causes.push(Cause::not_supported(
            "spec.boundObjectRef.kind",
            bound_kind,
            &["Pod", "Secret"],
        ));
    }
    if !causes.is_empty() {
        return Err(ApiError::invalid(KIND, &account, causes));
    }
    let sa_uid = uid_of(st, "serviceaccounts", &namespace, &account).await?;
    let mut claim = KubernetesClaim {
        namespace: namespace.clone(),
        serviceaccount: ServiceAccountRef {
            name: account.clone(),
            uid: sa_uid,
        },
        ..KubernetesClaim::default()
    };
    if let Some(b) = bound_ref {
        let name = b.get("name").and_then(Value::as_str).unwrap_or("");
        if name.is_empty() {
            return Err(ApiError::invalid(
                KIND,
                &account,
                vec![Cause::required("spec.boundObjectRef.name")],
            ));
        }
        let plural = if bound_kind == "Pod" {
            "pods"
        } else {
            "secrets"
        };
        let uid = uid_of(st, plural, &namespace, name).await?;
        if let Some(asked) = b
            .get("uid")
            .and_then(Value::as_str)
            .filter(|u| !u.is_empty())
        {
            if asked != uid {
                return Err(ApiError::conflict(
                    plural,
                    name,
                    &format!("the UID in the bound object reference ({asked}) does not match the UID in record; the object might have been deleted and then recreated"),
                ));
            }
        }
        let bound = Some(Bound {
            name: name.to_string(),
            uid,
        });
        if bound_kind == "Pod" {
            claim.pod = bound;
        } else {
            claim.secret = bound;
        }
    }
    let now = Timestamp::now().as_second();
    let claims = Claims {
        iss: ISSUER.into(),
        sub: format!("system:serviceaccount:{namespace}:{account}"),
        aud: audiences.clone(),
        exp: now + seconds,
        iat: now,
        nbf: now,
        jti: uuid::Uuid::new_v4().to_string(),
        kubernetes: claim,
    };
    let token = st.sa_tokens.sign(&claims);
    let expires = Timestamp::from_second(claims.exp)
        .map(|t| t.to_string())
        .unwrap_or_default();
    tracing::info!(namespace = %namespace, service_account = %account, seconds, "issued a service account token");
    let mut out_spec = json!({"audiences": audiences, "expirationSeconds": seconds});
    if let Some(b) = bound_ref {
        out_spec["boundObjectRef"] = b.clone();
    }
    let out = json!({
        "kind": KIND,
        "apiVersion": API_VERSION,
        "metadata": {"name": account, "namespace": namespace,
                      "creationTimestamp": Timestamp::from_second(now).map(|t| t.to_string()).unwrap_or_default()},
        "spec": out_spec,
        "status": {"token": token, "expirationTimestamp": expires},
    });
    Ok(respond(StatusCode::CREATED, &out, &[]))
}
