//! The HTTP hello sample: one fresh instance per request, so nothing here
//! survives between requests. Paths:
//! - anything else: `hello from <pod> (<method> <path>)`
//! - `/echo`: the request body back
//! - `/sleep/<ms>`: answers after that long (for rollouts under load)
//! - `/trap`: the guest crashes (the gateway answers 502)
//! - `/hang`: the guest spins forever (the gateway answers 504)

use std::io::{Read as _, Write as _};

use wasi::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

wasi::http::proxy::export!(Hello);

struct Hello;

impl wasi::exports::http::incoming_handler::Guest for Hello {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let body = match path.as_str() {
            "/echo" => read_body(&request),
            "/trap" => panic!("asked to trap"),
            "/hang" => spin(),
            p if p.starts_with("/sleep/") => {
                let ms: u64 = p["/sleep/".len()..].parse().unwrap_or(0);
                wasi::clocks::monotonic_clock::subscribe_duration(ms * 1_000_000).block();
                format!("slept {ms} ms in {}\n", pod()).into_bytes()
            }
            _ => {
                let method = method_name(&request.method());
                format!("hello from {} ({method} {path})\n", pod()).into_bytes()
            }
        };
        respond(out, 200, &body);
    }
}

fn method_name(m: &Method) -> String {
    match m {
        Method::Get => "GET".into(),
        Method::Head => "HEAD".into(),
        Method::Post => "POST".into(),
        Method::Put => "PUT".into(),
        Method::Delete => "DELETE".into(),
        Method::Connect => "CONNECT".into(),
        Method::Options => "OPTIONS".into(),
        Method::Trace => "TRACE".into(),
        Method::Patch => "PATCH".into(),
        Method::Other(other) => other.clone(),
    }
}

fn pod() -> String {
    std::env::var("HOSTNAME").unwrap_or_else(|_| "an unnamed pod".into())
}

fn read_body(request: &IncomingRequest) -> Vec<u8> {
    let mut buf = Vec::new();
    if let Ok(body) = request.consume() {
        if let Ok(mut stream) = body.stream() {
            // A body over the gateway's limit ends the stream with an error.
            let _ = stream.read_to_end(&mut buf);
        }
    }
    buf
}

#[allow(clippy::empty_loop)]
fn spin() -> ! {
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

fn respond(out: ResponseOutparam, status: u16, body: &[u8]) {
    let headers = Fields::new();
    let _ = headers.set("content-type", &[b"text/plain".to_vec()]);
    let resp = OutgoingResponse::new(headers);
    let _ = resp.set_status_code(status);
    let Ok(outgoing) = resp.body() else { return };
    ResponseOutparam::set(out, Ok(resp));
    if let Ok(mut stream) = outgoing.write() {
        let _ = stream.write_all(body);
        let _ = stream.flush();
    }
    let _ = OutgoingBody::finish(outgoing, None);
}
