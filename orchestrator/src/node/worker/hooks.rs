//! Container lifecycle hooks, as kubelet runs them. `postStart` runs once
//! the container has started; until it completes the container is not
//! Running, and if it fails the container is killed and restarted by the
//! pod's policy. `preStop` runs when the pod is deleted, before the
//! container is told to stop, and the pod's grace period bounds it. A Wasm
//! HTTP pod keeps serving while it runs: a `sleep` preStop is the usual way
//! to let endpoint removal reach every gateway before the pod stops taking
//! requests.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, LifecycleHandler, Probe};

use super::probe::{attempt, resolve_ports, Reach};

/// Runs `container`'s preStop hook, if it has one, within `grace`;
/// `Ok(None)` when there is none.
pub(super) async fn pre_stop(
    container: &Container,
    reach: &Reach,
    grace: Duration,
) -> Option<Result<(), String>> {
    let hook = container.lifecycle.as_ref()?.pre_stop.as_ref()?;
    let run = run(container, hook, reach);
    Some(match tokio::time::timeout(grace, run).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "did not finish within the grace period of {}s",
            grace.as_secs()
        )),
    })
}

/// Runs `container`'s postStart hook, if it has one; `None` when there is
/// none. Like kubelet, no deadline: a hook that hangs keeps the container
/// from Running until the pod is deleted.
pub(super) async fn post_start(container: &Container, reach: &Reach) -> Option<Result<(), String>> {
    let hook = container.lifecycle.as_ref()?.post_start.as_ref()?;
    Some(run(container, hook, reach).await)
}

/// One hook: a sleep, or a handler as a probe would run it.
async fn run(container: &Container, hook: &LifecycleHandler, reach: &Reach) -> Result<(), String> {
    if let Some(s) = &hook.sleep {
        tokio::time::sleep(Duration::from_secs(s.seconds.max(0) as u64)).await;
        return Ok(());
    }
    let mut as_probe = Probe {
        exec: hook.exec.clone(),
        http_get: hook.http_get.clone(),
        tcp_socket: hook.tcp_socket.clone(),
        ..Default::default()
    };
    resolve_ports(container, &mut as_probe);
    attempt(&as_probe, reach).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_runtime::http::HttpService;
    use shoal_runtime::http::{text_response, Body};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// Counts requests to `/quit`, answering 200, and 500 elsewhere.
    #[derive(Default)]
    struct Counting(AtomicUsize);

    #[async_trait::async_trait]
    impl HttpService for Counting {
        async fn serve(
            &self,
            req: http::Request<Body>,
        ) -> Result<http::Response<Body>, http::Request<Body>> {
            if req.uri().path() == "/quit" {
                self.0.fetch_add(1, Ordering::SeqCst);
                return Ok(text_response(http::StatusCode::OK, ""));
            }
            Ok(text_response(http::StatusCode::INTERNAL_SERVER_ERROR, ""))
        }
        fn in_flight(&self) -> usize {
            0
        }
    }

    fn container(pre_stop: serde_json::Value) -> Container {
        serde_json::from_value(serde_json::json!({
            "name": "main",
            "ports": [{"name": "http", "containerPort": 8080}],
            "lifecycle": {"preStop": pre_stop, "postStart": pre_stop},
        }))
        .expect("container")
    }

    #[tokio::test]
    async fn post_start_runs_the_same_handlers() {
        let svc = Arc::new(Counting::default());
        let http: Arc<dyn HttpService> = svc.clone();
        let c = container(serde_json::json!({"httpGet": {"path": "/quit", "port": "http"}}));
        assert_eq!(
            post_start(&c, &Reach::handler(http.clone())).await,
            Some(Ok(()))
        );
        assert_eq!(svc.0.load(Ordering::SeqCst), 1);
        let c = container(serde_json::json!({"exec": {"command": ["true"]}}));
        let failed = post_start(&c, &Reach::handler(http.clone())).await;
        assert!(
            matches!(&failed, Some(Err(why)) if why.contains("Wasm sandbox")),
            "{failed:?}"
        );
    }

    #[tokio::test]
    async fn pre_stop_calls_the_handler_sleeps_and_keeps_to_the_grace() {
        let svc = Arc::new(Counting::default());
        let http: Arc<dyn HttpService> = svc.clone();
        let grace = Duration::from_secs(5);
        let c = container(serde_json::json!({"httpGet": {"path": "/quit", "port": "http"}}));
        assert_eq!(
            pre_stop(&c, &Reach::handler(http.clone()), grace).await,
            Some(Ok(()))
        );
        assert_eq!(svc.0.load(Ordering::SeqCst), 1);

        let c = container(serde_json::json!({"httpGet": {"path": "/other", "port": 8080}}));
        let failed = pre_stop(&c, &Reach::handler(http.clone()), grace).await;
        assert!(
            matches!(&failed, Some(Err(why)) if why.contains("500")),
            "{failed:?}"
        );

        let c = container(serde_json::json!({"sleep": {"seconds": 1}}));
        let started = tokio::time::Instant::now();
        assert_eq!(
            pre_stop(&c, &Reach::handler(http.clone()), grace).await,
            Some(Ok(()))
        );
        assert!(started.elapsed() >= Duration::from_secs(1));
        let cut = pre_stop(
            &c,
            &Reach::handler(http.clone()),
            Duration::from_millis(100),
        )
        .await;
        assert!(
            matches!(&cut, Some(Err(why)) if why.contains("grace period")),
            "{cut:?}"
        );

        let none: Container = serde_json::from_value(serde_json::json!({"name": "x"})).expect("c");
        assert_eq!(
            pre_stop(&none, &Reach::handler(http.clone()), grace).await,
            None
        );
    }
}
