//! watch: a chunked stream of `{"type", "object"}` lines.
//!
//! Without a resourceVersion (or with "0") the stream opens with the current
//! state as ADDED events; with one, it replays history after it (410 Gone
//! past compaction). With selectors, an object that stops matching arrives
//! as DELETED and one that starts matching as ADDED, as Kubernetes does.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{json, Value};

use super::read::Selection;
use crate::apiserver::error::{ApiError, ApiResult};
use crate::apiserver::request::{truthy, Query, Target};
use crate::apiserver::table::{self, IncludeObject};
use crate::apiserver::ApiState;
use crate::store::{Event, EventType, WatchNext, WatchReceiver};

/// Kubernetes closes watches after 30–60 minutes so clients re-list now and then.
const DEFAULT_TIMEOUT: u64 = 1800;
const BOOKMARK_EVERY: Duration = Duration::from_secs(5);

struct Framer {
    printer: table::Printer,
    kind: &'static str,
    api_version: String,
    table: Option<IncludeObject>,
}

/// A watch line; borrows the object so encoding does not copy it first.
#[derive(serde::Serialize)]
struct Line<'a> {
    #[serde(rename = "type")]
    ty: &'a str,
    object: &'a Value,
}

impl Framer {
    /// Plain JSON frames are the same for every watcher: encode once per
    /// event and type. Table frames depend on the watcher's options.
    fn shared_frame(&self, ty: EventType, ev: &Event) -> Bytes {
        if self.table.is_some() {
            return self.frame(ty.as_str(), &ev.object);
        }
        ev.fanout.frames[ty as usize]
            .get_or_init(|| self.frame(ty.as_str(), &ev.object))
            .clone()
    }

    fn frame(&self, ty: &str, obj: &Value) -> Bytes {
        let table;
        let object = match self.table {
            Some(include) => {
                let rv = obj
                    .pointer("/metadata/resourceVersion")
                    .cloned()
                    .unwrap_or(Value::Null);
                table = table::table(
                    self.printer,
                    &[obj],
                    json!({"resourceVersion": rv}),
                    include,
                );
                &table
            }
            None => obj,
        };
        let mut line = serde_json::to_vec(&Line { ty, object }).unwrap_or_default();
        line.push(b'\n');
        Bytes::from(line)
    }

    fn bookmark(&self, rv: u64, initial_end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let obj = json!({"kind": self.kind, "apiVersion": self.api_version, "metadata": meta});
        let mut line =
            serde_json::to_vec(&json!({"type": "BOOKMARK", "object": obj})).unwrap_or_default();
        line.push(b'\n');
        Bytes::from(line)
    }

    fn error(&self, code: u16, reason: &str, message: &str) -> Bytes {
        let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code});
        let mut line =
            serde_json::to_vec(&json!({"type": "ERROR", "object": status})).unwrap_or_default();
        line.push(b'\n');
        Bytes::from(line)
    }
}

pub async fn watch(
    st: &ApiState,
    t: &Target<'_>,
    q: &Query,
    as_table: bool,
) -> ApiResult<Response> {
    let sel = Selection::from_query(t, q)?;
    let prefix = t.res.key(t.namespace.as_deref(), None);
    let bookmarks = truthy(&q.allow_watch_bookmarks);
    let send_initial = truthy(&q.send_initial_events);
    let timeout = q
        .int(&q.timeout_seconds, "timeoutSeconds")?
        .map(|s| s.max(0) as u64)
        .unwrap_or(DEFAULT_TIMEOUT);
    let rv = match q.resource_version.as_deref() {
        None | Some("") | Some("0") => None,
        Some(s) => Some(
            s.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version: {s:?}")))?,
        ),
    };
    let (initial, from) = match rv {
        Some(rv) if !send_initial => (Vec::new(), rv),
        _ => {
            let page = st
                .store
                .list(&prefix, None, None, &|v| sel.matches(v))
                .await
                .map_err(|e| ApiError::from_store(e, &t.res.group_resource(), ""))?;
            let items: Vec<Value> = page.items.iter().map(|o| (*o.value).clone()).collect();
            (items, page.rv)
        }
    };
    let rx = st
        .store
        .watch(&prefix, from)
        .map_err(|e| ApiError::from_store(e, &t.res.group_resource(), ""))?;
    let framer = Framer {
        printer: t.res.printer,
        kind: t.res.kind,
        api_version: t.res.api_version(),
        table: as_table.then(|| IncludeObject::parse(q.include_object.as_deref())),
    };
    let initial_end = (send_initial && bookmarks).then(|| framer.bookmark(from, true));
    let pump = Pump {
        framer,
        sel,
        rx,
        initial: initial.into_iter(),
        initial_end,
        bookmarks,
        deadline: Box::pin(tokio::time::sleep(Duration::from_secs(timeout))),
        tick: tokio::time::interval_at(
            tokio::time::Instant::now() + BOOKMARK_EVERY,
            BOOKMARK_EVERY,
        ),
        delivery: st.metrics.watch_delivery.clone(),
        _open: OpenWatch::new(st.metrics.watches.clone()),
        done: false,
    };
    // hyper polls the stream straight from the connection task: no task or
    // channel per watcher between the event log and the socket.
    let out = futures::stream::unfold(pump, |mut p| async move {
        let frame = p.next_frame().await?;
        Some((Ok::<Bytes, std::io::Error>(frame), p))
    });
    let mut resp = Body::from_stream(out).into_response();
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache, private"),
    );
    Ok(resp)
}

/// How an event looks to a watcher with a selector.
fn translate(
    kind: EventType,
    obj: &Value,
    prev: Option<&Value>,
    sel: &Selection,
) -> Option<EventType> {
    let now = sel.matches(obj);
    match kind {
        EventType::Added | EventType::Deleted => now.then_some(kind),
        EventType::Modified => {
            let before = prev.map(|p| sel.matches(p)).unwrap_or(false);
            match (before, now) {
                (true, true) => Some(EventType::Modified),
                (false, true) => Some(EventType::Added),
                (true, false) => Some(EventType::Deleted),
                (false, false) => None,
            }
        }
    }
}

/// Counts open watches for as long as the stream lives.
struct OpenWatch(prometheus::IntGauge);

impl OpenWatch {
    fn new(g: prometheus::IntGauge) -> Self {
        g.inc();
        OpenWatch(g)
    }
}

impl Drop for OpenWatch {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// One watch stream: initial state, then events, bookmarks, and the end.
struct Pump {
    framer: Framer,
    sel: Selection,
    rx: WatchReceiver,
    initial: std::vec::IntoIter<Value>,
    initial_end: Option<Bytes>,
    bookmarks: bool,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
    tick: tokio::time::Interval,
    /// Time from an event's publication to its frame going to the connection.
    delivery: prometheus::Histogram,
    _open: OpenWatch,
    done: bool,
}

impl Pump {
    /// The next line to send, or None when the watch is over.
    async fn next_frame(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        if let Some(obj) = self.initial.next() {
            return Some(self.framer.frame("ADDED", &obj));
        }
        if let Some(b) = self.initial_end.take() {
            return Some(b);
        }
        let bookmarks = self.bookmarks && self.framer.table.is_none();
        loop {
            tokio::select! {
                next = self.rx.next() => match next {
                    WatchNext::Event(ev) => {
                        let Some(ty) = translate(ev.kind, &ev.object, ev.prev.as_deref(), &self.sel) else {
                            continue;
                        };
                        let frame = self.framer.shared_frame(ty, &ev);
                        if let Some(at) = ev.fanout.published.get() {
                            self.delivery.observe(at.elapsed().as_secs_f64());
                        }
                        return Some(frame);
                    }
                    WatchNext::Lagged => {
                        self.done = true;
                        return Some(self.framer.error(410, "Expired", "the watcher fell too far behind; re-list and watch again"));
                    }
                    WatchNext::Closed => return None,
                },
                _ = self.tick.tick(), if bookmarks => return Some(self.framer.bookmark(self.rx.after, false)),
                _ = &mut self.deadline => return None,
            }
        }
    }
}
