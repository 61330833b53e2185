//! OpenAPI v3 documents, as `kubectl explain` and kubectl's validation read them: the index at
//! `/openapi/v3` (one entry per group-version, with a content hash in the URL) and one document
//! per group-version with `components.schemas` (each kind tagged with
//! `x-kubernetes-group-version-kind`) and `paths` whose PATCH operations declare the
//! `fieldValidation` query parameter, which tells kubectl to leave validation to the server
//! (`fieldValidation=Strict`) instead of downloading schemas to validate itself.
//!
//! Built-in kinds get the upstream schemas (k8s-openapi's); custom resources get their CRD's
//! `openAPIV3Schema` with `metadata` pointing at `ObjectMeta`.

use std::{collections::BTreeMap, sync::OnceLock};

use k8s_openapi::{
    api::{apps, coordination, core, events},
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::store::ResourceType;

const OBJECT_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";

/// Upstream schemas of the built-in kinds this server models, keyed by definition name, and
/// the definition name of each `(apiVersion, kind)`.
struct Builtins {
    definitions: Map<String, Value>,
    names: BTreeMap<(String, String), String>,
}

fn builtins() -> &'static Builtins {
    static B: OnceLock<Builtins> = OnceLock::new();
    B.get_or_init(|| {
        let mut g = schemars::generate::SchemaSettings::openapi3().into_generator();
        let mut names = BTreeMap::new();
        let mut add = |api_version: &str, kind: &str, name: &str| {
            names.insert((api_version.to_string(), kind.to_string()), name.to_string());
        };
        macro_rules! kinds {
            ($($t:ty => $av:literal, $k:literal;)*) => {$(
                g.subschema_for::<$t>();
                add($av, $k, &<$t as schemars::JsonSchema>::schema_name());
            )*};
        }
        kinds! {
            core::v1::Namespace => "v1", "Namespace";
            core::v1::Pod => "v1", "Pod";
            core::v1::Secret => "v1", "Secret";
            core::v1::ConfigMap => "v1", "ConfigMap";
            core::v1::Event => "v1", "Event";
            apps::v1::Deployment => "apps/v1", "Deployment";
            events::v1::Event => "events.k8s.io/v1", "Event";
            coordination::v1::Lease => "coordination.k8s.io/v1", "Lease";
            CustomResourceDefinition => "apiextensions.k8s.io/v1", "CustomResourceDefinition";
            ObjectMeta => "meta", "ObjectMeta";
        }
        Builtins {
            definitions: g.take_definitions(true),
            names,
        }
    })
}

fn gv_path(t: &ResourceType) -> String {
    if t.group.is_empty() {
        format!("api/{}", t.version)
    } else {
        format!("apis/{}/{}", t.group, t.version)
    }
}

/// The definition name of a custom kind: the reversed group, as upstream names CRD kinds.
fn custom_name(t: &ResourceType) -> String {
    let group: Vec<&str> = t.group.split('.').rev().collect();
    format!("{}.{}.{}", group.join("."), t.version, t.kind)
}

fn gvk(t: &ResourceType) -> Value {
    json!({"group": t.group, "version": t.version, "kind": t.kind})
}

/// The OpenAPI v3 document of one group-version (`api/v1`, `apis/afk.dev/v1alpha1`), if served.
pub fn document(types: &[ResourceType], gv: &str) -> Option<Value> {
    let members: Vec<&ResourceType> = types.iter().filter(|t| gv_path(t) == gv).collect();
    if members.is_empty() {
        return None;
    }
    let b = builtins();
    let mut schemas = Map::new();
    let mut paths = Map::new();
    let mut need_builtin = vec![OBJECT_META.to_string()];
    for t in &members {
        let name = if t.custom {
            let mut s = t.schema.clone().unwrap_or_else(|| json!({"type": "object"}));
            if let Some(props) = s.get_mut("properties").and_then(Value::as_object_mut) {
                props.insert(
                    "metadata".into(),
                    json!({"allOf": [{"$ref": format!("#/components/schemas/{OBJECT_META}")}],
                           "description": "Standard object's metadata."}),
                );
            }
            s["x-kubernetes-group-version-kind"] = json!([gvk(t)]);
            let name = custom_name(t);
            schemas.insert(name.clone(), s);
            name
        } else {
            let Some(name) = b.names.get(&(t.api_version(), t.kind.clone())) else {
                continue;
            };
            need_builtin.push(name.clone());
            name.clone()
        };
        let reference = json!({"$ref": format!("#/components/schemas/{name}")});
        let ok =
            json!({"200": {"description": "OK", "content": {"application/json": {"schema": reference}}}});
        let op = |action: &str, params: &[&str]| {
            let parameters: Vec<Value> = params
                .iter()
                .map(|p| json!({"name": p, "in": "query", "schema": {"type": "string", "uniqueItems": true}}))
                .collect();
            json!({"operationId": format!("{action}{}", t.kind), "x-kubernetes-action": action,
                   "x-kubernetes-group-version-kind": gvk(t), "parameters": parameters, "responses": ok})
        };
        let write = ["dryRun", "fieldManager", "fieldValidation"];
        let base = if t.namespaced {
            format!("/{gv}/namespaces/{{namespace}}/{}", t.plural)
        } else {
            format!("/{gv}/{}", t.plural)
        };
        paths.insert(
            base.clone(),
            json!({"get": op("list", &[]), "post": op("post", &write)}),
        );
        paths.insert(
            format!("{base}/{{name}}"),
            json!({"get": op("get", &[]), "put": op("put", &write), "patch": op("patch", &["dryRun", "fieldManager", "fieldValidation", "force"]),
                   "delete": op("delete", &[])}),
        );
    }
    // Built-in schemas reference each other: copy the closure of what is referenced.
    while let Some(name) = need_builtin.pop() {
        if schemas.contains_key(&name) {
            continue;
        }
        let Some(mut s) = b.definitions.get(&name).cloned() else {
            continue;
        };
        if let Some(t) = members
            .iter()
            .find(|t| !t.custom && b.names.get(&(t.api_version(), t.kind.clone())) == Some(&name))
        {
            s["x-kubernetes-group-version-kind"] = json!([gvk(t)]);
        }
        collect_refs(&s, &mut need_builtin);
        schemas.insert(name, s);
    }
    // Custom schemas only reference ObjectMeta, whose closure is copied above.
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes (afk-testkit fake API server)", "version": "v1.37.0"},
        "paths": paths,
        "components": {"schemas": schemas}
    }))
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(r) = m.get("$ref").and_then(Value::as_str)
                && let Some(name) = r.strip_prefix("#/components/schemas/")
            {
                out.push(name.to_string());
            }
            m.values().for_each(|x| collect_refs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| collect_refs(x, out)),
        _ => {}
    }
}

/// The `/openapi/v3` index: every served group-version with a URL carrying its content hash.
pub fn index(types: &[ResourceType]) -> Value {
    let mut gvs: Vec<String> = types.iter().map(gv_path).collect();
    gvs.sort();
    gvs.dedup();
    let paths: Map<String, Value> = gvs
        .into_iter()
        .filter_map(|gv| {
            let doc = document(types, &gv)?;
            let hash = hex::encode(&Sha256::digest(doc.to_string().as_bytes())[..16]);
            Some((
                gv.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{gv}?hash={hash}")}),
            ))
        })
        .collect();
    json!({"paths": paths})
}
