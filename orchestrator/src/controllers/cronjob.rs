//! The CronJob controller: creates a Job at each scheduled time (standard
//! cron, in `timeZone`), honouring `concurrencyPolicy`,
//! `startingDeadlineSeconds` and `suspend`, and keeps only the newest
//! finished Jobs the history limits allow.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::batch::v1::{CronJob, CronJobStatus, Job, JobStatus};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::tz::TimeZone;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, PostParams};
use kube::Api;
use serde_json::json;
use tracing::{debug, info};

use super::informer::{key_of, split_key};
use super::owners::{self};
use super::pods::object_ref;
use super::queue::WorkQueue;
use super::wiring;
use super::{api_code, new_queue, Action, ControllerError, Ctx, Reconciler};
use crate::apiserver::admission::cron::Schedule;

pub const NAME: &str = "cronjob-controller";
pub const SCHEDULED_AT: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

pub struct CronJobController {
    ctx: Arc<Ctx>,
}

fn finished(st: Option<&JobStatus>) -> Option<&'static str> {
    for c in st?.conditions.iter().flatten() {
        if c.status == "True" && (c.type_ == "Complete" || c.type_ == "Failed") {
            return Some(if c.type_ == "Complete" {
                "Complete"
            } else {
                "Failed"
            });
        }
    }
    None
}

fn job_ref(j: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: j.metadata.name.clone(),
        namespace: j.metadata.namespace.clone(),
        uid: j.metadata.uid.clone(),
        resource_version: j.metadata.resource_version.clone(),
        ..ObjectReference::default()
    }
}

/// The latest scheduled time in `(since, now]`, and the next one after
/// `now`.
pub fn due(
    s: &Schedule,
    tz: &TimeZone,
    since: Timestamp,
    now: Timestamp,
) -> (Option<Timestamp>, Option<Timestamp>) {
    // Only the most recent missed run is started (as Kubernetes does), so
    // look at the last day first and walk further back only if it had none.
    let day_ago = Timestamp::from_millisecond(now.as_millisecond() - 86_400_000).unwrap_or(since);
    let recent = since.max(day_ago);
    let (mut last, next) = walk(s, tz, recent, now, usize::MAX);
    if last.is_none() && since < recent {
        last = walk(s, tz, since, recent, 100_000).0;
    }
    (last, next)
}

/// The last run in `(from, until]` (giving up after `budget` runs) and the
/// first one after `until`.
fn walk(
    s: &Schedule,
    tz: &TimeZone,
    from: Timestamp,
    until: Timestamp,
    budget: usize,
) -> (Option<Timestamp>, Option<Timestamp>) {
    let mut last = None;
    let mut t = from;
    for _ in 0..budget {
        match s.next_after(t, tz) {
            Some(next) if next <= until => {
                last = Some(next);
                t = next;
            }
            next => return (last, next),
        }
    }
    (last, None)
}

impl CronJobController {
    pub fn register(ctx: &Arc<Ctx>) -> (Arc<Self>, Arc<WorkQueue>) {
        let queue = new_queue(ctx, NAME);
        wiring::enqueue_self(&ctx.informers.cronjobs, &queue);
        wiring::enqueue_controller(&ctx.informers.jobs, &queue, "CronJob");
        (Arc::new(CronJobController { ctx: ctx.clone() }), queue)
    }

    async fn sync(&self, cj: Arc<CronJob>) -> Result<Action, ControllerError> {
        if cj.metadata.deletion_timestamp.is_some() {
            return Ok(Action::AwaitChange);
        }
        let key = key_of(cj.as_ref());
        let spec = cj.spec.clone().unwrap_or_default();
        let invalid = |message: String| ControllerError::Invalid {
            object: format!("cronjob {key}"),
            message,
        };
        let schedule = Schedule::parse(&spec.schedule).map_err(invalid)?;
        let tz = match spec.time_zone.as_deref() {
            Some(name) => {
                TimeZone::get(name).map_err(|e| invalid(format!("time zone {name}: {e}")))?
            }
            None => TimeZone::UTC,
        };
        let uid = cj.metadata.uid.as_deref().unwrap_or_default();
        let ns = cj.metadata.namespace.as_deref().unwrap_or_default();
        let jobs: Vec<Arc<Job>> = self
            .ctx
            .informers
            .jobs
            .list_namespace(ns)
            .into_iter()
            .filter(|j| owners::controlled_by(&j.metadata, uid))
            .collect();
        let prev = cj.status.clone().unwrap_or_default();
        let mut st = CronJobStatus {
            last_schedule_time: prev.last_schedule_time.clone(),
            last_successful_time: prev.last_successful_time.clone(),
            active: None,
        };
        let mut active: Vec<Arc<Job>> = Vec::new();
        for j in &jobs {
            match finished(j.status.as_ref()) {
                None if j.metadata.deletion_timestamp.is_none() => active.push(j.clone()),
                Some("Complete") => {
                    let done = j.status.as_ref().and_then(|s| s.completion_time.clone());
                    if done.as_ref().map(|t| t.0) > st.last_successful_time.as_ref().map(|t| t.0) {
                        st.last_successful_time = done;
                    }
                }
                _ => {}
            }
        }
        self.trim_history(&cj, &jobs).await?;
        let now = Timestamp::now();
        let since = st
            .last_schedule_time
            .as_ref()
            .map(|t| t.0)
            .or_else(|| cj.metadata.creation_timestamp.as_ref().map(|t| t.0))
            .unwrap_or(now);
        let (last, next) = due(&schedule, &tz, since, now);
        let wake = next.map(|n| {
            Duration::from_millis((n.as_millisecond() - now.as_millisecond()).max(0) as u64 + 10)
        });
        if let (Some(t), false) = (last, spec.suspend == Some(true)) {
            let late_ms = now.as_millisecond() - t.as_millisecond();
            let too_late = spec
                .starting_deadline_seconds
                .is_some_and(|d| late_ms > d * 1000);
            if too_late {
                self.ctx.events.warning(
                    &object_ref(cj.as_ref()),
                    "MissSchedule",
                    format!("Missed scheduled time to start a job: {t}"),
                );
                st.last_schedule_time = Some(Time(t));
            } else if let Some(made) = self.start(&cj, &spec, t, &mut active).await? {
                active.push(made);
                st.last_schedule_time = Some(Time(t));
            }
        }
        st.active =
            Some(active.iter().map(|j| job_ref(j)).collect::<Vec<_>>()).filter(|a| !a.is_empty());
        if cj.status.as_ref() != Some(&st) {
            self.write_status(&cj, &st).await?;
        }
        Ok(wake.map_or(Action::AwaitChange, Action::Requeue))
    }

    /// Starts the Job for scheduled time `t` as the concurrency policy
    /// allows; None when the policy says skip.
    async fn start(
        &self,
        cj: &CronJob,
        spec: &k8s_openapi::api::batch::v1::CronJobSpec,
        t: Timestamp,
        active: &mut Vec<Arc<Job>>,
    ) -> Result<Option<Arc<Job>>, ControllerError> {
        let owner = object_ref(cj);
        let key = key_of(cj);
        match spec.concurrency_policy.as_deref().unwrap_or("Allow") {
            "Forbid" if !active.is_empty() => {
                debug!(cronjob = %key, "a job is still running; skipping this run (Forbid)");
                return Ok(None);
            }
            "Replace" => {
                for j in active.drain(..) {
                    self.delete_job(cj, &j, "SuccessfulDelete").await?;
                }
            }
            _ => {}
        }
        let template = spec.job_template.clone();
        let name = format!(
            "{}-{}",
            cj.metadata.name.as_deref().unwrap_or_default(),
            t.as_second() / 60
        );
        let tm = template.metadata.unwrap_or_default();
        let mut annotations = tm.annotations.unwrap_or_default();
        annotations.insert(SCHEDULED_AT.into(), t.to_string());
        let job = Job {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: cj.metadata.namespace.clone(),
                labels: tm.labels,
                annotations: Some(annotations),
                owner_references: Some(vec![owners::controller_ref(cj)]),
                ..ObjectMeta::default()
            },
            spec: template.spec,
            status: None,
        };
        let (ns, _) = split_key(&key);
        let api: Api<Job> = Api::namespaced(self.ctx.client.clone(), ns);
        let made = match api.create(&PostParams::default(), &job).await {
            Ok(j) => {
                info!(cronjob = %key, job = %name, "started scheduled job");
                self.ctx
                    .events
                    .normal(&owner, "SuccessfulCreate", format!("Created job {name}"));
                j
            }
            // Already started by an earlier pass.
            Err(e) if api_code(&e) == Some(409) => return Ok(None),
            Err(e) => {
                self.ctx
                    .events
                    .warning(&owner, "FailedCreate", format!("Error creating job: {e}"));
                return Err(ControllerError::Api {
                    action: format!("creating job {name} for cronjob {key}"),
                    source: e,
                });
            }
        };
        self.ctx.informers.jobs.assume(made.clone());
        Ok(Some(Arc::new(made)))
    }

    /// Deletes the oldest finished Jobs beyond the history limits.
    async fn trim_history(&self, cj: &CronJob, jobs: &[Arc<Job>]) -> Result<(), ControllerError> {
        let spec = cj.spec.clone().unwrap_or_default();
        for (kind, limit) in [
            ("Complete", spec.successful_jobs_history_limit.unwrap_or(3)),
            ("Failed", spec.failed_jobs_history_limit.unwrap_or(1)),
        ] {
            let mut done: Vec<&Arc<Job>> = jobs
                .iter()
                .filter(|j| {
                    finished(j.status.as_ref()) == Some(kind)
                        && j.metadata.deletion_timestamp.is_none()
                })
                .collect();
            let keep = limit.max(0) as usize;
            if done.len() <= keep {
                continue;
            }
            done.sort_by_key(|j| j.metadata.creation_timestamp.as_ref().map(|t| t.0));
            let extra = done.len() - keep;
            for j in done.into_iter().take(extra) {
                self.delete_job(cj, j, "SuccessfulDelete").await?;
            }
        }
        Ok(())
    }

    async fn delete_job(
        &self,
        cj: &CronJob,
        j: &Job,
        reason: &'static str,
    ) -> Result<(), ControllerError> {
        let key = key_of(j);
        let (ns, name) = split_key(&key);
        let api: Api<Job> = Api::namespaced(self.ctx.client.clone(), ns);
        let dp = DeleteParams {
            preconditions: Some(kube::api::Preconditions {
                uid: j.metadata.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::background()
        };
        match api.delete(name, &dp).await {
            Ok(_) => {
                self.ctx.informers.jobs.assume_deleted(j);
                self.ctx
                    .events
                    .normal(&object_ref(cj), reason, format!("Deleted job {name}"));
                Ok(())
            }
            Err(e) if matches!(api_code(&e), Some(404) | Some(409)) => Ok(()),
            Err(e) => Err(ControllerError::Api {
                action: format!("deleting job {key}"),
                source: e,
            }),
        }
    }

    async fn write_status(&self, cj: &CronJob, st: &CronJobStatus) -> Result<(), ControllerError> {
        // Every field named, so a merge patch clears what became empty.
        let body = json!({"active": st.active, "lastScheduleTime": st.last_schedule_time,
            "lastSuccessfulTime": st.last_successful_time});
        wiring::write_status(&self.ctx, &self.ctx.informers.cronjobs, cj, &body).await
    }
}

#[async_trait]
impl Reconciler for CronJobController {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn reconcile(&self, key: &str) -> Result<Action, ControllerError> {
        match self.ctx.informers.cronjobs.get(key) {
            Some(c) => self.sync(c).await,
            None => Ok(Action::AwaitChange),
        }
    }
}
