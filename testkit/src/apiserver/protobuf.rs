//! Just enough of Kubernetes' protobuf encoding to accept what kubectl sends: its typed
//! `create` commands (`kubectl create secret generic`, `create configmap`, `create namespace`)
//! POST `application/vnd.kubernetes.protobuf` bodies and client-go does not fall back to JSON.
//! The envelope is the magic `k8s\0` followed by a `runtime.Unknown` whose `raw` bytes are the
//! object's message (field numbers from `k8s.io/api/core/v1/generated.proto`). Fields a create
//! does not need (owner references, managed fields, timestamps) are skipped, not guessed.

use serde_json::{Map, Value, json};

const MAGIC: &[u8] = b"k8s\0";

/// One decoded field: number and payload.
enum Field<'a> {
    Varint(u32, u64),
    Bytes(u32, &'a [u8]),
}

fn varint(buf: &[u8], pos: &mut usize) -> Result<u64, String> {
    let mut v: u64 = 0;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos).ok_or("truncated varint")?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("varint too long".into())
}

fn fields(buf: &[u8]) -> Result<Vec<Field<'_>>, String> {
    let mut out = vec![];
    let mut pos = 0;
    while pos < buf.len() {
        let key = varint(buf, &mut pos)?;
        let (number, wire) = ((key >> 3) as u32, key & 7);
        match wire {
            0 => out.push(Field::Varint(number, varint(buf, &mut pos)?)),
            1 => pos += 8,
            2 => {
                let len = usize::try_from(varint(buf, &mut pos)?).map_err(|e| e.to_string())?;
                let end = pos
                    .checked_add(len)
                    .filter(|e| *e <= buf.len())
                    .ok_or("truncated field")?;
                out.push(Field::Bytes(number, &buf[pos..end]));
                pos = end;
            }
            5 => pos += 4,
            w => return Err(format!("unsupported wire type {w}")),
        }
    }
    if pos > buf.len() {
        return Err("truncated message".into());
    }
    Ok(out)
}

fn text(b: &[u8]) -> Result<String, String> {
    String::from_utf8(b.to_vec()).map_err(|e| e.to_string())
}

/// A `map<string, string>` or `map<string, bytes>` entry (key 1, value 2).
fn map_entry(b: &[u8], bytes_value: bool) -> Result<(String, Value), String> {
    let mut key = String::new();
    let mut value = Value::String(String::new());
    for f in fields(b)? {
        match f {
            Field::Bytes(1, k) => key = text(k)?,
            Field::Bytes(2, v) if bytes_value => value = json!(base64(v)),
            Field::Bytes(2, v) => value = json!(text(v)?),
            _ => {}
        }
    }
    Ok((key, value))
}

fn object_meta(b: &[u8]) -> Result<Value, String> {
    let mut m = Map::new();
    let mut labels = Map::new();
    let mut annotations = Map::new();
    let mut finalizers = vec![];
    for f in fields(b)? {
        match f {
            Field::Bytes(1, v) => {
                m.insert("name".into(), json!(text(v)?));
            }
            Field::Bytes(2, v) => {
                m.insert("generateName".into(), json!(text(v)?));
            }
            Field::Bytes(3, v) => {
                m.insert("namespace".into(), json!(text(v)?));
            }
            Field::Bytes(6, v) => {
                m.insert("resourceVersion".into(), json!(text(v)?));
            }
            Field::Bytes(11, e) => {
                let (k, v) = map_entry(e, false)?;
                labels.insert(k, v);
            }
            Field::Bytes(12, e) => {
                let (k, v) = map_entry(e, false)?;
                annotations.insert(k, v);
            }
            Field::Bytes(14, v) => finalizers.push(json!(text(v)?)),
            _ => {}
        }
    }
    if !labels.is_empty() {
        m.insert("labels".into(), Value::Object(labels));
    }
    if !annotations.is_empty() {
        m.insert("annotations".into(), Value::Object(annotations));
    }
    if !finalizers.is_empty() {
        m.insert("finalizers".into(), Value::Array(finalizers));
    }
    Ok(Value::Object(m))
}

fn base64(b: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let c = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(c[0]) << 16) | (u32::from(c[1]) << 8) | u32::from(c[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decode a protobuf request body into the JSON object it encodes. Only the kinds kubectl's
/// typed `create` commands send for the kinds this server models are understood; anything else
/// is an error naming what was sent.
pub fn decode(body: &[u8]) -> Result<Value, String> {
    let rest = body
        .strip_prefix(MAGIC)
        .ok_or("the body does not start with the Kubernetes protobuf magic")?;
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    for f in fields(rest)? {
        match f {
            Field::Bytes(1, tm) => {
                for t in fields(tm)? {
                    match t {
                        Field::Bytes(1, v) => api_version = text(v)?,
                        Field::Bytes(2, v) => kind = text(v)?,
                        _ => {}
                    }
                }
            }
            Field::Bytes(2, r) => raw = r,
            _ => {}
        }
    }
    let mut obj = Map::new();
    obj.insert("apiVersion".into(), json!(api_version));
    obj.insert("kind".into(), json!(kind));
    match (api_version.as_str(), kind.as_str()) {
        ("v1", "Secret") => {
            let (mut data, mut string_data) = (Map::new(), Map::new());
            for f in fields(raw)? {
                match f {
                    Field::Bytes(1, m) => {
                        obj.insert("metadata".into(), object_meta(m)?);
                    }
                    Field::Bytes(2, e) => {
                        let (k, v) = map_entry(e, true)?;
                        data.insert(k, v);
                    }
                    Field::Bytes(3, t) => {
                        obj.insert("type".into(), json!(text(t)?));
                    }
                    Field::Bytes(4, e) => {
                        let (k, v) = map_entry(e, false)?;
                        string_data.insert(k, v);
                    }
                    Field::Varint(5, b) => {
                        obj.insert("immutable".into(), json!(b != 0));
                    }
                    _ => {}
                }
            }
            if !data.is_empty() {
                obj.insert("data".into(), Value::Object(data));
            }
            if !string_data.is_empty() {
                obj.insert("stringData".into(), Value::Object(string_data));
            }
        }
        ("v1", "ConfigMap") => {
            let (mut data, mut binary) = (Map::new(), Map::new());
            for f in fields(raw)? {
                match f {
                    Field::Bytes(1, m) => {
                        obj.insert("metadata".into(), object_meta(m)?);
                    }
                    Field::Bytes(2, e) => {
                        let (k, v) = map_entry(e, false)?;
                        data.insert(k, v);
                    }
                    Field::Bytes(3, e) => {
                        let (k, v) = map_entry(e, true)?;
                        binary.insert(k, v);
                    }
                    Field::Varint(4, b) => {
                        obj.insert("immutable".into(), json!(b != 0));
                    }
                    _ => {}
                }
            }
            if !data.is_empty() {
                obj.insert("data".into(), Value::Object(data));
            }
            if !binary.is_empty() {
                obj.insert("binaryData".into(), Value::Object(binary));
            }
        }
        ("v1", "Namespace") => {
            for f in fields(raw)? {
                match f {
                    Field::Bytes(1, m) => {
                        obj.insert("metadata".into(), object_meta(m)?);
                    }
                    Field::Bytes(2, spec) => {
                        let finalizers: Vec<Value> = fields(spec)?
                            .into_iter()
                            .filter_map(|f| match f {
                                Field::Bytes(1, v) => text(v).ok().map(Value::String),
                                _ => None,
                            })
                            .collect();
                        if !finalizers.is_empty() {
                            obj.insert("spec".into(), json!({"finalizers": finalizers}));
                        }
                    }
                    _ => {}
                }
            }
        }
        (v, k) => {
            return Err(format!(
                "the fake API server decodes protobuf only for v1 Secret, ConfigMap and Namespace (got {v} {k}); send JSON"
            ));
        }
    }
    obj.entry("metadata").or_insert_with(|| json!({}));
    Ok(Value::Object(obj))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(n: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![((n << 3) | 2) as u8, payload.len() as u8];
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn decodes_a_secret_as_kubectl_sends_it() {
        let meta = [
            field(1, b"gh"),
            field(3, b"afk"),
            field(11, &[field(1, b"a"), field(2, b"b")].concat()),
        ]
        .concat();
        let entry = [field(1, b"token"), field(2, b"s3cret")].concat();
        let secret = [field(1, &meta), field(2, &entry), field(3, b"Opaque")].concat();
        let type_meta = [field(1, b"v1"), field(2, b"Secret")].concat();
        let body = [
            MAGIC.to_vec(),
            field(1, &type_meta),
            field(2, &secret),
            field(4, b"application/vnd.kubernetes.protobuf"),
        ]
        .concat();
        let v = decode(&body).unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                   "metadata": {"name": "gh", "namespace": "afk", "labels": {"a": "b"}},
                   "data": {"token": base64(b"s3cret")}})
        );
    }

    #[test]
    fn refuses_kinds_it_does_not_know_and_garbage() {
        let type_meta = [field(1, b"apps/v1"), field(2, b"Deployment")].concat();
        let body = [MAGIC.to_vec(), field(1, &type_meta)].concat();
        assert!(decode(&body).unwrap_err().contains("send JSON"));
        assert!(decode(b"{}").is_err());
        assert!(decode(&[MAGIC, &[0x0a, 0x7f]].concat()).is_err());
    }
}
