use serde_json::json;

use super::*;

/// A minimal protobuf writer, enough to build the bodies kubectl sends.
#[derive(Default)]
struct Enc(Vec<u8>);

impl Enc {
    fn varint(&mut self, mut n: u64) -> &mut Self {
        while n >= 0x80 {
            self.0.push((n as u8) | 0x80);
            n >>= 7;
        }
        self.0.push(n as u8);
        self
    }
    fn int(&mut self, field: u64, n: i64) -> &mut Self {
        self.varint(field << 3).varint(n as u64)
    }
    fn bytes(&mut self, field: u64, b: &[u8]) -> &mut Self {
        self.varint(field << 3 | 2).varint(b.len() as u64);
        self.0.extend_from_slice(b);
        self
    }
    fn str(&mut self, field: u64, s: &str) -> &mut Self {
        self.bytes(field, s.as_bytes())
    }
    fn msg(&mut self, field: u64, m: &Enc) -> &mut Self {
        self.bytes(field, &m.0)
    }
}

fn envelope(api_version: &str, kind: &str, raw: &Enc) -> Vec<u8> {
    let mut tm = Enc::default();
    tm.str(1, api_version).str(2, kind);
    let mut e = Enc::default();
    e.msg(1, &tm).msg(2, raw).str(3, "").str(4, "");
    let mut out = MAGIC.to_vec();
    out.extend(e.0);
    out
}

fn label(k: &str, v: &str) -> Enc {
    let mut e = Enc::default();
    e.str(1, k).str(2, v);
    e
}

#[test]
fn a_deployment_as_kubectl_create_sends_it() {
    let mut meta = Enc::default();
    meta.str(1, "web")
        .str(2, "")
        .str(3, "")
        .int(7, 0)
        .msg(8, &Enc::default())
        .msg(11, &label("app", "web"));
    let mut selector = Enc::default();
    selector.msg(1, &label("app", "web"));
    let mut container = Enc::default();
    container.str(1, "hello").str(2, "file:///hello.wasm");
    let mut pod_spec = Enc::default();
    pod_spec.msg(2, &container);
    let mut tmeta = Enc::default();
    tmeta.msg(11, &label("app", "web"));
    let mut template = Enc::default();
    template.msg(1, &tmeta).msg(2, &pod_spec);
    // maxSurge as a string ("25%"), maxUnavailable as an int (0).
    let mut surge = Enc::default();
    surge.int(1, 1).str(3, "25%");
    let mut unavailable = Enc::default();
    unavailable.int(1, 0).int(2, 0);
    let mut rolling = Enc::default();
    rolling.msg(1, &unavailable).msg(2, &surge);
    let mut strategy = Enc::default();
    strategy.str(1, "RollingUpdate").msg(2, &rolling);
    let mut spec = Enc::default();
    spec.int(1, 0)
        .msg(2, &selector)
        .msg(3, &template)
        .msg(4, &strategy);
    let mut d = Enc::default();
    d.msg(1, &meta).msg(2, &spec).msg(3, &Enc::default());
    let v = decode(&envelope("apps/v1", "Deployment", &d)).expect("decodes");
    assert_eq!(
        v,
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": "web",
                "generation": 0,
                "creationTimestamp": null,
                "labels": {"app": "web"},
            },
            "spec": {
                // replicas 0 is kept: `--replicas=0` means it.
                "replicas": 0,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "hello", "image": "file:///hello.wasm"}]},
                },
                "strategy": {
                    "type": "RollingUpdate",
                    "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "25%"},
                },
            },
            "status": {},
        })
    );
}

#[test]
fn secrets_times_quantities_and_negative_numbers() {
    let mut data = Enc::default();
    data.str(1, "token").bytes(2, b"\x00\xffsecret");
    let mut ts = Enc::default();
    ts.int(1, 1_700_000_000).int(2, 0);
    let mut meta = Enc::default();
    meta.str(1, "s").msg(8, &ts);
    let mut s = Enc::default();
    s.msg(1, &meta).msg(2, &data).str(3, "Opaque");
    let v = decode(&envelope("v1", "Secret", &s)).expect("decodes");
    assert_eq!(v["data"]["token"], "AP9zZWNyZXQ=");
    assert_eq!(v["metadata"]["creationTimestamp"], "2023-11-14T22:13:20Z");
    assert_eq!(v["type"], "Opaque");

    // A container's memory limit (map<string, Quantity>) and a negative
    // int32 (sign-extended on the wire).
    let mut q = Enc::default();
    q.str(1, "64Mi");
    let mut entry = Enc::default();
    entry.str(1, "memory").msg(2, &q);
    let mut res = Enc::default();
    res.msg(1, &entry);
    let mut c = Enc::default();
    c.str(1, "main").msg(8, &res);
    // A volume: its source is an embedded struct, inline in JSON.
    let mut size = Enc::default();
    size.str(1, "1Gi");
    let mut empty_dir = Enc::default();
    empty_dir.msg(2, &size);
    let mut source = Enc::default();
    source.msg(2, &empty_dir);
    let mut volume = Enc::default();
    volume.str(1, "scratch").msg(2, &source);
    let mut spec = Enc::default();
    spec.msg(1, &volume).msg(2, &c).int(4, -5);
    let mut pod = Enc::default();
    pod.msg(1, &Enc::default()).msg(2, &spec);
    let v = decode(&envelope("v1", "Pod", &pod)).expect("decodes");
    assert_eq!(
        v["spec"]["containers"][0]["resources"]["limits"]["memory"],
        "64Mi"
    );
    assert_eq!(v["spec"]["terminationGracePeriodSeconds"], -5);
    assert_eq!(
        v["spec"]["volumes"],
        json!([{"name": "scratch", "emptyDir": {"sizeLimit": "1Gi"}}])
    );
}

#[test]
fn bad_bodies_are_errors_not_panics() {
    let mut meta = Enc::default();
    meta.str(1, "x");
    let mut cm = Enc::default();
    cm.msg(1, &meta);
    let good = envelope("v1", "ConfigMap", &cm);
    assert!(decode(&good).is_ok());
    // Every truncation of a good body fails cleanly or decodes a prefix.
    for n in 0..good.len() {
        let _ = decode(&good[..n]);
    }
    let no_magic = decode(b"{\"kind\":\"Pod\"}").expect_err("no magic");
    assert_eq!(no_magic.code, 400);
    let unknown = decode(&envelope("example.com/v1", "Widget", &cm)).expect_err("not built in");
    assert_eq!(unknown.code, 415);
    // A string field holding invalid UTF-8.
    let mut meta = Enc::default();
    meta.bytes(1, b"\xff\xfe");
    let mut cm = Enc::default();
    cm.msg(1, &meta);
    let e = decode(&envelope("v1", "ConfigMap", &cm)).expect_err("bad utf-8");
    assert!(e.message.contains("UTF-8"), "{}", e.message);
    // A length that runs past the end.
    let mut body = MAGIC.to_vec();
    body.extend([0x12, 0xff, 0x01, 0x00]);
    assert_eq!(decode(&body).expect_err("truncated").code, 400);
}

#[test]
fn go_durations() {
    assert_eq!(go_duration(0), "0s");
    assert_eq!(go_duration(1_500_000), "1.5ms");
    assert_eq!(go_duration(90_000_000_000), "1m30s");
    assert_eq!(go_duration(3_723_500_000_000), "1h2m3.5s");
    assert_eq!(go_duration(-2_000_000_000), "-2s");
}
