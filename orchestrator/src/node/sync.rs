//! Keeps one worker per pod bound to this node: lists, then watches pods
//! with `spec.nodeName=<node>`, hands every change to the pod's worker,
//! and relists after any break (server restart, 410 Gone). Workers keep
//! running their pods while the API server is away.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, WatchEvent, WatchParams};
use kube::Api;
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use super::status_sync::PodKey;
use super::worker::{PodSignal, PodWorker};
use super::NodeCtx;

struct Handle {
    signal: watch::Sender<PodSignal>,
}

pub async fn run(ctx: Arc<NodeCtx>) {
    let mut workers: HashMap<String, Handle> = HashMap::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<PodKey>();
    let api: Api<Pod> = Api::all(ctx.client.clone());
    let selector = format!("spec.nodeName={}", ctx.name);
    let mut delay = Duration::from_millis(100);
    loop {
        let list = match api.list(&ListParams::default().fields(&selector)).await {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "listing this node's pods failed; retrying");
                reap(&ctx, &mut workers, &mut done_rx);
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        delay = Duration::from_millis(100);
        let mut present = std::collections::HashSet::new();
        for pod in list.items {
            present.insert(pod.metadata.uid.clone().unwrap_or_default());
            deliver(&ctx, &mut workers, &done_tx, pod, false);
        }
        // Pods that vanished while we were not watching were force-deleted.
        let vanished: Vec<String> = workers
            .keys()
            .filter(|uid| !present.contains(*uid))
            .cloned()
            .collect();
        for uid in vanished {
            if let Some(h) = workers.get(&uid) {
                let pod = h.signal.borrow().pod.clone();
                let _ = h.signal.send(PodSignal { pod, gone: true });
            }
        }
        let mut rv = list.metadata.resource_version.unwrap_or_default();
        let wp = WatchParams::default().fields(&selector).timeout(290);
        let mut stream = match api.watch(&wp, &rv).await {
            Ok(s) => s.boxed(),
            Err(e) => {
                warn!(error = %e, "watching this node's pods failed; relisting");
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        loop {
            tokio::select! {
                ev = stream.next() => match ev {
                    Some(Ok(WatchEvent::Added(p))) | Some(Ok(WatchEvent::Modified(p))) => {
                        rv = p.metadata.resource_version.clone().unwrap_or(rv);
                        deliver(&ctx, &mut workers, &done_tx, p, false);
                    }
                    Some(Ok(WatchEvent::Deleted(p))) => {
                        rv = p.metadata.resource_version.clone().unwrap_or(rv);
                        deliver(&ctx, &mut workers, &done_tx, p, true);
                    }
                    Some(Ok(WatchEvent::Bookmark(b))) => rv = b.metadata.resource_version,
                    Some(Ok(WatchEvent::Error(e))) => {
                        debug!(code = e.code, message = %e.message, "watch ended; relisting");
                        break;
                    }
                    Some(Err(e)) => {
                        debug!(error = %e, "watch broke; relisting");
                        break;
                    }
                    None => {
                        // A clean timeout: resume from where we are.
                        match api.watch(&wp, &rv).await {
                            Ok(s) => stream = s.boxed(),
                            Err(_) => break,
                        }
                    }
                },
                Some(key) = done_rx.recv() => forget(&ctx, &mut workers, &key),
            }
        }
    }
}

/// Hands a pod to its worker, starting one for a pod seen the first time.
fn deliver(
    ctx: &Arc<NodeCtx>,
    workers: &mut HashMap<String, Handle>,
    done: &mpsc::UnboundedSender<PodKey>,
    pod: Pod,
    gone: bool,
) {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let signal = PodSignal {
        pod: Arc::new(pod),
        gone,
    };
    if let Some(h) = workers.get(&uid) {
        let _ = h.signal.send(signal);
        return;
    }
    if gone {
        return;
    }
    let key = PodKey {
        namespace: signal.pod.metadata.namespace.clone().unwrap_or_default(),
        name: signal.pod.metadata.name.clone().unwrap_or_default(),
        uid: uid.clone(),
    };
    if let Ok(mut pods) = ctx.pods.lock() {
        pods.insert((key.namespace.clone(), key.name.clone()), key.clone());
    }
    let (tx, rx) = watch::channel(signal);
    let worker = PodWorker::new(ctx.clone(), rx);
    let done = done.clone();
    tokio::spawn(async move {
        worker.run().await;
        let _ = done.send(key);
    });
    workers.insert(uid, Handle { signal: tx });
}

fn forget(ctx: &NodeCtx, workers: &mut HashMap<String, Handle>, key: &PodKey) {
    workers.remove(&key.uid);
    if let Ok(mut pods) = ctx.pods.lock() {
        if pods
            .get(&(key.namespace.clone(), key.name.clone()))
            .is_some_and(|k| k.uid == key.uid)
        {
            pods.remove(&(key.namespace.clone(), key.name.clone()));
        }
    }
}

fn reap(
    ctx: &NodeCtx,
    workers: &mut HashMap<String, Handle>,
    done: &mut mpsc::UnboundedReceiver<PodKey>,
) {
    while let Ok(key) = done.try_recv() {
        forget(ctx, workers, &key);
    }
}
