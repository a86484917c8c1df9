//! The patch types the API server applies: JSON merge patch (RFC 7386) and JSON patch
//! (RFC 6902, with `test`). A failed `test` or a path that does not exist is an error, which
//! the server answers with 422 as the real one does.

use serde_json::Value;

/// RFC 7386: `patch` merged into `target`; `null` removes a member.
pub(crate) fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let Value::Object(target) = target else {
        return;
    };
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            merge(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// RFC 6902: applies every operation of `ops` to `target`, or none of them.
pub(crate) fn json_patch(target: &mut Value, ops: &Value) -> Result<(), String> {
    let Value::Array(ops) = ops else {
        return Err("a JSON patch must be an array of operations".into());
    };
    let mut work = target.clone();
    for (i, op) in ops.iter().enumerate() {
        apply_op(&mut work, op).map_err(|e| format!("operation {i}: {e}"))?;
    }
    *target = work;
    Ok(())
}

fn apply_op(doc: &mut Value, op: &Value) -> Result<(), String> {
    let name = op["op"].as_str().ok_or("missing `op`")?;
    let path = op["path"].as_str().ok_or("missing `path`")?;
    let value = || op.get("value").cloned().ok_or("missing `value`");
    match name {
        "add" => add(doc, path, value()?),
        "remove" => remove(doc, path).map(drop),
        "replace" => {
            remove(doc, path)?;
            add(doc, path, value()?)
        }
        "test" => {
            // A missing member tests equal to null, as the API server's json-patch library has it.
            let found = pointer(doc, path)?.cloned().unwrap_or(Value::Null);
            if found == value()? {
                Ok(())
            } else {
                Err(format!("testing value {path} failed"))
            }
        }
        "move" | "copy" => {
            let from = op["from"].as_str().ok_or("missing `from`")?;
            let moved = if name == "move" {
                remove(doc, from)?
            } else {
                pointer(doc, from)?
                    .cloned()
                    .ok_or_else(|| format!("{from}: no such member"))?
            };
            add(doc, path, moved)
        }
        other => Err(format!("unknown operation `{other}`")),
    }
}

/// The tokens of a JSON pointer, unescaped.
fn tokens(path: &str) -> Result<Vec<String>, String> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| format!("`{path}` is not a JSON pointer"))?;
    Ok(rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

/// The value at `path`: `Ok(None)` when its last member is missing, `Err` when its parent is.
fn pointer<'a>(doc: &'a Value, path: &str) -> Result<Option<&'a Value>, String> {
    let tokens = tokens(path)?;
    let mut here = doc;
    for (i, token) in tokens.iter().enumerate() {
        let next = match here {
            Value::Object(map) => map.get(token),
            Value::Array(items) => token.parse::<usize>().ok().and_then(|n| items.get(n)),
            _ => None,
        };
        match next {
            Some(value) => here = value,
            None if i + 1 == tokens.len() => return Ok(None),
            None => return Err(format!("{path}: no such member")),
        }
    }
    Ok(Some(here))
}

/// The container holding the last token of `path`, and that token.
fn parent<'a>(doc: &'a mut Value, path: &str) -> Result<(&'a mut Value, String), String> {
    let mut tokens = tokens(path)?;
    let last = tokens
        .pop()
        .ok_or("the whole document cannot be replaced")?;
    let mut here = doc;
    for token in &tokens {
        here = match here {
            Value::Object(map) => map.get_mut(token),
            Value::Array(items) => token.parse::<usize>().ok().and_then(|n| items.get_mut(n)),
            _ => None,
        }
        .ok_or_else(|| format!("{path}: no such member"))?;
    }
    Ok((here, last))
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), String> {
    let (container, last) = parent(doc, path)?;
    match container {
        Value::Object(map) => {
            map.insert(last, value);
            Ok(())
        }
        Value::Array(items) => {
            let at = if last == "-" {
                items.len()
            } else {
                last.parse::<usize>()
                    .ok()
                    .filter(|n| *n <= items.len())
                    .ok_or_else(|| format!("{path}: index out of range"))?
            };
            items.insert(at, value);
            Ok(())
        }
        _ => Err(format!("{path}: parent is not an object or array")),
    }
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, String> {
    let (container, last) = parent(doc, path)?;
    match container {
        Value::Object(map) => map
            .remove(&last)
            .ok_or_else(|| format!("{path}: no such member")),
        Value::Array(items) => {
            let at = last
                .parse::<usize>()
                .ok()
                .filter(|n| *n < items.len())
                .ok_or_else(|| format!("{path}: index out of range"))?;
            Ok(items.remove(at))
        }
        _ => Err(format!("{path}: parent is not an object or array")),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn merge_patch_sets_and_removes_members() {
        let mut doc = json!({"a": {"b": 1, "c": 2}, "d": [1]});
        merge(&mut doc, &json!({"a": {"b": null, "e": 3}, "d": [2]}));
        assert_eq!(doc, json!({"a": {"c": 2, "e": 3}, "d": [2]}));
    }

    #[test]
    fn finalizer_patches_as_kube_runtime_sends_them() {
        let mut doc = json!({"metadata": {"name": "x"}});
        json_patch(
            &mut doc,
            &json!([{"op":"test","path":"/metadata/finalizers","value":null},
                    {"op":"add","path":"/metadata/finalizers","value":["f"]}]),
        )
        .expect("add");
        assert_eq!(doc["metadata"]["finalizers"], json!(["f"]));
        json_patch(
            &mut doc,
            &json!([{"op":"test","path":"/metadata/finalizers/0","value":"f"},
                    {"op":"remove","path":"/metadata/finalizers/0"}]),
        )
        .expect("remove");
        assert_eq!(doc["metadata"]["finalizers"], json!([]));
    }

    #[test]
    fn a_failed_test_changes_nothing() {
        let mut doc = json!({"metadata": {"finalizers": ["other"]}});
        let before = doc.clone();
        let err = json_patch(
            &mut doc,
            &json!([{"op":"add","path":"/metadata/finalizers/-","value":"f"},
                    {"op":"test","path":"/metadata/finalizers","value":null}]),
        )
        .expect_err("test fails");
        assert!(err.contains("testing value"), "{err}");
        assert_eq!(doc, before);
    }

    #[test]
    fn paths_into_missing_parents_are_errors() {
        let mut doc = json!({});
        assert!(json_patch(&mut doc, &json!([{"op":"add","path":"/a/b","value":1}])).is_err());
        assert!(json_patch(&mut doc, &json!([{"op":"remove","path":"/a"}])).is_err());
    }
}
