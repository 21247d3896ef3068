//! Events for `kubectl describe`, written off the caller's path: recording
//! never blocks a scheduler pass or a pod start. Repeats of the same
//! reason and message for the same object bump `count` on one Event, as
//! Kubernetes' event correlator does, instead of piling up objects.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::Event;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use shoal_sdk::now_rfc3339;
use tokio::sync::mpsc;
use tracing::warn;

/// The object an Event is about.
#[derive(Clone, Debug)]
pub struct ObjectRef {
    pub kind: &'static str,
    pub api_version: &'static str,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// `spec.containers{name}` when the Event is about one container.
    pub field_path: Option<String>,
}

struct Record {
    object: ObjectRef,
    type_: &'static str,
    reason: &'static str,
    message: String,
}

#[derive(Clone)]
pub struct EventRecorder {
    tx: mpsc::Sender<Record>,
}

/// Events queued beyond this are dropped (with a log line): a storm of
/// Events must not grow memory without bound.
const QUEUE: usize = 8192;
const REMEMBERED: usize = 4096;

impl EventRecorder {
    /// `component` is the reporter (`default-scheduler`, `kubelet`); `host`
    /// the node it runs on, if any.
    pub fn start(client: Client, component: &'static str, host: Option<String>) -> EventRecorder {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(writer(client, component, host, rx));
        EventRecorder { tx }
    }

    pub fn normal(&self, object: &ObjectRef, reason: &'static str, message: impl Into<String>) {
        self.record(object, "Normal", reason, message.into());
    }

    pub fn warning(&self, object: &ObjectRef, reason: &'static str, message: impl Into<String>) {
        self.record(object, "Warning", reason, message.into());
    }

    fn record(
        &self,
        object: &ObjectRef,
        type_: &'static str,
        reason: &'static str,
        message: String,
    ) {
        let rec = Record {
            object: object.clone(),
            type_,
            reason,
            message,
        };
        if self.tx.try_send(rec).is_err() {
            warn!(object = %object.name, reason, "event queue full; event dropped");
        }
    }
}

/// (uid, fieldPath, reason, message): what makes two Events "the same".
type SeenKey = (String, String, &'static str, String);
/// (namespace, Event name, count) of the Event already written.
type Seen = (String, String, i32);

async fn writer(
    client: Client,
    component: &'static str,
    host: Option<String>,
    mut rx: mpsc::Receiver<Record>,
) {
    // (uid, fieldPath, reason, message) → (namespace, event name, count)
    let mut seen: HashMap<SeenKey, Seen> = HashMap::new();
    while let Some(r) = rx.recv().await {
        let ns = r.object.namespace.clone();
        let api: Api<Event> = Api::namespaced(client.clone(), &ns);
        let ts = now_rfc3339();
        let key = (
            r.object.uid.clone(),
            r.object.field_path.clone().unwrap_or_default(),
            r.reason,
            r.message.clone(),
        );
        if let Some((ens, name, count)) = seen.get_mut(&key) {
            *count += 1;
            let patch = json!({"count": *count, "lastTimestamp": ts});
            let api: Api<Event> = Api::namespaced(client.clone(), ens);
            if api
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .is_ok()
            {
                continue;
            }
        }
        let o = &r.object;
        let ev = json!({
            "metadata": {"generateName": format!("{}.", o.name), "namespace": ns},
            "involvedObject": {"apiVersion": o.api_version, "kind": o.kind, "name": o.name,
                "namespace": o.namespace, "uid": o.uid, "fieldPath": o.field_path},
            "reason": r.reason, "message": r.message, "type": r.type_, "count": 1,
            "firstTimestamp": ts, "lastTimestamp": ts,
            "source": {"component": component, "host": host},
            "reportingComponent": component, "reportingInstance": host.clone().unwrap_or_default(),
        });
        let Ok(ev) = serde_json::from_value::<Event>(ev) else {
            continue;
        };
        match api.create(&PostParams::default(), &ev).await {
            Ok(created) => {
                if seen.len() >= REMEMBERED {
                    seen.clear();
                }
                seen.insert(key, (ns, created.metadata.name.unwrap_or_default(), 1));
            }
            Err(e) => {
                warn!(object = %o.name, namespace = %o.namespace, reason = r.reason, error = %e, "could not record event")
            }
        }
    }
}
