//! Jobs and CronJobs: completions with bounded parallelism, Indexed mode,
//! the backoff limit, ttlSecondsAfterFinished, and a CronJob firing.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::Api;
use shoal_tests::{sample, wait_for, Server};

use super::PATIENCE;

fn job_yaml(name: &str, image: &str, spec: &str) -> String {
    format!(
        "apiVersion: batch/v1
kind: Job
metadata:
  name: {name}
spec:
{spec}  template:
    spec:
      restartPolicy: Never
      containers:
      - name: main
        image: {image}
"
    )
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

async fn job_pods(pods: &Api<Pod>, job: &str) -> anyhow::Result<Vec<Pod>> {
    Ok(pods
        .list(&ListParams::default().labels(&format!("job-name={job}")))
        .await?
        .items)
}

#[tokio::test]
async fn jobs_complete_fail_and_expire() -> anyhow::Result<()> {
    let s = Server::up(&[])?;
    let client = s.client().await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let jobs: Api<Job> = Api::namespaced(client, "default");

    // Five completions, two at a time: never more than two running.
    let peak = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (pods, peak, stop) = (pods.clone(), peak.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                if let Ok(list) = job_pods(&pods, "batch").await {
                    let running = list
                        .iter()
                        .filter(|p| {
                            p.metadata.deletion_timestamp.is_none()
                                && matches!(phase(p), "Pending" | "Running" | "")
                        })
                        .count();
                    peak.fetch_max(running, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    s.kubectl_in(
        &["apply", "-f", "-"],
        Some(&job_yaml(
            "batch",
            &sample("hello")?,
            "  completions: 5\n  parallelism: 2\n",
        )),
    )?;
    s.kubectl(&[
        "wait",
        "--for=condition=complete",
        "job/batch",
        "--timeout=90s",
    ])?;
    stop.store(true, Ordering::SeqCst);
    sampler.await?;
    let done = job_pods(&pods, "batch").await?;
    assert_eq!(done.iter().filter(|p| phase(p) == "Succeeded").count(), 5);
    assert!(
        peak.load(Ordering::SeqCst) <= 2,
        "{} pods ran at once",
        peak.load(Ordering::SeqCst)
    );
    let table = s.kubectl(&["get", "job", "batch"])?;
    assert!(table.contains("5/5"), "{table}");
    let st = jobs.get("batch").await?.status.unwrap_or_default();
    assert_eq!(st.succeeded, Some(5));
    assert!(st.completion_time.is_some() && st.start_time.is_some());
    let logs = s.kubectl(&["logs", "job/batch"])?;
    assert!(logs.contains("Hello from Shoal"), "{logs}");

    // A crashing job stops after backoffLimit + 1 failed pods.
    s.kubectl_in(
        &["apply", "-f", "-"],
        Some(&job_yaml(
            "doomed",
            &sample("crasher")?,
            "  backoffLimit: 2\n",
        )),
    )?;
    s.kubectl(&[
        "wait",
        "--for=condition=failed",
        "job/doomed",
        "--timeout=90s",
    ])?;
    let failed = job_pods(&pods, "doomed").await?;
    assert_eq!(
        failed.iter().filter(|p| phase(p) == "Failed").count(),
        3,
        "{:?}",
        failed.iter().map(phase).collect::<Vec<_>>()
    );
    let described = s.kubectl(&["describe", "job", "doomed"])?;
    assert!(described.contains("BackoffLimitExceeded"), "{described}");

    // Indexed: each pod knows its index; a TTL removes the finished job
    // and, through the garbage collector, its pods.
    // The TTL is set once the logs are read: a short one from the start
    // raced the reads on a loaded machine.
    let spec = "  completions: 3\n  parallelism: 3\n  completionMode: Indexed\n";
    s.kubectl_in(
        &["apply", "-f", "-"],
        Some(&job_yaml("indexed", &sample("config-reader")?, spec)),
    )?;
    let st = wait_for("the indexed job to complete", PATIENCE, || async {
        let st = jobs.get("indexed").await.ok()?.status?;
        (st.succeeded == Some(3)).then_some(st)
    })
    .await?;
    assert_eq!(st.completed_indexes.as_deref(), Some("0-2"));
    let mut seen = Vec::new();
    for p in job_pods(&pods, "indexed").await? {
        let name = p.metadata.name.clone().unwrap_or_default();
        let logs = s.kubectl(&["logs", &name])?;
        let index = logs
            .lines()
            .find_map(|l| l.strip_prefix("JOB_COMPLETION_INDEX="))
            .map(str::to_string);
        seen.push(index.unwrap_or_default());
    }
    seen.sort();
    assert_eq!(seen, ["0", "1", "2"]);
    s.kubectl(&[
        "patch",
        "job",
        "indexed",
        "--type=merge",
        "-p",
        r#"{"spec":{"ttlSecondsAfterFinished":1}}"#,
    ])?;
    wait_for("the finished job to expire", PATIENCE, || async {
        let gone = jobs.get_opt("indexed").await.ok()?.is_none();
        let pods_gone = job_pods(&pods, "indexed").await.ok()?.is_empty();
        (gone && pods_gone).then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_cronjob_fires_on_schedule() -> anyhow::Result<()> {
    let s = Server::up(&[])?;
    let client = s.client().await?;
    let crons: Api<CronJob> = Api::namespaced(client.clone(), "default");
    let jobs: Api<Job> = Api::namespaced(client, "default");
    let yaml = format!(
        "apiVersion: batch/v1
kind: CronJob
metadata:
  name: every-minute
spec:
  schedule: \"* * * * *\"
  timeZone: Europe/Berlin
  concurrencyPolicy: Forbid
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers:
          - name: main
            image: {}
",
        sample("hello")?
    );
    s.kubectl_in(&["apply", "-f", "-"], Some(&yaml))?;
    // The next minute boundary is at most a minute away.
    let job = wait_for("the cronjob's first job to complete", PATIENCE, || async {
        let list = jobs.list(&ListParams::default()).await.ok()?;
        list.items.into_iter().find(|j| {
            j.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|r| r.kind == "CronJob" && r.name == "every-minute")
                && j.status.as_ref().and_then(|s| s.succeeded) == Some(1)
        })
    })
    .await?;
    assert!(job
        .metadata
        .name
        .unwrap_or_default()
        .starts_with("every-minute-"));
    let cj = wait_for("lastSuccessfulTime", PATIENCE, || async {
        let cj = crons.get("every-minute").await.ok()?;
        cj.status.as_ref()?.last_successful_time.as_ref()?;
        Some(cj)
    })
    .await?;
    assert!(cj.status.and_then(|s| s.last_schedule_time).is_some());
    let described = s.kubectl(&["describe", "cronjob", "every-minute"])?;
    assert!(described.contains("SuccessfulCreate"), "{described}");
    Ok(())
}
