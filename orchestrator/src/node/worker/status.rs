//! Pod status from container records, as kubelet computes it: a pure
//! function so every phase reports the same way and tests need no node.

use k8s_openapi::api::core::v1::{ContainerStatus, Pod, PodCondition, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// What the worker knows beyond container records.
pub struct PodFacts<'a> {
    pub pod: &'a Pod,
    pub init: &'a [ContainerStatus],
    pub containers: &'a [ContainerStatus],
    /// Every init container has completed successfully.
    pub initialized: bool,
    /// Set when the worker decided the pod is over (all containers done
    /// under Never/OnFailure, or an init container failed for good).
    pub terminal_phase: Option<&'static str>,
    pub host_ip: &'a str,
    pub pod_ip: &'a str,
    pub start_time: &'a Time,
    pub now: Time,
    /// Previous conditions, so transition times only move on a change.
    pub previous: Option<&'a PodStatus>,
}

pub fn pod_status(f: &PodFacts<'_>) -> PodStatus {
    let running = f.containers.iter().any(is_running);
    let all_ready = !f.containers.is_empty() && f.containers.iter().all(|c| c.ready);
    let phase = match f.terminal_phase {
        Some(p) => p,
        None if running || (f.initialized && f.containers.iter().any(|c| c.restart_count > 0)) => {
            "Running"
        }
        None => "Pending",
    };
    let ready = all_ready && f.terminal_phase.is_none();
    let not_ready_names: Vec<&str> = f
        .containers
        .iter()
        .filter(|c| !c.ready)
        .map(|c| c.name.as_str())
        .collect();
    let containers_msg = (!ready).then(|| {
        format!(
            "containers with unready status: [{}]",
            not_ready_names.join(" ")
        )
    });
    let uninit: Vec<&str> = f
        .init
        .iter()
        .filter(|c| !completed_ok(c))
        .map(|c| c.name.as_str())
        .collect();
    let conditions = vec![
        condition(f, "PodScheduled", true, None, None),
        condition(
            f,
            "Initialized",
            f.initialized,
            (!f.initialized).then_some("ContainersNotInitialized"),
            (!f.initialized)
                .then(|| format!("containers with incomplete status: [{}]", uninit.join(" "))),
        ),
        condition(
            f,
            "ContainersReady",
            ready,
            (!ready).then_some(ready_reason(f.terminal_phase)),
            containers_msg.clone(),
        ),
        condition(
            f,
            "Ready",
            ready,
            (!ready).then_some(ready_reason(f.terminal_phase)),
            containers_msg,
        ),
    ];
    PodStatus {
        phase: Some(phase.to_string()),
        conditions: Some(conditions),
        host_ip: Some(f.host_ip.to_string()),
        host_ips: Some(vec![k8s_openapi::api::core::v1::HostIP {
            ip: f.host_ip.to_string(),
        }]),
        // Wasm pods share the node's address, like hostNetwork pods; runc
        // pods have their own.
        pod_ip: Some(f.pod_ip.to_string()),
        pod_ips: Some(vec![k8s_openapi::api::core::v1::PodIP {
            ip: f.pod_ip.to_string(),
        }]),
        start_time: Some(f.start_time.clone()),
        init_container_statuses: (!f.init.is_empty()).then(|| f.init.to_vec()),
        container_statuses: Some(f.containers.to_vec()),
        qos_class: Some(qos_class(f.pod).to_string()),
        ..PodStatus::default()
    }
}

fn ready_reason(terminal: Option<&str>) -> &'static str {
    if terminal.is_some() {
        "PodCompleted"
    } else {
        "ContainersNotReady"
    }
}

fn condition(
    f: &PodFacts<'_>,
    type_: &str,
    ok: bool,
    reason: Option<&str>,
    message: Option<String>,
) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    let since = f
        .previous
        .and_then(|p| p.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == type_))
        .filter(|c| c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| f.now.clone());
    PodCondition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.map(str::to_string),
        message,
        last_transition_time: Some(since),
        ..PodCondition::default()
    }
}

pub fn is_running(c: &ContainerStatus) -> bool {
    c.state.as_ref().is_some_and(|s| s.running.is_some())
}

pub fn completed_ok(c: &ContainerStatus) -> bool {
    c.state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .is_some_and(|t| t.exit_code == 0)
}

/// Kubernetes' QoS classes from requests and limits.
fn qos_class(pod: &Pod) -> &'static str {
    let Some(spec) = pod.spec.as_ref() else {
        return "BestEffort";
    };
    let all = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    let mut any = false;
    let mut guaranteed = true;
    for c in all {
        let r = c.resources.as_ref();
        let limits = r.and_then(|r| r.limits.as_ref());
        let requests = r.and_then(|r| r.requests.as_ref());
        for res in ["cpu", "memory"] {
            let l = limits.and_then(|m| m.get(res));
            let q = requests.and_then(|m| m.get(res)).or(l);
            if l.is_some() || q.is_some() {
                any = true;
            }
            if l.is_none() || q != l {
                guaranteed = false;
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateRunning, ContainerStateTerminated,
    };

    fn cs(name: &str, running: bool, exit: Option<i32>, restarts: i32) -> ContainerStatus {
        ContainerStatus {
            name: name.into(),
            ready: running,
            restart_count: restarts,
            state: Some(ContainerState {
                running: running.then(ContainerStateRunning::default),
                terminated: exit.map(|e| ContainerStateTerminated {
                    exit_code: e,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn facts<'a>(pod: &'a Pod, c: &'a [ContainerStatus], t: &'a Time) -> PodFacts<'a> {
        PodFacts {
            pod,
            init: &[],
            containers: c,
            initialized: true,
            terminal_phase: None,
            host_ip: "127.0.0.1",
            pod_ip: "127.0.0.1",
            start_time: t,
            now: t.clone(),
            previous: None,
        }
    }

    #[test]
    fn phases_and_readiness() {
        let pod = Pod::default();
        let t = Time(k8s_openapi::jiff::Timestamp::now());
        let running = [cs("a", true, None, 0)];
        let s = pod_status(&facts(&pod, &running, &t));
        assert_eq!(s.phase.as_deref(), Some("Running"));
        let ready = s.conditions.iter().flatten().find(|c| c.type_ == "Ready");
        assert_eq!(ready.map(|c| c.status.as_str()), Some("True"));
        let waiting = [cs("a", false, None, 0)];
        let s = pod_status(&facts(&pod, &waiting, &t));
        assert_eq!(s.phase.as_deref(), Some("Pending"));
        // Crash-looping: waiting again after restarts is still Running.
        let looping = [cs("a", false, None, 3)];
        let s = pod_status(&facts(&pod, &looping, &t));
        assert_eq!(s.phase.as_deref(), Some("Running"));
        let done = [cs("a", false, Some(0), 0)];
        let mut f = facts(&pod, &done, &t);
        f.terminal_phase = Some("Succeeded");
        let s = pod_status(&f);
        assert_eq!(s.phase.as_deref(), Some("Succeeded"));
        assert_eq!(s.qos_class.as_deref(), Some("BestEffort"));
    }
}
