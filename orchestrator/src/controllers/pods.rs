//! Pods as their controllers see them: which count, which are available,
//! which to delete first, and creating or deleting them in bulk while
//! keeping the shared cache and the owner's Events up to date.

use std::cmp::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, PostParams, Preconditions};
use kube::{Api, Client};
use tracing::debug;

use super::informer::Informer;
use super::{api_code, ControllerError};
use crate::events::{EventRecorder, ObjectRef};

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

/// Finished pods (Succeeded, Failed) no longer count toward replicas.
pub fn is_terminal(p: &Pod) -> bool {
    matches!(phase(p), "Succeeded" | "Failed")
}

/// Counts toward replicas: neither finished nor being deleted.
pub fn is_active(p: &Pod) -> bool {
    !is_terminal(p) && p.metadata.deletion_timestamp.is_none()
}

/// When the pod last became Ready, if it is Ready now.
pub fn ready_since(p: &Pod) -> Option<Timestamp> {
    let c = p
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")?;
    Some(
        c.last_transition_time
            .as_ref()
            .map(|t| t.0)
            .unwrap_or(Timestamp::UNIX_EPOCH),
    )
}

pub fn is_ready(p: &Pod) -> bool {
    ready_since(p).is_some()
}

/// Whether a pod is available (Ready for `min_ready_seconds`) at `now`;
/// if it is Ready but not yet available, how long until it is.
pub fn availability(p: &Pod, min_ready_seconds: i32, now: Timestamp) -> (bool, Option<Duration>) {
    let Some(since) = ready_since(p) else {
        return (false, None);
    };
    if min_ready_seconds <= 0 {
        return (true, None);
    }
    let due = since.as_millisecond() + i64::from(min_ready_seconds) * 1000;
    let left = due - now.as_millisecond();
    if left <= 0 {
        (true, None)
    } else {
        (false, Some(Duration::from_millis(left as u64)))
    }
}

fn phase_rank(p: &Pod) -> u8 {
    match phase(p) {
        "Pending" | "" => 0,
        "Unknown" => 1,
        _ => 2,
    }
}

fn restarts(p: &Pod) -> i32 {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|cs| cs.iter().map(|c| c.restart_count).sum())
        .unwrap_or(0)
}

/// Orders pods most expendable first, as Kubernetes picks whom to scale
/// down: unscheduled before scheduled, pending before running, not ready
/// before ready, ready for less time first, more restarts first, newer
/// first.
pub fn deletion_order(a: &Pod, b: &Pod) -> Ordering {
    let bound = |p: &Pod| {
        p.spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_some_and(|n| !n.is_empty())
    };
    let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
    bound(a)
        .cmp(&bound(b))
        .then(phase_rank(a).cmp(&phase_rank(b)))
        .then(is_ready(a).cmp(&is_ready(b)))
        .then_with(|| ready_since(b).cmp(&ready_since(a)))
        .then(restarts(b).cmp(&restarts(a)))
        .then_with(|| created(b).cmp(&created(a)))
}

/// A pod stamped from `template`, owned by `owner`, named by the server
/// from `generate_name` unless `name` is given.
pub fn from_template(
    template: &PodTemplateSpec,
    owner: OwnerReference,
    namespace: &str,
    generate_name: &str,
    name: Option<String>,
) -> Pod {
    let t = template.metadata.clone().unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            name,
            generate_name: Some(generate_name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: t.labels,
            annotations: t.annotations,
            finalizers: t.finalizers,
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

/// Creates and deletes pods for one controller, recording Events on the
/// owner and telling the shared cache at once.
#[derive(Clone)]
pub struct PodControl {
    pub client: Client,
    pub cache: Arc<Informer<Pod>>,
    pub events: EventRecorder,
}

/// The largest batch of concurrent creates; batches start at 1 and double
/// while they succeed (Kubernetes' slow start), so a broken template costs
/// one failed call, not a thousand.
const MAX_BATCH: usize = 256;

impl PodControl {
    pub fn new(ctx: &super::Ctx) -> PodControl {
        PodControl {
            client: ctx.client.clone(),
            cache: ctx.informers.pods.clone(),
            events: ctx.events.clone(),
        }
    }

    /// Creates `pods` in slow-start batches; returns how many were created
    /// and the first error, which stops the rest.
    pub async fn create_all(
        &self,
        owner: &ObjectRef,
        pods: Vec<Pod>,
    ) -> (usize, Option<ControllerError>) {
        let mut batch = 1;
        let mut created = 0;
        let mut rest = pods.into_iter().peekable();
        while rest.peek().is_some() {
            let chunk: Vec<Pod> = rest.by_ref().take(batch).collect();
            let results = join_all(chunk.iter().map(|p| self.create(owner, p))).await;
            let mut first_err = None;
            for r in results {
                match r {
                    Ok(()) => created += 1,
                    Err(e) => {
                        if first_err.is_none() {
                            first_err = Some(e);
                        }
                    }
                }
            }
            if first_err.is_some() {
                return (created, first_err);
            }
            batch = (batch * 2).min(MAX_BATCH);
        }
        (created, None)
    }

    async fn create(&self, owner: &ObjectRef, pod: &Pod) -> Result<(), ControllerError> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &owner.namespace);
        match api.create(&PostParams::default(), pod).await {
            Ok(made) => {
                let name = made.metadata.name.clone().unwrap_or_default();
                self.cache.assume(made);
                self.events
                    .normal(owner, "SuccessfulCreate", format!("Created pod: {name}"));
                Ok(())
            }
            Err(e) => {
                self.events
                    .warning(owner, "FailedCreate", format!("Error creating: {e}"));
                Err(ControllerError::Api {
                    action: format!(
                        "creating a pod for {} {}/{}",
                        owner.kind, owner.namespace, owner.name
                    ),
                    source: e,
                })
            }
        }
    }

    /// Deletes `pod` (if it is still the same pod); gone already is fine.
    pub async fn delete(&self, owner: &ObjectRef, pod: &Pod) -> Result<(), ControllerError> {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let name = pod.metadata.name.clone().unwrap_or_default();
        match delete_exact(&self.client, &self.cache, pod, None).await {
            Ok(true) => {
                self.events
                    .normal(owner, "SuccessfulDelete", format!("Deleted pod: {name}"));
                Ok(())
            }
            Ok(false) => Ok(()),
            Err(e) => {
                self.events.warning(
                    owner,
                    "FailedDelete",
                    format!("Error deleting pod {name}: {e}"),
                );
                Err(ControllerError::Api {
                    action: format!("deleting pod {ns}/{name}"),
                    source: e,
                })
            }
        }
    }
}

/// Deletes `pod` if it is still the same pod (uid precondition), with
/// `grace` seconds or the pod's own, keeping the cache in step. True when
/// this call deleted or marked it; false when it was gone or replaced.
pub async fn delete_exact(
    client: &Client,
    cache: &Informer<Pod>,
    pod: &Pod,
    grace: Option<u32>,
) -> Result<bool, kube::Error> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let dp = DeleteParams {
        grace_period_seconds: grace,
        preconditions: Some(Preconditions {
            uid: pod.metadata.uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(&name, &dp).await {
        Ok(either) => {
            match either.left() {
                // Marked for a graceful stop: the cache learns that.
                Some(marked) if marked.metadata.deletion_timestamp.is_some() => {
                    cache.assume(marked)
                }
                _ => cache.assume_deleted(pod),
            }
            Ok(true)
        }
        Err(e) if matches!(api_code(&e), Some(404) | Some(409)) => {
            debug!(pod = %name, "pod already gone or replaced");
            cache.assume_deleted(pod);
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// An Events reference to a typed object.
pub fn object_ref<K>(obj: &K) -> ObjectRef
where
    K: k8s_openapi::Resource + kube::Resource,
{
    let m = kube::Resource::meta(obj);
    ObjectRef {
        kind: <K as k8s_openapi::Resource>::KIND,
        api_version: <K as k8s_openapi::Resource>::API_VERSION,
        namespace: m.namespace.clone().unwrap_or_default(),
        name: m.name.clone().unwrap_or_default(),
        uid: m.uid.clone().unwrap_or_default(),
        field_path: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn pod(name: &str, node: Option<&str>, phase: &str, ready_at: Option<i64>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                node_name: node.map(String::from),
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                conditions: ready_at.map(|s| {
                    vec![PodCondition {
                        type_: "Ready".into(),
                        status: "True".into(),
                        last_transition_time: Timestamp::from_second(s).ok().map(Time),
                        ..PodCondition::default()
                    }]
                }),
                ..PodStatus::default()
            }),
        }
    }

    #[test]
    fn the_least_valuable_pods_go_first() {
        let mut pods = [
            pod("ready-old", Some("n"), "Running", Some(100)),
            pod("unscheduled", None, "Pending", None),
            pod("ready-new", Some("n"), "Running", Some(200)),
            pod("pending", Some("n"), "Pending", None),
            pod("running-not-ready", Some("n"), "Running", None),
        ];
        pods.sort_by(deletion_order);
        let names: Vec<_> = pods
            .iter()
            .map(|p| p.metadata.name.clone().unwrap_or_default())
            .collect();
        assert_eq!(
            names,
            [
                "unscheduled",
                "pending",
                "running-not-ready",
                "ready-new",
                "ready-old"
            ]
        );
    }

    #[test]
    fn availability_waits_for_min_ready_seconds() {
        let p = pod("a", Some("n"), "Running", Some(1000));
        let at = |s| Timestamp::from_second(s).unwrap_or(Timestamp::UNIX_EPOCH);
        assert_eq!(availability(&p, 0, at(1000)), (true, None));
        assert_eq!(
            availability(&p, 10, at(1004)),
            (false, Some(Duration::from_secs(6)))
        );
        assert_eq!(availability(&p, 10, at(1010)), (true, None));
    }
}
