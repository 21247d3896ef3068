//! RBAC: users from a token file get exactly what their bindings grant,
//! impersonation is itself authorized, and no one can grant more than
//! they hold.

use std::time::Duration;

use anyhow::Result;
use shoal_tests::{wait_for, Server};

const TEAM: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: team
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: jane-view
  namespace: team
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: view
subjects:
- kind: User
  apiGroup: rbac.authorization.k8s.io
  name: jane
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: ops-admin
  namespace: team
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: admin
subjects:
- kind: Group
  apiGroup: rbac.authorization.k8s.io
  name: ops
"#;

/// kubectl arguments as one of the token file's users.
fn as_user<'a>(token: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["--token", token];
    v.extend_from_slice(args);
    v
}

#[tokio::test]
async fn rbac_grants_what_bindings_say_and_nothing_more() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let tokens = dir.path().join("tokens.csv");
    std::fs::write(
        &tokens,
        "# users besides the admin\njane-token,jane,u-jane\nsam-token,sam,u-sam,\"ops,dev\"\n",
    )?;
    let tokens = tokens.to_string_lossy().into_owned();
    let s = Server::start_with(&["--token-auth-file", &tokens])?;

    // Signed in, but bound to nothing yet.
    let me = s.kubectl(&as_user("jane-token", &["auth", "whoami"]))?;
    assert!(
        me.contains("jane") && me.contains("system:authenticated"),
        "{me}"
    );
    let denied = s.kubectl_err(
        &as_user("jane-token", &["get", "pods", "-n", "default"]),
        None,
    )?;
    assert!(
        denied.contains(
            r#"pods is forbidden: User "jane" cannot list resource "pods" in API group "" in the namespace "default""#
        ),
        "{denied}"
    );
    let metrics = s.kubectl_err(&as_user("jane-token", &["get", "--raw", "/metrics"]), None)?;
    assert!(
        metrics.contains(r#"User "jane" cannot get path "/metrics""#),
        "{metrics}"
    );
    // Refusals count in the request metrics by verb and resource.
    let counted = s.kubectl(&["get", "--raw", "/metrics"])?;
    assert!(
        counted.contains(r#"apiserver_request_total{code="403",resource="pods",verb="LIST"}"#),
        "{counted}"
    );
    // Discovery is everyone's.
    s.kubectl(&as_user(
        "jane-token",
        &["api-resources", "--api-group=apps"],
    ))?;

    s.kubectl_in(&["apply", "-f", "-"], Some(TEAM))?;
    let listed = s.kubectl(&["get", "rolebindings", "-n", "team"])?;
    assert!(
        listed.contains("ROLE") && listed.contains("ClusterRole/admin"),
        "{listed}"
    );
    // The policy cache follows the store: allow a moment.
    wait_for(
        "jane's binding to take effect",
        Duration::from_secs(10),
        || async {
            s.kubectl(&as_user("jane-token", &["get", "pods", "-n", "team"]))
                .ok()
        },
    )
    .await?;
    let secrets = s.kubectl_err(
        &as_user("jane-token", &["get", "secrets", "-n", "team"]),
        None,
    )?;
    assert!(
        secrets.contains("cannot list resource \"secrets\""),
        "{secrets}"
    );
    let write = s.kubectl_err(
        &as_user("jane-token", &["create", "configmap", "x", "-n", "team"]),
        None,
    )?;
    assert!(
        write.contains("cannot create resource \"configmaps\""),
        "{write}"
    );
    let elsewhere = s.kubectl_err(
        &as_user("jane-token", &["get", "pods", "-n", "default"]),
        None,
    )?;
    assert!(elsewhere.contains("forbidden"), "{elsewhere}");

    // The admin asks on jane's behalf; jane may not act as the admin.
    let can = |args: &[&str]| -> Result<String> {
        let out = s.kubectl_raw(args, None)?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    assert_eq!(
        can(&["auth", "can-i", "list", "pods", "-n", "team", "--as", "jane"])?,
        "yes"
    );
    assert_eq!(
        can(&["auth", "can-i", "list", "secrets", "-n", "team", "--as", "jane"])?,
        "no"
    );
    // Tools ask the same question for another user with a (Local)SubjectAccessReview.
    let review = |kind: &str, verb: &str, resource: &str| {
        let body = format!(
            "apiVersion: authorization.k8s.io/v1\nkind: {kind}\nmetadata: {{namespace: team}}\nspec:\n  user: jane\n  resourceAttributes: {{namespace: team, verb: {verb}, resource: {resource}}}\n"
        );
        s.kubectl_in(
            &["create", "-f", "-", "-o", "jsonpath={.status.allowed}"],
            Some(&body),
        )
    };
    assert_eq!(
        review("LocalSubjectAccessReview", "list", "pods")?.trim(),
        "true"
    );
    assert_eq!(
        review("SubjectAccessReview", "list", "secrets")?.trim(),
        "false"
    );
    let impersonated =
        s.kubectl_err(&["get", "pods", "-n", "kube-system", "--as", "jane"], None)?;
    assert!(
        impersonated.contains(r#"User "jane" cannot list"#),
        "{impersonated}"
    );
    let refused = s.kubectl_err(
        &as_user("jane-token", &["get", "pods", "--as", "admin"]),
        None,
    )?;
    assert!(
        refused.contains(
            r#"users "admin" is forbidden: User "jane" cannot impersonate resource "users""#
        ),
        "{refused}"
    );
    let rules = s.kubectl(&as_user(
        "jane-token",
        &["auth", "can-i", "--list", "-n", "team"],
    ))?;
    assert!(
        rules.contains("pods") && !rules.contains("secrets "),
        "{rules}"
    );

    // sam administers the namespace through the ops group: may hand on
    // what the group holds, and nothing beyond.
    s.kubectl(&as_user(
        "sam-token",
        &[
            "create",
            "role",
            "pod-reader",
            "--verb=get",
            "--resource=pods",
            "-n",
            "team",
        ],
    ))?;
    s.kubectl(&as_user(
        "sam-token",
        &[
            "create",
            "rolebinding",
            "jane-reads",
            "--role=pod-reader",
            "--user=jane",
            "-n",
            "team",
        ],
    ))?;
    let escalate = s.kubectl_err(
        &as_user(
            "sam-token",
            &[
                "create",
                "role",
                "node-reader",
                "--verb=list",
                "--resource=nodes",
                "-n",
                "team",
            ],
        ),
        None,
    )?;
    assert!(
        escalate.contains("is attempting to grant RBAC permissions not currently held")
            && escalate.contains(r#"{APIGroups:[""], Resources:["nodes"], Verbs:["list"]}"#),
        "{escalate}"
    );
    let bind = s.kubectl_err(
        &as_user(
            "sam-token",
            &[
                "create",
                "rolebinding",
                "root",
                "--clusterrole=cluster-admin",
                "--user=sam",
                "-n",
                "team",
            ],
        ),
        None,
    )?;
    assert!(bind.contains("not currently held"), "{bind}");
    let cluster = s.kubectl_err(
        &as_user(
            "sam-token",
            &[
                "create",
                "clusterrolebinding",
                "root",
                "--clusterrole=view",
                "--user=sam",
            ],
        ),
        None,
    )?;
    assert!(
        cluster.contains("cannot create resource \"clusterrolebindings\""),
        "{cluster}"
    );

    // Bad RBAC objects are refused with the field named.
    let no_verbs = s.kubectl_err(
        &["apply", "-f", "-"],
        Some("apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: bad, namespace: team}\nrules:\n- apiGroups: [\"\"]\n  resources: [pods]\n"),
    )?;
    assert!(no_verbs.contains("rules[0].verbs"), "{no_verbs}");
    let moved = s.kubectl_err(
        &[
            "patch",
            "rolebinding",
            "jane-view",
            "-n",
            "team",
            "--type=merge",
            "-p",
            r#"{"roleRef":{"name":"edit"}}"#,
        ],
        None,
    )?;
    assert!(moved.contains("cannot change roleRef"), "{moved}");
    let kind = s.kubectl_err(
        &["apply", "-f", "-"],
        Some("apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: bad}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: x}\n"),
    )?;
    assert!(
        kind.contains("roleRef.kind: Unsupported value: \"Role\""),
        "{kind}"
    );

    // Taking a binding away takes the access with it.
    s.kubectl(&["delete", "rolebinding", "jane-view", "-n", "team"])?;
    wait_for("jane's access to go", Duration::from_secs(10), || async {
        s.kubectl_err(
            &as_user("jane-token", &["get", "deployments", "-n", "team"]),
            None,
        )
        .ok()
    })
    .await?;
    // The binding sam made still lets jane read pods.
    s.kubectl(&as_user(
        "jane-token",
        &["get", "pod", "x", "-n", "team", "--ignore-not-found"],
    ))?;
    Ok(())
}

#[tokio::test]
async fn service_account_tokens_sign_in_as_their_account() -> Result<()> {
    let s = Server::start()?;
    s.kubectl(&["create", "namespace", "team"])?;
    // Every namespace gets a `default` ServiceAccount.
    wait_for(
        "team's default service account",
        Duration::from_secs(10),
        || async {
            s.kubectl(&["get", "serviceaccount", "default", "-n", "team"])
                .ok()
        },
    )
    .await?;
    s.kubectl(&["create", "serviceaccount", "bot", "-n", "team"])?;
    let token = s.kubectl(&["create", "token", "bot", "-n", "team"])?;
    let token = token.trim();
    let me = s.kubectl(&["--token", token, "auth", "whoami"])?;
    assert!(
        me.contains("system:serviceaccount:team:bot") && me.contains("system:serviceaccounts:team"),
        "{me}"
    );
    let denied = s.kubectl_err(&["--token", token, "get", "pods", "-n", "team"], None)?;
    assert!(
        denied.contains(r#"User "system:serviceaccount:team:bot" cannot list resource "pods""#),
        "{denied}"
    );
    s.kubectl(&[
        "create",
        "rolebinding",
        "bot-view",
        "--clusterrole=view",
        "--serviceaccount=team:bot",
        "-n",
        "team",
    ])?;
    wait_for(
        "the bot's binding to take effect",
        Duration::from_secs(10),
        || async {
            s.kubectl(&["--token", token, "get", "pods", "-n", "team"])
                .ok()
        },
    )
    .await?;

    // A pod may only run as an account that exists.
    let pod = |account: &str| {
        shoal_tests::pod_yaml(
            &format!("as-{account}"),
            "file:///nonexistent.wasm",
            &format!("  serviceAccountName: {account}\n"),
            "",
        )
    };
    let refused = s.kubectl_err(&["apply", "-n", "team", "-f", "-"], Some(&pod("nobody")))?;
    assert!(
        refused.contains(
            r#"error looking up service account team/nobody: serviceaccount "nobody" not found"#
        ),
        "{refused}"
    );
    s.kubectl_in(&["apply", "-n", "team", "-f", "-"], Some(&pod("bot")))?;
    // Tokens for another audience do not sign in here; short ones are refused.
    let vault = s.kubectl(&["create", "token", "bot", "-n", "team", "--audience=vault"])?;
    let other = s.kubectl_err(
        &["--token", vault.trim(), "get", "pods", "-n", "team"],
        None,
    )?;
    assert!(other.contains("Unauthorized"), "{other}");
    let short = s.kubectl_err(
        &["create", "token", "bot", "-n", "team", "--duration=1m"],
        None,
    )?;
    assert!(
        short.contains("spec.expirationSeconds: Invalid value: 60: may not specify a duration less than 10 minutes"),
        "{short}"
    );
    let missing = s.kubectl_err(&["create", "token", "nobody", "-n", "team"], None)?;
    assert!(
        missing.contains(r#"serviceaccounts "nobody" not found"#),
        "{missing}"
    );

    // A token bound to a Secret dies with it; every token dies with its account.
    s.kubectl(&["create", "secret", "generic", "holder", "-n", "team"])?;
    let bound = s.kubectl(&[
        "create",
        "token",
        "bot",
        "-n",
        "team",
        "--bound-object-kind=Secret",
        "--bound-object-name=holder",
    ])?;
    s.kubectl(&["--token", bound.trim(), "get", "pods", "-n", "team"])?;
    s.kubectl(&["delete", "secret", "holder", "-n", "team"])?;
    let dead = s.kubectl_err(
        &["--token", bound.trim(), "get", "pods", "-n", "team"],
        None,
    )?;
    assert!(dead.contains("Unauthorized"), "{dead}");
    s.kubectl(&["delete", "serviceaccount", "bot", "-n", "team"])?;
    let gone = s.kubectl_err(&["--token", token, "get", "pods", "-n", "team"], None)?;
    assert!(gone.contains("Unauthorized"), "{gone}");
    Ok(())
}

const MONITORING: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: monitoring
aggregationRule:
  clusterRoleSelectors:
  - matchLabels:
      rbac.example.com/aggregate-to-monitoring: "true"
rules: []
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: monitoring
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: monitoring
subjects:
- kind: User
  apiGroup: rbac.authorization.k8s.io
  name: prometheus
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: monitoring-endpoints
  labels:
    rbac.example.com/aggregate-to-monitoring: "true"
rules:
- apiGroups: [""]
  resources: [endpoints]
  verbs: [list]
"#;

#[tokio::test]
async fn aggregated_cluster_roles_gather_the_rules_they_select() -> Result<()> {
    let s = Server::start()?;
    s.kubectl_in(&["apply", "-f", "-"], Some(MONITORING))?;
    let rules = || {
        s.kubectl(&[
            "get",
            "clusterrole",
            "monitoring",
            "-o",
            "jsonpath={.rules[*].resources}",
        ])
        .unwrap_or_default()
    };
    // kubectl's answer, "yes" or "no"; anything else (kubectl failing) is
    // neither, so a broken check cannot pass for a refusal.
    let answer = |resource: &'static str| {
        s.kubectl_raw(
            &["auth", "can-i", "list", resource, "--as", "prometheus"],
            None,
        )
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
    };
    let can = |resource: &'static str| answer(resource) == "yes";
    let cannot = |resource: &'static str| answer(resource) == "no";
    wait_for(
        "the aggregate to gather endpoints",
        Duration::from_secs(10),
        || async { (rules().contains("endpoints") && can("endpoints")).then_some(()) },
    )
    .await?;
    assert_eq!(answer("pods"), "no");
    // A new labelled role joins the aggregate; a deleted one leaves it.
    s.kubectl_in(
        &["apply", "-f", "-"],
        Some("apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: monitoring-pods\n  labels: {rbac.example.com/aggregate-to-monitoring: \"true\"}\nrules:\n- {apiGroups: [\"\"], resources: [pods], verbs: [list]}\n"),
    )?;
    wait_for(
        "the aggregate to gather pods",
        Duration::from_secs(10),
        || async { can("pods").then_some(()) },
    )
    .await?;
    s.kubectl(&["delete", "clusterrole", "monitoring-endpoints"])?;
    wait_for(
        "endpoints to leave the aggregate",
        Duration::from_secs(10),
        || async { (!rules().contains("endpoints") && cannot("endpoints")).then_some(()) },
    )
    .await?;
    Ok(())
}
