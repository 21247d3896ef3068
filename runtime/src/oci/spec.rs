//! The OCI runtime spec (`config.json`) runc is handed for one container:
//! Kubernetes' command/args rules over the image's Entrypoint/Cmd, the
//! image's environment under the container's, the pod's volumes as bind
//! mounts, limits as cgroup settings, and Docker's default capability set.

use std::path::Path;

use serde_json::{json, Value};

use super::layout::ImageConfig;
use crate::backend::ContainerSpec;

/// What a container adds to its image, beyond [`ContainerSpec`].
pub(crate) struct Placement<'a> {
    /// The mounted root the container sees as `/`.
    pub rootfs: &'a Path,
    pub hostname: &'a str,
    /// Relative to each cgroup hierarchy's root.
    pub cgroups_path: &'a str,
    /// Host files bound read-only at the same path (`/etc/resolv.conf`…),
    /// those that exist.
    pub host_files: &'a [&'a str],
}

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Docker's default set: what most images expect to have as root.
const CAPABILITIES: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// The process's argv by kubelet's rules: `command` replaces the image's
/// Entrypoint (and drops its Cmd), `args` replaces its Cmd.
pub(crate) fn argv(image: &ImageConfig, command: &[String], args: &[String]) -> Vec<String> {
    if !command.is_empty() {
        return command.iter().chain(args).cloned().collect();
    }
    let tail = if args.is_empty() { &image.cmd } else { args };
    image.entrypoint.iter().chain(tail).cloned().collect()
}

/// The image's environment with the container's on top (by name).
pub(crate) fn env(image: &ImageConfig, container: &[(String, String)]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let set = |out: &mut Vec<String>, entry: String| {
        let name = entry.split('=').next().unwrap_or_default().to_string();
        match out
            .iter_mut()
            .find(|e| e.split('=').next() == Some(name.as_str()))
        {
            Some(slot) => *slot = entry,
            None => out.push(entry),
        }
    };
    set(&mut out, DEFAULT_PATH.to_string());
    for e in &image.env {
        set(&mut out, e.clone());
    }
    for (k, v) in container {
        set(&mut out, format!("{k}={v}"));
    }
    out
}

/// `uid[:gid]` of the image's `User`, names looked up in the image's own
/// `/etc/passwd` and `/etc/group`.
pub(crate) fn user(image: &ImageConfig, rootfs: &Path) -> Result<(u32, u32), String> {
    if image.user.is_empty() {
        return Ok((0, 0));
    }
    let (u, g) = match image.user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (image.user.as_str(), None),
    };
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap_or_default();
    let (uid, primary) = match u.parse::<u32>() {
        Ok(uid) => (
            uid,
            lookup(&passwd, |f| f.get(2) == Some(&u))
                .and_then(|f| f.get(3).and_then(|g| g.parse().ok()))
                .unwrap_or(0),
        ),
        Err(_) => {
            let f = lookup(&passwd, |f| f.first() == Some(&u))
                .ok_or_else(|| format!("the image's user {u:?} is not in its /etc/passwd"))?;
            let num = |i: usize| f.get(i).and_then(|v| v.parse::<u32>().ok());
            (
                num(2).ok_or_else(|| format!("bad /etc/passwd entry for {u:?}"))?,
                num(3).unwrap_or(0),
            )
        }
    };
    let gid = match g {
        None => primary,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                let group = std::fs::read_to_string(rootfs.join("etc/group")).unwrap_or_default();
                lookup(&group, |f| f.first() == Some(&g))
                    .and_then(|f| f.get(2).and_then(|v| v.parse().ok()))
                    .ok_or_else(|| format!("the image's group {g:?} is not in its /etc/group"))?
            }
        },
    };
    Ok((uid, gid))
}

fn lookup(file: &str, pick: impl Fn(&[&str]) -> bool) -> Option<Vec<&str>> {
    file.lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| pick(f))
}

/// Docker's default set with the container's `drop` taken out (`ALL`
/// empties it) and its `add` put in, as `CAP_…` names.
pub(crate) fn capabilities(sec: &crate::backend::Security) -> Result<Vec<String>, String> {
    let canonical = |name: &str| -> Result<String, String> {
        let upper = name.to_ascii_uppercase();
        let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
        if bare.is_empty() || !bare.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') {
            return Err(format!(
                "securityContext.capabilities: {name:?} is not a capability name"
            ));
        }
        Ok(format!("CAP_{bare}"))
    };
    let mut caps: Vec<String> = CAPABILITIES.iter().map(|c| c.to_string()).collect();
    for d in &sec.drop_capabilities {
        if d.eq_ignore_ascii_case("ALL") {
            caps.clear();
        } else {
            let d = canonical(d)?;
            caps.retain(|c| *c != d);
        }
    }
    for a in &sec.add_capabilities {
        if a.eq_ignore_ascii_case("ALL") {
            return Err(
                "securityContext.capabilities.add: ALL (privileged containers) is not supported"
                    .into(),
            );
        }
        let a = canonical(a)?;
        if !caps.contains(&a) {
            caps.push(a);
        }
    }
    Ok(caps)
}

/// Without a pod network namespace to join, containers share the node's,
/// as pods with `hostNetwork: true` do.
fn namespaces(spec: &ContainerSpec) -> Value {
    let mut ns = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
    ];
    if let Some(path) = &spec.netns {
        ns.push(json!({"type": "network", "path": path}));
    }
    Value::Array(ns)
}

/// The whole `config.json`.
pub(crate) fn runtime_spec(
    image: &ImageConfig,
    spec: &ContainerSpec,
    at: &Placement<'_>,
) -> Result<Value, String> {
    let args = argv(image, &spec.command, &spec.args);
    if args.is_empty() {
        return Err(
            "no command to run: the image has no Entrypoint or Cmd and the container gives no command"
                .into(),
        );
    }
    let sec = &spec.security;
    let (image_uid, image_gid) = user(image, at.rootfs)?;
    let uid = sec.run_as_user.unwrap_or(image_uid);
    let gid = sec.run_as_group.unwrap_or(image_gid);
    if sec.run_as_non_root && uid == 0 {
        return Err(
            "container has runAsNonRoot and image will run as root (set runAsUser, or a non-root USER in the image)"
                .into(),
        );
    }
    let caps = capabilities(sec)?;
    let cwd = spec
        .working_dir
        .clone()
        .filter(|w| !w.is_empty())
        .or_else(|| Some(image.working_dir.clone()).filter(|w| !w.is_empty()))
        .unwrap_or_else(|| "/".to_string());
    if !cwd.starts_with('/') {
        return Err(format!("workingDir {cwd:?} must be an absolute path"));
    }
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
            "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
            "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
            "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
    ];
    for f in at.host_files {
        mounts.push(json!({"destination": f, "type": "bind", "source": f,
            "options": ["rbind", "rprivate", "ro"]}));
    }
    for m in &spec.mounts {
        if !m.guest_path.starts_with('/') {
            return Err(format!(
                "mountPath {:?} must be an absolute path",
                m.guest_path
            ));
        }
        let mut options = vec!["rbind", "rprivate"];
        if m.read_only {
            options.push("ro");
        }
        mounts.push(json!({"destination": m.guest_path, "type": "bind",
            "source": m.host_path, "options": options}));
    }
    let mut resources = json!({"devices": [{"allow": false, "access": "rwm"}]});
    if let Some(bytes) = spec.memory_limit {
        resources["memory"] = json!({"limit": bytes});
    }
    if let Some(millis) = spec.cpu_limit_millis {
        // The kernel takes no quota under 1 ms per period.
        let quota = millis.saturating_mul(100).max(1000);
        resources["cpu"] = json!({"quota": quota, "period": 100_000});
    }
    Ok(json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": uid, "gid": gid},
            "args": args,
            "env": env(image, &spec.env),
            "cwd": cwd,
            "capabilities": {
                "bounding": caps,
                "effective": caps,
                "permitted": caps,
            },
            "noNewPrivileges": sec.no_new_privileges,
        },
        "root": {"path": at.rootfs, "readonly": sec.read_only_root},
        "hostname": at.hostname,
        "mounts": mounts,
        "linux": {
            "cgroupsPath": at.cgroups_path,
            "resources": resources,
            "namespaces": namespaces(spec),
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                "/proc/sched_debug", "/sys/firmware", "/proc/scsi",
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
            ],
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(entrypoint: &[&str], cmd: &[&str]) -> ImageConfig {
        ImageConfig {
            entrypoint: entrypoint.iter().map(|s| s.to_string()).collect(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            env: vec!["PATH=/bin".into(), "LANG=C".into()],
            ..Default::default()
        }
    }

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn command_and_args_follow_kubelets_rules() {
        let img = image(&["/entry"], &["--cmd"]);
        assert_eq!(argv(&img, &[], &[]), v(&["/entry", "--cmd"]));
        assert_eq!(argv(&img, &[], &v(&["-a"])), v(&["/entry", "-a"]));
        assert_eq!(argv(&img, &v(&["/bin/sh"]), &[]), v(&["/bin/sh"]));
        assert_eq!(
            argv(&img, &v(&["/bin/sh"]), &v(&["-c", "x"])),
            v(&["/bin/sh", "-c", "x"])
        );
        assert!(argv(&image(&[], &[]), &[], &[]).is_empty());
    }

    #[test]
    fn container_env_overrides_the_images() {
        let img = image(&[], &[]);
        let got = env(
            &img,
            &[("LANG".into(), "en".into()), ("X".into(), "a=b".into())],
        );
        assert_eq!(got, v(&["PATH=/bin", "LANG=en", "X=a=b"]));
    }

    #[test]
    fn capabilities_drop_then_add() {
        let sec = |add: &[&str], drop: &[&str]| crate::backend::Security {
            add_capabilities: v(add),
            drop_capabilities: v(drop),
            ..Default::default()
        };
        assert_eq!(capabilities(&sec(&[], &[])).expect("default").len(), 14);
        assert_eq!(
            capabilities(&sec(&["NET_BIND_SERVICE"], &["ALL"])).expect("minimal"),
            v(&["CAP_NET_BIND_SERVICE"])
        );
        let some = capabilities(&sec(&["net_admin"], &["CAP_CHOWN", "KILL"])).expect("some");
        assert!(some.contains(&"CAP_NET_ADMIN".to_string()));
        assert!(
            !some.contains(&"CAP_CHOWN".to_string()) && !some.contains(&"CAP_KILL".to_string())
        );
        assert!(capabilities(&sec(&["ALL"], &[])).is_err());
        assert!(capabilities(&sec(&["NET ADMIN"], &[])).is_err());
    }

    #[test]
    fn users_resolve_through_the_images_passwd() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("etc")).expect("etc");
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nwww:x:33:34::/var/www:/bin/false\n",
        )
        .expect("passwd");
        std::fs::write(dir.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n").expect("group");
        let with = |u: &str| ImageConfig {
            user: u.into(),
            ..Default::default()
        };
        assert_eq!(user(&with(""), dir.path()), Ok((0, 0)));
        assert_eq!(user(&with("www"), dir.path()), Ok((33, 34)));
        assert_eq!(user(&with("33"), dir.path()), Ok((33, 34)));
        assert_eq!(user(&with("www:staff"), dir.path()), Ok((33, 50)));
        assert_eq!(user(&with("1000:1000"), dir.path()), Ok((1000, 1000)));
        assert!(user(&with("nobody"), dir.path())
            .expect_err("unknown user")
            .contains("not in its /etc/passwd"));
    }
}
