//! Leader election through a `coordination.k8s.io` Lease in `kube-system`,
//! as kube-controller-manager does: whoever holds an unexpired Lease runs
//! the controllers; the holder renews it; a standby takes over once it
//! expires. One server holds it trivially; two servers share the work
//! safely once they share a store.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::watch;
use tracing::{debug, warn};

use super::api_code;

const NAMESPACE: &str = "kube-system";
const LEASE_SECONDS: i32 = 15;
const RENEW_EVERY: Duration = Duration::from_secs(2);
/// Without a successful renewal for this long, stop acting as leader
/// (before the Lease can expire and someone else starts).
const RENEW_DEADLINE: Duration = Duration::from_secs(10);

pub struct Leadership {
    identity: String,
    lost: watch::Receiver<bool>,
}

impl Leadership {
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Resolves when leadership is lost.
    pub async fn lost(mut self) {
        let _ = self.lost.wait_for(|l| *l).await;
    }
}

/// A holder identity that survives a restart of the same server: this
/// host and its data directory. Only one process can open a data
/// directory, so a restarted server may take its own Lease back at once
/// instead of waiting for it to expire.
pub fn identity(data_dir: &std::path::Path) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!("{host}_{}", data_dir.display())
}

/// Waits until `me` holds the Lease `name`, then keeps renewing it.
pub async fn acquire(client: &Client, name: &str, me: &str) -> Leadership {
    let api: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    let me = me.to_string();
    loop {
        match try_take(&api, name, &me).await {
            Ok(true) => break,
            Ok(false) => debug!(lease = name, "lease held by another; waiting"),
            Err(e) => warn!(lease = name, error = %e, "taking the lease failed; retrying"),
        }
        tokio::time::sleep(RENEW_EVERY).await;
    }
    let (tx, lost) = watch::channel(false);
    let (api2, name2, me2) = (api.clone(), name.to_string(), me.clone());
    tokio::spawn(async move {
        let mut last_ok = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(RENEW_EVERY).await;
            match try_take(&api2, &name2, &me2).await {
                Ok(true) => last_ok = tokio::time::Instant::now(),
                Ok(false) => break,
                Err(e) => {
                    warn!(lease = %name2, error = %e, "renewing the lease failed");
                    if last_ok.elapsed() > RENEW_DEADLINE {
                        break;
                    }
                }
            }
        }
        let _ = tx.send(true);
    });
    Leadership { identity: me, lost }
}

fn spec_for(me: &str, now: Timestamp, prev: Option<&LeaseSpec>) -> LeaseSpec {
    let same = prev.and_then(|p| p.holder_identity.as_deref()) == Some(me);
    let transitions = prev.and_then(|p| p.lease_transitions).unwrap_or(0);
    LeaseSpec {
        holder_identity: Some(me.to_string()),
        lease_duration_seconds: Some(LEASE_SECONDS),
        acquire_time: if same {
            prev.and_then(|p| p.acquire_time.clone())
        } else {
            Some(MicroTime(now))
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(if same || prev.is_none() {
            transitions
        } else {
            transitions + 1
        }),
        ..LeaseSpec::default()
    }
}

/// Holds or takes the Lease if it is ours or expired; false if someone
/// else holds it.
async fn try_take(api: &Api<Lease>, name: &str, me: &str) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let current = match api.get(name).await {
        Ok(l) => l,
        Err(e) if api_code(&e) == Some(404) => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    namespace: Some(NAMESPACE.into()),
                    ..ObjectMeta::default()
                },
                spec: Some(spec_for(me, now, None)),
            };
            return match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if api_code(&e) == Some(409) => Ok(false),
                Err(e) => Err(e),
            };
        }
        Err(e) => return Err(e),
    };
    let spec = current.spec.clone().unwrap_or_default();
    let ours = spec.holder_identity.as_deref() == Some(me);
    let expired = match (&spec.renew_time, spec.lease_duration_seconds) {
        (Some(MicroTime(t)), Some(d)) => {
            now.as_millisecond() > t.as_millisecond() + i64::from(d) * 1000
        }
        _ => true,
    };
    if !ours && !expired {
        return Ok(false);
    }
    let mut next = current;
    next.spec = Some(spec_for(me, now, Some(&spec)));
    match api.replace(name, &PostParams::default(), &next).await {
        Ok(_) => Ok(true),
        Err(e) if api_code(&e) == Some(409) => Ok(false),
        Err(e) => Err(e),
    }
}
