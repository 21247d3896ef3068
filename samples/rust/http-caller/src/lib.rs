//! An HTTP service that calls another Service by name: `GET /` fetches
//! `$UPSTREAM` (default `http://hello`, the Service `hello` in the same
//! namespace) through `wasi:http/outgoing-handler` and answers with what it
//! got. The host routes the name straight to the Service's endpoints.

use std::io::{Read as _, Write as _};

use wasi::http::outgoing_handler;
use wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingRequest, OutgoingResponse, ResponseOutparam,
    Scheme,
};

wasi::http::proxy::export!(Caller);

struct Caller;

impl wasi::exports::http::incoming_handler::Guest for Caller {
    fn handle(_request: IncomingRequest, out: ResponseOutparam) {
        let upstream = std::env::var("UPSTREAM").unwrap_or_else(|_| "http://hello".into());
        let (status, body) = match fetch(&upstream) {
            Ok((code, text)) => (200, format!("upstream {upstream} answered {code}: {text}")),
            Err(e) => (502, format!("upstream {upstream} failed: {e}\n")),
        };
        respond(out, status, body.as_bytes());
    }
}

fn fetch(url: &str) -> Result<(u16, String), String> {
    let (scheme, rest) = match url.split_once("://") {
        Some(("https", r)) => (Scheme::Https, r),
        Some((_, r)) => (Scheme::Http, r),
        None => (Scheme::Http, url),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let req = OutgoingRequest::new(Fields::new());
    req.set_scheme(Some(&scheme)).map_err(|_| "bad scheme")?;
    req.set_authority(Some(authority))
        .map_err(|_| "bad authority")?;
    req.set_path_with_query(Some(path)).map_err(|_| "bad path")?;
    let pending = outgoing_handler::handle(req, None).map_err(|e| format!("{e:?}"))?;
    pending.subscribe().block();
    let resp = pending
        .get()
        .ok_or("no response")?
        .map_err(|_| "response taken twice")?
        .map_err(|e| format!("{e:?}"))?;
    let status = resp.status();
    let body = resp.consume().map_err(|_| "no body")?;
    let mut text = String::new();
    if let Ok(mut stream) = body.stream() {
        let mut buf = Vec::new();
        let _ = stream.read_to_end(&mut buf);
        text = String::from_utf8_lossy(&buf).into_owned();
    }
    Ok((status, text))
}

fn respond(out: ResponseOutparam, status: u16, body: &[u8]) {
    let resp = OutgoingResponse::new(Fields::new());
    let _ = resp.set_status_code(status);
    let Ok(outgoing) = resp.body() else { return };
    ResponseOutparam::set(out, Ok(resp));
    if let Ok(mut stream) = outgoing.write() {
        let _ = stream.write_all(body);
        let _ = stream.flush();
    }
    let _ = OutgoingBody::finish(outgoing, None);
}
