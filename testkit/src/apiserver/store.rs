//! The object store and the REST semantics behind every non-watch request.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::Arc,
    time::Duration,
};

use axum::{
    http::{Method, StatusCode},
    response::Response,
};
use serde_json::{Map, Value, json};

use super::{
    json_response,
    selectors::{FieldSelector, LabelSelector, Query},
    status_error,
};

/// A kind the server knows.
#[derive(Clone, Debug)]
pub struct ResourceType {
    /// API group (`""` for core).
    pub group: String,
    /// Version.
    pub version: String,
    /// Plural resource name.
    pub plural: String,
    /// Singular name.
    pub singular: String,
    /// Kind.
    pub kind: String,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// Has a status subresource.
    pub status_subresource: bool,
    /// A custom resource (validated from its CRD; no strategic merge).
    pub custom: bool,
    /// The CRD's openAPIV3Schema.
    pub schema: Option<Value>,
    /// Short names.
    pub short_names: Vec<String>,
    /// Categories.
    pub categories: Vec<String>,
    /// The CRD's `additionalPrinterColumns` (for `kubectl get` tables).
    pub printer_columns: Vec<Value>,
}

impl ResourceType {
    fn core(group: &str, version: &str, plural: &str, kind: &str, namespaced: bool, status: bool) -> Self {
        Self {
            group: group.into(),
            version: version.into(),
            plural: plural.into(),
            singular: kind.to_ascii_lowercase(),
            kind: kind.into(),
            namespaced,
            status_subresource: status,
            custom: false,
            schema: None,
            short_names: vec![],
            categories: vec![],
            printer_columns: vec![],
        }
    }

    /// `group/version`, or `version` for core.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

/// The core kinds the operator touches (with kubectl's short names).
pub fn core_types() -> Vec<ResourceType> {
    let short = |mut t: ResourceType, names: &[&str]| {
        t.short_names = names.iter().map(|n| n.to_string()).collect();
        t
    };
    let types = vec![
        ResourceType::core("", "v1", "namespaces", "Namespace", false, true),
        ResourceType::core("", "v1", "pods", "Pod", true, true),
        ResourceType::core("", "v1", "secrets", "Secret", true, false),
        ResourceType::core("", "v1", "configmaps", "ConfigMap", true, false),
        ResourceType::core("apps", "v1", "deployments", "Deployment", true, true),
        ResourceType::core("events.k8s.io", "v1", "events", "Event", true, false),
        // core/v1 Events: a read view of the events.k8s.io/v1 objects (as upstream, one storage).
        ResourceType::core("", "v1", "events", "Event", true, false),
        ResourceType::core(
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            "CustomResourceDefinition",
            false,
            true,
        ),
        ResourceType::core("coordination.k8s.io", "v1", "leases", "Lease", true, false),
    ];
    types
        .into_iter()
        .map(|t| match (t.group.as_str(), t.plural.as_str()) {
            ("", "namespaces") => short(t, &["ns"]),
            ("", "pods") => short(t, &["po"]),
            ("", "configmaps") => short(t, &["cm"]),
            ("", "events") => short(t, &["ev"]),
            ("apps", "deployments") => short(t, &["deploy"]),
            ("apiextensions.k8s.io", _) => short(t, &["crd", "crds"]),
            _ => t,
        })
        .collect()
}

/// One change, as watchers see it.
#[derive(Clone, Debug)]
pub struct WatchEvent {
    /// The resourceVersion the change produced.
    pub rv: u64,
    /// Which kind.
    pub type_idx: usize,
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub kind: &'static str,
    /// The object after the change.
    pub object: Value,
}

/// One request, as the server saw it.
#[derive(Clone, Debug)]
pub struct RequestLog {
    /// Method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Query string.
    pub query: String,
    /// Content type.
    pub content_type: String,
    /// Body.
    pub body: String,
    /// Response status (0 for watches and while in flight).
    pub status: u16,
}

/// What an injected fault does.
#[derive(Clone, Debug)]
pub enum ApiFaultAction {
    /// Answer with this status (a `Status` body).
    Status(u16),
    /// Delay, then serve normally.
    Delay(Duration),
}

/// A fault for the next matching requests.
#[derive(Clone, Debug)]
pub struct ApiFault {
    /// Only this method (`GET`, `PATCH`, …), or any.
    pub method: Option<String>,
    /// Only paths containing this.
    pub path_contains: String,
    /// Only queries containing this (e.g. `watch=true`).
    pub query_contains: Option<String>,
    /// What happens.
    pub action: ApiFaultAction,
    /// How many requests it applies to.
    pub remaining: u32,
}

type Key = (usize, String, String);

/// The server's state.
#[derive(Debug)]
pub struct Store {
    types: Vec<ResourceType>,
    objects: BTreeMap<Key, Value>,
    rv: u64,
    history: VecDeque<Arc<WatchEvent>>,
    floor: u64,
    max_history: usize,
    pending: Vec<Arc<WatchEvent>>,
    uid_counter: u64,
    /// Every request.
    pub log: Vec<RequestLog>,
    /// Pending faults.
    pub faults: Vec<ApiFault>,
    /// Bookmark interval for watches that allow them.
    pub bookmark_every_ms: u64,
    /// `fieldValidation` of the request being served (`Strict` rejects unknown fields).
    field_validation: Option<String>,
}

pub(super) struct PreparedWatch {
    pub initial: Vec<Value>,
    pub start_rv: u64,
    pub filter: WatchFilter,
    pub bookmarks: bool,
    pub bookmark_every_ms: u64,
    pub kind: String,
    pub api_version: String,
}

pub(super) struct WatchFilter {
    type_idx: usize,
    ns: Option<String>,
    labels: Option<LabelSelector>,
    fields: Option<FieldSelector>,
}

impl WatchFilter {
    pub fn matches(&self, ev: &WatchEvent) -> bool {
        ev.type_idx == self.type_idx
            && self
                .ns
                .as_deref()
                .is_none_or(|ns| ev.object.pointer("/metadata/namespace").and_then(Value::as_str) == Some(ns))
            && self.labels.as_ref().is_none_or(|l| l.matches(&ev.object))
            && self.fields.as_ref().is_none_or(|f| f.matches(&ev.object))
    }
}

enum Target {
    Collection {
        t: usize,
        ns: Option<String>,
    },
    Object {
        t: usize,
        ns: Option<String>,
        name: String,
        sub: Option<String>,
    },
    Discovery(Value),
}

fn now() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .unwrap_or_else(|_| jiff::Timestamp::now())
        .to_string()
}

fn ok(v: &Value) -> Response {
    json_response(StatusCode::OK, v)
}

fn not_found(t: &ResourceType, name: &str) -> Response {
    status_error(
        404,
        "NotFound",
        &format!("{}.{} \"{name}\" not found", t.plural, t.group),
        Some(json!({"name": name, "group": t.group, "kind": t.plural})),
    )
}

fn invalid(t: &ResourceType, name: &str, causes: Vec<(String, String)>) -> Response {
    let message = format!(
        "{} \"{name}\" is invalid: {}",
        t.kind,
        causes
            .iter()
            .map(|(f, m)| format!("{f}: {m}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let causes: Vec<Value> = causes
        .into_iter()
        .map(|(f, m)| json!({"reason": "FieldValueInvalid", "message": m, "field": f}))
        .collect();
    status_error(
        422,
        "Invalid",
        &message,
        Some(json!({"name": name, "group": t.group, "kind": t.kind, "causes": causes})),
    )
}

fn meta_str(obj: &Value, field: &str) -> Option<String> {
    obj.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .map(str::to_string)
}

fn finalizers(obj: &Value) -> Vec<String> {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default()
}

/// Everything but metadata and status: a change here bumps `generation`.
fn spec_part(obj: &Value) -> Value {
    let mut o = obj.as_object().cloned().unwrap_or_default();
    for k in ["metadata", "status", "apiVersion", "kind"] {
        o.remove(k);
    }
    Value::Object(o)
}

/// `nullable: true` → `type: [X, "null"]`, so a JSON-schema validator reads OpenAPI v3 right.
fn openapi_to_jsonschema(schema: &Value) -> Value {
    match schema {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                let v = match k.as_str() {
                    "properties" | "patternProperties" | "definitions" => Value::Object(
                        v.as_object()
                            .map(|p| {
                                p.iter()
                                    .map(|(pk, pv)| (pk.clone(), openapi_to_jsonschema(pv)))
                                    .collect()
                            })
                            .unwrap_or_default(),
                    ),
                    "default" | "enum" | "example" | "x-kubernetes-validations" => v.clone(),
                    _ => openapi_to_jsonschema(v),
                };
                out.insert(k.clone(), v);
            }
            if m.get("nullable") == Some(&Value::Bool(true))
                && let Some(Value::String(t)) = m.get("type")
            {
                out.insert("type".into(), json!([t, "null"]));
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(openapi_to_jsonschema).collect()),
        other => other.clone(),
    }
}

/// Drop fields the schema does not declare (structural pruning).
fn prune(schema: &Value, value: &mut Value, root: bool) {
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
        return;
    }
    match value {
        Value::Object(obj) => {
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                obj.retain(|k, _| {
                    props.contains_key(k)
                        || (root && matches!(k.as_str(), "apiVersion" | "kind" | "metadata"))
                });
                for (k, v) in obj.iter_mut() {
                    if let Some(s) = props.get(k) {
                        prune(s, v, false);
                    }
                }
            } else if let Some(additional) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                for v in obj.values_mut() {
                    prune(additional, v, false);
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for v in items {
                    prune(s, v, false);
                }
            }
        }
        _ => {}
    }
}

/// The paths present in `before` but pruned from `after` (what `fieldValidation=Strict` rejects).
fn dropped(before: &Value, after: &Value, path: &str, out: &mut Vec<String>) {
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => {
            for (k, v) in b {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match a.get(k) {
                    None => out.push(p),
                    Some(av) => dropped(v, av, &p, out),
                }
            }
        }
        (Value::Array(b), Value::Array(a)) => {
            for (i, (bv, av)) in b.iter().zip(a).enumerate() {
                dropped(bv, av, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// An events.k8s.io/v1 Event as core/v1 shows it (the field mapping upstream applies).
fn core_event(e: &Value) -> Value {
    let mut m = e["metadata"].clone();
    if let Some(o) = m.as_object_mut() {
        o.remove("managedFields");
    }
    json!({
        "apiVersion": "v1", "kind": "Event", "metadata": m,
        "involvedObject": e["regarding"], "related": e["related"],
        "reason": e["reason"], "message": e["note"], "type": e["type"], "action": e["action"],
        "source": {"component": e["reportingController"], "host": e["deprecatedSource"]["host"]},
        "reportingComponent": e["reportingController"], "reportingInstance": e["reportingInstance"],
        "firstTimestamp": e.get("deprecatedFirstTimestamp").cloned().unwrap_or(Value::Null),
        "lastTimestamp": e.get("deprecatedLastTimestamp").cloned().or_else(|| e.pointer("/series/lastObservedTime").cloned()).unwrap_or(Value::Null),
        "count": e.get("deprecatedCount").cloned().or_else(|| e.pointer("/series/count").cloned()).unwrap_or(json!(1)),
        "eventTime": e["eventTime"], "series": e["series"]
    })
}

/// A JSON patch with `test` ops against absent paths expecting `null` removed (the API server
/// treats an absent member as null; kube-runtime's finalizer helper relies on it).
fn normalise_json_patch(doc: &Value, patch: &Value) -> Value {
    let Some(ops) = patch.as_array() else {
        return patch.clone();
    };
    Value::Array(
        ops.iter()
            .filter(|op| {
                !(op.get("op").and_then(Value::as_str) == Some("test")
                    && op.get("value").is_some_and(Value::is_null)
                    && op
                        .get("path")
                        .and_then(Value::as_str)
                        .is_some_and(|p| doc.pointer(p).is_none()))
            })
            .cloned()
            .collect(),
    )
}

impl Store {
    pub(super) fn new(types: Vec<ResourceType>) -> Self {
        Self {
            types,
            objects: BTreeMap::new(),
            rv: 100,
            history: VecDeque::new(),
            floor: 100,
            max_history: 2000,
            pending: vec![],
            uid_counter: 0,
            log: vec![],
            faults: vec![],
            bookmark_every_ms: 1000,
            field_validation: None,
        }
    }

    /// The current resourceVersion.
    pub fn rv(&self) -> u64 {
        self.rv
    }

    /// Register a CRD's served versions and store the CRD object itself (`Established`).
    pub fn add_crd(&mut self, crd: &Value) {
        let mut obj = crd.clone();
        obj["apiVersion"] = json!("apiextensions.k8s.io/v1");
        obj["kind"] = json!("CustomResourceDefinition");
        if !obj.get("metadata").is_some_and(Value::is_object) {
            obj["metadata"] = json!({});
        }
        if obj.pointer("/metadata/name").is_none() {
            let name = format!(
                "{}.{}",
                crd.pointer("/spec/names/plural")
                    .and_then(Value::as_str)
                    .unwrap_or_default(),
                crd.pointer("/spec/group")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
            );
            obj["metadata"]["name"] = json!(name);
        }
        self.seed(obj);
    }

    /// The kinds served now.
    pub fn types(&self) -> &[ResourceType] {
        &self.types
    }

    /// Serve a CRD's versions (replacing an earlier registration in place: type indices are
    /// keys of stored objects and watch filters, so they never move).
    fn register_crd(&mut self, crd: &Value) {
        let spec = &crd["spec"];
        let names = &spec["names"];
        let strs = |v: &Value| {
            v.as_array()
                .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
                .unwrap_or_default()
        };
        for version in spec["versions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|v| v["served"] != json!(false))
        {
            let ty = ResourceType {
                group: spec["group"].as_str().unwrap_or_default().into(),
                version: version["name"].as_str().unwrap_or_default().into(),
                plural: names["plural"].as_str().unwrap_or_default().into(),
                singular: names["singular"].as_str().unwrap_or_default().into(),
                kind: names["kind"].as_str().unwrap_or_default().into(),
                namespaced: spec["scope"] == "Namespaced",
                status_subresource: version.pointer("/subresources/status").is_some(),
                custom: true,
                schema: version.pointer("/schema/openAPIV3Schema").cloned(),
                short_names: strs(&names["shortNames"]),
                categories: strs(&names["categories"]),
                printer_columns: version["additionalPrinterColumns"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default(),
            };
            match self
                .types
                .iter()
                .position(|t| t.group == ty.group && t.version == ty.version && t.plural == ty.plural)
            {
                Some(i) => self.types[i] = ty,
                None => self.types.push(ty),
            }
        }
    }

    /// Keep at most `n` watch events for replay; older versions answer 410 Gone.
    pub fn set_max_history(&mut self, n: usize) {
        self.max_history = n.max(1);
    }

    /// Forget all history, as etcd compaction does: every watch from an older version gets 410.
    pub fn compact(&mut self) {
        self.floor = self.rv;
        self.history.clear();
    }

    /// Add a fault.
    pub fn inject(&mut self, fault: ApiFault) {
        self.faults.push(fault);
    }

    pub(super) fn take_fault(&mut self, method: &Method, path: &str, query: &str) -> Option<ApiFaultAction> {
        let f = self.faults.iter_mut().find(|f| {
            f.remaining > 0
                && f.method
                    .as_deref()
                    .is_none_or(|m| m.eq_ignore_ascii_case(method.as_str()))
                && path.contains(&f.path_contains)
                && f.query_contains.as_deref().is_none_or(|q| query.contains(q))
        })?;
        f.remaining -= 1;
        Some(f.action.clone())
    }

    pub(super) fn take_pending(&mut self) -> Vec<Arc<WatchEvent>> {
        std::mem::take(&mut self.pending)
    }

    fn type_index(&self, api_version: &str, kind_or_plural: &str) -> Option<usize> {
        self.types.iter().position(|t| {
            t.api_version() == api_version && (t.kind == kind_or_plural || t.plural == kind_or_plural)
        })
    }

    /// An object by `apiVersion`, kind (or plural), namespace and name.
    pub fn get(&self, api_version: &str, kind: &str, ns: &str, name: &str) -> Option<Value> {
        let t = self.type_index(api_version, kind)?;
        self.objects.get(&(t, ns.to_string(), name.to_string())).cloned()
    }

    /// Every object of a kind in a namespace (`""` = all).
    pub fn list(&self, api_version: &str, kind: &str, ns: &str) -> Vec<Value> {
        let Some(t) = self.type_index(api_version, kind) else {
            return vec![];
        };
        self.objects
            .iter()
            .filter(|((ti, ons, _), _)| *ti == t && (ns.is_empty() || ons == ns))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Put an object as another actor would (server metadata is filled in; no validation).
    pub fn seed(&mut self, mut obj: Value) -> Value {
        let api_version = obj["apiVersion"].as_str().unwrap_or_default().to_string();
        let kind = obj["kind"].as_str().unwrap_or_default().to_string();
        let t = self.type_index(&api_version, &kind).expect("known kind");
        let ns = if self.types[t].namespaced {
            meta_str(&obj, "namespace").unwrap_or_else(|| "default".into())
        } else {
            String::new()
        };
        let name = meta_str(&obj, "name").expect("seeded object has a name");
        let key = (t, ns.clone(), name);
        let existing = self.objects.get(&key).cloned();
        let m = obj["metadata"].as_object_mut().expect("metadata");
        if self.types[t].namespaced {
            m.insert("namespace".into(), json!(ns));
        }
        match &existing {
            Some(old) => {
                for k in ["uid", "creationTimestamp"] {
                    if let Some(v) = old["metadata"].get(k) {
                        m.insert(k.into(), v.clone());
                    }
                }
                m.insert("generation".into(), old["metadata"]["generation"].clone());
            }
            None => {
                self.uid_counter += 1;
                m.insert(
                    "uid".into(),
                    json!(format!("00000000-0000-4000-8000-{:012}", self.uid_counter)),
                );
                m.insert("creationTimestamp".into(), json!(now()));
                m.entry("generation").or_insert(json!(1));
            }
        }
        self.commit(key, obj, if existing.is_some() { "MODIFIED" } else { "ADDED" })
    }

    /// Change an object in place as another controller would (a MODIFIED event follows).
    pub fn modify(
        &mut self,
        api_version: &str,
        kind: &str,
        ns: &str,
        name: &str,
        f: impl FnOnce(&mut Value),
    ) -> Option<Value> {
        let t = self.type_index(api_version, kind)?;
        let key = (t, ns.to_string(), name.to_string());
        let mut obj = self.objects.get(&key)?.clone();
        f(&mut obj);
        Some(self.commit(key, obj, "MODIFIED"))
    }

    /// Act as the Deployment controller: the rollout of the current template is complete.
    pub fn mark_deployment_rolled_out(&mut self, ns: &str, name: &str) -> Option<Value> {
        self.modify("apps/v1", "Deployment", ns, name, |d| {
            let replicas = d.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1);
            let generation = d.pointer("/metadata/generation").cloned().unwrap_or(json!(1));
            d["status"] = json!({
                "observedGeneration": generation, "replicas": replicas, "updatedReplicas": replicas,
                "readyReplicas": replicas, "availableReplicas": replicas,
                "conditions": [
                    {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
                    {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}
                ]
            });
        })
    }

    /// Act as the Deployment controller: the rollout passed its progress deadline.
    pub fn fail_deployment_progress(&mut self, ns: &str, name: &str) -> Option<Value> {
        self.modify("apps/v1", "Deployment", ns, name, |d| {
            let generation = d.pointer("/metadata/generation").cloned().unwrap_or(json!(1));
            d["status"] = json!({
                "observedGeneration": generation, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 0,
                "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]
            });
        })
    }

    /// Act as the kubelet: every container of the pod is in CrashLoopBackOff.
    pub fn crashloop_pod(&mut self, ns: &str, name: &str) -> Option<Value> {
        self.modify("v1", "Pod", ns, name, |p| {
            let statuses: Vec<Value> = p
                .pointer("/spec/containers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|c| json!({"name": c["name"], "image": c["image"], "imageID": "", "ready": false, "restartCount": 6,
                                 "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off restarting failed container"}}}))
                .collect();
            p["status"] = json!({"phase": "Running", "containerStatuses": statuses});
        })
    }

    /// Store an object at a new resourceVersion and record the event.
    fn commit(&mut self, key: Key, mut obj: Value, kind: &'static str) -> Value {
        if self.types[key.0].kind == "CustomResourceDefinition" {
            // What the apiextensions controller does: serve it and say so.
            self.register_crd(&obj);
            let names = obj.pointer("/spec/names").cloned().unwrap_or(json!({}));
            obj["status"] = json!({"acceptedNames": names, "storedVersions": [obj.pointer("/spec/versions/0/name").cloned().unwrap_or(json!("v1"))],
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now()},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now()}
            ]});
        }
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("managedFields");
        }
        let t = key.0;
        self.objects.insert(key, obj.clone());
        self.record(t, kind, obj.clone());
        obj
    }

    fn remove(&mut self, key: &Key) -> Option<Value> {
        let mut obj = self.objects.remove(key)?;
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.record(key.0, "DELETED", obj.clone());
        Some(obj)
    }

    fn record(&mut self, type_idx: usize, kind: &'static str, object: Value) {
        let ev = Arc::new(WatchEvent {
            rv: self.rv,
            type_idx,
            kind,
            object,
        });
        self.history.push_back(ev.clone());
        while self.history.len() > self.max_history {
            if let Some(old) = self.history.pop_front() {
                self.floor = old.rv;
            }
        }
        self.pending.push(ev);
    }

    fn discovery(&self, segs: &[&str]) -> Option<Value> {
        let resource_list = |gv: &str| {
            let resources: Vec<Value> = self
                .types
                .iter()
                .filter(|t| t.api_version() == gv)
                .flat_map(|t| {
                    let mut v = vec![json!({"name": t.plural, "singularName": t.singular, "namespaced": t.namespaced, "kind": t.kind,
                        "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
                        "shortNames": t.short_names, "categories": t.categories})];
                    if t.status_subresource {
                        v.push(json!({"name": format!("{}/status", t.plural), "singularName": "", "namespaced": t.namespaced,
                            "kind": t.kind, "verbs": ["get", "patch", "update"]}));
                    }
                    v
                })
                .collect();
            json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
        };
        match segs {
            ["version"] => Some(
                json!({"major": "1", "minor": "37", "gitVersion": "v1.37.0-afk-fake", "gitCommit": "fake",
                "gitTreeState": "clean", "buildDate": "2026-11-21T00:00:00Z", "goVersion": "go1.25", "compiler": "gc", "platform": "linux/amd64"}),
            ),
            ["api"] => Some(
                json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}),
            ),
            ["api", "v1"] => Some(resource_list("v1")),
            ["apis"] => {
                let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
                for t in self.types.iter().filter(|t| !t.group.is_empty()) {
                    let versions = groups.entry(t.group.clone()).or_default();
                    if !versions.contains(&t.version) {
                        versions.push(t.version.clone());
                    }
                }
                let groups: Vec<Value> = groups
                    .iter()
                    .map(|(g, vs)| {
                        let versions: Vec<Value> = vs
                            .iter()
                            .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
                            .collect();
                        json!({"name": g, "versions": versions, "preferredVersion": versions[0]})
                    })
                    .collect();
                Some(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}))
            }
            ["apis", g, v] if self.types.iter().any(|t| t.group == *g && t.version == *v) => {
                Some(resource_list(&format!("{g}/{v}")))
            }
            _ => None,
        }
    }

    fn route(&self, path: &str) -> Option<Target> {
        let segs: Vec<&str> = path
            .trim_matches('/')
            .split('/')
            .filter(|s| !s.is_empty())
            .collect();
        if let Some(d) = self.discovery(&segs) {
            return Some(Target::Discovery(d));
        }
        let (group, version, rest) = match segs.as_slice() {
            ["api", "v1", rest @ ..] => ("", "v1", rest),
            ["apis", g, v, rest @ ..] => (*g, *v, rest),
            _ => return None,
        };
        let find = |plural: &str| {
            self.types
                .iter()
                .position(|t| t.group == group && t.version == version && t.plural == plural)
        };
        match rest {
            ["namespaces", ns, plural] => Some(Target::Collection {
                t: find(plural)?,
                ns: Some(ns.to_string()),
            }),
            ["namespaces", ns, plural, name] => Some(Target::Object {
                t: find(plural)?,
                ns: Some(ns.to_string()),
                name: name.to_string(),
                sub: None,
            }),
            ["namespaces", ns, plural, name, sub] => Some(Target::Object {
                t: find(plural)?,
                ns: Some(ns.to_string()),
                name: name.to_string(),
                sub: Some(sub.to_string()),
            }),
            [plural] => Some(Target::Collection {
                t: find(plural)?,
                ns: None,
            }),
            [plural, name] => Some(Target::Object {
                t: find(plural)?,
                ns: None,
                name: name.to_string(),
                sub: None,
            }),
            [plural, name, sub] => Some(Target::Object {
                t: find(plural)?,
                ns: None,
                name: name.to_string(),
                sub: Some(sub.to_string()),
            }),
            _ => None,
        }
    }

    /// Serve one non-watch request.
    pub(super) fn handle(
        &mut self,
        method: &Method,
        path: &str,
        q: &Query,
        content_type: &str,
        body: &str,
        table: bool,
    ) -> Response {
        self.field_validation = q.field_validation.clone();
        let Some(target) = self.route(path) else {
            return status_error(
                404,
                "NotFound",
                "the server could not find the requested resource",
                None,
            );
        };
        match target {
            Target::Discovery(v) if *method == Method::GET => ok(&v),
            Target::Discovery(_) => status_error(405, "MethodNotAllowed", "method not allowed", None),
            Target::Collection { t, ns } => {
                if ns.is_some() != self.types[t].namespaced && (ns.is_some() || *method != Method::GET) {
                    return status_error(
                        404,
                        "NotFound",
                        "the server could not find the requested resource",
                        None,
                    );
                }
                match *method {
                    Method::GET => self.list_response(t, ns.as_deref(), q, table),
                    Method::POST => self.create(t, ns.as_deref(), body),
                    _ => status_error(405, "MethodNotAllowed", "method not allowed", None),
                }
            }
            Target::Object { t, ns, name, sub } => {
                if ns.is_some() != self.types[t].namespaced {
                    return status_error(
                        404,
                        "NotFound",
                        "the server could not find the requested resource",
                        None,
                    );
                }
                if let Some(s) = &sub
                    && !(s == "status" && self.types[t].status_subresource)
                {
                    return status_error(
                        404,
                        "NotFound",
                        "the server could not find the requested resource",
                        None,
                    );
                }
                let ns = ns.unwrap_or_default();
                let status_sub = sub.is_some();
                match *method {
                    Method::GET => match self.objects.get(&(t, ns, name.clone())) {
                        Some(o) if table && !status_sub => {
                            ok(&table_of(&self.types[t], std::slice::from_ref(o), self.rv))
                        }
                        Some(o) => ok(o),
                        None => not_found(&self.types[t], &name),
                    },
                    Method::PUT => self.replace(t, &ns, &name, status_sub, body),
                    Method::PATCH => self.patch(t, &ns, &name, status_sub, content_type, body, q),
                    Method::DELETE => self.delete(t, &ns, &name),
                    _ => status_error(405, "MethodNotAllowed", "method not allowed", None),
                }
            }
        }
    }

    fn list_response(&self, t: usize, ns: Option<&str>, q: &Query, table: bool) -> Response {
        let labels = match q.label_selector.as_deref().map(LabelSelector::parse).transpose() {
            Ok(l) => l,
            Err(e) => return status_error(400, "BadRequest", &e, None),
        };
        let fields = match q.field_selector.as_deref().map(FieldSelector::parse).transpose() {
            Ok(f) => f,
            Err(e) => return status_error(400, "BadRequest", &e, None),
        };
        let ty = &self.types[t];
        // core/v1 Events are served from the events.k8s.io/v1 objects, converted.
        let view: Vec<Value>;
        let source: Box<dyn Iterator<Item = &Value>> = if ty.group.is_empty() && ty.kind == "Event" {
            let src = self.type_index("events.k8s.io/v1", "Event");
            view = self
                .objects
                .iter()
                .filter(|((ti, ons, _), _)| Some(*ti) == src && ns.is_none_or(|n| n == ons))
                .map(|(_, v)| core_event(v))
                .collect();
            Box::new(view.iter())
        } else {
            Box::new(
                self.objects
                    .iter()
                    .filter(|((ti, ons, _), _)| *ti == t && ns.is_none_or(|n| n == ons))
                    .map(|(_, v)| v),
            )
        };
        let items: Vec<Value> = source
            .filter(|o| {
                labels.as_ref().is_none_or(|l| l.matches(o)) && fields.as_ref().is_none_or(|f| f.matches(o))
            })
            .cloned()
            .collect();
        if table {
            return ok(&table_of(ty, &items, self.rv));
        }
        ok(
            &json!({"kind": format!("{}List", ty.kind), "apiVersion": ty.api_version(),
                   "metadata": {"resourceVersion": self.rv.to_string()}, "items": items}),
        )
    }

    pub(super) fn prepare_watch(&self, path: &str, q: &Query) -> Result<PreparedWatch, Response> {
        let Some(Target::Collection { t, ns }) = self.route(path) else {
            return Err(status_error(
                404,
                "NotFound",
                "the server could not find the requested resource",
                None,
            ));
        };
        let labels = q
            .label_selector
            .as_deref()
            .map(LabelSelector::parse)
            .transpose()
            .map_err(|e| status_error(400, "BadRequest", &e, None))?;
        let fields = q
            .field_selector
            .as_deref()
            .map(FieldSelector::parse)
            .transpose()
            .map_err(|e| status_error(400, "BadRequest", &e, None))?;
        let filter = WatchFilter {
            type_idx: t,
            ns,
            labels,
            fields,
        };
        let ty = &self.types[t];
        let from: Option<u64> = q
            .resource_version
            .as_deref()
            .filter(|v| !v.is_empty() && *v != "0")
            .and_then(|v| v.parse().ok());
        let initial: Vec<Value> = match from {
            None => self
                .objects
                .iter()
                .filter(|((ti, _, _), _)| *ti == t)
                .map(|(_, o)| WatchEvent {
                    rv: 0,
                    type_idx: t,
                    kind: "ADDED",
                    object: o.clone(),
                })
                .filter(|e| filter.matches(e))
                .map(|e| json!({"type": "ADDED", "object": e.object}))
                .collect(),
            Some(n) if n < self.floor => {
                let gone = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": format!("too old resource version: {n} ({})", self.floor), "reason": "Expired", "code": 410}});
                return Ok(PreparedWatch {
                    initial: vec![gone],
                    start_rv: u64::MAX,
                    filter,
                    bookmarks: false,
                    bookmark_every_ms: self.bookmark_every_ms,
                    kind: ty.kind.clone(),
                    api_version: ty.api_version(),
                });
            }
            Some(n) => self
                .history
                .iter()
                .filter(|e| e.rv > n && filter.matches(e))
                .map(|e| json!({"type": e.kind, "object": e.object}))
                .collect(),
        };
        Ok(PreparedWatch {
            initial,
            start_rv: self.rv,
            filter,
            bookmarks: q.allow_bookmarks,
            bookmark_every_ms: self.bookmark_every_ms,
            kind: ty.kind.clone(),
            api_version: ty.api_version(),
        })
    }

    /// Defaulting, pruning, structural and CEL validation for custom resources.
    fn admit(&self, t: usize, obj: Value, old: Option<&Value>) -> Result<Value, Response> {
        let ty = &self.types[t];
        let Some(schema) = ty.schema.as_ref().filter(|_| ty.custom) else {
            return Ok(obj);
        };
        let name = meta_str(&obj, "name").unwrap_or_default();
        let mut obj = kube::core::cel::apply_defaults(schema, &obj);
        let before = obj.clone();
        prune(schema, &mut obj, true);
        if self.field_validation.as_deref() == Some("Strict") {
            let mut unknown = vec![];
            dropped(&before, &obj, "", &mut unknown);
            if !unknown.is_empty() {
                let list = unknown
                    .iter()
                    .map(|f| format!("unknown field \"{f}\""))
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(status_error(
                    400,
                    "BadRequest",
                    &format!(
                        "{} in version \"{}\" cannot be handled as a {}: strict decoding error: {list}",
                        ty.kind, ty.version, ty.kind
                    ),
                    None,
                ));
            }
        }
        let js = openapi_to_jsonschema(schema);
        let validator = jsonschema::draft4::new(&js)
            .map_err(|e| status_error(500, "InternalError", &format!("bad CRD schema: {e}"), None))?;
        let causes: Vec<(String, String)> = validator
            .iter_errors(&obj)
            .map(|e| {
                let field = e
                    .instance_path
                    .to_string()
                    .trim_start_matches('/')
                    .replace('/', ".");
                (field, e.to_string())
            })
            .collect();
        if !causes.is_empty() {
            return Err(invalid(ty, &name, causes));
        }
        if let Err(errors) = kube::core::cel::Validator::new().validate(schema, &obj, old) {
            let causes = errors
                .as_slice()
                .iter()
                .map(|e| (e.field_path.clone(), e.message.clone()))
                .collect();
            return Err(invalid(ty, &name, causes));
        }
        Ok(obj)
    }

    fn create(&mut self, t: usize, ns: Option<&str>, body: &str) -> Response {
        let Ok(mut obj) = serde_json::from_str::<Value>(body) else {
            return status_error(400, "BadRequest", "the request body is not a valid object", None);
        };
        if !obj.get("metadata").is_some_and(Value::is_object) {
            obj["metadata"] = json!({});
        }
        match self.create_object(t, ns.unwrap_or(""), obj) {
            Ok(o) => json_response(StatusCode::CREATED, &o),
            Err(r) => r,
        }
    }

    fn create_object(&mut self, t: usize, ns: &str, mut obj: Value) -> Result<Value, Response> {
        let ty = self.types[t].clone();
        if let Some(body_ns) = meta_str(&obj, "namespace").filter(|n| !n.is_empty())
            && ty.namespaced
            && body_ns != ns
        {
            return Err(status_error(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on the request",
                None,
            ));
        }
        let name = match (meta_str(&obj, "name"), meta_str(&obj, "generateName")) {
            (Some(n), _) if !n.is_empty() => n,
            (_, Some(prefix)) => {
                self.uid_counter += 1;
                format!("{prefix}{:05x}", self.uid_counter)
            }
            _ => {
                return Err(invalid(
                    &ty,
                    "",
                    vec![(
                        "metadata.name".into(),
                        "Required value: name or generateName is required".into(),
                    )],
                ));
            }
        };
        let key = (t, ns.to_string(), name.clone());
        if self.objects.contains_key(&key) {
            return Err(status_error(
                409,
                "AlreadyExists",
                &format!("{}.{} \"{name}\" already exists", ty.plural, ty.group),
                Some(json!({"name": name, "group": ty.group, "kind": ty.plural})),
            ));
        }
        obj["apiVersion"] = json!(ty.api_version());
        obj["kind"] = json!(ty.kind);
        // Built-in defaulting the operator and kubectl rely on.
        if ty.group.is_empty() && ty.kind == "Secret" && obj["type"].as_str().is_none_or(str::is_empty) {
            obj["type"] = json!("Opaque");
        }
        if ty.status_subresource
            && let Some(o) = obj.as_object_mut()
        {
            o.remove("status");
        }
        self.uid_counter += 1;
        let m = obj["metadata"].as_object_mut().expect("metadata object");
        m.insert("name".into(), json!(name));
        if ty.namespaced {
            m.insert("namespace".into(), json!(ns));
        }
        m.insert(
            "uid".into(),
            json!(format!("00000000-0000-4000-8000-{:012}", self.uid_counter)),
        );
        m.insert("creationTimestamp".into(), json!(now()));
        m.insert("generation".into(), json!(1));
        for k in ["deletionTimestamp", "resourceVersion"] {
            m.remove(k);
        }
        let obj = self.admit(t, obj, None)?;
        Ok(self.commit(key, obj, "ADDED"))
    }

    fn replace(&mut self, t: usize, ns: &str, name: &str, status_sub: bool, body: &str) -> Response {
        let Ok(new) = serde_json::from_str::<Value>(body) else {
            return status_error(400, "BadRequest", "the request body is not a valid object", None);
        };
        match self.update(t, ns, name, status_sub, new, true) {
            Ok(o) => ok(&o),
            Err(r) => r,
        }
    }

    /// The shared update path for PUT and PATCH.
    fn update(
        &mut self,
        t: usize,
        ns: &str,
        name: &str,
        status_sub: bool,
        mut new: Value,
        check_rv: bool,
    ) -> Result<Value, Response> {
        let ty = self.types[t].clone();
        let key = (t, ns.to_string(), name.to_string());
        let Some(old) = self.objects.get(&key).cloned() else {
            return Err(not_found(&ty, name));
        };
        if check_rv
            && let Some(rv) = meta_str(&new, "resourceVersion")
            && Some(rv) != meta_str(&old, "resourceVersion")
        {
            return Err(status_error(
                409,
                "Conflict",
                &format!(
                    "Operation cannot be fulfilled on {}.{} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                    ty.plural, ty.group
                ),
                Some(json!({"name": name, "group": ty.group, "kind": ty.plural})),
            ));
        }
        if meta_str(&new, "name").is_some_and(|n| n != name) {
            return Err(status_error(
                400,
                "BadRequest",
                "the name of the object does not match the name on the URL",
                None,
            ));
        }
        let mut next = if status_sub {
            // /status writes change only .status.
            let mut o = old.clone();
            o["status"] = new.get("status").cloned().unwrap_or(Value::Null);
            if o["status"].is_null()
                && let Some(m) = o.as_object_mut()
            {
                m.remove("status");
            }
            o
        } else {
            if ty.status_subresource {
                match old.get("status") {
                    Some(s) => new["status"] = s.clone(),
                    None => {
                        if let Some(m) = new.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
            }
            if !new.get("metadata").is_some_and(Value::is_object) {
                new["metadata"] = json!({});
            }
            for k in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "namespace",
                "name",
                "generation",
            ] {
                match old["metadata"].get(k) {
                    Some(v) => new["metadata"][k] = v.clone(),
                    None => {
                        if let Some(m) = new["metadata"].as_object_mut() {
                            m.remove(k);
                        }
                    }
                }
            }
            new["apiVersion"] = json!(ty.api_version());
            new["kind"] = json!(ty.kind);
            new
        };
        // Finalizer rules of a deleting object.
        let deleting = old.pointer("/metadata/deletionTimestamp").is_some();
        let old_f = finalizers(&old);
        let new_f = finalizers(&next);
        if deleting && new_f.iter().any(|f| !old_f.contains(f)) {
            return Err(invalid(
                &ty,
                name,
                vec![(
                    "metadata.finalizers".into(),
                    "Forbidden: no new finalizers can be added if the object is being deleted".into(),
                )],
            ));
        }
        let next_admitted = self.admit(t, next.clone(), Some(&old))?;
        next = next_admitted;
        if !status_sub && spec_part(&next) != spec_part(&old) {
            let g = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            next["metadata"]["generation"] = json!(g + 1);
        }
        if deleting && new_f.is_empty() {
            self.objects.insert(key.clone(), next);
            return Ok(self.remove(&key).expect("present"));
        }
        let mut stripped_old = old.clone();
        stripped_old["metadata"]["resourceVersion"] = Value::Null;
        let mut stripped_next = next.clone();
        stripped_next["metadata"]["resourceVersion"] = Value::Null;
        if stripped_old == stripped_next {
            // A no-op write does not bump the version (as the real server).
            return Ok(old);
        }
        Ok(self.commit(key, next, "MODIFIED"))
    }

    #[allow(clippy::too_many_arguments)]
    fn patch(
        &mut self,
        t: usize,
        ns: &str,
        name: &str,
        status_sub: bool,
        content_type: &str,
        body: &str,
        q: &Query,
    ) -> Response {
        let ty = self.types[t].clone();
        let ct = content_type.split(';').next().unwrap_or("").trim();
        let key = (t, ns.to_string(), name.to_string());
        let old = self.objects.get(&key).cloned();
        let patched = match ct {
            "application/strategic-merge-patch+json" if ty.custom => {
                return status_error(
                    415,
                    "UnsupportedMediaType",
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
                    None,
                );
            }
            "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
                let Some(old) = old else {
                    return not_found(&ty, name);
                };
                let Ok(p) = serde_json::from_str::<Value>(body) else {
                    return status_error(400, "BadRequest", "invalid merge patch", None);
                };
                let mut doc = old;
                json_patch::merge(&mut doc, &p);
                doc
            }
            "application/json-patch+json" => {
                let Some(old) = old else {
                    return not_found(&ty, name);
                };
                let Ok(raw) = serde_json::from_str::<Value>(body) else {
                    return status_error(400, "BadRequest", "invalid json patch", None);
                };
                let raw = normalise_json_patch(&old, &raw);
                let Ok(p) = serde_json::from_value::<json_patch::Patch>(raw) else {
                    return status_error(400, "BadRequest", "invalid json patch", None);
                };
                let mut doc = old;
                if let Err(e) = json_patch::patch(&mut doc, &p) {
                    return status_error(
                        422,
                        "Invalid",
                        &format!("the server rejected our request due to an error in our request: {e}"),
                        None,
                    );
                }
                doc
            }
            "application/apply-patch+yaml" | "application/apply-patch+json" => {
                if q.field_manager.is_none() {
                    return status_error(
                        422,
                        "Invalid",
                        "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
                        None,
                    );
                }
                let Ok(applied) = serde_yaml::from_str::<Value>(body) else {
                    return status_error(400, "BadRequest", "invalid apply patch", None);
                };
                match old {
                    // Applying to /status replaces the status: exactly what server-side apply
                    // does for a sole field manager (fields it omits are removed).
                    Some(mut doc) if status_sub => {
                        doc["status"] = applied.get("status").cloned().unwrap_or(Value::Null);
                        doc
                    }
                    Some(old) => {
                        let mut doc = old;
                        json_patch::merge(&mut doc, &applied);
                        doc
                    }
                    None if status_sub => return not_found(&ty, name),
                    None => {
                        let mut obj = applied;
                        if !obj.get("metadata").is_some_and(Value::is_object) {
                            obj["metadata"] = json!({});
                        }
                        obj["metadata"]["name"] = json!(name);
                        return match self.create_object(t, ns, obj) {
                            Ok(o) => json_response(StatusCode::CREATED, &o),
                            Err(r) => r,
                        };
                    }
                }
            }
            other => {
                return status_error(
                    415,
                    "UnsupportedMediaType",
                    &format!("unsupported patch type {other:?}"),
                    None,
                );
            }
        };
        match self.update(t, ns, name, status_sub, patched, true) {
            Ok(o) => ok(&o),
            Err(r) => r,
        }
    }

    fn delete(&mut self, t: usize, ns: &str, name: &str) -> Response {
        let ty = self.types[t].clone();
        let key = (t, ns.to_string(), name.to_string());
        let Some(mut obj) = self.objects.get(&key).cloned() else {
            return not_found(&ty, name);
        };
        if finalizers(&obj).is_empty() {
            let removed = self.remove(&key).expect("present");
            return ok(&removed);
        }
        if obj.pointer("/metadata/deletionTimestamp").is_some() {
            return ok(&obj);
        }
        obj["metadata"]["deletionTimestamp"] = json!(now());
        obj["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        let obj = self.commit(key, obj, "MODIFIED");
        ok(&obj)
    }
}

/// Evaluate the simple JSONPath forms printer columns use: `.a.b.c` and
/// `.a.list[?(@.key=="value")].field`.
fn json_path(obj: &Value, path: &str) -> Option<Value> {
    let mut cur = obj.clone();
    let mut rest = path.trim_start_matches('.');
    while !rest.is_empty() {
        let end = rest.find(['.', '[']).unwrap_or(rest.len());
        let key = &rest[..end];
        if !key.is_empty() {
            cur = cur.get(key)?.clone();
        }
        rest = &rest[end..];
        if let Some(filter) = rest.strip_prefix("[?(@.") {
            let close = filter.find(")]")?;
            let (cond, after) = (&filter[..close], &filter[close + 2..]);
            let (field, want) = cond.split_once("==")?;
            let want = want.trim().trim_matches('"').trim_matches('\'');
            cur = cur
                .as_array()?
                .iter()
                .find(|e| e.get(field.trim()).and_then(Value::as_str) == Some(want))?
                .clone();
            rest = after;
        }
        rest = rest.strip_prefix('.').unwrap_or(rest);
    }
    Some(cur)
}

fn age(ts: &str) -> String {
    let Ok(t) = ts.parse::<jiff::Timestamp>() else {
        return "<unknown>".into();
    };
    let secs = jiff::Timestamp::now().duration_since(t).as_secs().max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 3 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// A `meta.k8s.io/v1` Table, as `kubectl get` asks for, from the CRD's printer columns.
fn table_of(ty: &ResourceType, items: &[Value], rv: u64) -> Value {
    let mut columns = vec![
        json!({"name": "Name", "type": "string", "format": "name", "description": "Name of the object", "priority": 0}),
    ];
    let printer: Vec<Value> = if ty.printer_columns.is_empty() {
        vec![json!({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"})]
    } else {
        ty.printer_columns.clone()
    };
    for c in &printer {
        columns.push(json!({"name": c["name"], "type": c["type"], "format": c.get("format").cloned().unwrap_or(json!("")),
                            "description": c.get("description").cloned().unwrap_or(json!("")), "priority": c.get("priority").cloned().unwrap_or(json!(0))}));
    }
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            let mut cells = vec![o["metadata"]["name"].clone()];
            for c in &printer {
                let v = json_path(o, c["jsonPath"].as_str().unwrap_or("")).unwrap_or(Value::Null);
                cells.push(match (c["type"].as_str(), &v) {
                    (Some("date"), Value::String(ts)) => json!(age(ts)),
                    _ => v,
                });
            }
            json!({"cells": cells, "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]}})
        })
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": rv.to_string()}, "columnDefinitions": columns, "rows": rows})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printer_column_paths() {
        let o = json!({"spec": {"repo": "a/b"}, "status": {"conditions": [{"type": "Ready", "status": "False"}, {"type": "Armed", "status": "True"}]}});
        assert_eq!(json_path(&o, ".spec.repo"), Some(json!("a/b")));
        assert_eq!(
            json_path(&o, ".status.conditions[?(@.type==\"Armed\")].status"),
            Some(json!("True"))
        );
        assert_eq!(json_path(&o, ".status.missing"), None);
    }
}
