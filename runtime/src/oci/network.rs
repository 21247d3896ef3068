//! Pod networks for runc containers: each pod gets a network namespace of
//! its own, a veth pair into the node's bridge, and an address from the
//! node's pod CIDR, as the CNI `bridge` and `host-local` plugins give
//! kubelet's pods. The namespace belongs to the pod, not to a container:
//! every container of the pod joins it and it outlives their restarts, so
//! the pod keeps its IP until it ends.
//!
//! The plumbing is iproute2's `ip`, two processes per pod (one batch on the
//! host side, one inside the namespace), the same CLI-driven approach the
//! backend takes with runc.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Mutex;

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tracing::{debug, info, warn};

/// Where `ip netns add` puts its namespaces.
const NETNS_DIR: &str = "/run/netns";

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("pod CIDR {0:?} is not an IPv4 network in a.b.c.d/n form with n between 8 and 30")]
    BadCidr(String),
    #[error("pod CIDR {0} has no free address left")]
    Exhausted(PodCidr),
    #[error("`ip {what}` failed: {message}")]
    Ip { what: String, message: String },
}

/// An IPv4 network pods take their addresses from (`spec.podCIDR`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodCidr {
    network: Ipv4Addr,
    prefix: u8,
}

impl PodCidr {
    fn base(&self) -> u32 {
        u32::from(self.network)
    }

    fn size(&self) -> u32 {
        1u32 << (32 - u32::from(self.prefix))
    }

    /// The bridge's own address: the network's first host, as the CNI
    /// bridge plugin's default gateway.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base() + 1)
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Addresses pods may have: all hosts but the gateway and broadcast.
    fn pod_offsets(&self) -> std::ops::Range<u32> {
        2..self.size() - 1
    }
}

impl fmt::Display for PodCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for PodCidr {
    type Err = NetworkError;

    /// Host bits are cleared, as Kubernetes does for `--cluster-cidr`.
    fn from_str(s: &str) -> Result<PodCidr, NetworkError> {
        let bad = || NetworkError::BadCidr(s.to_string());
        let (addr, prefix) = s.trim().split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if !(8..=30).contains(&prefix) {
            return Err(bad());
        }
        let mask = u32::MAX << (32 - u32::from(prefix));
        Ok(PodCidr {
            network: Ipv4Addr::from(u32::from(addr) & mask),
            prefix,
        })
    }
}

/// Which pod has which address. Allocation moves on round the range rather
/// than reusing the address just freed, so a client still talking to a
/// deleted pod's IP does not reach its successor (host-local does the same).
#[derive(Debug)]
struct Ipam {
    cidr: PodCidr,
    by_pod: HashMap<String, Ipv4Addr>,
    taken: HashSet<u32>,
    next: u32,
}

impl Ipam {
    fn new(cidr: PodCidr) -> Ipam {
        Ipam {
            cidr,
            by_pod: HashMap::new(),
            taken: HashSet::new(),
            next: cidr.pod_offsets().start,
        }
    }

    /// The pod's address, the one it already has if any.
    fn allocate(&mut self, pod: &str) -> Option<Ipv4Addr> {
        if let Some(ip) = self.by_pod.get(pod) {
            return Some(*ip);
        }
        let range = self.cidr.pod_offsets();
        let span = range.end - range.start;
        let free = (0..span)
            .map(|i| range.start + (self.next - range.start + i) % span)
            .find(|o| !self.taken.contains(o))?;
        self.taken.insert(free);
        self.next = if free + 1 >= range.end {
            range.start
        } else {
            free + 1
        };
        let ip = Ipv4Addr::from(self.cidr.base() + free);
        self.by_pod.insert(pod.to_string(), ip);
        Some(ip)
    }

    fn release(&mut self, pod: &str) -> Option<Ipv4Addr> {
        let ip = self.by_pod.remove(pod)?;
        self.taken.remove(&(u32::from(ip) - self.cidr.base()));
        Some(ip)
    }
}

/// One pod's place on the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNet {
    pub ip: Ipv4Addr,
    /// The namespace's bind mount, what a runtime spec's network namespace
    /// `path` names.
    pub netns: PathBuf,
}

/// The node's bridge and the pods attached to it.
pub struct PodNetwork {
    bridge: String,
    cidr: PodCidr,
    ipam: Mutex<Ipam>,
}

impl fmt::Debug for PodNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PodNetwork")
            .field("bridge", &self.bridge)
            .field("cidr", &self.cidr)
            .finish()
    }
}

/// The bridge name for a node, from something unique to it on this host
/// (its data directory): interface names are at most 15 bytes, and two
/// nodes on one machine must not share a bridge.
pub fn bridge_name(unique: &str) -> String {
    format!("shoal{}", short_hash(unique, 8))
}

fn short_hash(s: &str, hex: usize) -> String {
    let digest = Sha256::digest(s.as_bytes());
    digest
        .iter()
        .flat_map(|b| [b >> 4, b & 0xf])
        .take(hex)
        .map(|n| char::from_digit(u32::from(n), 16).unwrap_or('0'))
        .collect()
}

impl PodNetwork {
    /// Sets up the bridge afresh: namespaces and a bridge a previous run of
    /// this node left behind are removed first, as the node restarts its
    /// pods anew.
    pub async fn create(bridge: &str, cidr: PodCidr) -> Result<PodNetwork, NetworkError> {
        remove_leftovers(bridge).await;
        let gw = format!("{}/{}", cidr.gateway(), cidr.prefix());
        ip_batch(
            None,
            &[
                format!("link add {bridge} type bridge"),
                format!("addr add {gw} dev {bridge}"),
                format!("link set {bridge} up"),
            ],
        )
        .await?;
        let egress = egress(bridge, cidr).await;
        info!(bridge, %cidr, egress, "pod network ready");
        Ok(PodNetwork {
            bridge: bridge.to_string(),
            cidr,
            ipam: Mutex::new(Ipam::new(cidr)),
        })
    }

    pub fn cidr(&self) -> PodCidr {
        self.cidr
    }

    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    fn netns_name(&self, pod: &str) -> String {
        format!("{}-{pod}", self.bridge)
    }

    fn veth_name(&self, pod: &str) -> String {
        format!("veth{}", short_hash(&self.netns_name(pod), 10))
    }

    /// Gives the pod (by uid) its namespace and address; a pod already
    /// attached gets what it has.
    pub async fn attach(&self, pod: &str) -> Result<PodNet, NetworkError> {
        let name = self.netns_name(pod);
        let netns = PathBuf::from(NETNS_DIR).join(&name);
        let (ip, fresh) = {
            let mut ipam = self.ipam.lock().unwrap_or_else(|p| p.into_inner());
            let had = ipam.by_pod.contains_key(pod);
            let ip = ipam
                .allocate(pod)
                .ok_or(NetworkError::Exhausted(self.cidr))?;
            (ip, !had)
        };
        if !fresh && netns.exists() {
            return Ok(PodNet { ip, netns });
        }
        let veth = self.veth_name(pod);
        let plumbed = async {
            ip_batch(
                None,
                &[
                    format!("netns add {name}"),
                    format!("link add {veth} type veth peer name eth0 netns {name}"),
                    format!("link set {veth} master {} up", self.bridge),
                ],
            )
            .await?;
            ip_batch(
                Some(&name),
                &[
                    "link set lo up".to_string(),
                    format!("addr add {ip}/{} dev eth0", self.cidr.prefix()),
                    "link set eth0 up".to_string(),
                    format!("route add default via {}", self.cidr.gateway()),
                ],
            )
            .await
        }
        .await;
        if let Err(e) = plumbed {
            self.detach(pod).await;
            return Err(e);
        }
        debug!(pod, %ip, netns = %netns.display(), "pod attached");
        Ok(PodNet { ip, netns })
    }

    /// Takes the pod off the network and frees its address. Its containers
    /// must have stopped. Safe to call for a pod never attached.
    pub async fn detach(&self, pod: &str) {
        let name = self.netns_name(pod);
        if PathBuf::from(NETNS_DIR).join(&name).exists() {
            // Deleting the veth takes both ends at once; the namespace's
            // own removal would only free them once the kernel gets to it.
            let _ = ip_batch(None, &[format!("link del {}", self.veth_name(pod))]).await;
            if let Err(e) = ip_batch(None, &[format!("netns del {name}")]).await {
                warn!(pod, error = %e, "removing a pod's network namespace");
            }
        }
        let freed = self
            .ipam
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .release(pod);
        if let Some(ip) = freed {
            debug!(pod, %ip, "pod detached");
        }
    }

    /// Removes the bridge and every pod namespace on it (node shutdown).
    pub async fn remove(&self) {
        remove_leftovers(&self.bridge).await;
    }
}

/// Lets pods reach beyond the node, as the CNI bridge plugin's `ipMasq`
/// does: the kernel forwards their packets, and those leaving through
/// anything but a pod bridge take the node's address (nftables masquerade,
/// in a table named after the bridge). Pods on this node's bridges reach
/// each other unmasqueraded. Without `nft` the pods still reach the node and
/// each other; the node says why they reach no further.
async fn egress(bridge: &str, cidr: PodCidr) -> bool {
    if let Err(e) = std::fs::write("/proc/sys/net/ipv4/ip_forward", "1") {
        warn!(error = %e, "cannot turn on IP forwarding: pods reach only this node");
        return false;
    }
    let script = format!(
        "table ip {bridge} {{\n  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    ip saddr {cidr} oifname != \"shoal*\" masquerade\n  }}\n}}\n"
    );
    match run_with_input("nft", &["-f", "-"], &script).await {
        Ok(()) => true,
        Err(e) => {
            warn!(error = %e, "no masquerading for pods (install nftables): they reach only this node's networks");
            false
        }
    }
}

/// Deletes `bridge` and the namespaces named after it.
pub async fn remove_leftovers(bridge: &str) {
    let prefix = format!("{bridge}-");
    if let Ok(entries) = std::fs::read_dir(NETNS_DIR) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix) {
                if let Err(e) = ip_batch(None, &[format!("netns del {name}")]).await {
                    warn!(netns = %name, error = %e, "removing a leftover pod namespace");
                }
            }
        }
    }
    // The masquerade table, if nft is there and the table is.
    let _ = run_with_input("nft", &["delete", "table", "ip", bridge], "").await;
    if std::path::Path::new("/sys/class/net").join(bridge).exists() {
        if let Err(e) = ip_batch(None, &[format!("link del {bridge}")]).await {
            warn!(bridge, error = %e, "removing a leftover bridge");
        }
    }
}

/// Runs `ip [-n NETNS] -batch -` over `commands`.
async fn ip_batch(netns: Option<&str>, commands: &[String]) -> Result<(), NetworkError> {
    let mut args = Vec::new();
    if let Some(n) = netns {
        args.extend(["-n", n]);
    }
    args.extend(["-batch", "-"]);
    let mut script = commands.join("\n");
    script.push('\n');
    run_with_input("ip", &args, &script)
        .await
        .map_err(|message| {
            let what = match netns {
                Some(n) => format!("-n {n} {}", commands.join("; ")),
                None => commands.join("; "),
            };
            NetworkError::Ip { what, message }
        })
}

/// Runs `program args` with `input` on its stdin; `Err` carries its
/// complaint.
async fn run_with_input(program: &str, args: &[&str], input: &str) -> Result<(), String> {
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("running {program}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .await
            .map_err(|e| format!("writing to {program}: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| format!("waiting for {program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_and_clear_host_bits() {
        let c: PodCidr = "10.244.3.7/24".parse().expect("cidr");
        assert_eq!(c.to_string(), "10.244.3.0/24");
        assert_eq!(c.gateway(), Ipv4Addr::new(10, 244, 3, 1));
        for bad in [
            "10.244.3.0",
            "10.244.3.0/31",
            "10.244.3.0/4",
            "fd00::/64",
            "x/24",
        ] {
            assert!(bad.parse::<PodCidr>().is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn addresses_skip_gateway_and_broadcast_and_do_not_reuse_at_once() {
        let mut ipam = Ipam::new("10.1.0.0/29".parse().expect("cidr"));
        let got: Vec<_> = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|p| ipam.allocate(p).expect("address"))
            .collect();
        assert_eq!(got[0], Ipv4Addr::new(10, 1, 0, 2));
        assert_eq!(got[4], Ipv4Addr::new(10, 1, 0, 6));
        assert_eq!(ipam.allocate("f"), None, "a /29 holds five pods");
        assert_eq!(ipam.allocate("c"), Some(got[2]), "a pod keeps its address");
        ipam.release("b");
        ipam.release("d");
        assert_eq!(ipam.allocate("g"), Some(got[1]));
        assert_eq!(ipam.allocate("h"), Some(got[3]));
    }

    #[test]
    fn a_freed_address_waits_its_turn() {
        let mut ipam = Ipam::new("10.1.0.0/24".parse().expect("cidr"));
        let a = ipam.allocate("a").expect("address");
        ipam.release("a");
        let b = ipam.allocate("b").expect("address");
        assert_ne!(a, b, "a deleted pod's address is not handed on at once");
    }

    #[test]
    fn names_fit_linux_interface_names() {
        let b = bridge_name("/var/lib/shoal/node");
        assert!(b.len() <= 15 && b.starts_with("shoal"));
        assert_ne!(b, bridge_name("/var/lib/shoal/node2"));
    }
}
