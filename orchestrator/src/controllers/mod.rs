//! The controller manager: workload controllers as reconcile functions over
//! shared informer caches, each fed by a keyed work queue with per-object
//! backoff. It is an API client like any other, and runs only while it
//! holds the controller-manager Lease, so a second server can take over.

pub mod aggregation;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpoints;
pub mod ephemeral;
pub mod gc;
pub mod history;
pub mod hpa;
pub mod informer;
pub mod intstr;
pub mod job;
pub mod leader;
pub mod loadbalancer;
pub mod namespace;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod owners;
pub mod podgc;
pub mod pods;
pub mod queue;
pub mod replicaset;
pub mod serviceaccount;
pub mod statefulset;
pub mod statefulset_handoff;
pub mod statefulset_volumes;
pub mod volume;
pub mod wiring;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use k8s_openapi::api::apps::v1::{
    ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet,
};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    Endpoints, Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod, Service,
    ServiceAccount,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::{Api, Client};
use tokio::task::JoinSet;
use tracing::{debug, info, warn, Instrument};

use crate::events::EventRecorder;
use crate::metrics::ControllerMetrics;
use informer::Informer;
use queue::WorkQueue;

pub const MANAGER_NAME: &str = "shoal-controller-manager";

/// What to do with an object after a successful reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Look again after this long even if nothing changes (a deadline, a
    /// pod becoming available after `minReadySeconds`).
    Requeue(Duration),
    /// Nothing to do until the object or something it watches changes.
    AwaitChange,
}

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("{action}: {source}")]
    Api {
        action: String,
        #[source]
        source: kube::Error,
    },
    #[error("{object}: {message}")]
    Invalid { object: String, message: String },
}

impl ControllerError {
    pub fn api(action: impl Into<String>) -> impl FnOnce(kube::Error) -> ControllerError {
        let action = action.into();
        move |source| ControllerError::Api { action, source }
    }
}

/// The status code of an API error, if the server answered with one.
pub fn api_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// One controller: reconciles the object behind a queue key.
#[async_trait]
pub trait Reconciler: Send + Sync + 'static {
    /// The name on metrics, logs and Events (`replicaset-controller`).
    fn name(&self) -> &'static str;
    async fn reconcile(&self, key: &str) -> Result<Action, ControllerError>;
}

/// The caches every controller shares.
pub struct Informers {
    pub pods: Arc<Informer<Pod>>,
    pub nodes: Arc<Informer<Node>>,
    pub namespaces: Arc<Informer<Namespace>>,
    pub replicasets: Arc<Informer<ReplicaSet>>,
    pub deployments: Arc<Informer<Deployment>>,
    pub daemonsets: Arc<Informer<DaemonSet>>,
    pub statefulsets: Arc<Informer<StatefulSet>>,
    pub controllerrevisions: Arc<Informer<ControllerRevision>>,
    pub jobs: Arc<Informer<Job>>,
    pub cronjobs: Arc<Informer<CronJob>>,
    pub services: Arc<Informer<Service>>,
    pub endpointslices: Arc<Informer<EndpointSlice>>,
    pub endpoints: Arc<Informer<Endpoints>>,
    pub ingresses: Arc<Informer<Ingress>>,
    /// Nodes' heartbeat Leases (namespace `kube-node-lease` only).
    pub node_leases: Arc<Informer<Lease>>,
    pub hpas: Arc<Informer<HorizontalPodAutoscaler>>,
    pub pdbs: Arc<Informer<PodDisruptionBudget>>,
    pub service_accounts: Arc<Informer<ServiceAccount>>,
    pub cluster_roles: Arc<Informer<ClusterRole>>,
    pub claims: Arc<Informer<PersistentVolumeClaim>>,
    pub volumes: Arc<Informer<PersistentVolume>>,
    pub storage_classes: Arc<Informer<StorageClass>>,
}

impl Informers {
    fn new() -> Informers {
        Informers {
            pods: Informer::new("pods"),
            nodes: Informer::new("nodes"),
            namespaces: Informer::new("namespaces"),
            replicasets: Informer::new("replicasets"),
            deployments: Informer::new("deployments"),
            daemonsets: Informer::new("daemonsets"),
            statefulsets: Informer::new("statefulsets"),
            controllerrevisions: Informer::new("controllerrevisions"),
            jobs: Informer::new("jobs"),
            cronjobs: Informer::new("cronjobs"),
            services: Informer::new("services"),
            endpointslices: Informer::new("endpointslices"),
            endpoints: Informer::new("endpoints"),
            ingresses: Informer::new("ingresses"),
            node_leases: Informer::new("leases"),
            hpas: Informer::new("horizontalpodautoscalers"),
            pdbs: Informer::new("poddisruptionbudgets"),
            service_accounts: Informer::new("serviceaccounts"),
            cluster_roles: Informer::new("clusterroles"),
            claims: Informer::new("persistentvolumeclaims"),
            volumes: Informer::new("persistentvolumes"),
            storage_classes: Informer::new("storageclasses"),
        }
    }

    fn start(&self, client: &Client) {
        self.pods.start(Api::all(client.clone()));
        self.nodes.start(Api::all(client.clone()));
        self.namespaces.start(Api::all(client.clone()));
        self.replicasets.start(Api::all(client.clone()));
        self.deployments.start(Api::all(client.clone()));
        self.daemonsets.start(Api::all(client.clone()));
        self.statefulsets.start(Api::all(client.clone()));
        self.controllerrevisions.start(Api::all(client.clone()));
        self.jobs.start(Api::all(client.clone()));
        self.cronjobs.start(Api::all(client.clone()));
        self.services.start(Api::all(client.clone()));
        self.endpointslices.start(Api::all(client.clone()));
        self.endpoints.start(Api::all(client.clone()));
        self.ingresses.start(Api::all(client.clone()));
        self.node_leases.start(Api::namespaced(
            client.clone(),
            nodelifecycle::LEASE_NAMESPACE,
        ));
        self.hpas.start(Api::all(client.clone()));
        self.pdbs.start(Api::all(client.clone()));
        self.service_accounts.start(Api::all(client.clone()));
        self.cluster_roles.start(Api::all(client.clone()));
        self.claims.start(Api::all(client.clone()));
        self.volumes.start(Api::all(client.clone()));
        self.storage_classes.start(Api::all(client.clone()));
    }

    async fn wait_synced(&self) {
        self.pods.wait_synced().await;
        self.nodes.wait_synced().await;
        self.namespaces.wait_synced().await;
        self.replicasets.wait_synced().await;
        self.deployments.wait_synced().await;
        self.daemonsets.wait_synced().await;
        self.statefulsets.wait_synced().await;
        self.controllerrevisions.wait_synced().await;
        self.jobs.wait_synced().await;
        self.cronjobs.wait_synced().await;
        self.services.wait_synced().await;
        self.endpointslices.wait_synced().await;
        self.endpoints.wait_synced().await;
        self.ingresses.wait_synced().await;
        self.node_leases.wait_synced().await;
        self.hpas.wait_synced().await;
        self.pdbs.wait_synced().await;
        self.service_accounts.wait_synced().await;
        self.cluster_roles.wait_synced().await;
        self.claims.wait_synced().await;
        self.volumes.wait_synced().await;
        self.storage_classes.wait_synced().await;
    }
}

/// Pods' addresses come from here unless told otherwise (k3s' default,
/// next to its 10.43.0.0/16 for Services).
pub const DEFAULT_CLUSTER_CIDR: &str = "10.42.0.0/16";

/// The controller manager's tunables.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// How long a node may go without a heartbeat before it is marked
    /// Unknown (Kubernetes' `--node-monitor-grace-period`).
    pub node_monitor_grace: std::time::Duration,
    /// How often each HorizontalPodAutoscaler looks at its metrics
    /// (Kubernetes' `--horizontal-pod-autoscaler-sync-period`).
    pub hpa_sync_period: std::time::Duration,
    /// Where nodes' pod CIDRs are cut from; `None` leaves them unset.
    pub cluster_cidr: Option<nodeipam::ClusterCidr>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            node_monitor_grace: nodelifecycle::DEFAULT_GRACE,
            hpa_sync_period: std::time::Duration::from_secs(15),
            cluster_cidr: Some(nodeipam::ClusterCidr {
                range: DEFAULT_CLUSTER_CIDR.parse().expect("a literal range"),
                node_mask: 24,
            }),
        }
    }
}

/// What a controller is built from.
pub struct Ctx {
    pub client: Client,
    pub informers: Informers,
    pub events: EventRecorder,
    pub metrics: ControllerMetrics,
    pub settings: Settings,
}

/// Runs the controller manager until the process ends: waits for the
/// Lease, runs every controller while holding it, and starts over if it is
/// lost.
pub async fn run(client: Client, metrics: ControllerMetrics, identity: String, settings: Settings) {
    loop {
        let lease = leader::acquire(&client, MANAGER_NAME, &identity).await;
        info!(identity = %lease.identity(), "controller manager is leader");
        let mut controllers = start_all(client.clone(), metrics.clone(), settings);
        lease.lost().await;
        warn!("controller manager lost its lease; stopping controllers");
        controllers.abort_all();
        while controllers.join_next().await.is_some() {}
    }
}

fn start_all(client: Client, metrics: ControllerMetrics, settings: Settings) -> JoinSet<()> {
    let ctx = Arc::new(Ctx {
        settings,
        events: EventRecorder::start(client.clone(), MANAGER_NAME, None),
        client: client.clone(),
        informers: Informers::new(),
        metrics,
    });
    let mut set = JoinSet::new();
    // Handlers must be registered before the caches start, so that every
    // controller sees the first list.
    let rs = replicaset::ReplicaSetController::register(&ctx);
    let deploy = deployment::DeploymentController::register(&ctx);
    let ds = daemonset::DaemonSetController::register(&ctx);
    let sts = statefulset::StatefulSetController::register(&ctx);
    let job = job::JobController::register(&ctx);
    let cron = cronjob::CronJobController::register(&ctx);
    let gc = gc::GarbageCollector::register(&ctx);
    let ns = namespace::NamespaceController::register(&ctx);
    let eps = endpoints::EndpointsController::register(&ctx);
    let lb = loadbalancer::LoadBalancerController::register(&ctx);
    let nodes = nodelifecycle::NodeLifecycleController::register(&ctx);
    let podgc = podgc::PodGarbageCollector::register(&ctx);
    let hpa = hpa::HpaController::register(&ctx);
    let pdb = disruption::DisruptionController::register(&ctx);
    let sa = serviceaccount::ServiceAccountController::register(&ctx);
    let aggregation = aggregation::AggregationController::register(&ctx);
    let volumes = volume::VolumeController::register(&ctx);
    let ephemeral = ephemeral::EphemeralController::register(&ctx);
    let ipam = settings
        .cluster_cidr
        .map(|c| nodeipam::NodeIpamController::register(&ctx, c));
    ctx.informers.start(&client);
    let ready = ctx.clone();
    set.spawn(async move {
        ready.informers.wait_synced().await;
        debug!("controller caches synced");
    });
    set.spawn(run_loop(rs.0, rs.1, 8, ctx.clone()));
    set.spawn(run_loop(deploy.0, deploy.1, 4, ctx.clone()));
    set.spawn(run_loop(ds.0, ds.1, 2, ctx.clone()));
    set.spawn(run_loop(sts.0, sts.1, 2, ctx.clone()));
    set.spawn(run_loop(job.0, job.1, 4, ctx.clone()));
    set.spawn(run_loop(cron.0, cron.1, 2, ctx.clone()));
    set.spawn(run_loop(gc.0, gc.1, 4, ctx.clone()));
    set.spawn(run_loop(ns.0, ns.1, 2, ctx.clone()));
    set.spawn(run_loop(eps.0, eps.1, 4, ctx.clone()));
    set.spawn(run_loop(lb.0, lb.1, 1, ctx.clone()));
    set.spawn(run_loop(nodes.0, nodes.1, 2, ctx.clone()));
    set.spawn(run_loop(podgc.0, podgc.1, 2, ctx.clone()));
    set.spawn(run_loop(hpa.0, hpa.1, 2, ctx.clone()));
    set.spawn(run_loop(pdb.0, pdb.1, 2, ctx.clone()));
    set.spawn(run_loop(sa.0, sa.1, 1, ctx.clone()));
    set.spawn(run_loop(aggregation.0, aggregation.1, 1, ctx.clone()));
    set.spawn(run_loop(volumes.0, volumes.1, 2, ctx.clone()));
    set.spawn(run_loop(ephemeral.0, ephemeral.1, 2, ctx.clone()));
    if let Some((ipam, queue)) = ipam {
        // One worker: allocations must see each other.
        set.spawn(run_loop(ipam, queue, 1, ctx.clone()));
    }
    set
}

/// Runs `workers` concurrent reconcilers over `queue` once caches synced.
pub async fn run_loop<R: Reconciler>(
    r: Arc<R>,
    queue: Arc<WorkQueue>,
    workers: usize,
    ctx: Arc<Ctx>,
) {
    // Every controller's series exist from the start, at zero.
    let name = r.name();
    ctx.metrics.reconcile_errors.with_label_values(&[name]);
    ctx.metrics.reconcile_latency.with_label_values(&[name]);
    ctx.informers.wait_synced().await;
    let mut set = JoinSet::new();
    for _ in 0..workers {
        let (r, queue, metrics) = (r.clone(), queue.clone(), ctx.metrics.clone());
        set.spawn(async move {
            loop {
                let key = queue.next().await;
                work(r.as_ref(), &queue, &metrics, &key).await;
                queue.done(&key);
            }
        });
    }
    while set.join_next().await.is_some() {}
}

async fn work<R: Reconciler>(r: &R, queue: &Arc<WorkQueue>, m: &ControllerMetrics, key: &str) {
    let name = r.name();
    let started = Instant::now();
    let span = tracing::debug_span!("reconcile", controller = name, object = key);
    let out = r.reconcile(key).instrument(span).await;
    m.reconcile_latency
        .with_label_values(&[name])
        .observe(started.elapsed().as_secs_f64());
    match out {
        Ok(Action::AwaitChange) => queue.forget(key),
        Ok(Action::Requeue(d)) => {
            queue.forget(key);
            queue.add_after(key.to_string(), d);
        }
        Err(e) => {
            m.reconcile_errors.with_label_values(&[name]).inc();
            let delay = queue.backoff(key);
            // Conflicts are routine (a cache a step behind); say so quietly.
            let conflict =
                matches!(&e, ControllerError::Api { source, .. } if api_code(source) == Some(409));
            if conflict {
                debug!(controller = name, object = key, error = %e, ?delay, "reconcile conflicted; retrying");
            } else {
                warn!(controller = name, object = key, error = %e, ?delay, "reconcile failed; retrying");
            }
            queue.add_after(key.to_string(), delay);
        }
    }
}

/// The API resource of a kind named by `apiVersion` and `kind` (an owner
/// reference, a scale target), its plural guessed as Kubernetes' REST
/// mapper does for the built-in kinds.
pub fn api_resource(api_version: &str, kind: &str) -> kube::api::ApiResource {
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g.to_string(), v.to_string()),
        None => (String::new(), api_version.to_string()),
    };
    let lower = kind.to_ascii_lowercase();
    let plural = if lower.ends_with('s') {
        format!("{lower}es")
    } else if let Some(stem) = lower.strip_suffix('y') {
        format!("{stem}ies")
    } else {
        format!("{lower}s")
    };
    kube::api::ApiResource {
        group,
        version,
        api_version: api_version.to_string(),
        kind: kind.to_string(),
        plural,
    }
}

/// A work queue whose depth is reported under `name`.
pub fn new_queue(ctx: &Ctx, name: &str) -> Arc<WorkQueue> {
    WorkQueue::new(ctx.metrics.queue_depth.with_label_values(&[name]))
}
