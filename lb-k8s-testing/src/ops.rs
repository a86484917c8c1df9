//! The API's verbs on the store, with the semantics of kube-apiserver: create refuses an
//! existing name; update and patch honour a resourceVersion precondition (`409 Conflict`
//! when stale) and keep what the subresource they go through does not own (an update of the
//! object keeps its status, a write of `status` keeps the rest); a write that changes nothing
//! makes no new resourceVersion; delete of an object with finalizers only marks it
//! (`deletionTimestamp`), and it goes when its last finalizer does.

use serde_json::{json, Value};

use super::patch;
use super::rules::{self, Policy};
use super::store::{ApiError, Kind, ObjectId, Store, Write};

/// The part of an object a write goes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// The object: its status is kept.
    Main,
    /// The `status` subresource: only the status changes.
    Status,
}

/// A patch, by its content type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    /// `application/merge-patch+json`.
    Merge,
    /// `application/json-patch+json`.
    Json,
}

impl PatchType {
    /// From the request's Content-Type; `None` for a type the server does not apply.
    pub fn from_content_type(content_type: &str) -> Option<Self> {
        match content_type.split(';').next().map(str::trim) {
            Some("application/merge-patch+json") => Some(PatchType::Merge),
            Some("application/json-patch+json") => Some(PatchType::Json),
            _ => None,
        }
    }
}

/// The verbs, over one store.
pub(crate) struct Api<'a> {
    /// The objects.
    pub store: &'a Store,
    /// What the server admits.
    pub policy: &'a Policy,
}

fn conflict(id: &ObjectId) -> ApiError {
    ApiError {
        code: 409,
        reason: "Conflict",
        message: format!(
            "Operation cannot be fulfilled on {} \"{}\": the object has been modified; please apply your changes to the latest version and try again",
            id.0.plural(),
            id.2
        ),
    }
}

fn has_status(kind: Kind) -> bool {
    matches!(kind, Kind::Service | Kind::Node)
}

impl Api<'_> {
    /// POST: a new object.
    pub(crate) fn create(&self, id: &ObjectId, mut object: Value) -> Result<Value, ApiError> {
        check_identity(id, &mut object)?;
        let meta = &mut object["metadata"];
        if let Some(meta) = meta.as_object_mut() {
            for server_owned in [
                "resourceVersion",
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "generation",
            ] {
                meta.remove(server_owned);
            }
        }
        object["metadata"]["generation"] = json!(1);
        self.store
            .write(id, |current, all| {
                if current.is_some() {
                    return Err(ApiError {
                        code: 409,
                        reason: "AlreadyExists",
                        message: format!("{} \"{}\" already exists", id.0.plural(), id.2),
                    });
                }
                rules::admit(id.0, None, &mut object, all, self.policy)?;
                Ok(Write::Put(object))
            })
            .map(|written| written.into_object())
    }

    /// PUT: the object replaced by `object`, which must carry the resourceVersion it was read
    /// at (Services and Leases must; other kinds may leave it out for an unconditional update).
    pub(crate) fn replace(
        &self,
        id: &ObjectId,
        part: Part,
        mut object: Value,
    ) -> Result<Value, ApiError> {
        check_identity(id, &mut object)?;
        let precondition = object["metadata"]["resourceVersion"]
            .as_str()
            .map(str::to_owned);
        // Kinds whose strategy refuses an unconditional update (Services, Leases: a lease
        // written without its version could take it from the holder unseen).
        if precondition.is_none() && matches!(id.0, Kind::Service | Kind::Lease) {
            return Err(ApiError::invalid(format!(
                "{} \"{}\" is invalid: metadata.resourceVersion: Invalid value: 0x0: must be specified for an update",
                id.0.qualified_name(),
                id.2
            )));
        }
        self.update(id, part, precondition, |_| Ok(object))
    }

    /// PATCH: `patch` applied to the object as it is now; a resourceVersion in the result is a
    /// precondition.
    pub(crate) fn patch(
        &self,
        id: &ObjectId,
        part: Part,
        kind: PatchType,
        body: &Value,
    ) -> Result<Value, ApiError> {
        let precondition = match kind {
            PatchType::Merge => body["metadata"]["resourceVersion"]
                .as_str()
                .map(str::to_owned),
            PatchType::Json => None,
        };
        self.update(id, part, precondition, |current| {
            let mut object = current.clone();
            match kind {
                PatchType::Merge => patch::merge(&mut object, body),
                PatchType::Json => patch::json_patch(&mut object, body).map_err(|e| ApiError {
                    code: 422,
                    reason: "Invalid",
                    message: format!(
                        "the server rejected our request due to an error in our request: {e}"
                    ),
                })?,
            }
            Ok(object)
        })
    }

    fn update(
        &self,
        id: &ObjectId,
        part: Part,
        precondition: Option<String>,
        make: impl FnOnce(&Value) -> Result<Value, ApiError>,
    ) -> Result<Value, ApiError> {
        self.store
            .write(id, |current, all| {
                let Some(current) = current else {
                    return Err(ApiError::not_found(id));
                };
                if precondition
                    .as_deref()
                    .is_some_and(|rv| Some(rv) != current["metadata"]["resourceVersion"].as_str())
                {
                    return Err(conflict(id));
                }
                let mut object = make(current)?;
                check_identity(id, &mut object)?;
                let object = match part {
                    Part::Status => {
                        let mut kept = current.clone();
                        kept["status"] = object["status"].take();
                        rules::admit_status(id.0, &mut kept)?;
                        kept
                    }
                    Part::Main => {
                        keep_server_fields(current, &mut object);
                        if has_status(id.0) && id.0 != Kind::Service {
                            object["status"] = current["status"].clone();
                        }
                        check_finalizers(current, &object)?;
                        rules::admit(id.0, Some(current), &mut object, all, self.policy)?;
                        // Compared once defaulted: a spec sent without what the server
                        // defaults is the same spec, and only the spec makes a generation.
                        if object.get("spec") != current.get("spec") {
                            let generation =
                                current["metadata"]["generation"].as_i64().unwrap_or(1);
                            object["metadata"]["generation"] = json!(generation + 1);
                        }
                        object
                    }
                };
                if same_object(current, &object) {
                    // kube-apiserver writes nothing and keeps the resourceVersion.
                    return Ok(Write::Keep);
                }
                let finalized = object["metadata"]["deletionTimestamp"].is_string()
                    && object["metadata"]["finalizers"]
                        .as_array()
                        .is_none_or(Vec::is_empty);
                // When the last finalizer goes, so does the object.
                Ok(if finalized {
                    Write::Remove
                } else {
                    Write::Put(object)
                })
            })
            .map(|written| written.into_object())
    }

    /// DELETE: the object goes, or, while it has finalizers, is marked as being deleted.
    pub(crate) fn delete(&self, id: &ObjectId) -> Result<Value, ApiError> {
        self.store
            .write(id, |current, _| {
                let Some(current) = current else {
                    return Err(ApiError::not_found(id));
                };
                if current["metadata"]["finalizers"]
                    .as_array()
                    .is_none_or(Vec::is_empty)
                {
                    return Ok(Write::Remove);
                }
                if current["metadata"]["deletionTimestamp"].is_string() {
                    return Ok(Write::Keep);
                }
                let mut marked = current.clone();
                marked["metadata"]["deletionTimestamp"] = json!(crate::now_rfc3339());
                marked["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                Ok(Write::Put(marked))
            })
            .map(|written| written.into_object())
    }
}

/// The object's kind, namespace and name must be those of the request's path.
fn check_identity(id: &ObjectId, object: &mut Value) -> Result<(), ApiError> {
    if !object.is_object() {
        return Err(ApiError::bad_request(
            "the body of the request is not a JSON object",
        ));
    }
    match &object["metadata"] {
        Value::Object(_) => {}
        Value::Null => object["metadata"] = json!({}),
        _ => return Err(ApiError::bad_request("metadata is not a JSON object")),
    }
    if let Some(kind) = object["kind"].as_str() {
        if kind != id.0.name() {
            return Err(ApiError::bad_request(format!(
                "kind {kind} does not match {}",
                id.0.name()
            )));
        }
    }
    match object["metadata"]["namespace"].as_str() {
        Some(ns) if ns != id.1 && !ns.is_empty() => return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        )),
        _ if id.0.namespaced() => object["metadata"]["namespace"] = json!(id.1),
        _ => {}
    }
    match object["metadata"]["name"].as_str() {
        Some(name) if name != id.2 => Err(ApiError::bad_request(
            "the name of the object does not match the name on the URL",
        )),
        _ => {
            object["metadata"]["name"] = json!(id.2);
            Ok(())
        }
    }
}

/// What clients cannot change: identity, creation time, deletion mark.
fn keep_server_fields(current: &Value, object: &mut Value) {
    for field in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
    ] {
        match current["metadata"].get(field) {
            Some(value) => object["metadata"][field] = value.clone(),
            None => {
                if let Some(meta) = object["metadata"].as_object_mut() {
                    meta.remove(field);
                }
            }
        }
    }
}

/// An object being deleted takes no new finalizers.
fn check_finalizers(current: &Value, object: &Value) -> Result<(), ApiError> {
    if !current["metadata"]["deletionTimestamp"].is_string() {
        return Ok(());
    }
    let before: Vec<&Value> = current["metadata"]["finalizers"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    let added = object["metadata"]["finalizers"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|f| !before.contains(&f));
    if added {
        return Err(ApiError::invalid(
            "metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted",
        ));
    }
    Ok(())
}

fn same_object(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(meta) = v["metadata"].as_object_mut() {
            meta.remove("resourceVersion");
        }
        v
    };
    strip(a) == strip(b)
}
