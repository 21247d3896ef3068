//! The backend against hand-written WAT guests: no toolchain needed.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::backend::{ContainerSpec, Exit, Mount};
use crate::output::Capture;

/// A p1 module that writes `msg` to stdout, then exits with `code`.
fn printer(msg: &str, code: i32) -> String {
    format!(
        r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "{msg}")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const {len}))
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (call $exit (i32.const {code}))))"#,
        len = msg.replace("\\n", "\n").len()
    )
}

struct Fixture {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    backend: WasmBackend,
}

/// A small backend on the node data directory under `root`.
fn backend_at(root: &std::path::Path) -> WasmBackend {
    WasmBackend::new(
        &root.join("node"),
        WasmConfig {
            max_instances: 16,
            max_memory_bytes: 64 << 20,
        },
    )
    .expect("backend")
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().to_path_buf();
    let backend = backend_at(&root);
    Fixture {
        _dir: dir,
        root,
        backend,
    }
}

impl Fixture {
    fn image(&self, name: &str, wat_src: &str) -> String {
        let bytes = wat::parse_str(wat_src).expect("valid wat");
        let path = self.root.join(name);
        std::fs::write(&path, bytes).expect("write module");
        format!("file://{}", path.display())
    }

    async fn run(&self, image: &str, spec: ContainerSpec) -> Result<Exit, RuntimeError> {
        let prepared = self.backend.prepare(image).await?;
        let mut c = self.backend.start(&prepared, spec).await?;
        Ok(c.wait().await)
    }
}

fn spec(out: Arc<Capture>) -> ContainerSpec {
    ContainerSpec {
        argv: vec!["guest".into()],
        command: vec![],
        args: vec![],
        working_dir: None,
        hostname: "guest".into(),
        stop_grace: std::time::Duration::ZERO,
        http_port: None,
        pod_ip: "127.0.0.1".into(),
        netns: None,
        security: Default::default(),
        env: vec![],
        mounts: vec![],
        memory_limit: None,
        cpu_limit_millis: None,
        output: out,
        http: crate::http::HttpLimits::default(),
        outbound: None,
        stdin: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p1_output_and_exit_codes() {
    let f = fixture();
    let out = Arc::new(Capture::default());
    let img = f.image("hello.wasm", &printer("hello\\n", 0));
    assert_eq!(
        f.run(&img, spec(out.clone())).await.expect("runs"),
        Exit::Code(0)
    );
    assert_eq!(out.text(), "hello\n");
    let img = f.image("three.wasm", &printer("bye", 3));
    assert_eq!(f.run(&img, spec(out)).await.expect("runs"), Exit::Code(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trap_names_the_cause() {
    let f = fixture();
    let img = f.image(
        "trap.wasm",
        r#"(module (memory (export "memory") 1) (func (export "_start") unreachable))"#,
    );
    match f.run(&img, spec(Arc::default())).await.expect("runs") {
        Exit::Trap(msg) => assert!(msg.contains("unreachable"), "{msg}"),
        other => panic!("expected a trap, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_is_oom_killed() {
    let f = fixture();
    let img = f.image(
        "hog.wasm",
        r#"(module (memory (export "memory") 1)
             (func (export "_start")
               (loop $l (br_if $l (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))))"#,
    );
    let mut s = spec(Arc::default());
    s.memory_limit = Some(4 << 20);
    assert_eq!(f.run(&img, s).await.expect("runs"), Exit::OomKilled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spinning_guest_is_killed_and_does_not_starve_a_neighbour() {
    let f = fixture();
    let spin = f.image(
        "spin.wasm",
        r#"(module (memory (export "memory") 1) (func (export "_start") (loop $l (br $l))))"#,
    );
    let prepared = f.backend.prepare(&spin).await.expect("prepare");
    // More spinners than executor threads: without epoch yields the
    // printer below would never get a thread.
    let mut spinners = Vec::new();
    for _ in 0..4 {
        spinners.push(
            f.backend
                .start(&prepared, spec(Arc::default()))
                .await
                .expect("start"),
        );
    }
    let out = Arc::new(Capture::default());
    let img = f.image("hello.wasm", &printer("alive", 0));
    let exit = tokio::time::timeout(Duration::from_secs(20), f.run(&img, spec(out.clone())))
        .await
        .expect("neighbour ran despite spinners")
        .expect("runs");
    assert_eq!(exit, Exit::Code(0));
    assert_eq!(out.text(), "alive");
    for mut s in spinners {
        s.kill();
        assert_eq!(s.wait().await, Exit::Killed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_images_fail_with_reasons() {
    let f = fixture();
    let not_wasm = f.root.join("text.wasm");
    std::fs::write(&not_wasm, "hello").expect("write");
    let err = f
        .backend
        .prepare(&format!("file://{}", not_wasm.display()))
        .await
        .expect_err("not wasm");
    assert_eq!(err.reason(), "CreateContainerError");
    assert!(err.to_string().contains("not a WebAssembly"), "{err}");

    let img = f.image(
        "imports.wasm",
        r#"(module (import "env" "launch_missiles" (func)) (func (export "_start")))"#,
    );
    let err = f.backend.prepare(&img).await.expect_err("unknown import");
    assert_eq!(err.reason(), "CreateContainerError");
    assert!(err.to_string().contains("launch_missiles"), "{err}");

    let err = f
        .backend
        .prepare("file:///no/such/module.wasm")
        .await
        .expect_err("missing");
    assert_eq!(err.reason(), "ErrImagePull");
    let err = f
        .backend
        .prepare("Nginx:1.27")
        .await
        .expect_err("not a reference");
    assert_eq!(err.reason(), "InvalidImageName");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_args_and_read_only_mounts_reach_the_guest() {
    let f = fixture();
    // environ_sizes_get then path_open of "cfg/key" under the preopen (fd 3)
    // and fd_read it to stdout: enough to prove env and the mount arrive.
    let img = f.image(
        "reader.wasm",
        r#"(module
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $es (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open" (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "key")
  (func (export "_start")
    (drop (call $es (i32.const 0) (i32.const 4)))
    ;; exit 9 unless exactly one env var is set
    (if (i32.ne (i32.load (i32.const 0)) (i32.const 1)) (then (call $exit (i32.const 9))))
    (if (call $open (i32.const 3) (i32.const 0) (i32.const 100) (i32.const 3) (i32.const 0)
                    (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 8))
      (then (call $exit (i32.const 8))))
    (i32.store (i32.const 16) (i32.const 200))
    (i32.store (i32.const 20) (i32.const 64))
    (drop (call $read (i32.load (i32.const 8)) (i32.const 16) (i32.const 1) (i32.const 24)))
    (i32.store (i32.const 20) (i32.load (i32.const 24)))
    (drop (call $write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 28)))))"#,
    );
    let cfg = f.root.join("cfg");
    std::fs::create_dir_all(&cfg).expect("mkdir");
    std::fs::write(cfg.join("key"), "value-from-file").expect("write");
    let out = Arc::new(Capture::default());
    let mut s = spec(out.clone());
    s.env = vec![("GREETING".into(), "hi".into())];
    s.mounts = vec![Mount {
        host_path: cfg,
        guest_path: "/etc/cfg".into(),
        read_only: true,
    }];
    assert_eq!(f.run(&img, s).await.expect("runs"), Exit::Code(0));
    assert_eq!(out.text(), "value-from-file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_run_wasi_cli_run() {
    let f = fixture();
    let img = f.image(
        "ok.component.wasm",
        r#"(component
  (core module $m (func (export "run") (result i32) (i32.const 1)))
  (core instance $i (instantiate $m))
  (func $run (result (result)) (canon lift (core func $i "run")))
  (instance $r (export "run" (func $run)))
  (export "wasi:cli/run@0.2.0" (instance $r)))"#,
    );
    // Discriminant 1 is `err`: a failing command exits 1.
    assert_eq!(
        f.run(&img, spec(Arc::default())).await.expect("runs"),
        Exit::Code(1)
    );
    let not_command = f.image("empty.component.wasm", r#"(component)"#);
    let err = f
        .backend
        .prepare(&not_command)
        .await
        .expect_err("no run export");
    assert!(err.to_string().contains("wasi:cli/run"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_prepare_compiles_nothing() {
    let f = fixture();
    let img = f.image("hello.wasm", &printer("x", 0));
    let a = f.backend.prepare(&img).await.expect("prepare");
    let b = f.backend.prepare(&img).await.expect("prepare");
    assert!(Arc::ptr_eq(&a.inner, &b.inner));
    // A fresh backend on the same root loads the artifact from disk.
    let again =
        WasmBackend::new(&f.root.join("node"), f.backend.config().clone()).expect("backend");
    let compiled = std::fs::read_dir(f.root.join("node/compiled"))
        .expect("cache dir")
        .flatten()
        .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten())
        .count();
    assert_eq!(compiled, 1);
    again.prepare(&img).await.expect("prepare from cache");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticker_sample_ticks_and_sleeps() {
    let f = fixture();
    let img = f.image(
        "ticker.wasm",
        include_str!("../../../samples/wat/ticker.wat"),
    );
    let out = Arc::new(Capture::default());
    let prepared = f.backend.prepare(&img).await.expect("prepare");
    let mut s = spec(out.clone());
    s.memory_limit = Some(1 << 20);
    let mut c = f.backend.start(&prepared, s).await.expect("start");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !out.text().contains("tick 1\n") && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        out.text().starts_with("tick 0\ntick 1\n"),
        "{:?}",
        out.text()
    );
    c.kill();
    assert_eq!(c.wait().await, Exit::Killed);
}

/// The WAT config-reader (a preview-1 core module) wrapped as a WASI 0.2
/// command component with wasmtime's own preview-1 adapter: the component
/// path, files in a mounted directory included, without a guest toolchain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapted_component_reads_env_and_mounted_files() {
    let f = fixture();
    let core = wat::parse_str(include_str!("../../../samples/wat/config-reader.wat")).expect("wat");
    let component = wit_component::ComponentEncoder::default()
        .module(&core)
        .expect("module")
        .adapter(
            "wasi_snapshot_preview1",
            wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER,
        )
        .expect("adapter")
        .validate(true)
        .encode()
        .expect("encode");
    let path = f.root.join("reader.component.wasm");
    std::fs::write(&path, component).expect("write");
    let cfg = f.root.join("cfg");
    std::fs::create_dir_all(&cfg).expect("mkdir");
    std::fs::write(cfg.join("message"), "from a read-only mount").expect("write");
    let out = Arc::new(Capture::default());
    let mut s = spec(out.clone());
    s.env = vec![("GREETING".into(), "hi".into())];
    s.mounts = vec![Mount {
        host_path: cfg,
        guest_path: "/etc/config".into(),
        read_only: true,
    }];
    let exit = f
        .run(&format!("file://{}", path.display()), s)
        .await
        .expect("runs");
    assert_eq!(exit, Exit::Code(0), "{}", out.text());
    assert!(out.text().contains("GREETING=hi"), "{}", out.text());
    assert!(
        out.text().contains("from a read-only mount"),
        "{}",
        out.text()
    );
}

/// The HTTP hello sample built by `scripts/build-samples.sh`, if built
/// (required when `SHOAL_REQUIRE_RUST_SAMPLES=1`, as CI sets): `p2` the
/// component, `p1` the core module.
fn http_hello(kind: &str) -> Option<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../target/wasm-samples/{kind}/http-hello.wasm"));
    if path.exists() {
        return Some(format!("file://{}", path.display()));
    }
    assert!(
        std::env::var("SHOAL_REQUIRE_RUST_SAMPLES").as_deref() != Ok("1"),
        "{} is missing: run scripts/build-samples.sh",
        path.display()
    );
    eprintln!("skipping: {} not built", path.display());
    None
}

async fn call(
    svc: &Arc<dyn crate::http::HttpService>,
    method: &str,
    path: &str,
    body: &'static [u8],
) -> (u16, String) {
    use http_body_util::BodyExt;
    let req = ::http::Request::builder()
        .method(method)
        .uri(format!("http://pod.local{path}"))
        .header("host", "pod.local")
        .body(crate::http::full(body))
        .expect("request");
    let resp = match svc.serve(req).await {
        Ok(r) => r,
        Err(_) => return (0, "turned away".into()),
    };
    let status = resp.status().as_u16();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_component_serves_each_request_in_a_fresh_instance() {
    let Some(image) = http_hello("p2") else {
        return;
    };
    let f = fixture();
    let prepared = f.backend.prepare(&image).await.expect("prepare");
    let mut s = spec(Arc::new(Capture::default()));
    s.env = vec![("HOSTNAME".into(), "pod-a".into())];
    s.http = crate::http::HttpLimits {
        max_concurrency: 4,
        timeout: Duration::from_millis(800),
        max_body_bytes: 16,
    };
    let mut c = f.backend.start(&prepared, s).await.expect("start");
    let svc = c.http().expect("an HTTP component gets a handler");

    let (code, text) = call(&svc, "GET", "/hi", b"").await;
    assert_eq!((code, text.as_str()), (200, "hello from pod-a (GET /hi)\n"));
    let (code, text) = call(&svc, "POST", "/echo", b"ping").await;
    assert_eq!((code, text.as_str()), (200, "ping"));
    // Over the body limit: refused before the guest runs.
    let (code, text) = call(&svc, "POST", "/echo", b"0123456789abcdefXYZ").await;
    assert_eq!(code, 413, "{text}");
    // A trap ends that request's instance only.
    let (code, text) = call(&svc, "GET", "/trap", b"").await;
    assert_eq!(code, 502, "{text}");
    // A spinning guest is stopped at the timeout.
    let (code, text) = call(&svc, "GET", "/hang", b"").await;
    assert_eq!(code, 504, "{text}");
    let (code, _) = call(&svc, "GET", "/", b"").await;
    assert_eq!(code, 200, "the pod still serves after a trap and a timeout");

    // Killing drains: the request in flight is answered, new ones are
    // turned away, then the container ends.
    let slow = {
        let svc = svc.clone();
        tokio::spawn(async move { call(&svc, "GET", "/sleep/300", b"").await })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while svc.in_flight() != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the slow request never started"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    c.kill();
    // The drain starts on the container's own task; from then on new
    // requests are turned away (0) while the slow one is still running.
    loop {
        let (code, _) = call(&svc, "GET", "/", b"").await;
        if code == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "kill never started the drain"
        );
    }
    assert!(
        !slow.is_finished(),
        "turned away only after the slow request ended"
    );
    let (code, text) = slow.await.expect("slow request");
    assert_eq!((code, text.as_str()), (200, "slept 300 ms in pod-a\n"));
    assert_eq!(c.wait().await, Exit::Killed);
}

/// The same handler built as a preview-1 core module: the node wraps it
/// with the preview-1 adapter at load and serves it like the component,
/// the pod's environment included. A
/// second node on the same data directory takes the wrapped component
/// from the compile cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_core_module_is_served_through_the_adapter() {
    let Some(image) = http_hello("p1") else {
        return;
    };
    let f = fixture();
    for round in 0..2 {
        let backend = (round > 0).then(|| backend_at(&f.root));
        let backend = backend.as_ref().unwrap_or(&f.backend);
        let prepared = backend.prepare(&image).await.expect("prepare");
        let mut s = spec(Arc::new(Capture::default()));
        s.env = vec![("HOSTNAME".into(), "pod-b".into())];
        let mut c = backend.start(&prepared, s).await.expect("start");
        let svc = c.http().expect("a wasi:http core module gets a handler");
        let (code, text) = call(&svc, "GET", "/hi", b"").await;
        assert_eq!((code, text.as_str()), (200, "hello from pod-b (GET /hi)\n"));
        let (code, text) = call(&svc, "POST", "/echo", b"ping").await;
        assert_eq!((code, text.as_str()), (200, "ping"));
        let (code, text) = call(&svc, "GET", "/trap", b"").await;
        assert_eq!(code, 502, "{text}");
        c.kill();
        assert_eq!(c.wait().await, Exit::Killed);
    }
    let cached = std::fs::read_dir(f.root.join("node").join("compiled"))
        .expect("compile cache")
        .flatten()
        .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .ends_with(".component.cwasm")
        })
        .count();
    assert_eq!(
        cached, 1,
        "the wrapped component is compiled once and cached"
    );
}

/// A preview-1 command module stays a module: only a handler export makes
/// the node wrap it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_handler_modules_are_wrapped() {
    let command =
        wat::parse_str(include_str!("../../../samples/wat/config-reader.wat")).expect("wat");
    assert_eq!(wasm_kind(&command), Ok(WasmKind::Module));
    let handler = wat::parse_str(
        r#"(module (func (export "wasi:http/incoming-handler@0.2.6#handle") (param i32 i32)))"#,
    )
    .expect("wat");
    assert_eq!(wasm_kind(&handler), Ok(WasmKind::HttpModule));
    // The export without the WIT world wit-bindgen records beside it wraps
    // into a component that exports nothing: refused, saying why.
    let f = fixture();
    let path = f.root.join("bare-handler.wasm");
    std::fs::write(&path, &handler).expect("write");
    let Err(err) = f
        .backend
        .prepare(&format!("file://{}", path.display()))
        .await
    else {
        panic!("a handler without its WIT world is refused");
    };
    assert!(err.to_string().contains("nor an HTTP handler"), "{err}");
    assert_eq!(
        wasm_kind(b"\0asm\x01\0\0\0garbage"),
        Ok(WasmKind::Module),
        "a module that does not parse is left to the compiler to refuse"
    );
}
