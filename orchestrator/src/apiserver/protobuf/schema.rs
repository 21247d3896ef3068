//! The protobuf field table of the built-in kinds (`schema.txt`, generated
//! by `scripts/gen-proto-schema.py` from kubectl's own descriptors), parsed
//! once on first use.

use std::collections::HashMap;
use std::sync::OnceLock;

/// A field's type as the wire decoder needs it.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldType {
    String,
    Bytes,
    Bool,
    Int32,
    Int64,
    Uint32,
    Uint64,
    Double,
    Float,
    /// A message, by full name.
    Message(String),
    /// `map<key, value>`: entries are messages with the key in field 1 and
    /// the value in field 2.
    Map(Box<FieldType>, Box<FieldType>),
}

#[derive(Debug)]
pub struct Field {
    pub json_name: String,
    pub ty: FieldType,
    pub repeated: bool,
    /// A Go struct embedded inline: its fields belong to the parent in JSON.
    pub inline: bool,
}

/// Message name → field number → field.
pub type Schema = HashMap<String, HashMap<u32, Field>>;

const TABLE: &str = include_str!("schema.txt");

/// The table, parsed on first use: most servers never see a protobuf body.
pub fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| parse(TABLE))
}

fn scalar(name: &str) -> FieldType {
    match name {
        "string" => FieldType::String,
        "bytes" => FieldType::Bytes,
        "bool" => FieldType::Bool,
        "int32" => FieldType::Int32,
        "int64" => FieldType::Int64,
        "uint32" => FieldType::Uint32,
        "uint64" => FieldType::Uint64,
        "double" => FieldType::Double,
        "float" => FieldType::Float,
        message => FieldType::Message(message.to_string()),
    }
}

fn field_type(spec: &str) -> FieldType {
    match spec.strip_prefix("map:").and_then(|kv| kv.split_once(':')) {
        Some((k, v)) => FieldType::Map(Box::new(scalar(k)), Box::new(scalar(v))),
        None => scalar(spec),
    }
}

/// Lines the table cannot hold are skipped: the table is generated and
/// checked by the unit tests below, so a bad line is a generator bug, not
/// something a request can cause.
fn parse(table: &str) -> Schema {
    let mut schema = Schema::new();
    let mut current: Option<&mut HashMap<u32, Field>> = None;
    for line in table.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix("message ") {
            current = Some(schema.entry(name.to_string()).or_default());
            continue;
        }
        let mut parts = line.split(' ');
        let (Some(number), Some(json_name), Some(ty)) = (
            parts.next().and_then(|n| n.parse::<u32>().ok()),
            parts.next(),
            parts.next(),
        ) else {
            continue;
        };
        let flag = parts.next();
        let repeated = flag == Some("repeated");
        let inline = flag == Some("inline");
        if let Some(fields) = current.as_deref_mut() {
            fields.insert(
                number,
                Field {
                    json_name: json_name.to_string(),
                    ty: field_type(ty),
                    repeated,
                    inline,
                },
            );
        }
    }
    schema
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_of_the_table_parses_and_every_message_it_names_is_there() {
        let s = schema();
        let lines = TABLE
            .lines()
            .filter(|l| !l.starts_with('#') && !l.starts_with("message ") && !l.is_empty())
            .count();
        assert_eq!(s.values().map(HashMap::len).sum::<usize>(), lines);
        for (name, fields) in s {
            for f in fields.values() {
                let mut named = vec![&f.ty];
                if let FieldType::Map(k, v) = &f.ty {
                    named = vec![k, v];
                }
                for t in named {
                    if let FieldType::Message(m) = t {
                        assert!(s.contains_key(m), "{name}.{} names {m}", f.json_name);
                    }
                }
            }
        }
        let spec = &s["k8s.io.api.apps.v1.DeploymentSpec"];
        assert_eq!(spec[&1].json_name, "replicas");
        assert_eq!(spec[&1].ty, FieldType::Int32);
        let meta = &s["k8s.io.apimachinery.pkg.apis.meta.v1.ObjectMeta"];
        assert_eq!(
            meta[&11].ty,
            FieldType::Map(Box::new(FieldType::String), Box::new(FieldType::String))
        );
        assert!(meta[&14].repeated);
        assert!(s["k8s.io.api.core.v1.Volume"][&2].inline);
    }
}
