//! When a StatefulSet may give a pod's name to a new pod after someone
//! else deleted the old one.
//!
//! `kubectl delete pod web-0` (with its default `--wait`) GETs the pod,
//! then LISTs and WATCHes it by name, and decides from its cache about
//! 100 ms later whether the pod still exists. A Wasm pod is gone a few
//! milliseconds after the DELETE; when that falls between kubectl's GET
//! and its LIST, and the controller has already made a new `web-0` by the
//! time kubectl looks, kubectl takes the new pod for the old one and
//! waits for a deletion that never comes. A kubelet never removes a pod
//! that fast, so Kubernetes' controller does not meet this. Shoal keeps
//! the name free until `HOLD` after the old pod began terminating: a pod
//! that took longer than that to stop is replaced at once, and the
//! controller's own deletions (rolling updates, failed pods) are never
//! held.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;

use super::informer::key_of;
use super::owners::controller_of;

/// Three of kubectl's 100 ms cache-sync polls.
pub const HOLD: Duration = Duration::from_millis(300);

#[derive(Default)]
pub struct Handoffs {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Pod key → when it was first seen terminating (or gone).
    since: HashMap<String, Instant>,
    /// Pods this controller is deleting itself.
    ours: HashSet<String>,
}

impl Handoffs {
    /// Feeds one pod change from the shared cache.
    pub fn observe(&self, old: Option<&Pod>, new: Option<&Pod>, now: Instant) {
        let Some(pod) = new.or(old) else {
            return;
        };
        if controller_of(&pod.metadata).is_none_or(|r| r.kind != "StatefulSet") {
            return;
        }
        let leaving = match new {
            None => true,
            Some(p) => p.metadata.deletion_timestamp.is_some(),
        };
        if !leaving {
            return;
        }
        let key = key_of(pod);
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        if inner.ours.contains(&key) {
            if new.is_none() {
                inner.ours.remove(&key);
            }
            return;
        }
        // Inserted before pruning: a pod that took longer than HOLD to
        // go is forgotten here rather than held from its removal.
        inner.since.entry(key).or_insert(now);
        inner.since.retain(|_, t| now.duration_since(*t) < HOLD);
    }

    /// Marks a pod this controller is about to delete: its name is free
    /// as soon as it is gone.
    pub fn deleting(&self, pod: &Pod) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.ours.insert(key_of(pod));
        }
    }

    /// How much longer the name `ns/name` stays held, if at all.
    pub fn held(&self, key: &str, now: Instant) -> Option<Duration> {
        let inner = self.inner.lock().ok()?;
        let since = inner.since.get(key)?;
        HOLD.checked_sub(now.duration_since(*since))
            .filter(|d| !d.is_zero())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};

    fn pod(name: &str, terminating: bool) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                owner_references: Some(vec![OwnerReference {
                    kind: "StatefulSet".into(),
                    name: "web".into(),
                    controller: Some(true),
                    ..Default::default()
                }]),
                deletion_timestamp: terminating
                    .then_some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn a_name_freed_by_someone_else_is_held_from_the_start_of_termination() {
        let h = Handoffs::default();
        let t0 = Instant::now();
        let (live, leaving) = (pod("web-0", false), pod("web-0", true));
        h.observe(None, Some(&live), t0);
        assert_eq!(
            h.held("default/web-0", t0),
            None,
            "a live pod holds nothing"
        );
        h.observe(Some(&live), Some(&leaving), t0);
        h.observe(Some(&leaving), None, t0 + Duration::from_millis(5));
        assert_eq!(
            h.held("default/web-0", t0 + Duration::from_millis(100)),
            Some(HOLD - Duration::from_millis(100))
        );
        assert_eq!(h.held("default/web-0", t0 + HOLD), None);
    }

    #[test]
    fn a_slow_termination_or_our_own_deletion_is_not_held() {
        let h = Handoffs::default();
        let t0 = Instant::now();
        let leaving = pod("web-0", true);
        h.observe(None, Some(&leaving), t0);
        h.observe(Some(&leaving), None, t0 + 2 * HOLD);
        assert_eq!(h.held("default/web-0", t0 + 2 * HOLD), None);

        let mine = pod("web-1", true);
        h.deleting(&mine);
        h.observe(None, Some(&mine), t0);
        h.observe(Some(&mine), None, t0);
        assert_eq!(h.held("default/web-1", t0), None);
    }
}
