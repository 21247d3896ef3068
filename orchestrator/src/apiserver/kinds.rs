//! Every resource Shoal serves: one line each.

use k8s_openapi::api::{
    apps::v1 as apps, authentication::v1 as authentication, authorization::v1 as authorization,
    autoscaling::v2 as autoscaling, batch::v1 as batch, coordination::v1 as coordination,
    core::v1 as core, discovery::v1 as discovery, networking::v1 as networking, node::v1 as node,
    policy::v1 as policy, rbac::v1 as rbac, scheduling::v1 as scheduling, storage::v1 as storage,
};

use super::admission::{
    self, core as core_rules, meta, pod, rbac as rbac_rules, scheduling as scheduling_rules,
    storage as storage_rules, workloads, Admission,
};
use super::registry::{entry, Registry};
use super::table::Printer;
use super::{resource_metrics, reviews};

const POD_FIELDS: &[&str] = &[
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "spec.hostNetwork",
    "status.phase",
    "status.podIP",
    "status.nominatedNodeName",
];
const EVENT_FIELDS: &[&str] = &[
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
];

pub fn registry() -> Registry {
    let all = &["all"][..];
    Registry::new(vec![
        // core/v1
        entry::<core::Namespace>()
            .short(&["ns"])
            .subresources(&["status", "finalize"])
            .fields(&["status.phase"])
            .printer(Printer::Namespace)
            .admission(Admission {
                default: core_rules::default_namespace,
                name_rule: meta::dns1123_label,
                initial_status: core_rules::namespace_status,
                ..Admission::default()
            })
            .build(),
        entry::<core::Pod>()
            .short(&["po"])
            .categories(all)
            .subresources(&[
                "status",
                "binding",
                "eviction",
                "log",
                "exec",
                "portforward",
            ])
            .fields(POD_FIELDS)
            .printer(Printer::Pod)
            .admission(Admission {
                default: pod::default_pod,
                validate: pod::validate_pod,
                validate_update: pod::validate_pod_update,
                initial_status: pod::initial_status,
                ..Admission::default()
            })
            .build(),
        entry::<core::Node>()
            .short(&["no"])
            .subresources(&["status", "proxy"])
            .fields(&["spec.unschedulable"])
            .printer(Printer::Node)
            .admission(Admission {
                initial_status: admission::keep_status,
                ..Admission::default()
            })
            .build(),
        entry::<core::Event>()
            .short(&["ev"])
            .fields(EVENT_FIELDS)
            .printer(Printer::Event)
            .build(),
        entry::<core::ConfigMap>()
            .short(&["cm"])
            .printer(Printer::ConfigMap)
            .admission(Admission {
                validate: core_rules::validate_configmap,
                validate_update: core_rules::validate_config_update,
                ..Admission::default()
            })
            .build(),
        entry::<core::Secret>()
            .fields(&["type"])
            .printer(Printer::Secret)
            .admission(Admission {
                default: core_rules::default_secret,
                validate: core_rules::validate_secret,
                validate_update: core_rules::validate_config_update,
                ..Admission::default()
            })
            .build(),
        entry::<core::Service>()
            .short(&["svc"])
            .categories(all)
            .subresources(&["status"])
            .printer(Printer::Service)
            .admission(Admission {
                default: core_rules::default_service,
                name_rule: core_rules::dns1035_label,
                validate: core_rules::validate_service,
                validate_update: core_rules::validate_service_update,
                ..Admission::default()
            })
            .build(),
        entry::<core::Endpoints>()
            .short(&["ep"])
            .printer(Printer::Endpoints)
            .build(),
        entry::<core::ServiceAccount>()
            .short(&["sa"])
            .subresources(&["token"])
            .build(),
        entry::<core::PersistentVolumeClaim>()
            .short(&["pvc"])
            .subresources(&["status"])
            .printer(Printer::PersistentVolumeClaim)
            .admission(Admission {
                default: storage_rules::default_claim,
                validate: storage_rules::validate_claim,
                validate_update: storage_rules::validate_claim_update,
                initial_status: storage_rules::claim_status,
                ..Admission::default()
            })
            .build(),
        entry::<core::PersistentVolume>()
            .short(&["pv"])
            .subresources(&["status"])
            .printer(Printer::PersistentVolume)
            .admission(Admission {
                default: storage_rules::default_volume,
                validate: storage_rules::validate_volume,
                validate_update: storage_rules::validate_volume_update,
                initial_status: storage_rules::volume_status,
                ..Admission::default()
            })
            .build(),
        entry::<core::ResourceQuota>()
            .short(&["quota"])
            .subresources(&["status"])
            .build(),
        // apps/v1
        entry::<apps::Deployment>()
            .short(&["deploy"])
            .categories(all)
            .subresources(&["status", "scale"])
            .printer(Printer::Deployment)
            .admission(Admission {
                default: workloads::default_deployment,
                validate: workloads::validate_deployment,
                validate_update: workloads::validate_workload_update,
                ..Admission::default()
            })
            .build(),
        entry::<apps::ReplicaSet>()
            .short(&["rs"])
            .categories(all)
            .subresources(&["status", "scale"])
            .fields(&["status.replicas"])
            .printer(Printer::ReplicaSet)
            .admission(Admission {
                default: workloads::default_replicaset,
                validate: workloads::validate_replicaset,
                validate_update: workloads::validate_workload_update,
                ..Admission::default()
            })
            .build(),
        entry::<apps::DaemonSet>()
            .short(&["ds"])
            .categories(all)
            .subresources(&["status"])
            .printer(Printer::DaemonSet)
            .admission(Admission {
                default: workloads::default_daemonset,
                validate: workloads::validate_daemonset,
                validate_update: workloads::validate_workload_update,
                ..Admission::default()
            })
            .build(),
        entry::<apps::StatefulSet>()
            .short(&["sts"])
            .categories(all)
            .subresources(&["status", "scale"])
            .printer(Printer::StatefulSet)
            .admission(Admission {
                default: workloads::default_statefulset,
                validate: workloads::validate_statefulset,
                validate_update: workloads::validate_statefulset_update,
                ..Admission::default()
            })
            .build(),
        entry::<apps::ControllerRevision>().build(),
        // batch/v1
        entry::<batch::Job>()
            .categories(all)
            .subresources(&["status"])
            .fields(&["status.successful"])
            .printer(Printer::Job)
            .admission(Admission {
                default: workloads::default_job,
                validate: workloads::validate_job,
                validate_update: workloads::validate_job_update,
                ..Admission::default()
            })
            .build(),
        entry::<batch::CronJob>()
            .short(&["cj"])
            .categories(all)
            .subresources(&["status"])
            .printer(Printer::CronJob)
            .admission(Admission {
                default: workloads::default_cronjob,
                validate: workloads::validate_cronjob,
                ..Admission::default()
            })
            .build(),
        // autoscaling/v2
        entry::<autoscaling::HorizontalPodAutoscaler>()
            .short(&["hpa"])
            .categories(all)
            .subresources(&["status"])
            .printer(Printer::HorizontalPodAutoscaler)
            .build(),
        // networking.k8s.io/v1
        entry::<networking::Ingress>()
            .short(&["ing"])
            .subresources(&["status"])
            .printer(Printer::Ingress)
            .build(),
        entry::<networking::IngressClass>().build(),
        // discovery.k8s.io/v1
        entry::<discovery::EndpointSlice>()
            .printer(Printer::EndpointSlice)
            .build(),
        // coordination.k8s.io/v1
        entry::<coordination::Lease>().build(),
        // node.k8s.io/v1
        entry::<node::RuntimeClass>()
            .printer(Printer::RuntimeClass)
            .build(),
        // policy/v1
        entry::<policy::PodDisruptionBudget>()
            .short(&["pdb"])
            .subresources(&["status"])
            .printer(Printer::PodDisruptionBudget)
            .build(),
        // scheduling.k8s.io/v1
        entry::<scheduling::PriorityClass>()
            .short(&["pc"])
            .printer(Printer::PriorityClass)
            .admission(Admission {
                default: scheduling_rules::default_class,
                validate: scheduling_rules::validate_class,
                validate_update: scheduling_rules::validate_class_update,
                ..Admission::default()
            })
            .build(),
        // storage.k8s.io/v1
        entry::<storage::StorageClass>()
            .short(&["sc"])
            .printer(Printer::StorageClass)
            .admission(Admission {
                default: storage_rules::default_class,
                validate: storage_rules::validate_class,
                validate_update: storage_rules::validate_class_update,
                ..Admission::default()
            })
            .build(),
        // rbac.authorization.k8s.io/v1
        entry::<rbac::Role>()
            .admission(Admission {
                name_rule: rbac_rules::path_segment_name,
                validate: rbac_rules::validate_role,
                ..Admission::default()
            })
            .build(),
        entry::<rbac::ClusterRole>()
            .admission(Admission {
                name_rule: rbac_rules::path_segment_name,
                validate: rbac_rules::validate_cluster_role,
                ..Admission::default()
            })
            .build(),
        entry::<rbac::RoleBinding>()
            .printer(Printer::RoleBinding)
            .admission(Admission {
                name_rule: rbac_rules::path_segment_name,
                validate: rbac_rules::validate_role_binding,
                validate_update: rbac_rules::validate_binding_update,
                ..Admission::default()
            })
            .build(),
        entry::<rbac::ClusterRoleBinding>()
            .printer(Printer::RoleBinding)
            .admission(Admission {
                name_rule: rbac_rules::path_segment_name,
                validate: rbac_rules::validate_cluster_role_binding,
                validate_update: rbac_rules::validate_binding_update,
                ..Admission::default()
            })
            .build(),
        // authorization.k8s.io/v1 and authentication.k8s.io/v1: answered, not stored
        entry::<authorization::SelfSubjectAccessReview>()
            .answered_by(reviews::access)
            .build(),
        entry::<authorization::SubjectAccessReview>()
            .answered_by(reviews::subject_access)
            .build(),
        entry::<authorization::LocalSubjectAccessReview>()
            .answered_by(reviews::subject_access)
            .build(),
        entry::<authorization::SelfSubjectRulesReview>()
            .answered_by(reviews::rules)
            .build(),
        entry::<authentication::SelfSubjectReview>()
            .answered_by(reviews::whoami)
            .build(),
        // metrics.k8s.io/v1beta1: measured on the nodes when asked
        entry::<resource_metrics::PodMetrics>().measured().build(),
        entry::<resource_metrics::NodeMetrics>().measured().build(),
    ])
}
