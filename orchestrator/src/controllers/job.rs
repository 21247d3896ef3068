//! The Job controller: runs pods until `completions` succeed (or, in
//! `Indexed` mode, until each index 0..completions has succeeded once),
//! at most `parallelism` at a time; fails the Job past `backoffLimit` or
//! `activeDeadlineSeconds`; honours `suspend`; deletes finished Jobs after
//! `ttlSecondsAfterFinished`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::join_all;
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::api::core::v1::{EnvVar, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::DeleteParams;
use kube::Api;
use serde_json::Value;
use tracing::info;

use super::informer::{key_of, split_key};
use super::owners::{self, Selector};
use super::pods::{self, object_ref, PodControl};
use super::queue::WorkQueue;
use super::wiring;
use super::{api_code, new_queue, Action, ControllerError, Ctx, Reconciler};

pub const NAME: &str = "job-controller";
pub const INDEX_ANNOTATION: &str = "batch.kubernetes.io/job-completion-index";
/// Wasm pods fail and restart in milliseconds: a replacement for a failed
/// pod waits this long, doubled per failure, up to `BACKOFF_MAX`.
const BACKOFF_BASE: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

pub struct JobController {
    ctx: Arc<Ctx>,
    pods: PodControl,
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn index_of(p: &Pod) -> Option<i32> {
    p.metadata
        .annotations
        .as_ref()?
        .get(INDEX_ANNOTATION)?
        .parse()
        .ok()
}

fn has_condition<'a>(st: &'a JobStatus, type_: &str) -> Option<&'a JobCondition> {
    st.conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == type_ && c.status == "True")
}

/// When the Job finished (Complete or Failed), if it has.
fn finished_at(st: &JobStatus) -> Option<Timestamp> {
    if let Some(t) = &st.completion_time {
        return Some(t.0);
    }
    has_condition(st, "Complete")
        .or_else(|| has_condition(st, "Failed"))
        .map(|c| {
            c.last_transition_time
                .as_ref()
                .map_or(Timestamp::now(), |t| t.0)
        })
}

fn set_condition(
    st: &mut JobStatus,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
) {
    let conds = st.conditions.get_or_insert_with(Vec::new);
    if let Some(c) = conds.iter_mut().find(|c| c.type_ == type_) {
        if c.status == status && c.reason.as_deref() == Some(reason) {
            return;
        }
        c.status = status.into();
        c.reason = Some(reason.into());
        c.message = Some(message.into());
        c.last_probe_time = Some(Time(now));
        c.last_transition_time = Some(Time(now));
        return;
    }
    conds.push(JobCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    });
}

/// `0-2,4,6-7`, as `status.completedIndexes` spells a set of indexes.
pub fn compress_indexes(set: &BTreeSet<i32>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut iter = set.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    out.join(",")
}

/// What the Job's pods add up to.
struct Tally {
    active: Vec<Arc<Pod>>,
    succeeded: i32,
    failed: i32,
    /// Container restarts of active pods (restartPolicy OnFailure counts
    /// them against `backoffLimit`).
    restarts: i32,
    done_indexes: BTreeSet<i32>,
    last_failure: Option<Timestamp>,
}

fn tally(owned: &[Arc<Pod>]) -> Tally {
    let mut t = Tally {
        active: Vec::new(),
        succeeded: 0,
        failed: 0,
        restarts: 0,
        done_indexes: BTreeSet::new(),
        last_failure: None,
    };
    for p in owned {
        match phase(p) {
            "Succeeded" => {
                t.succeeded += 1;
                if let Some(i) = index_of(p) {
                    t.done_indexes.insert(i);
                }
            }
            "Failed" => {
                t.failed += 1;
                let ended = p
                    .status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .and_then(|cs| {
                        cs.iter()
                            .filter_map(|c| {
                                c.state
                                    .as_ref()?
                                    .terminated
                                    .as_ref()?
                                    .finished_at
                                    .as_ref()
                                    .map(|f| f.0)
                            })
                            .max()
                    })
                    .or_else(|| p.metadata.creation_timestamp.as_ref().map(|c| c.0));
                t.last_failure = t.last_failure.max(ended);
            }
            _ if p.metadata.deletion_timestamp.is_none() => {
                t.restarts += p
                    .status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .map_or(0, |cs| cs.iter().map(|c| c.restart_count).sum());
                t.active.push(p.clone());
            }
            _ => {}
        }
    }
    t
}

impl JobController {
    pub fn register(ctx: &Arc<Ctx>) -> (Arc<Self>, Arc<WorkQueue>) {
        let queue = new_queue(ctx, NAME);
        wiring::enqueue_self(&ctx.informers.jobs, &queue);
        wiring::enqueue_controller(&ctx.informers.pods, &queue, "Job");
        let pods = PodControl::new(ctx);
        (
            Arc::new(JobController {
                ctx: ctx.clone(),
                pods,
            }),
            queue,
        )
    }

    fn owned(&self, job: &Job, sel: &Selector) -> Vec<Arc<Pod>> {
        let uid = job.metadata.uid.as_deref().unwrap_or_default();
        let ns = job.metadata.namespace.as_deref().unwrap_or_default();
        self.ctx
            .informers
            .pods
            .list_namespace(ns)
            .into_iter()
            .filter(|p| {
                owners::controlled_by(&p.metadata, uid) && sel.matches(p.metadata.labels.as_ref())
            })
            .collect()
    }

    async fn sync(&self, job: Arc<Job>) -> Result<Action, ControllerError> {
        if job.metadata.deletion_timestamp.is_some() {
            return Ok(Action::AwaitChange);
        }
        let key = key_of(job.as_ref());
        let prev = job.status.clone().unwrap_or_default();
        if let Some(at) = finished_at(&prev) {
            return self.expire(&job, at).await;
        }
        let spec = job.spec.clone().unwrap_or_default();
        let sel = Selector::new(spec.selector.as_ref().unwrap_or(&Default::default())).map_err(
            |message| ControllerError::Invalid {
                object: format!("job {key}"),
                message,
            },
        )?;
        let t = tally(&self.owned(&job, &sel));
        let now = Timestamp::now();
        let owner = object_ref(job.as_ref());
        let indexed = spec.completion_mode.as_deref() == Some("Indexed");
        let completions = spec.completions;
        let parallelism = spec.parallelism.unwrap_or(1).max(0);
        let backoff_limit = spec.backoff_limit.unwrap_or(6);
        let suspended = spec.suspend == Some(true);
        let mut st = JobStatus {
            conditions: prev.conditions.clone(),
            start_time: prev.start_time.clone(),
            ..JobStatus::default()
        };
        let succeeded = if indexed {
            t.done_indexes.len() as i32
        } else {
            t.succeeded
        };
        let complete = match completions {
            Some(c) => succeeded >= c,
            None => t.succeeded > 0 && t.active.is_empty(),
        };
        let deadline_passed = spec
            .active_deadline_seconds
            .zip(st.start_time.as_ref())
            .is_some_and(|(s, start)| now.as_millisecond() >= start.0.as_millisecond() + s * 1000);
        let over_backoff =
            t.failed > backoff_limit || (t.restarts > 0 && t.restarts >= backoff_limit);
        let mut wake: Option<Duration> = None;
        let mut failure = None;
        if complete || over_backoff || deadline_passed {
            self.delete_all(&owner, &t.active).await?;
            if complete {
                set_condition(
                    &mut st,
                    "Complete",
                    "True",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                    now,
                );
                st.completion_time = Some(Time(now));
                self.ctx.events.normal(&owner, "Completed", "Job completed");
            } else if over_backoff {
                set_condition(
                    &mut st,
                    "Failed",
                    "True",
                    "BackoffLimitExceeded",
                    "Job has reached the specified backoff limit",
                    now,
                );
                self.ctx.events.warning(
                    &owner,
                    "BackoffLimitExceeded",
                    "Job has reached the specified backoff limit",
                );
            } else {
                set_condition(
                    &mut st,
                    "Failed",
                    "True",
                    "DeadlineExceeded",
                    "Job was active longer than specified deadline",
                    now,
                );
                self.ctx.events.warning(
                    &owner,
                    "DeadlineExceeded",
                    "Job was active longer than specified deadline",
                );
            }
            info!(job = %key, complete, "job finished");
        } else if suspended {
            self.delete_all(&owner, &t.active).await?;
            if has_condition(&prev, "Suspended").is_none() {
                self.ctx.events.normal(&owner, "Suspended", "Job suspended");
            }
            set_condition(
                &mut st,
                "Suspended",
                "True",
                "JobSuspended",
                "Job suspended",
                now,
            );
            st.start_time = None;
        } else {
            if has_condition(&prev, "Suspended").is_some() {
                set_condition(
                    &mut st,
                    "Suspended",
                    "False",
                    "JobResumed",
                    "Job resumed",
                    now,
                );
                self.ctx.events.normal(&owner, "Resumed", "Job resumed");
            }
            if st.start_time.is_none() {
                st.start_time = Some(Time(now));
            }
            let (w, f) = self
                .manage(&job, &t, indexed, completions, parallelism, now)
                .await;
            wake = w;
            failure = f;
            if let Some(s) = spec.active_deadline_seconds {
                let start = st.start_time.as_ref().map_or(now, |t| t.0);
                let left = start.as_millisecond() + s * 1000 - now.as_millisecond();
                let left = Duration::from_millis(left.max(0) as u64 + 10);
                wake = Some(wake.map_or(left, |w| w.min(left)));
            }
        }
        let after = tally(&self.owned(&job, &sel));
        st.active = Some(after.active.len() as i32).filter(|n| *n > 0);
        st.ready = Some(after.active.iter().filter(|p| pods::is_ready(p)).count() as i32);
        st.succeeded = Some(t.succeeded).filter(|n| *n > 0);
        st.failed = Some(t.failed).filter(|n| *n > 0);
        st.terminating = Some(0);
        if indexed {
            st.completed_indexes = Some(compress_indexes(&t.done_indexes));
        }
        if job.status.as_ref() != Some(&st) {
            self.write_status(&job, &st).await?;
        }
        if let Some(e) = failure {
            return Err(e);
        }
        match (finished_at(&st), spec.ttl_seconds_after_finished) {
            (Some(_), Some(ttl)) => Ok(Action::Requeue(Duration::from_secs(ttl.max(0) as u64))),
            _ => Ok(wake.map_or(Action::AwaitChange, Action::Requeue)),
        }
    }

    /// Creates or deletes pods toward what the Job still needs; when a
    /// replacement waits out its back-off, how long.
    async fn manage(
        &self,
        job: &Job,
        t: &Tally,
        indexed: bool,
        completions: Option<i32>,
        parallelism: i32,
        now: Timestamp,
    ) -> (Option<Duration>, Option<ControllerError>) {
        let succeeded = if indexed {
            t.done_indexes.len() as i32
        } else {
            t.succeeded
        };
        let want = match completions {
            Some(c) => parallelism.min(c - succeeded).max(0),
            None if t.succeeded > 0 => 0,
            None => parallelism,
        } as usize;
        let owner = object_ref(job);
        if t.active.len() > want {
            let mut extra: Vec<&Arc<Pod>> = t.active.iter().collect();
            extra.sort_by(|a, b| pods::deletion_order(a, b));
            extra.truncate(t.active.len() - want);
            let r = join_all(extra.iter().map(|p| self.pods.delete(&owner, p))).await;
            return (None, r.into_iter().find_map(Result::err));
        }
        if t.active.len() == want {
            return (None, None);
        }
        if t.failed > 0 {
            let delay = BACKOFF_BASE
                .saturating_mul(1 << (t.failed - 1).clamp(0, 20) as u32)
                .min(BACKOFF_MAX);
            let since = t
                .last_failure
                .map_or(i64::MAX, |f| now.as_millisecond() - f.as_millisecond());
            if (since as u128) < delay.as_millis() {
                return (
                    Some(delay - Duration::from_millis(since.max(0) as u64)),
                    None,
                );
            }
        }
        let spec = job.spec.clone().unwrap_or_default();
        let ns = owner.namespace.clone();
        let name = owner.name.clone();
        let fresh: Vec<Pod> = if indexed {
            let busy: BTreeSet<i32> = t.active.iter().filter_map(|p| index_of(p)).collect();
            (0..completions.unwrap_or(0))
                .filter(|i| !t.done_indexes.contains(i) && !busy.contains(i))
                .take(want - t.active.len())
                .map(|i| indexed_pod(job, &spec.template, &ns, &name, i))
                .collect()
        } else {
            (t.active.len()..want)
                .map(|_| {
                    pods::from_template(
                        &spec.template,
                        owners::controller_ref(job),
                        &ns,
                        &format!("{name}-"),
                        None,
                    )
                })
                .collect()
        };
        let (_, err) = self.pods.create_all(&owner, fresh).await;
        (None, err)
    }

    async fn delete_all(
        &self,
        owner: &crate::events::ObjectRef,
        active: &[Arc<Pod>],
    ) -> Result<(), ControllerError> {
        let r = join_all(active.iter().map(|p| self.pods.delete(owner, p))).await;
        r.into_iter().collect()
    }

    /// A finished Job with `ttlSecondsAfterFinished` is deleted once that
    /// has passed (its pods follow through the garbage collector).
    async fn expire(&self, job: &Job, finished: Timestamp) -> Result<Action, ControllerError> {
        let Some(ttl) = job.spec.as_ref().and_then(|s| s.ttl_seconds_after_finished) else {
            return Ok(Action::AwaitChange);
        };
        let due = finished.as_millisecond() + i64::from(ttl) * 1000;
        let left = due - Timestamp::now().as_millisecond();
        if left > 0 {
            return Ok(Action::Requeue(Duration::from_millis(left as u64 + 10)));
        }
        let key = key_of(job);
        let (ns, name) = split_key(&key);
        let api: Api<Job> = Api::namespaced(self.ctx.client.clone(), ns);
        let dp = DeleteParams {
            preconditions: Some(kube::api::Preconditions {
                uid: job.metadata.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::background()
        };
        match api.delete(name, &dp).await {
            Ok(_) => {
                info!(job = %key, "deleted after ttlSecondsAfterFinished");
                self.ctx.informers.jobs.assume_deleted(job);
                Ok(Action::AwaitChange)
            }
            Err(e) if matches!(api_code(&e), Some(404) | Some(409)) => Ok(Action::AwaitChange),
            Err(e) => Err(ControllerError::Api {
                action: format!("deleting finished job {key}"),
                source: e,
            }),
        }
    }

    async fn write_status(&self, job: &Job, st: &JobStatus) -> Result<(), ControllerError> {
        let mut body = serde_json::to_value(st).unwrap_or(Value::Null);
        // Merge patch keeps what it is not told to drop.
        for f in [
            "active",
            "succeeded",
            "failed",
            "startTime",
            "completionTime",
        ] {
            if body.get(f).is_none() {
                body[f] = Value::Null;
            }
        }
        wiring::write_status(&self.ctx, &self.ctx.informers.jobs, job, &body).await
    }
}

/// A pod for completion index `i`: named and annotated with it, and told
/// it in `JOB_COMPLETION_INDEX`.
fn indexed_pod(
    job: &Job,
    template: &k8s_openapi::api::core::v1::PodTemplateSpec,
    ns: &str,
    name: &str,
    i: i32,
) -> Pod {
    let mut p = pods::from_template(
        template,
        owners::controller_ref(job),
        ns,
        &format!("{name}-{i}-"),
        None,
    );
    p.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(INDEX_ANNOTATION.into(), i.to_string());
    p.metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert(INDEX_ANNOTATION.into(), i.to_string());
    if let Some(spec) = p.spec.as_mut() {
        let env = EnvVar {
            name: "JOB_COMPLETION_INDEX".into(),
            value: Some(i.to_string()),
            value_from: None,
        };
        for c in spec
            .containers
            .iter_mut()
            .chain(spec.init_containers.iter_mut().flatten())
        {
            c.env.get_or_insert_with(Vec::new).push(env.clone());
        }
    }
    p
}

#[async_trait]
impl Reconciler for JobController {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn reconcile(&self, key: &str) -> Result<Action, ControllerError> {
        match self.ctx.informers.jobs.get(key) {
            Some(j) => self.sync(j).await,
            None => Ok(Action::AwaitChange),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completed_indexes_read_like_kubernetes() {
        let set: BTreeSet<i32> = [0, 1, 2, 4, 6, 7].into();
        assert_eq!(compress_indexes(&set), "0-2,4,6-7");
        assert_eq!(compress_indexes(&BTreeSet::new()), "");
    }
}
