//! `metrics.k8s.io/v1beta1`: PodMetrics and NodeMetrics, what `kubectl top`
//! and autoscalers read. Kubernetes serves them from metrics-server, which
//! scrapes every kubelet on a timer; Shoal's API server asks the nodes that
//! matter (their `/stats/summary`) when a request comes, so there is no
//! extra component and no stale cache. A node that does not answer within
//! [`NODE_TIMEOUT`] is left out, as metrics-server leaves out what it could
//! not scrape.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::Response;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::{ClusterResourceScope, NamespaceResourceScope};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tracing::debug;

use super::error::{ApiError, ApiResult};
use super::handlers::{read::Selection, respond};
use super::proxy::endpoint_of;
use super::request::{Query, Target};
use super::table::{self, IncludeObject};
use super::ApiState;

const GROUP: &str = "metrics.k8s.io";
const VERSION: &str = "v1beta1";
/// How long one node's summary may take before it is left out.
pub const NODE_TIMEOUT: Duration = Duration::from_secs(5);

/// One container's usage in a [`PodMetrics`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ContainerMetrics {
    pub name: String,
    /// `cpu` (cores) and `memory` (bytes) used over the window.
    pub usage: BTreeMap<String, Quantity>,
}

/// A pod's resource usage, measured on its node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PodMetrics {
    pub metadata: ObjectMeta,
    /// When the usage was measured (RFC 3339).
    pub timestamp: String,
    /// The span the CPU rate was measured over (a Go duration: `15.2s`).
    pub window: String,
    pub containers: Vec<ContainerMetrics>,
}

/// A node's resource usage: the whole machine's.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct NodeMetrics {
    pub metadata: ObjectMeta,
    pub timestamp: String,
    pub window: String,
    pub usage: BTreeMap<String, Quantity>,
}

impl k8s_openapi::Resource for PodMetrics {
    const API_VERSION: &'static str = "metrics.k8s.io/v1beta1";
    const GROUP: &'static str = GROUP;
    const KIND: &'static str = "PodMetrics";
    const VERSION: &'static str = VERSION;
    const URL_PATH_SEGMENT: &'static str = "pods";
    type Scope = NamespaceResourceScope;
}

impl k8s_openapi::Metadata for PodMetrics {
    type Ty = ObjectMeta;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl k8s_openapi::Resource for NodeMetrics {
    const API_VERSION: &'static str = "metrics.k8s.io/v1beta1";
    const GROUP: &'static str = GROUP;
    const KIND: &'static str = "NodeMetrics";
    const VERSION: &'static str = VERSION;
    const URL_PATH_SEGMENT: &'static str = "nodes";
    type Scope = ClusterResourceScope;
}

impl k8s_openapi::Metadata for NodeMetrics {
    type Ty = ObjectMeta;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// `GET` on either resource, one object or a list.
pub async fn serve(
    st: &ApiState,
    t: &Target<'_>,
    q: &Query,
    as_table: bool,
) -> ApiResult<Response> {
    let sel = Selection::from_query(t, q)?;
    let items = match t.res.kind {
        "NodeMetrics" => node_metrics(st, t, &sel).await?,
        _ => pod_metrics(st, t, &sel).await?,
    };
    if let Some(name) = t.name.as_deref() {
        let one = items
            .into_iter()
            .next()
            .ok_or_else(|| ApiError::not_found(&t.res.group_resource(), name))?;
        if as_table {
            return Ok(as_table_response(t, q, &[&one]));
        }
        return Ok(respond(StatusCode::OK, &one, &[]));
    }
    if as_table {
        let refs: Vec<&Value> = items.iter().collect();
        return Ok(as_table_response(t, q, &refs));
    }
    let body = json!({
        "kind": format!("{}List", t.res.kind),
        "apiVersion": t.res.api_version(),
        "metadata": {},
        "items": items,
    });
    Ok(respond(StatusCode::OK, &body, &[]))
}

fn as_table_response(t: &Target<'_>, q: &Query, objs: &[&Value]) -> Response {
    let include = IncludeObject::parse(q.include_object.as_deref());
    respond(
        StatusCode::OK,
        &table::table(t.res.printer, objs, json!({}), include),
        &[],
    )
}

/// Stored objects of a core/v1 resource under `ns` that `keep` accepts.
async fn stored(
    st: &ApiState,
    plural: &str,
    ns: Option<&str>,
    keep: &(dyn Fn(&Value) -> bool + Send + Sync),
) -> ApiResult<Vec<Value>> {
    let res = st
        .registry
        .get("", "v1", plural)
        .ok_or_else(|| ApiError::internal(format!("{plural} are not registered")))?;
    let page = st
        .store
        .list(&res.key(ns, None), None, None, keep)
        .await
        .map_err(|e| ApiError::from_store(e, plural, ""))?;
    Ok(page.items.iter().map(|o| (*o.value).clone()).collect())
}

fn name_of(v: &Value) -> &str {
    v.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// The named nodes' summaries, fetched side by side; nodes that cannot
/// answer are left out.
async fn summaries(st: &ApiState, nodes: &[&Value]) -> HashMap<String, Value> {
    let fetches = nodes.iter().map(|n| async move {
        let name = name_of(n);
        let got = match endpoint_of(name, n) {
            Ok(base) => {
                st.nodes
                    .get_json(name, &base, "/stats/summary", NODE_TIMEOUT)
                    .await
            }
            Err(e) => Err(e),
        };
        match got {
            Ok(v) => Some((name.to_string(), v)),
            Err(e) => {
                debug!(node = name, error = %e.message, "no usage from node");
                None
            }
        }
    });
    futures::future::join_all(fetches)
        .await
        .into_iter()
        .flatten()
        .collect()
}

async fn node_metrics(st: &ApiState, t: &Target<'_>, sel: &Selection) -> ApiResult<Vec<Value>> {
    let wanted = t.name.as_deref();
    let nodes = stored(st, "nodes", None, &|v| {
        wanted.is_none_or(|w| name_of(v) == w) && sel.matches(v)
    })
    .await?;
    let refs: Vec<&Value> = nodes.iter().collect();
    let mut got = summaries(st, &refs).await;
    let mut out = Vec::new();
    for n in &nodes {
        let Some(summary) = got.remove(name_of(n)) else {
            continue;
        };
        let node = summary.get("node").cloned().unwrap_or_default();
        out.push(json!({
            "kind": "NodeMetrics",
            "apiVersion": t.res.api_version(),
            "metadata": {
                "name": name_of(n),
                "labels": n.pointer("/metadata/labels").cloned().unwrap_or(json!({})),
                "creationTimestamp": measured_at(&node),
            },
            "timestamp": measured_at(&node),
            "window": go_duration(node.get("window")),
            "usage": usage(&node),
        }));
    }
    Ok(out)
}

async fn pod_metrics(st: &ApiState, t: &Target<'_>, sel: &Selection) -> ApiResult<Vec<Value>> {
    let wanted = t.name.as_deref();
    let pods = stored(st, "pods", t.namespace.as_deref(), &|v| {
        wanted.is_none_or(|w| name_of(v) == w)
            && v.pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .is_some()
            && sel.matches(v)
    })
    .await?;
    let mut on: Vec<&str> = pods
        .iter()
        .filter_map(|p| p.pointer("/spec/nodeName").and_then(Value::as_str))
        .collect();
    on.sort_unstable();
    on.dedup();
    let nodes = stored(st, "nodes", None, &|v| {
        on.binary_search(&name_of(v)).is_ok()
    })
    .await?;
    let refs: Vec<&Value> = nodes.iter().collect();
    let summaries = summaries(st, &refs).await;
    // Pod uid → its entry in its node's summary.
    let by_uid: HashMap<&str, &Value> = summaries
        .values()
        .filter_map(|s| s.get("pods").and_then(Value::as_array))
        .flatten()
        .filter_map(|p| Some((p.pointer("/podRef/uid")?.as_str()?, p)))
        .collect();
    let mut out = Vec::new();
    for p in &pods {
        let uid = p
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let Some(stats) = by_uid.get(uid) else {
            continue;
        };
        let containers: Vec<Value> = stats
            .get("containers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|c| json!({"name": c.get("name"), "usage": usage(c)}))
            .collect();
        out.push(json!({
            "kind": "PodMetrics",
            "apiVersion": t.res.api_version(),
            "metadata": {
                "name": name_of(p),
                "namespace": p.pointer("/metadata/namespace"),
                "labels": p.pointer("/metadata/labels").cloned().unwrap_or(json!({})),
                "creationTimestamp": measured_at(stats),
            },
            "timestamp": measured_at(stats),
            "window": go_duration(stats.get("window")),
            "containers": containers,
        }));
    }
    Ok(out)
}

fn measured_at(stats: &Value) -> Value {
    stats.pointer("/cpu/time").cloned().unwrap_or(Value::Null)
}

/// `cpu` in nanocores and `memory` in KiB, as metrics-server writes them.
fn usage(stats: &Value) -> Value {
    let n = |p: &str| stats.pointer(p).and_then(Value::as_u64).unwrap_or(0);
    json!({
        "cpu": format!("{}n", n("/cpu/usageNanoCores")),
        "memory": format!("{}Ki", n("/memory/workingSetBytes") / 1024),
    })
}

/// Seconds as a Go duration string: `15.2s`, `1m5s`.
fn go_duration(secs: Option<&Value>) -> String {
    let secs = secs.and_then(Value::as_f64).unwrap_or(0.0).max(0.0);
    let ms = (secs * 1000.0).round() as u64;
    let (m, rest) = (ms / 60_000, ms % 60_000);
    let s = format!("{}.{:03}", rest / 1000, rest % 1000);
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_read_as_go_durations() {
        assert_eq!(go_duration(Some(&json!(15.2))), "15.2s");
        assert_eq!(go_duration(Some(&json!(15.0))), "15s");
        assert_eq!(go_duration(Some(&json!(0.0004))), "0s");
        assert_eq!(go_duration(Some(&json!(65.5))), "1m5.5s");
        assert_eq!(go_duration(None), "0s");
    }

    #[test]
    fn usage_is_in_metrics_server_units() {
        let stats = json!({"cpu": {"usageNanoCores": 12_500_000u64}, "memory": {"workingSetBytes": 2_097_152u64}});
        assert_eq!(
            usage(&stats),
            json!({"cpu": "12500000n", "memory": "2048Ki"})
        );
    }
}
