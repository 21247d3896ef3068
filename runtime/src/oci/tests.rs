//! The OCI backend against real archives and the real runc (installed by
//! `.ci/run`, with Debian's static busybox as the image's one program).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::backend::Mount;
use crate::http::HttpLimits;
use crate::output::Capture;

fn v(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// A layer's tar built in memory: (path, Some(contents) for a file, None
/// for a directory).
fn layer(entries: &[(&str, Option<&str>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, body) in entries {
        let mut h = tar::Header::new_gnu();
        match body {
            Some(text) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(text.len() as u64);
                h.set_mode(0o644);
                h.set_cksum();
                b.append_data(&mut h, path, text.as_bytes()).expect("file");
            }
            None => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                h.set_mode(0o755);
                h.set_cksum();
                b.append_data(&mut h, path, &[][..]).expect("dir");
            }
        }
    }
    b.into_inner().expect("tar")
}

#[test]
fn layers_apply_in_order_with_whiteouts() {
    let root = tempfile::tempdir().expect("tempdir");
    let base = layer(&[
        ("a", None),
        ("a/x", Some("x")),
        ("a/y", Some("y")),
        ("b", None),
        ("b/z", Some("z")),
        ("c", Some("file")),
    ]);
    let top = layer(&[
        ("a/.wh.x", Some("")),
        ("b/.wh..wh..opq", Some("")),
        ("b/new", Some("new")),
        ("c", None),
        ("c/d", Some("d")),
        ("a/y", Some("y2")),
    ]);
    unpack::apply(root.path(), &base[..]).expect("base");
    unpack::apply(root.path(), &top[..]).expect("top");
    let p = |rel: &str| root.path().join(rel);
    assert!(!p("a/x").exists(), "a whiteout hides the lower file");
    assert_eq!(std::fs::read_to_string(p("a/y")).expect("a/y"), "y2");
    assert!(
        !p("b/z").exists(),
        "an opaque directory hides lower contents"
    );
    assert_eq!(std::fs::read_to_string(p("b/new")).expect("b/new"), "new");
    assert!(p("c").is_dir(), "a directory replaces a file");
    assert!(p("c/d").is_file());
    assert!(!p("a/.wh.x").exists() && !p("b/.wh..wh..opq").exists());
}

#[test]
fn layers_cannot_reach_outside_the_root() {
    let outside = tempfile::tempdir().expect("tempdir");
    std::fs::write(outside.path().join("victim"), "keep").expect("victim");
    let root = tempfile::tempdir().expect("tempdir");
    // A symlink to the host, then a whiteout and a file through it.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    h.set_mode(0o777);
    b.append_link(&mut h, "esc", outside.path()).expect("link");
    let links = b.into_inner().expect("tar");
    unpack::apply(root.path(), &links[..]).expect("the link itself is fine");
    let through = layer(&[("esc/.wh.victim", Some(""))]);
    let _ = unpack::apply(root.path(), &through[..]);
    let write = layer(&[("esc/planted", Some("bad"))]);
    assert!(unpack::apply(root.path(), &write[..]).is_err());
    assert_eq!(
        std::fs::read_to_string(outside.path().join("victim")).expect("victim"),
        "keep"
    );
    assert!(!outside.path().join("planted").exists());
    // `..` in a path is refused outright.
    let mut raw = tar::Header::new_gnu();
    raw.set_entry_type(tar::EntryType::Regular);
    raw.set_size(3);
    raw.set_mode(0o644);
    {
        let name = b"../evil";
        let gnu = raw.as_gnu_mut().expect("gnu header");
        gnu.name[..name.len()].copy_from_slice(name);
    }
    raw.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&raw, &b"bad"[..]).expect("append");
    let dotdot = b.into_inner().expect("tar");
    let err = unpack::apply(root.path(), &dotdot[..]).expect_err("refused");
    assert!(err.contains("leaves the image"), "{err}");
}

/// A busybox root with a few applets, packed as an OCI archive.
fn busybox_archive(dir: &Path) -> PathBuf {
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("bin")).expect("bin");
    std::fs::create_dir_all(root.join("etc")).expect("etc");
    std::fs::create_dir_all(root.join("tmp")).expect("tmp");
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .expect("Debian's busybox-static at /bin/busybox (.ci/run installs it)");
    for applet in ["sh", "echo", "cat", "sleep", "ls", "env", "pwd", "id"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).expect("applet");
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/tmp:/bin/sh\n",
    )
    .expect("passwd");
    std::fs::write(root.join("etc/motd"), "from the image\n").expect("motd");
    let out = dir.join("busybox.tar");
    let config = ImageConfig {
        entrypoint: v(&["/bin/sh", "-c"]),
        cmd: v(&["echo default cmd"]),
        env: v(&["GREETING=image"]),
        working_dir: "/tmp".into(),
        user: String::new(),
    };
    pack_dir(&root, &config, &out).expect("pack");
    out
}

fn spec(command: &[&str], args: &[&str]) -> (ContainerSpec, Arc<Capture>) {
    let out = Arc::new(Capture::default());
    let spec = ContainerSpec {
        argv: vec![],
        command: v(command),
        args: v(args),
        working_dir: None,
        hostname: "pod-a".into(),
        stop_grace: Duration::from_millis(300),
        http_port: None,
        pod_ip: "127.0.0.1".into(),
        netns: None,
        security: Default::default(),
        env: vec![("FROM_POD".into(), "yes".into())],
        mounts: vec![],
        memory_limit: None,
        cpu_limit_millis: None,
        output: out.clone(),
        http: HttpLimits::default(),
        outbound: None,
        stdin: None,
    };
    (spec, out)
}

fn sh(script: &str) -> (ContainerSpec, Arc<Capture>) {
    spec(&["/bin/sh", "-c", script], &[])
}

async fn backend(dir: &Path) -> OciBackend {
    OciBackend::new(OciConfig {
        runc: "runc".into(),
        root: dir.join("oci"),
    })
    .await
    .expect("runc usable (.ci/run installs Debian's runc; tests run as root)")
}

/// Runs a container to its end: how it ended and what it wrote.
async fn run(
    b: &OciBackend,
    image: &Prepared,
    (s, out): (ContainerSpec, Arc<Capture>),
) -> (Exit, String) {
    let mut c = b.start(image, s).await.expect("start");
    let exit = c.wait().await;
    (exit, out.text())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runc_runs_containers_from_an_archive() {
    let dir = tempfile::tempdir().expect("tempdir");
    let archive = busybox_archive(dir.path());
    let b = backend(dir.path()).await;
    let image = format!("file://{}", archive.display());
    let img = b.prepare(&image).await.expect("prepare");
    assert!(img.digest.starts_with("sha256:"));

    // The image's Entrypoint and Cmd, its env under the pod's, its workdir.
    assert_eq!(
        run(&b, &img, spec(&[], &[])).await,
        (Exit::Code(0), "default cmd\n".into())
    );
    let script = "echo $GREETING $FROM_POD $(pwd) $(hostname); cat /etc/motd; exit 3";
    assert_eq!(
        run(&b, &img, spec(&[], &[script])).await,
        (
            Exit::Code(3),
            "image yes /tmp pod-a\nfrom the image\n".into()
        )
    );

    // Writes land in the container's own layer, not the image's.
    assert_eq!(
        run(&b, &img, sh("echo changed > /etc/motd; cat /etc/motd")).await,
        (Exit::Code(0), "changed\n".into())
    );
    assert_eq!(
        run(&b, &img, spec(&["/bin/cat", "/etc/motd"], &[])).await,
        (Exit::Code(0), "from the image\n".into())
    );

    // Volumes are bind mounts; read-only ones refuse writes.
    let vol = dir.path().join("vol");
    std::fs::create_dir_all(&vol).expect("vol");
    std::fs::write(vol.join("key"), "value").expect("key");
    let mut with_volume = sh("cat /cfg/key; echo x > /cfg/new || echo read-only");
    with_volume.0.mounts = vec![Mount {
        host_path: vol.clone(),
        guest_path: "/cfg".into(),
        read_only: true,
    }];
    let (exit, text) = run(&b, &img, with_volume).await;
    assert_eq!(exit, Exit::Code(0));
    // stderr's complaint and stdout's lines come through two pipes, in
    // either order.
    for part in ["value", "read-only\n", "Read-only file system"] {
        assert!(text.contains(part), "{text}");
    }
    assert!(!vol.join("new").exists());

    // securityContext: another user, a read-only root, capabilities dropped.
    let mut locked = sh(
        "id -u; id -g; touch /x 2>/dev/null || echo read-only root; grep CapEff /proc/self/status",
    );
    locked.0.security = crate::backend::Security {
        run_as_user: Some(1000),
        run_as_group: Some(2000),
        read_only_root: true,
        drop_capabilities: vec!["ALL".into()],
        ..Default::default()
    };
    assert_eq!(
        run(&b, &img, locked).await,
        (
            Exit::Code(0),
            "1000\n2000\nread-only root\nCapEff:\t0000000000000000\n".into()
        )
    );
    let mut non_root = spec(&[], &[]);
    non_root.0.security.run_as_non_root = true;
    let refused = b.start(&img, non_root.0).await.err().map(|e| e.to_string());
    assert!(
        refused
            .as_deref()
            .unwrap_or_default()
            .contains("runAsNonRoot"),
        "{refused:?}"
    );

    // A missing executable is runc's error, not the container's exit.
    match run(&b, &img, spec(&["/bin/nope"], &[])).await.0 {
        Exit::StartError(why) => assert!(why.contains("/bin/nope"), "{why}"),
        other => panic!("expected a start error, got {other:?}"),
    }

    // Past its memory limit the kernel's OOM killer ends it.
    let mut hog = sh("x=a; while true; do x=$x$x; done");
    hog.0.memory_limit = Some(16 << 20);
    assert_eq!(run(&b, &img, hog).await.0, Exit::OomKilled);

    // A kill is SIGTERM first: a process that traps it ends its own way.
    let (s, out) = sh("trap 'echo bye; exit 0' TERM; echo up; while true; do sleep 0.05; done");
    let mut c = b.start(&img, s).await.expect("start");
    wait_for(|| out.text().contains("up")).await;
    c.kill();
    assert_eq!(c.wait().await, Exit::Code(0));
    assert_eq!(out.text(), "up\nbye\n");

    // One that ignores it (PID 1 without a handler) is killed after the grace.
    let (s, out) = sh("echo up; exec sleep 60");
    let mut c = b.start(&img, s).await.expect("start");
    wait_for(|| out.text().contains("up")).await;
    c.kill();
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(10), c.wait()).await,
        Ok(Exit::Code(137))
    );
    assert!(
        b.runc.list().await.is_empty(),
        "every container was deleted"
    );
}

async fn wait_for(f: impl Fn() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("condition not reached");
}

/// The pod network's plumbing on the real host: namespaces with their
/// addresses in, gone again on detach, the bridge gone on remove.
#[tokio::test]
async fn pod_networks_attach_and_detach_namespaces() {
    use super::network::{bridge_name, PodNetwork};
    let ip = |args: &[&str]| {
        let out = std::process::Command::new("ip")
            .args(args)
            .output()
            .expect("ip (iproute2) is installed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let bridge = bridge_name(&dir.path().display().to_string());
    let net = PodNetwork::create(&bridge, "10.251.7.0/24".parse().expect("cidr"))
        .await
        .expect("bridge (tests run as root)");
    assert!(ip(&["-4", "addr", "show", &bridge]).contains("10.251.7.1/24"));
    let a = net.attach("pod-a").await.expect("attach a");
    let b = net.attach("pod-b").await.expect("attach b");
    assert_ne!(a.ip, b.ip);
    assert_eq!(
        net.attach("pod-a").await.expect("again"),
        a,
        "attach is idempotent"
    );
    let ns = a.netns.file_name().and_then(|n| n.to_str()).expect("name");
    let inside = ip(&["-n", ns, "-4", "addr", "show", "eth0"]);
    assert!(inside.contains(&format!("{}/24", a.ip)), "{inside}");
    assert!(ip(&["-n", ns, "route"]).contains("default via 10.251.7.1"));
    net.detach("pod-a").await;
    assert!(!a.netns.exists());
    assert!(b.netns.exists());
    net.remove().await;
    assert!(!b.netns.exists());
    assert!(!std::path::Path::new("/sys/class/net")
        .join(&bridge)
        .exists());
}
