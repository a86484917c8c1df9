//! The API server's HTTP side: the paths and verbs of the Kubernetes API for the kinds the
//! store keeps, JSON bodies, `Status` errors, lists with `limit`/`continue`, and watch streams
//! (one JSON event per line, bookmarks, `410 Gone` as an `ERROR` event when a resourceVersion
//! has expired), each checked against a bearer token.

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};

use super::ops::{Api, Part, PatchType};
use super::rules::Policy;
use super::select::Selector;
use super::store::{ApiError, Change, ChangeType, Kind, ObjectId, Page, Store};

/// A request the server answered, for tests to assert on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// Its method.
    pub method: Method,
    /// Its path, without the query.
    pub path: String,
    /// Its query string.
    pub query: String,
    /// The status it was answered with.
    pub status: u16,
}

/// An answer forced on the next requests that match, to test how clients cope.
#[derive(Clone, Debug)]
pub struct Fault {
    /// Requests with this method...
    pub method: Method,
    /// ...whose path contains this...
    pub path_contains: String,
    /// ...are answered with this status...
    pub status: u16,
    /// ...this many times.
    pub times: usize,
}

/// What every connection shares.
pub(crate) struct Shared {
    /// The objects.
    pub store: Store,
    /// What writes may carry.
    pub policy: Policy,
    /// The bearer token clients must send.
    pub token: String,
    /// How often watches that allow bookmarks get one.
    pub bookmark_every: Duration,
    /// Requests answered, in order.
    pub seen: Mutex<Vec<Seen>>,
    /// Faults still to inject.
    pub faults: Mutex<Vec<Fault>>,
}

/// A response body: whole, or a stream of watch events.
pub(crate) enum ApiBody {
    /// A whole body.
    Full(Option<Bytes>),
    /// Lines as they come; the stream ends when the sender goes.
    Stream(mpsc::Receiver<Bytes>),
}

impl Body for ApiBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match &mut *self {
            ApiBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ApiBody::Stream(lines) => lines
                .poll_recv(cx)
                .map(|line| line.map(|b| Ok(Frame::data(b)))),
        }
    }
}

fn json_response(status: u16, body: &Value) -> Response<ApiBody> {
    let mut response = Response::new(ApiBody::Full(Some(Bytes::from(body.to_string()))));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

fn error_response(error: &ApiError) -> Response<ApiBody> {
    json_response(error.code, &error.status())
}

/// Answers one request.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<ApiBody>, Infallible> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or_default().to_owned();
    let response = match answer(&shared, request).await {
        Ok(response) => response,
        Err(error) => error_response(&error),
    };
    let seen = Seen {
        method,
        path,
        query,
        status: response.status().as_u16(),
    };
    shared
        .seen
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(seen);
    Ok(response)
}

async fn answer(
    shared: &Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<ApiBody>, ApiError> {
    let authorized = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {}", shared.token));
    if !authorized {
        return Err(ApiError {
            code: 401,
            reason: "Unauthorized",
            message: "Unauthorized".into(),
        });
    }
    if let Some(status) = injected_fault(shared, request.method(), request.uri().path()) {
        return Err(ApiError {
            code: status,
            reason: "InternalError",
            message: format!("injected fault {status}"),
        });
    }
    if request.uri().path() == "/version" {
        return Ok(json_response(
            200,
            &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-gantry-test"}),
        ));
    }
    let route = Route::parse(request.uri().path())?;
    let query = parse_query(request.uri().query().unwrap_or_default());
    let accept = request
        .headers()
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if accept.contains("as=PartialObjectMetadata") {
        return Err(ApiError {
            code: 406,
            reason: "NotAcceptable",
            message: "the test API server does not serve metadata-only objects".into(),
        });
    }
    let content_type = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let method = request.method().clone();
    let body = request
        .into_body()
        .collect()
        .await
        .map_err(|e| ApiError::bad_request(format!("reading the body: {e}")))?
        .to_bytes();
    let api = Api {
        store: &shared.store,
        policy: &shared.policy,
    };
    let parse = || {
        serde_json::from_slice::<Value>(&body)
            .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))
    };
    match (method, route.name.clone()) {
        (Method::GET, None)
            if matches!(query.get("watch").map(String::as_str), Some("true" | "1")) =>
        {
            watch(shared, &route, &query)
        }
        (Method::GET, None) => list(shared, &route, &query),
        (Method::GET, Some(_)) => {
            let id = route.id()?;
            shared
                .store
                .get(&id)
                .map(|o| json_response(200, &o))
                .ok_or_else(|| ApiError::not_found(&id))
        }
        (Method::POST, None) => {
            let object = parse()?;
            let name = object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let id = Route {
                name: Some(name),
                ..route
            }
            .id()?;
            api.create(&id, object).map(|o| json_response(201, &o))
        }
        (Method::PUT, Some(_)) => api
            .replace(&route.id()?, route.part, parse()?)
            .map(|o| json_response(200, &o)),
        (Method::PATCH, Some(_)) => {
            let kind = PatchType::from_content_type(&content_type).ok_or_else(|| ApiError {
                code: 415,
                reason: "UnsupportedMediaType",
                message: format!(
                    "the test API server does not apply patches of type {content_type}"
                ),
            })?;
            api.patch(&route.id()?, route.part, kind, &parse()?)
                .map(|o| json_response(200, &o))
        }
        (Method::DELETE, Some(_)) => api.delete(&route.id()?).map(|o| json_response(200, &o)),
        (method, _) => Err(ApiError {
            code: 405,
            reason: "MethodNotAllowed",
            message: format!("{method} is not allowed here"),
        }),
    }
}

fn injected_fault(shared: &Shared, method: &Method, path: &str) -> Option<u16> {
    let mut faults = shared.faults.lock().unwrap_or_else(|p| p.into_inner());
    let fault = faults
        .iter_mut()
        .find(|f| f.times > 0 && f.method == method && path.contains(&f.path_contains))?;
    fault.times -= 1;
    Some(fault.status)
}

/// What a path names.
#[derive(Clone, Debug)]
struct Route {
    kind: Kind,
    namespace: Option<String>,
    name: Option<String>,
    part: Part,
}

impl Route {
    fn parse(path: &str) -> Result<Route, ApiError> {
        let not_found = || ApiError {
            code: 404,
            reason: "NotFound",
            message: format!("the server could not find the requested resource ({path})"),
        };
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let (api_version, rest) = match segments.as_slice() {
            ["api", "v1", rest @ ..] => ("v1".to_owned(), rest),
            ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), rest),
            _ => return Err(not_found()),
        };
        let (namespace, rest) = match rest {
            ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some((*ns).to_owned()), rest),
            rest => (None, rest),
        };
        let (plural, name, part) = match rest {
            [plural] => (*plural, None, Part::Main),
            [plural, name] => (*plural, Some((*name).to_owned()), Part::Main),
            [plural, name, "status"] => (*plural, Some((*name).to_owned()), Part::Status),
            _ => return Err(not_found()),
        };
        let kind = Kind::ALL
            .into_iter()
            .find(|k| k.plural() == plural && k.api_version() == api_version)
            .ok_or_else(not_found)?;
        if namespace.is_some() != kind.namespaced() && (name.is_some() || !kind.namespaced()) {
            return Err(not_found());
        }
        if part == Part::Status && !matches!(kind, Kind::Service | Kind::Node) {
            return Err(not_found());
        }
        Ok(Route {
            kind,
            namespace,
            name,
            part,
        })
    }

    fn id(&self) -> Result<ObjectId, ApiError> {
        let name = self
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| ApiError::invalid("metadata.name: Required value"))?;
        match (&self.namespace, self.kind.namespaced()) {
            (Some(ns), true) => Ok((self.kind, ns.clone(), name)),
            (None, false) => Ok((self.kind, String::new(), name)),
            _ => Err(ApiError::bad_request(
                "a namespaced object needs a namespace in its path",
            )),
        }
    }
}

/// `a=1&b=x%2Fy`, leniently: kube starts its queries with `&`.
fn parse_query(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(key), decode(value))
        })
        .collect()
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| Some(hex(*bytes.get(i + 1)?)? * 16 + hex(*bytes.get(i + 2)?)?))
            .flatten();
        match (bytes[i], escaped) {
            (_, Some(byte)) => {
                out.push(u8::try_from(byte).unwrap_or(b'?'));
                i += 2;
            }
            (b'+', None) => out.push(b' '),
            (byte, None) => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn selector(route: &Route, query: &HashMap<String, String>) -> Result<Selector, ApiError> {
    Selector::parse(
        route.kind,
        query.get("labelSelector").map(String::as_str),
        query.get("fieldSelector").map(String::as_str),
    )
}

/// A list, in pages of `limit` when asked. Every page is cut from the objects as they were at
/// the first page's resourceVersion: the continue token carries it and the last object given
/// (`RV:NAMESPACE/NAME`), so an object created or deleted between pages neither appears twice
/// nor makes another vanish.
fn list(
    shared: &Shared,
    route: &Route,
    query: &HashMap<String, String>,
) -> Result<Response<ApiBody>, ApiError> {
    let selector = selector(route, query)?;
    let (at, after) = match query.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            let (rv, last) = token
                .split_once(':')
                .and_then(|(rv, last)| Some((rv.parse::<u64>().ok()?, last.split_once('/')?)))
                .ok_or_else(|| ApiError::bad_request("invalid continue token"))?;
            (Some(rv), Some((last.0.to_owned(), last.1.to_owned())))
        }
        None => (None, None),
    };
    let limit = query
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0);
    let keep = |object: &Value| selector.matches(object);
    let page = Page {
        after: after
            .as_ref()
            .map(|(ns, name)| (ns.as_str(), name.as_str())),
        keep: &keep,
        limit: limit.unwrap_or(usize::MAX),
    };
    let (items, revision, more) = shared
        .store
        .list_at(route.kind, route.namespace.as_deref(), at, &page)
        .map_err(|_| ApiError {
            code: 410,
            reason: "Expired",
            message: "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.".into(),
        })?;
    let mut metadata = json!({"resourceVersion": revision.to_string()});
    if let (true, Some(last)) = (more, items.last()) {
        let meta = &last["metadata"];
        let (namespace, name) = (
            meta["namespace"].as_str().unwrap_or_default(),
            meta["name"].as_str().unwrap_or_default(),
        );
        metadata["continue"] = json!(format!("{revision}:{namespace}/{name}"));
    }
    Ok(json_response(
        200,
        &json!({
            "kind": format!("{}List", route.kind.name()),
            "apiVersion": route.kind.api_version(),
            "metadata": metadata,
            "items": items,
        }),
    ))
}

fn event_line(type_: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": type_, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

fn expired_line(revision: u64, oldest: u64) -> Bytes {
    let status = ApiError {
        code: 410,
        reason: "Expired",
        message: format!("too old resource version: {revision} ({oldest})"),
    };
    event_line("ERROR", &status.status())
}

/// A watch: 200 at once, then one event per line until the client goes, the timeout ends
/// it, or the server expires it.
fn watch(
    shared: &Arc<Shared>,
    route: &Route,
    query: &HashMap<String, String>,
) -> Result<Response<ApiBody>, ApiError> {
    let selector = selector(route, query)?;
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true");
    let initial_events = query.get("sendInitialEvents").is_some_and(|v| v == "true");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs);
    let from = query
        .get("resourceVersion")
        .filter(|rv| !rv.is_empty() && *rv != "0");
    let (tx, rx) = mpsc::channel(64);
    let kind = route.kind;
    let namespace = route.namespace.clone();
    let start = match from {
        Some(rv) => {
            let revision = rv
                .parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv}")))?;
            match shared.store.watch(kind, namespace.as_deref(), revision) {
                Ok(start) => Start::Replay {
                    backlog: start.backlog,
                    revision,
                    live: start.live,
                },
                Err(oldest) => Start::Expired { revision, oldest },
            }
        }
        None => {
            let (items, revision, live) = shared.store.watch_from_now(kind, namespace.as_deref());
            Start::Current {
                items,
                revision,
                live,
                end_marker: initial_events,
            }
        }
    };
    let stream = WatchStream {
        kind,
        namespace,
        selector,
        bookmarks,
        tx,
    };
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        let run = stream.run(&shared, start);
        match timeout {
            Some(timeout) => drop(tokio::time::timeout(timeout, run).await),
            None => run.await,
        }
    });
    let mut response = Response::new(ApiBody::Stream(rx));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

enum Start {
    Replay {
        backlog: Vec<Change>,
        revision: u64,
        live: broadcast::Receiver<Change>,
    },
    Current {
        items: Vec<Value>,
        revision: u64,
        live: broadcast::Receiver<Change>,
        end_marker: bool,
    },
    Expired {
        revision: u64,
        oldest: u64,
    },
}

struct WatchStream {
    kind: Kind,
    namespace: Option<String>,
    selector: Selector,
    bookmarks: bool,
    tx: mpsc::Sender<Bytes>,
}

impl WatchStream {
    async fn run(self, shared: &Shared, start: Start) {
        let mut expiry = shared.store.expiry();
        expiry.borrow_and_update();
        let (mut live, mut last) = match start {
            Start::Expired { revision, oldest } => {
                let _ = self.tx.send(expired_line(revision, oldest)).await;
                return;
            }
            Start::Replay {
                backlog,
                revision,
                live,
            } => {
                for change in &backlog {
                    if !self.send_change(change).await {
                        return;
                    }
                }
                (live, backlog.last().map_or(revision, |c| c.revision))
            }
            Start::Current {
                items,
                revision,
                live,
                end_marker,
            } => {
                for object in items.iter().filter(|o| self.selector.matches(o)) {
                    if self.tx.send(event_line("ADDED", object)).await.is_err() {
                        return;
                    }
                }
                if end_marker && !self.send_bookmark(revision, true).await {
                    return;
                }
                (live, revision)
            }
        };
        let mut tick = tokio::time::interval(shared.bookmark_every);
        tick.tick().await;
        loop {
            tokio::select! {
                change = live.recv() => match change {
                    Ok(change) => {
                        last = change.revision;
                        if !self.send_change(&change).await {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let _ = self.tx.send(expired_line(last, shared.store.oldest())).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = tick.tick(), if self.bookmarks => {
                    if !self.send_bookmark(last, false).await {
                        return;
                    }
                }
                _ = expiry.changed() => {
                    let _ = self.tx.send(expired_line(last, shared.store.oldest())).await;
                    return;
                }
                () = self.tx.closed() => return,
            }
        }
    }

    /// Sends `change` if this watch sees it; `false` once the client is gone.
    async fn send_change(&self, change: &Change) -> bool {
        if change.kind != self.kind
            || self
                .namespace
                .as_ref()
                .is_some_and(|ns| *ns != change.namespace)
        {
            return true;
        }
        let now = self.selector.matches(&change.object);
        let before = change
            .previous
            .as_ref()
            .is_some_and(|p| self.selector.matches(p));
        let type_ = match (change.change, before, now) {
            (ChangeType::Modified, true, true) => ChangeType::Modified,
            (ChangeType::Modified, false, true) => ChangeType::Added,
            (ChangeType::Modified, true, false) => ChangeType::Deleted,
            (other, _, true) => other,
            _ => return true,
        };
        self.tx
            .send(event_line(type_.as_str(), &change.object))
            .await
            .is_ok()
    }

    async fn send_bookmark(&self, revision: u64, initial_events_end: bool) -> bool {
        let mut metadata = json!({"resourceVersion": revision.to_string()});
        if initial_events_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let object = json!({"kind": self.kind.name(), "apiVersion": self.kind.api_version(), "metadata": metadata});
        self.tx.send(event_line("BOOKMARK", &object)).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_kinds_and_objects() {
        let r = Route::parse("/api/v1/namespaces/ns/services/web/status").expect("route");
        assert_eq!(
            (r.kind, r.namespace.as_deref(), r.name.as_deref(), r.part),
            (Kind::Service, Some("ns"), Some("web"), Part::Status)
        );
        let r = Route::parse("/apis/discovery.k8s.io/v1/endpointslices").expect("route");
        assert_eq!(
            (r.kind, r.namespace, r.name),
            (Kind::EndpointSlice, None, None)
        );
        let r = Route::parse("/api/v1/nodes/n1").expect("route");
        assert_eq!((r.kind, r.name.as_deref()), (Kind::Node, Some("n1")));
        assert!(Route::parse("/api/v1/namespaces/ns/nodes/n1").is_err());
        assert!(Route::parse("/apis/events.k8s.io/v1/namespaces/ns/events/e/status").is_err());
        assert!(Route::parse("/api/v1/pods").is_err());
    }

    #[test]
    fn queries_decode_as_kube_encodes_them() {
        let q = parse_query("&labelSelector=gantry.io%2Flb%3Dtrue&limit=500&x");
        assert_eq!(q["labelSelector"], "gantry.io/lb=true");
        assert_eq!(q["limit"], "500");
        assert_eq!(q["x"], "");
    }
}
