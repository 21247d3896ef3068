//! Service cluster IPs and node ports, handed out as Kubernetes' registry
//! does: on create (and on an update that needs new ones), never twice,
//! kept when an update leaves them out. The stored Services are the
//! allocation table; one lock serialises allocating writers so two
//! creates cannot pick the same address.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

use serde_json::{json, Value};
use tokio::sync::{Mutex, MutexGuard};

use crate::apiserver::error::{ApiError, ApiResult, Cause};
use crate::store::Store;

/// An IPv4 range given as `a.b.c.d/len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    base: u32,
    len: u8,
}

impl Cidr {
    fn size(self) -> u32 {
        if self.len == 0 {
            u32::MAX
        } else {
            1u32 << (32 - u32::from(self.len))
        }
    }

    fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip).wrapping_sub(self.base) < self.size()
    }

    /// The `n`th address of the range.
    fn nth(self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(self.base.wrapping_add(n))
    }

    /// Whether the two ranges share any address.
    pub fn overlaps(self, other: Cidr) -> bool {
        self.contains(Ipv4Addr::from(other.base)) || other.contains(Ipv4Addr::from(self.base))
    }

    /// The range cut into subnets of prefix length `len`, in order; none
    /// when `len` is shorter than the range's own.
    pub fn subnets(self, len: u8) -> impl Iterator<Item = Cidr> {
        let count: u32 = if len < self.len || len > 30 {
            0
        } else {
            1 << (len - self.len)
        };
        let step: u32 = 1 << (32 - u32::from(len.clamp(1, 30)));
        (0..count).map(move |i| Cidr {
            // Below the range's size: no wrap for a range of /1 or longer.
            base: self.base.wrapping_add(i.wrapping_mul(step)),
            len,
        })
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let (ip, len) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a CIDR (a.b.c.d/len)"))?;
        let ip: Ipv4Addr = ip
            .parse()
            .map_err(|_| format!("{ip:?} is not an IPv4 address"))?;
        let len: u8 = len
            .parse()
            .ok()
            .filter(|l| (8..=30).contains(l))
            .ok_or_else(|| format!("prefix length {len:?} must be between 8 and 30"))?;
        let mask = u32::MAX << (32 - u32::from(len));
        Ok(Cidr {
            base: u32::from(ip) & mask,
            len,
        })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.len)
    }
}

/// What is taken right now, read from the stored Services.
#[derive(Debug, Default)]
pub struct Used {
    ips: HashSet<Ipv4Addr>,
    ports: HashSet<i64>,
}

pub struct ServiceAllocator {
    pub cluster_ips: Cidr,
    pub node_ports: RangeInclusive<i64>,
    lock: Mutex<()>,
}

impl ServiceAllocator {
    pub fn new(cluster_ips: Cidr, node_ports: RangeInclusive<i64>) -> ServiceAllocator {
        ServiceAllocator {
            cluster_ips,
            node_ports,
            lock: Mutex::new(()),
        }
    }

    /// Held from reading what is used until the write that allocates lands.
    pub async fn lock(&self) -> MutexGuard<'_, ()> {
        self.lock.lock().await
    }

    /// Addresses and ports of every stored Service (under `prefix`) but
    /// the one at `except`.
    pub async fn used(&self, store: &dyn Store, prefix: &str, except: &str) -> ApiResult<Used> {
        let page = store
            .list(prefix, None, None, &|_| true)
            .await
            .map_err(|e| ApiError::internal(format!("reading services: {e}")))?;
        let mut used = Used::default();
        for item in page.items {
            if item.key == except {
                continue;
            }
            let svc = &*item.value;
            for ip in svc
                .pointer("/spec/clusterIPs")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .chain(svc.pointer("/spec/clusterIP"))
            {
                if let Some(ip) = ip.as_str().and_then(|s| s.parse().ok()) {
                    used.ips.insert(ip);
                }
            }
            for p in ports(svc) {
                if let Some(n) = p.get("nodePort").and_then(Value::as_i64) {
                    used.ports.insert(n);
                }
            }
        }
        Ok(used)
    }

    /// Fills in the cluster IP and node ports `svc` needs, keeping those
    /// `old` had; 422 when a requested one is taken or out of range.
    pub fn assign(&self, svc: &mut Value, old: Option<&Value>, used: &mut Used) -> ApiResult<()> {
        let name = svc
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let mut causes = Vec::new();
        let ty = svc
            .pointer("/spec/type")
            .and_then(Value::as_str)
            .unwrap_or("ClusterIP")
            .to_string();
        self.assign_ip(svc, old, &ty, used, &mut causes);
        if ty == "NodePort" || ty == "LoadBalancer" {
            self.assign_ports(svc, old, used, &mut causes);
        } else {
            // Only NodePort and LoadBalancer Services hold node ports; a
            // type change back to ClusterIP frees them.
            for p in ports_mut(svc) {
                p.remove("nodePort");
            }
        }
        if causes.is_empty() {
            Ok(())
        } else {
            Err(ApiError::invalid("Service", &name, causes))
        }
    }

    fn assign_ip(
        &self,
        svc: &mut Value,
        old: Option<&Value>,
        ty: &str,
        used: &mut Used,
        causes: &mut Vec<Cause>,
    ) {
        let spec = crate::apiserver::admission::obj_mut(svc, "spec");
        if ty == "ExternalName" {
            spec.remove("clusterIP");
            spec.remove("clusterIPs");
            return;
        }
        let asked = spec
            .get("clusterIP")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        let kept = old
            .and_then(|o| o.pointer("/spec/clusterIP"))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        let ip = match (asked, kept) {
            (Some(a), _) if a == "None" => Some(a),
            (Some(a), Some(k)) if a == k => Some(a),
            (None, Some(k)) => Some(k),
            (Some(a), _) => match a.parse::<Ipv4Addr>() {
                Ok(ip) if !self.cluster_ips.contains(ip) => {
                    causes.push(Cause::invalid(
                        "spec.clusterIPs",
                        &a,
                        format!(
                            "failed to allocate IP {a}: the provided IP ({a}) is not in the valid range. The range of valid IPs is {}",
                            self.cluster_ips
                        ),
                    ));
                    None
                }
                Ok(ip) if used.ips.contains(&ip) => {
                    causes.push(Cause::invalid(
                        "spec.clusterIPs",
                        &a,
                        format!("failed to allocate IP {a}: provided IP is already allocated"),
                    ));
                    None
                }
                Ok(ip) => {
                    used.ips.insert(ip);
                    Some(a)
                }
                Err(_) => {
                    causes.push(Cause::invalid(
                        "spec.clusterIPs",
                        &a,
                        "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
                    ));
                    None
                }
            },
            (None, None) => match self.free_ip(used) {
                Some(ip) => {
                    used.ips.insert(ip);
                    Some(ip.to_string())
                }
                None => {
                    causes.push(Cause::invalid(
                        "spec.clusterIPs",
                        "",
                        format!(
                            "failed to allocate a serviceIP: range {} is full",
                            self.cluster_ips
                        ),
                    ));
                    None
                }
            },
        };
        if let Some(ip) = ip {
            spec.insert("clusterIP".into(), json!(ip));
            spec.insert("clusterIPs".into(), json!([ip]));
            if ip != "None" {
                spec.entry("ipFamilies").or_insert(json!(["IPv4"]));
            }
            spec.entry("ipFamilyPolicy").or_insert(json!("SingleStack"));
            spec.entry("internalTrafficPolicy")
                .or_insert(json!("Cluster"));
        }
    }

    /// The lowest free address past the network address and `.1` (which
    /// Kubernetes keeps for the `kubernetes` Service).
    fn free_ip(&self, used: &Used) -> Option<Ipv4Addr> {
        (2..self.cluster_ips.size().saturating_sub(1))
            .map(|n| self.cluster_ips.nth(n))
            .find(|ip| !used.ips.contains(ip))
    }

    fn assign_ports(
        &self,
        svc: &mut Value,
        old: Option<&Value>,
        used: &mut Used,
        causes: &mut Vec<Cause>,
    ) {
        let previous: Vec<Value> = old.map(ports).unwrap_or_default();
        let spec = crate::apiserver::admission::obj_mut(svc, "spec");
        spec.entry("externalTrafficPolicy")
            .or_insert(json!("Cluster"));
        for (i, p) in ports_mut(svc).enumerate() {
            let field = format!("spec.ports[{i}].nodePort");
            let same = |o: &&Value| {
                o.get("port") == p.get("port")
                    && o.get("protocol").unwrap_or(&json!("TCP"))
                        == p.get("protocol").unwrap_or(&json!("TCP"))
            };
            let kept = previous
                .iter()
                .find(same)
                .and_then(|o| o.get("nodePort"))
                .and_then(Value::as_i64);
            // 0 is "unset", as in Kubernetes: typed clients (kubectl create
            // service nodeport) always send the field.
            let asked = p
                .get("nodePort")
                .and_then(Value::as_i64)
                .filter(|&n| n != 0);
            match (asked, kept) {
                (Some(n), Some(k)) if n == k => {}
                (None, Some(k)) => {
                    p.insert("nodePort".into(), json!(k));
                }
                (Some(n), _) => {
                    if !self.node_ports.contains(&n) {
                        causes.push(Cause::invalid(
                            field,
                            n,
                            format!(
                                "provided port is not in the valid range. The range of valid ports is {}-{}",
                                self.node_ports.start(),
                                self.node_ports.end()
                            ),
                        ));
                    } else if !used.ports.insert(n) {
                        causes.push(Cause::invalid(
                            field,
                            n,
                            "provided port is already allocated",
                        ));
                    }
                }
                (None, None) => match self.node_ports.clone().find(|n| !used.ports.contains(n)) {
                    Some(n) => {
                        used.ports.insert(n);
                        p.insert("nodePort".into(), json!(n));
                    }
                    None => causes.push(Cause::invalid(
                        field,
                        "",
                        "failed to allocate a nodePort: the range is full",
                    )),
                },
            }
        }
    }
}

fn ports(svc: &Value) -> Vec<Value> {
    svc.pointer("/spec/ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn ports_mut(svc: &mut Value) -> impl Iterator<Item = &mut serde_json::Map<String, Value>> {
    svc.pointer_mut("/spec/ports")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object_mut)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alloc() -> ServiceAllocator {
        ServiceAllocator::new("10.43.0.0/16".parse().expect("cidr"), 30000..=30002)
    }

    fn svc(ty: &str, node_port: Option<i64>) -> Value {
        let mut port = json!({"port": 80, "protocol": "TCP"});
        if let Some(n) = node_port {
            port["nodePort"] = json!(n);
        }
        json!({"metadata": {"name": "web"}, "spec": {"type": ty, "ports": [port]}})
    }

    #[test]
    fn allocates_kept_and_refuses_taken() {
        let a = alloc();
        let mut used = Used::default();
        let mut s = svc("NodePort", None);
        a.assign(&mut s, None, &mut used).expect("first");
        assert_eq!(s["spec"]["clusterIP"], "10.43.0.2");
        assert_eq!(s["spec"]["ports"][0]["nodePort"], 30000);

        // An update that leaves them out keeps them.
        let mut again = svc("NodePort", None);
        a.assign(&mut again, Some(&s), &mut Used::default())
            .expect("update");
        assert_eq!(again["spec"]["clusterIP"], "10.43.0.2");
        assert_eq!(again["spec"]["ports"][0]["nodePort"], 30000);

        // A second Service gets the next ones; asking for a taken port is 422.
        let mut other = svc("NodePort", None);
        a.assign(&mut other, None, &mut used).expect("second");
        assert_eq!(other["spec"]["clusterIP"], "10.43.0.3");
        assert_eq!(other["spec"]["ports"][0]["nodePort"], 30001);
        let mut clash = svc("NodePort", Some(30000));
        let e = a.assign(&mut clash, None, &mut used).expect_err("taken");
        assert!(
            e.status_body().to_string().contains("already allocated"),
            "{}",
            e.status_body()
        );
        let mut outside = svc("NodePort", Some(40000));
        let e = a
            .assign(&mut outside, None, &mut used)
            .expect_err("outside");
        assert!(
            e.status_body().to_string().contains("30000-30002"),
            "{}",
            e.status_body()
        );
        // 0 is "allocate one" (kubectl's typed clients always send it).
        let mut zero = svc("NodePort", Some(0));
        a.assign(&mut zero, None, &mut used).expect("zero");
        assert_eq!(zero["spec"]["ports"][0]["nodePort"], 30002);

        // ClusterIP Services hold no node port; headless keeps "None".
        let mut plain = svc("ClusterIP", None);
        a.assign(&mut plain, None, &mut used).expect("plain");
        assert!(plain["spec"]["ports"][0].get("nodePort").is_none());
        let mut headless = svc("ClusterIP", None);
        headless["spec"]["clusterIP"] = json!("None");
        a.assign(&mut headless, None, &mut used).expect("headless");
        assert_eq!(headless["spec"]["clusterIPs"], json!(["None"]));
    }

    #[test]
    fn cidr_parsing() {
        let c: Cidr = "10.43.7.9/16".parse().expect("cidr");
        assert_eq!(c.to_string(), "10.43.0.0/16");
        assert!(c.contains("10.43.255.1".parse().expect("ip")));
        assert!(!c.contains("10.44.0.1".parse().expect("ip")));
        assert!("10.43.0.0".parse::<Cidr>().is_err());
        assert!("10.43.0.0/40".parse::<Cidr>().is_err());
    }
}
