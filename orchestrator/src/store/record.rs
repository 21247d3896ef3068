//! How objects and events are laid out in the sled tree: objects under
//! `o` + key as JSON (with their resourceVersion), events under `e` +
//! big-endian revision as `[type][key][object][previous object]`, the
//! revision counter at `m/rv` and the last checkpoint at `m/checkpoint`.

use std::sync::Arc;

use serde_json::Value;

use super::events::{Event, EventType};
use super::{Revision, StoreError};

pub const REV_KEY: &[u8] = b"m/rv";
/// The revision up to which the tree was last flushed (see `checkpoint.rs`):
/// recovery applies the write-ahead log's groups after it.
pub const CHECKPOINT_KEY: &[u8] = b"m/checkpoint";

pub fn obj_key(key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(b'o');
    k.extend_from_slice(key.as_bytes());
    k
}

pub fn ev_key(rv: Revision) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = b'e';
    k[1..].copy_from_slice(&rv.to_be_bytes());
    k
}

fn corrupt(key: &str, source: serde_json::Error) -> StoreError {
    StoreError::Corrupt {
        key: key.to_string(),
        source,
    }
}

pub fn rv_of(value: &Value) -> Revision {
    value
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

pub fn encode(key: &str, object: &Value) -> Result<sled::IVec, StoreError> {
    serde_json::to_vec(object)
        .map(sled::IVec::from)
        .map_err(|e| corrupt(key, e))
}

pub fn decode(key: &str, bytes: &[u8]) -> Result<(Revision, Value), StoreError> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| corrupt(key, e))?;
    Ok((rv_of(&v), v))
}

fn kind_byte(k: EventType) -> u8 {
    match k {
        EventType::Added => b'A',
        EventType::Modified => b'M',
        EventType::Deleted => b'D',
    }
}

/// `object` is the event object already encoded; `prev` the previous record.
pub fn encode_event(event: &Event, object: &[u8], prev: Option<&[u8]>) -> Vec<u8> {
    let key = event.key.as_bytes();
    let mut out = Vec::with_capacity(9 + key.len() + object.len() + prev.map_or(0, <[u8]>::len));
    out.push(kind_byte(event.kind));
    out.extend_from_slice(&(key.len() as u32).to_be_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&(object.len() as u32).to_be_bytes());
    out.extend_from_slice(object);
    if let Some(p) = prev {
        out.extend_from_slice(p);
    }
    out
}

fn take<'a>(buf: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if buf.len() < n {
        return None;
    }
    let (head, tail) = buf.split_at(n);
    *buf = tail;
    Some(head)
}

fn take_u32(buf: &mut &[u8]) -> Option<usize> {
    let b = take(buf, 4)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
}

pub fn decode_event(rv: Revision, bytes: &[u8]) -> Result<Event, StoreError> {
    let bad = || StoreError::Corrupt {
        key: format!("event {rv}"),
        source: serde::de::Error::custom("truncated event record"),
    };
    let mut buf = bytes;
    let kind = match take(&mut buf, 1).ok_or_else(bad)?[0] {
        b'A' => EventType::Added,
        b'D' => EventType::Deleted,
        _ => EventType::Modified,
    };
    let klen = take_u32(&mut buf).ok_or_else(bad)?;
    let key = String::from_utf8_lossy(take(&mut buf, klen).ok_or_else(bad)?).into_owned();
    let olen = take_u32(&mut buf).ok_or_else(bad)?;
    let (_, object) = decode(&key, take(&mut buf, olen).ok_or_else(bad)?)?;
    let prev = if buf.is_empty() {
        None
    } else {
        Some(Arc::new(decode(&key, buf)?.1))
    };
    Ok(Event {
        rv,
        kind,
        key,
        object: Arc::new(object),
        prev,
        fanout: Default::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn event_records_round_trip() {
        let object = json!({"metadata": {"name": "a", "resourceVersion": "7"}});
        let prev = json!({"metadata": {"name": "a", "resourceVersion": "3"}});
        let ev = Event {
            rv: 7,
            kind: EventType::Modified,
            key: "/k/a".into(),
            object: Arc::new(object.clone()),
            prev: None,
            fanout: Default::default(),
        };
        let obj_bytes = encode("/k/a", &object).expect("encode");
        let prev_bytes = encode("/k/a", &prev).expect("encode");
        let back =
            decode_event(7, &encode_event(&ev, &obj_bytes, Some(&prev_bytes))).expect("decode");
        assert_eq!(
            (back.kind, back.key.as_str()),
            (EventType::Modified, "/k/a")
        );
        assert_eq!(*back.object, object);
        assert_eq!(back.prev.as_deref(), Some(&prev));
        assert!(decode_event(7, &[b'A', 0, 0]).is_err());
    }
}
