//! The DaemonSet controller: one pod on every node that should run it
//! (node selector, node affinity, taints), following nodes as they join
//! and leave, and replacing pods of an old template node by node within
//! `maxUnavailable`. Pods name their node through node affinity on
//! `metadata.name`, so the scheduler still places them (and checks fit),
//! as in Kubernetes since 1.12.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use futures::future::join_all;
use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    Toleration,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;

use super::deployment::revision::template_hash;
use super::history::{self, HASH_LABEL};
use super::informer::key_of;
use super::intstr;
use super::owners::{self, Selector};
use super::pods::{self, object_ref, PodControl};
use super::queue::WorkQueue;
use super::wiring;
use super::{new_queue, Action, ControllerError, Ctx, Reconciler};
use crate::scheduler::plugins;

pub const NAME: &str = "daemonset-controller";

pub struct DaemonSetController {
    ctx: Arc<Ctx>,
    pods: PodControl,
}

/// The node a DaemonSet pod is for: where it is bound, else the node its
/// affinity names.
fn target_node(p: &Pod) -> Option<String> {
    let spec = p.spec.as_ref()?;
    if let Some(n) = spec.node_name.as_ref().filter(|n| !n.is_empty()) {
        return Some(n.clone());
    }
    spec.affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|r| r.key == "metadata.name" && r.operator == "In")
        .and_then(|r| r.values.as_ref()?.first().cloned())
}

/// Tolerations every DaemonSet pod gets, so a daemon stays on a node that
/// is unready, unreachable or under pressure, as Kubernetes adds them.
fn daemon_tolerations() -> Vec<Toleration> {
    let t = |key: &str, effect: &str| Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some(effect.into()),
        ..Toleration::default()
    };
    vec![
        t("node.kubernetes.io/not-ready", "NoExecute"),
        t("node.kubernetes.io/unreachable", "NoExecute"),
        t("node.kubernetes.io/disk-pressure", "NoSchedule"),
        t("node.kubernetes.io/memory-pressure", "NoSchedule"),
        t("node.kubernetes.io/pid-pressure", "NoSchedule"),
        t("node.kubernetes.io/unschedulable", "NoSchedule"),
    ]
}

/// The pod a DaemonSet runs on `node`.
fn pod_for(ds: &DaemonSet, node: &str, hash: &str) -> Pod {
    let spec = ds.spec.clone().unwrap_or_default();
    let ns = ds.metadata.namespace.as_deref().unwrap_or("default");
    let name = ds.metadata.name.as_deref().unwrap_or_default();
    let mut p = pods::from_template(
        &spec.template,
        owners::controller_ref(ds),
        ns,
        &format!("{name}-"),
        None,
    );
    p.metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(HASH_LABEL.into(), hash.into());
    if let Some(s) = p.spec.as_mut() {
        let here = NodeSelectorTerm {
            match_fields: Some(vec![NodeSelectorRequirement {
                key: "metadata.name".into(),
                operator: "In".into(),
                values: Some(vec![node.to_string()]),
            }]),
            match_expressions: None,
        };
        let affinity = s.affinity.get_or_insert_with(Affinity::default);
        let na = affinity
            .node_affinity
            .get_or_insert_with(NodeAffinity::default);
        // The node is fixed; the template's other terms already decided
        // eligibility.
        na.required_during_scheduling_ignored_during_execution = Some(NodeSelector {
            node_selector_terms: vec![here],
        });
    }
    with_daemon_tolerations(&mut p);
    p
}

fn with_daemon_tolerations(p: &mut Pod) {
    if let Some(s) = p.spec.as_mut() {
        let tolerations = s.tolerations.get_or_insert_with(Vec::new);
        for t in daemon_tolerations() {
            if !tolerations.contains(&t) {
                tolerations.push(t);
            }
        }
    }
}

/// Should `node` run this DaemonSet's pod? Taints, selector and affinity
/// decide; readiness and room do not (a daemon stays on a node that is
/// briefly unready, and capacity is the scheduler's call).
fn eligible(template_pod: &Pod, node: &Node) -> bool {
    plugins::matches_node(template_pod, node, &BTreeMap::new()).is_ok()
}

impl DaemonSetController {
    pub fn register(ctx: &Arc<Ctx>) -> (Arc<Self>, Arc<WorkQueue>) {
        let queue = new_queue(ctx, NAME);
        wiring::enqueue_self(&ctx.informers.daemonsets, &queue);
        wiring::enqueue_controller(&ctx.informers.pods, &queue, "DaemonSet");
        // A node joining, leaving or changing labels, taints or readiness
        // concerns every DaemonSet.
        let q = queue.clone();
        let sets = Arc::downgrade(&ctx.informers.daemonsets);
        ctx.informers.nodes.on_change(move |old, new| {
            let relevant = |n: &Node| {
                let ready = n
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
                    .map(|c| c.status.clone());
                (n.metadata.labels.clone(), n.spec.clone(), ready)
            };
            if old.map(relevant) == new.map(relevant) {
                return;
            }
            if let Some(sets) = sets.upgrade() {
                for d in sets.list() {
                    q.add(key_of(d.as_ref()));
                }
            }
        });
        let pods = PodControl::new(ctx);
        (
            Arc::new(DaemonSetController {
                ctx: ctx.clone(),
                pods,
            }),
            queue,
        )
    }

    async fn sync(&self, ds: Arc<DaemonSet>) -> Result<Action, ControllerError> {
        if ds.metadata.deletion_timestamp.is_some() {
            return Ok(Action::AwaitChange);
        }
        let key = key_of(ds.as_ref());
        let spec = ds.spec.clone().unwrap_or_default();
        let sel = Selector::new(&spec.selector).map_err(|message| ControllerError::Invalid {
            object: format!("daemonset {key}"),
            message,
        })?;
        let hash = template_hash(
            &spec.template,
            ds.status.as_ref().and_then(|s| s.collision_count),
        );
        let owner = object_ref(ds.as_ref());
        let uid = ds.metadata.uid.as_deref().unwrap_or_default();
        let ns = ds.metadata.namespace.as_deref().unwrap_or_default();
        let owner_history = history::Owner {
            namespace: ns,
            name: ds.metadata.name.as_deref().unwrap_or_default(),
            uid,
            controller_ref: owners::controller_ref(ds.as_ref()),
            template: &spec.template,
            hash: &hash,
            collision_count: ds.status.as_ref().and_then(|s| s.collision_count),
        };
        if !history::record(
            &self.ctx,
            &self.ctx.informers.daemonsets,
            &ds,
            &owner_history,
        )
        .await?
        {
            return Ok(Action::AwaitChange);
        }
        let controlled = self.ctx.informers.pods.list_controlled_by(uid);
        let mut by_node: HashMap<String, Vec<Arc<Pod>>> = HashMap::new();
        let mut orphaned: Vec<Arc<Pod>> = Vec::new();
        for p in controlled.iter().cloned() {
            if p.metadata.namespace.as_deref() != Some(ns)
                || !sel.matches(p.metadata.labels.as_ref())
                || !pods::is_active(&p)
            {
                continue;
            }
            match target_node(&p) {
                Some(n) => by_node.entry(n).or_default().push(p),
                None => orphaned.push(p),
            }
        }
        let mut template_pod = pods::from_template(
            &spec.template,
            owners::controller_ref(ds.as_ref()),
            ns,
            "",
            None,
        );
        with_daemon_tolerations(&mut template_pod);
        let nodes: Vec<Arc<Node>> = self.ctx.informers.nodes.list();
        let mut create: Vec<Pod> = Vec::new();
        let mut delete: Vec<Arc<Pod>> = orphaned;
        let mut desired = 0;
        let mut old_pods: Vec<Arc<Pod>> = Vec::new();
        let mut unavailable = 0;
        let now = Timestamp::now();
        let min_ready = spec.min_ready_seconds.unwrap_or(0);
        for node in &nodes {
            let name = node.metadata.name.clone().unwrap_or_default();
            let mut here = by_node.remove(&name).unwrap_or_default();
            if !eligible(&template_pod, node) {
                delete.extend(here);
                continue;
            }
            desired += 1;
            if here.is_empty() {
                create.push(pod_for(&ds, &name, &hash));
                unavailable += 1;
                continue;
            }
            // Keep the most valuable one.
            here.sort_by(|a, b| pods::deletion_order(b, a));
            let keep = here.remove(0);
            delete.extend(here);
            if !pods::availability(&keep, min_ready, now).0 {
                unavailable += 1;
            }
            if history::pod_hash(&keep) != Some(hash.as_str()) {
                old_pods.push(keep);
            }
        }
        // Pods for nodes that no longer exist.
        delete.extend(by_node.into_values().flatten());
        delete.extend(self.rolling_victims(&spec, desired, unavailable, old_pods, now));
        let (_, create_err) = self.pods.create_all(&owner, create).await;
        let deleted = join_all(delete.iter().map(|p| self.pods.delete(&owner, p))).await;
        self.write_status(&ds, &sel, &hash, &nodes, &template_pod)
            .await?;
        history::prune(
            &self.ctx,
            &owner_history,
            &controlled,
            [],
            spec.revision_history_limit,
        )
        .await?;
        if let Some(e) = create_err.or_else(|| deleted.into_iter().find_map(Result::err)) {
            return Err(e);
        }
        Ok(Action::AwaitChange)
    }

    /// Old-template pods to replace now: unavailable ones at once, then
    /// available ones while no more than `maxUnavailable` nodes are
    /// without an available daemon.
    fn rolling_victims(
        &self,
        spec: &k8s_openapi::api::apps::v1::DaemonSetSpec,
        desired: i32,
        unavailable: i32,
        mut old: Vec<Arc<Pod>>,
        now: Timestamp,
    ) -> Vec<Arc<Pod>> {
        let strategy = spec.update_strategy.clone().unwrap_or_default();
        if strategy.type_.as_deref() == Some("OnDelete") {
            return Vec::new();
        }
        let max = strategy
            .rolling_update
            .and_then(|r| r.max_unavailable)
            .unwrap_or(IntOrString::Int(1));
        let max = intstr::scaled(&max, desired, true).max(1);
        let min_ready = spec.min_ready_seconds.unwrap_or(0);
        let (broken, healthy): (Vec<_>, Vec<_>) = old
            .drain(..)
            .partition(|p| !pods::availability(p, min_ready, now).0);
        let room = (max - unavailable).max(0) as usize;
        broken
            .into_iter()
            .chain(healthy.into_iter().take(room))
            .collect()
    }

    async fn write_status(
        &self,
        ds: &DaemonSet,
        sel: &Selector,
        hash: &str,
        nodes: &[Arc<Node>],
        template_pod: &Pod,
    ) -> Result<(), ControllerError> {
        let uid = ds.metadata.uid.as_deref().unwrap_or_default();
        let ns = ds.metadata.namespace.as_deref().unwrap_or_default();
        let min_ready = ds
            .spec
            .as_ref()
            .and_then(|s| s.min_ready_seconds)
            .unwrap_or(0);
        let now = Timestamp::now();
        let mut on: HashMap<String, Vec<Arc<Pod>>> = HashMap::new();
        for p in self.ctx.informers.pods.list_controlled_by(uid) {
            if p.metadata.namespace.as_deref() == Some(ns)
                && sel.matches(p.metadata.labels.as_ref())
                && pods::is_active(&p)
            {
                if let Some(n) = target_node(&p) {
                    on.entry(n).or_default().push(p);
                }
            }
        }
        let mut st = DaemonSetStatus {
            observed_generation: ds.metadata.generation,
            collision_count: ds.status.as_ref().and_then(|s| s.collision_count),
            ..DaemonSetStatus::default()
        };
        let (mut ready, mut available, mut updated) = (0, 0, 0);
        for node in nodes {
            let name = node.metadata.name.clone().unwrap_or_default();
            let here = on.get(&name).cloned().unwrap_or_default();
            if !eligible(template_pod, node) {
                if !here.is_empty() {
                    st.number_misscheduled += 1;
                }
                continue;
            }
            st.desired_number_scheduled += 1;
            if here.is_empty() {
                continue;
            }
            st.current_number_scheduled += 1;
            if here.iter().any(|p| pods::is_ready(p)) {
                ready += 1;
            }
            if here.iter().any(|p| pods::availability(p, min_ready, now).0) {
                available += 1;
            }
            if here.iter().any(|p| history::pod_hash(p) == Some(hash)) {
                updated += 1;
            }
        }
        st.number_ready = ready;
        st.number_available = Some(available);
        st.number_unavailable = Some(st.desired_number_scheduled - available).filter(|n| *n > 0);
        st.updated_number_scheduled = Some(updated);
        if ds.status.as_ref() == Some(&st) {
            return Ok(());
        }
        let mut body = serde_json::to_value(&st).unwrap_or_default();
        if st.number_unavailable.is_none() {
            body["numberUnavailable"] = serde_json::Value::Null;
        }
        wiring::write_status(&self.ctx, &self.ctx.informers.daemonsets, ds, &body).await
    }
}

#[async_trait]
impl Reconciler for DaemonSetController {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn reconcile(&self, key: &str) -> Result<Action, ControllerError> {
        match self.ctx.informers.daemonsets.get(key) {
            Some(d) => self.sync(d).await,
            None => Ok(Action::AwaitChange),
        }
    }
}
