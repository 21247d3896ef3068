//! The ClusterRoles and ClusterRoleBindings every cluster starts with,
//! after Kubernetes' bootstrap policy: `cluster-admin` for
//! `system:masters`; discovery, health and "who am I / can I" for everyone
//! signed in; `admin`, `edit` and `view` to bind per namespace; and
//! `system:node` for the node agents.

use serde_json::{json, Value};

use super::rbac::GROUP;
use super::user::{AUTHENTICATED, MASTERS, NODES};

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> Value {
    json!({"apiGroups": groups, "resources": resources, "verbs": verbs})
}

fn paths(urls: &[&str], verbs: &[&str]) -> Value {
    json!({"nonResourceURLs": urls, "verbs": verbs})
}

/// What `view` may read: everything in a namespace but Secrets.
fn view_rules() -> Vec<Value> {
    vec![
        rule(
            &[""],
            &[
                "configmaps",
                "endpoints",
                "events",
                "persistentvolumeclaims",
                "pods",
                "pods/log",
                "pods/status",
                "replicationcontrollers",
                "resourcequotas",
                "resourcequotas/status",
                "serviceaccounts",
                "services",
                "services/status",
                "namespaces",
                "namespaces/status",
            ],
            READ,
        ),
        rule(
            &["apps"],
            &[
                "controllerrevisions",
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/scale",
                "deployments/status",
                "replicasets",
                "replicasets/scale",
                "replicasets/status",
                "statefulsets",
                "statefulsets/scale",
                "statefulsets/status",
            ],
            READ,
        ),
        rule(
            &["autoscaling"],
            &[
                "horizontalpodautoscalers",
                "horizontalpodautoscalers/status",
            ],
            READ,
        ),
        rule(
            &["batch"],
            &["cronjobs", "cronjobs/status", "jobs", "jobs/status"],
            READ,
        ),
        rule(
            &["networking.k8s.io"],
            &["ingresses", "ingresses/status", "networkpolicies"],
            READ,
        ),
        rule(
            &["policy"],
            &["poddisruptionbudgets", "poddisruptionbudgets/status"],
            READ,
        ),
        rule(&["discovery.k8s.io"], &["endpointslices"], READ),
        rule(&["metrics.k8s.io"], &["pods"], READ),
    ]
}

/// `edit`: `view`, Secrets, and writing the workloads and their config.
fn edit_rules() -> Vec<Value> {
    let mut rules = view_rules();
    rules.extend([
        rule(&[""], &["secrets"], READ),
        rule(
            &[""],
            &[
                "configmaps",
                "endpoints",
                "persistentvolumeclaims",
                "pods",
                "replicationcontrollers",
                "secrets",
                "serviceaccounts",
                "services",
            ],
            WRITE,
        ),
        rule(
            &[""],
            &["pods/eviction", "serviceaccounts/token"],
            &["create"],
        ),
        rule(
            &[""],
            &["pods/exec", "pods/portforward"],
            &["create", "get"],
        ),
        rule(
            &["apps"],
            &[
                "daemonsets",
                "deployments",
                "deployments/rollback",
                "deployments/scale",
                "replicasets",
                "replicasets/scale",
                "statefulsets",
                "statefulsets/scale",
            ],
            WRITE,
        ),
        rule(&["autoscaling"], &["horizontalpodautoscalers"], WRITE),
        rule(&["batch"], &["cronjobs", "jobs"], WRITE),
        rule(
            &["networking.k8s.io"],
            &["ingresses", "networkpolicies"],
            WRITE,
        ),
        rule(&["policy"], &["poddisruptionbudgets"], WRITE),
    ]);
    rules
}

/// `admin`: `edit` plus the namespace's own Roles and RoleBindings.
fn admin_rules() -> Vec<Value> {
    let mut rules = edit_rules();
    rules.extend([
        rule(
            &[GROUP],
            &["roles", "rolebindings"],
            &[READ, WRITE].concat(),
        ),
        rule(
            &["authorization.k8s.io"],
            &["localsubjectaccessreviews"],
            &["create"],
        ),
    ]);
    rules
}

/// What a node agent reads and writes. Every node shares one token, so this
/// is kubelet's `system:node` role without the Node authorizer's narrowing
/// to the node's own pods and their Secrets.
fn node_rules() -> Vec<Value> {
    vec![
        rule(
            &[""],
            &["nodes"],
            &["create", "get", "list", "watch", "patch", "update"],
        ),
        rule(&[""], &["nodes/status"], &["patch", "update"]),
        rule(&[""], &["pods"], &["get", "list", "watch", "delete"]),
        rule(&[""], &["pods/status"], &["patch", "update"]),
        rule(
            &[""],
            &[
                "services",
                "endpoints",
                "configmaps",
                "secrets",
                "namespaces",
            ],
            READ,
        ),
        rule(
            &["", "events.k8s.io"],
            &["events"],
            &["create", "patch", "update"],
        ),
        rule(&["discovery.k8s.io"], &["endpointslices"], READ),
        // Claims to find a pod's volume; volumes to find its directory and,
        // for local-path ones, to release them once the data is removed.
        rule(&[""], &["persistentvolumeclaims"], READ),
        rule(
            &[""],
            &["persistentvolumes"],
            &["get", "list", "watch", "patch"],
        ),
        rule(
            &["networking.k8s.io"],
            &["ingresses", "ingressclasses"],
            READ,
        ),
        rule(&["node.k8s.io"], &["runtimeclasses"], READ),
        rule(
            &["coordination.k8s.io"],
            &["leases"],
            &[
                "get", "list", "watch", "create", "update", "patch", "delete",
            ],
        ),
    ]
}

/// (resource, kind, name, fields besides metadata) of each default object.
pub fn objects() -> Vec<(&'static str, &'static str, &'static str, Value)> {
    let role = |name: &'static str, rules: Vec<Value>| {
        ("clusterroles", "ClusterRole", name, json!({"rules": rules}))
    };
    let binding = |name: &'static str, groups: &[&str]| {
        let subjects: Vec<Value> = groups
            .iter()
            .map(|g| json!({"kind": "Group", "apiGroup": GROUP, "name": g}))
            .collect();
        (
            "clusterrolebindings",
            "ClusterRoleBinding",
            name,
            json!({"roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": name},
                   "subjects": subjects}),
        )
    };
    let health = ["/healthz", "/livez", "/readyz", "/version", "/version/"];
    vec![
        role(
            "cluster-admin",
            vec![rule(&["*"], &["*"], &["*"]), paths(&["*"], &["*"])],
        ),
        role("admin", admin_rules()),
        role("edit", edit_rules()),
        role("view", view_rules()),
        role(
            "system:discovery",
            vec![paths(
                &[
                    &[
                        "/api",
                        "/api/*",
                        "/apis",
                        "/apis/*",
                        "/openapi",
                        "/openapi/*",
                    ][..],
                    &health[..],
                ]
                .concat(),
                &["get"],
            )],
        ),
        role("system:public-info-viewer", vec![paths(&health, &["get"])]),
        role(
            "system:basic-user",
            vec![
                rule(
                    &["authorization.k8s.io"],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                    &["create"],
                ),
                rule(
                    &["authentication.k8s.io"],
                    &["selfsubjectreviews"],
                    &["create"],
                ),
            ],
        ),
        role("system:node", node_rules()),
        binding("cluster-admin", &[MASTERS]),
        binding("system:discovery", &[AUTHENTICATED]),
        binding(
            "system:public-info-viewer",
            &[AUTHENTICATED, "system:unauthenticated"],
        ),
        binding("system:basic-user", &[AUTHENTICATED]),
        binding("system:node", &[NODES]),
    ]
}
