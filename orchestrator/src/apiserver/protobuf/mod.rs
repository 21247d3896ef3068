//! Request bodies in Kubernetes' protobuf encoding
//! (`application/vnd.kubernetes.protobuf`), turned into the JSON object the
//! rest of the server works on. kubectl's typed clients send them: `kubectl
//! create deployment|configmap|secret|service|job|namespace …` and `kubectl
//! run`. Answers stay JSON: kubectl accepts either.
//!
//! The envelope is the 4-byte magic `k8s\0` and a `runtime.Unknown`
//! (typeMeta = 1, raw = 2, contentEncoding = 3, contentType = 4); `raw` is
//! the object's own message. Field numbers and types come from `schema.txt`.

mod schema;

use base64::Engine as _;
use serde_json::{Map, Number, Value};

use super::error::{ApiError, ApiResult};
use schema::{FieldType, Schema};

pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";

const MAGIC: &[u8] = b"k8s\0";
/// Deeper nesting than any Kubernetes object has; bounds the recursion a
/// hostile body can cause.
const MAX_DEPTH: usize = 64;

const TIME: &str = "k8s.io.apimachinery.pkg.apis.meta.v1.Time";
const MICRO_TIME: &str = "k8s.io.apimachinery.pkg.apis.meta.v1.MicroTime";
const DURATION: &str = "k8s.io.apimachinery.pkg.apis.meta.v1.Duration";
const FIELDS_V1: &str = "k8s.io.apimachinery.pkg.apis.meta.v1.FieldsV1";
const INT_OR_STRING: &str = "k8s.io.apimachinery.pkg.util.intstr.IntOrString";
const QUANTITY: &str = "k8s.io.apimachinery.pkg.api.resource.Quantity";
const RAW_EXTENSION: &str = "k8s.io.apimachinery.pkg.runtime.RawExtension";

/// Decodes one protobuf-encoded object into its JSON form, `apiVersion`
/// and `kind` included.
pub fn decode(bytes: &[u8]) -> ApiResult<Value> {
    let bad = |e: String| {
        ApiError::bad_request(format!(
            "the body of the request could not be decoded as {CONTENT_TYPE}: {e}"
        ))
    };
    let body = bytes
        .strip_prefix(MAGIC)
        .ok_or_else(|| bad("it does not start with the magic bytes \"k8s\\0\"".into()))?;
    let mut api_version = String::new();
    let mut kind = String::new();
    let mut raw: &[u8] = &[];
    for f in Fields::new(body) {
        let f = f.map_err(bad)?;
        match (f.number, f.value) {
            (1, Wire::Len(type_meta)) => {
                for t in Fields::new(type_meta) {
                    match t.map_err(bad)? {
                        Raw {
                            number: 1,
                            value: Wire::Len(v),
                        } => api_version = utf8(v).map_err(bad)?,
                        Raw {
                            number: 2,
                            value: Wire::Len(v),
                        } => kind = utf8(v).map_err(bad)?,
                        _ => {}
                    }
                }
            }
            (2, Wire::Len(r)) => raw = r,
            (3, Wire::Len(enc)) if !enc.is_empty() => {
                return Err(bad(format!(
                    "content encoding {:?} is not supported",
                    String::from_utf8_lossy(enc)
                )))
            }
            _ => {}
        }
    }
    if kind.is_empty() || api_version.is_empty() {
        return Err(bad("the envelope names no apiVersion and kind".into()));
    }
    let message = message_name(&api_version, &kind);
    let schema = schema::schema();
    if !schema.contains_key(&message) {
        return Err(ApiError::unsupported_media_type(format!(
            "{CONTENT_TYPE} is accepted for the built-in kinds only, not {kind} in {api_version}; send application/json"
        )));
    }
    let mut object = match decode_message(schema, &message, raw, 0).map_err(bad)? {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    object.insert("apiVersion".into(), Value::String(api_version));
    object.insert("kind".into(), Value::String(kind));
    Ok(Value::Object(object))
}

/// `apps/v1` + `Deployment` → `k8s.io.api.apps.v1.Deployment`; the core
/// group is `core`, and `networking.k8s.io` is `networking`.
fn message_name(api_version: &str, kind: &str) -> String {
    let (group, version) = api_version.split_once('/').unwrap_or(("core", api_version));
    let package = group.split('.').next().unwrap_or(group);
    format!("k8s.io.api.{package}.{version}.{kind}")
}

/// One field as it is on the wire.
enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Len(&'a [u8]),
}

struct Raw<'a> {
    number: u32,
    value: Wire<'a>,
}

/// The fields of one encoded message, in order.
struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Fields { buf, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut n: u64 = 0;
        for shift in (0..70).step_by(7) {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err("truncated varint".into());
            };
            self.pos += 1;
            if shift == 63 && b > 1 {
                return Err("varint overflows 64 bits".into());
            }
            n |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(n);
            }
        }
        Err("varint longer than 10 bytes".into())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or("a field runs past the end of its message")?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn fixed64(&mut self) -> Result<u64, String> {
        let b: [u8; 8] = self.take(8)?.try_into().map_err(|_| "short fixed64")?;
        Ok(u64::from_le_bytes(b))
    }

    fn fixed32(&mut self) -> Result<u32, String> {
        let b: [u8; 4] = self.take(4)?.try_into().map_err(|_| "short fixed32")?;
        Ok(u32::from_le_bytes(b))
    }

    fn next_field(&mut self) -> Result<Raw<'a>, String> {
        let key = self.varint()?;
        let number = u32::try_from(key >> 3).map_err(|_| "field number out of range")?;
        let value = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => Wire::Fixed64(self.fixed64()?),
            2 => {
                let n = usize::try_from(self.varint()?).map_err(|_| "length out of range")?;
                Wire::Len(self.take(n)?)
            }
            5 => Wire::Fixed32(self.fixed32()?),
            w => return Err(format!("unsupported wire type {w} in field {number}")),
        };
        Ok(Raw { number, value })
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<Raw<'a>, String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.buf.len() {
            return None;
        }
        let r = self.next_field();
        if r.is_err() {
            // One error ends the message: what follows is not trustworthy.
            self.pos = self.buf.len();
        }
        Some(r)
    }
}

fn utf8(b: &[u8]) -> Result<String, String> {
    String::from_utf8(b.to_vec()).map_err(|_| "a string field is not valid UTF-8".into())
}

fn decode_message(schema: &Schema, name: &str, buf: &[u8], depth: usize) -> Result<Value, String> {
    if depth > MAX_DEPTH {
        return Err(format!("objects nest deeper than {MAX_DEPTH} levels"));
    }
    if let Some(v) = well_known(name, buf)? {
        return Ok(v);
    }
    let Some(fields) = schema.get(name) else {
        return Err(format!("no schema for message {name}"));
    };
    let mut out = Map::new();
    for raw in Fields::new(buf) {
        let raw = raw?;
        // Fields this kubectl knows and we do not are dropped, as the Go
        // decoder drops unknown fields.
        let Some(field) = fields.get(&raw.number) else {
            continue;
        };
        let key = field.json_name.as_str();
        match &field.ty {
            FieldType::Map(k, v) => {
                let Wire::Len(entry) = raw.value else {
                    return Err(format!("{key}: a map entry must be length-delimited"));
                };
                let (ek, ev) = map_entry(schema, k, v, entry, depth)?;
                let slot = out
                    .entry(key.to_string())
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(m) = slot {
                    m.insert(ek, ev);
                }
            }
            ty if field.repeated => {
                let values =
                    repeated(schema, ty, raw.value, depth).map_err(|e| format!("{key}: {e}"))?;
                let slot = out
                    .entry(key.to_string())
                    .or_insert_with(|| Value::Array(Vec::new()));
                if let Value::Array(a) = slot {
                    a.extend(values);
                }
            }
            ty if field.inline => {
                if let Value::Object(inner) =
                    single(schema, ty, raw.value, depth).map_err(|e| format!("{key}: {e}"))?
                {
                    out.extend(inner);
                }
            }
            ty => {
                let v = single(schema, ty, raw.value, depth).map_err(|e| format!("{key}: {e}"))?;
                // Go's encoder writes every non-pointer string, empty or
                // not; JSON omits them, and the defaults expect them absent.
                if v.as_str() == Some("") {
                    continue;
                }
                out.insert(key.to_string(), v);
            }
        }
    }
    Ok(Value::Object(out))
}

fn map_entry(
    schema: &Schema,
    k: &FieldType,
    v: &FieldType,
    entry: &[u8],
    depth: usize,
) -> Result<(String, Value), String> {
    let mut key = String::new();
    let mut value = Value::Null;
    for raw in Fields::new(entry) {
        let raw = raw?;
        match raw.number {
            1 => {
                key = match single(schema, k, raw.value, depth)? {
                    Value::String(s) => s,
                    other => other.to_string(),
                }
            }
            2 => value = single(schema, v, raw.value, depth)?,
            _ => {}
        }
    }
    if value.is_null() {
        // An absent value is the type's zero value.
        value = match v {
            FieldType::String | FieldType::Bytes => Value::String(String::new()),
            FieldType::Message(_) => Value::Object(Map::new()),
            FieldType::Bool => Value::Bool(false),
            _ => Value::from(0),
        };
    }
    Ok((key, value))
}

/// The elements of a repeated field: one per occurrence, or several packed
/// into one length-delimited run for numbers.
fn repeated(
    schema: &Schema,
    ty: &FieldType,
    w: Wire<'_>,
    depth: usize,
) -> Result<Vec<Value>, String> {
    let packable = !matches!(
        ty,
        FieldType::String | FieldType::Bytes | FieldType::Message(_)
    );
    match w {
        Wire::Len(run) if packable => {
            let mut f = Fields::new(run);
            let mut out = Vec::new();
            while f.pos < run.len() {
                let w = match ty {
                    FieldType::Double => Wire::Fixed64(f.fixed64()?),
                    FieldType::Float => Wire::Fixed32(f.fixed32()?),
                    _ => Wire::Varint(f.varint()?),
                };
                out.push(single(schema, ty, w, depth)?);
            }
            Ok(out)
        }
        w => Ok(vec![single(schema, ty, w, depth)?]),
    }
}

fn single(schema: &Schema, ty: &FieldType, w: Wire<'_>, depth: usize) -> Result<Value, String> {
    Ok(match (ty, w) {
        (FieldType::String, Wire::Len(b)) => Value::String(utf8(b)?),
        (FieldType::Bytes, Wire::Len(b)) => {
            Value::String(base64::engine::general_purpose::STANDARD.encode(b))
        }
        (FieldType::Message(name), Wire::Len(b)) => decode_message(schema, name, b, depth + 1)?,
        (FieldType::Bool, Wire::Varint(n)) => Value::Bool(n != 0),
        // Negative int32s travel sign-extended to 64 bits.
        (FieldType::Int32, Wire::Varint(n)) => Value::from(n as i64 as i32),
        (FieldType::Int64, Wire::Varint(n)) => Value::from(n as i64),
        (FieldType::Uint32, Wire::Varint(n)) => Value::from(n as u32),
        (FieldType::Uint64, Wire::Varint(n)) => Value::from(n),
        (FieldType::Double, Wire::Fixed64(n)) => float(f64::from_bits(n)),
        (FieldType::Float, Wire::Fixed32(n)) => float(f64::from(f32::from_bits(n))),
        (ty, _) => return Err(format!("the wire type does not fit a {ty:?} field")),
    })
}

fn float(f: f64) -> Value {
    Number::from_f64(f).map_or(Value::Null, Value::Number)
}

/// The apimachinery types whose JSON form is not their message's shape.
fn well_known(name: &str, buf: &[u8]) -> Result<Option<Value>, String> {
    let scalars = || -> Result<Vec<Raw<'_>>, String> { Fields::new(buf).collect() };
    Ok(Some(match name {
        TIME | MICRO_TIME => {
            let (mut secs, mut nanos, mut any) = (0i64, 0i32, false);
            for f in scalars()? {
                match (f.number, f.value) {
                    (1, Wire::Varint(n)) => (secs, any) = (n as i64, true),
                    (2, Wire::Varint(n)) => (nanos, any) = (n as i64 as i32, true),
                    _ => {}
                }
            }
            // A zero time is written as an empty message: JSON's null.
            if !any {
                return Ok(Some(Value::Null));
            }
            let ts = jiff::Timestamp::new(secs, nanos)
                .map_err(|e| format!("a timestamp is out of range: {e}"))?;
            let format = if name == TIME {
                "%Y-%m-%dT%H:%M:%SZ"
            } else {
                "%Y-%m-%dT%H:%M:%S.%6fZ"
            };
            Value::String(ts.strftime(format).to_string())
        }
        DURATION => {
            let mut nanos = 0i64;
            for f in scalars()? {
                if let (1, Wire::Varint(n)) = (f.number, f.value) {
                    nanos = n as i64;
                }
            }
            Value::String(go_duration(nanos))
        }
        INT_OR_STRING => {
            let (mut is_string, mut int, mut string) = (false, 0i32, String::new());
            for f in scalars()? {
                match (f.number, f.value) {
                    (1, Wire::Varint(n)) => is_string = n == 1,
                    (2, Wire::Varint(n)) => int = n as i64 as i32,
                    (3, Wire::Len(s)) => string = utf8(s)?,
                    _ => {}
                }
            }
            if is_string {
                Value::String(string)
            } else {
                Value::from(int)
            }
        }
        QUANTITY => {
            let mut q = String::new();
            for f in scalars()? {
                if let (1, Wire::Len(s)) = (f.number, f.value) {
                    q = utf8(s)?;
                }
            }
            Value::String(q)
        }
        RAW_EXTENSION | FIELDS_V1 => {
            let mut raw: &[u8] = &[];
            for f in scalars()? {
                if let (1, Wire::Len(s)) = (f.number, f.value) {
                    raw = s;
                }
            }
            if raw.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(raw)
                    .map_err(|e| format!("an embedded object is not JSON: {e}"))?
            }
        }
        _ => return Ok(None),
    }))
}

/// Go's `time.Duration.String()`: `1h2m3.5s`, `150ms`, `0s`.
fn go_duration(nanos: i64) -> String {
    if nanos == 0 {
        return "0s".into();
    }
    let sign = if nanos < 0 { "-" } else { "" };
    let n = nanos.unsigned_abs();
    if n < 1_000_000_000 {
        let (unit, div) = match n {
            0..1_000 => ("ns", 1),
            1_000..1_000_000 => ("µs", 1_000),
            _ => ("ms", 1_000_000),
        };
        return format!("{sign}{}{unit}", trim_fraction(n, div));
    }
    let (h, rest) = (n / 3_600_000_000_000, n % 3_600_000_000_000);
    let (m, s) = (rest / 60_000_000_000, rest % 60_000_000_000);
    let secs = format!("{}s", trim_fraction(s, 1_000_000_000));
    match (h, m) {
        (0, 0) => format!("{sign}{secs}"),
        (0, m) => format!("{sign}{m}m{secs}"),
        (h, m) => format!("{sign}{h}h{m}m{secs}"),
    }
}

/// `n / div` with its fraction, trailing zeros dropped.
fn trim_fraction(n: u64, div: u64) -> String {
    let (whole, frac) = (n / div, n % div);
    if frac == 0 {
        return whole.to_string();
    }
    let digits = div.ilog10() as usize;
    let f = format!("{frac:0digits$}");
    format!("{whole}.{}", f.trim_end_matches('0'))
}

#[cfg(test)]
mod tests;
