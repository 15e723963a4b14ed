//! The OpenAPI document against the router's real routes, both ways: every
//! path the router has (as [`Routes`](super::Routes) recorded it) is in
//! the document with exactly the methods the router takes there (asked of
//! the router itself: a method it does not take is a 405), and the
//! document has no path or method the router does not serve.

use std::collections::BTreeSet;

use http::{Method, Request, StatusCode};
use sluice_store::{FileTenants, MemoryStore};

use crate::fuzzing::{TOKEN, world};

const METHODS: [Method; 5] =
    [Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE];

/// The methods the real router takes at `path` (its `{…}` segments filled).
fn routed_methods(path: &str) -> BTreeSet<String> {
    let uri = path.replace('{', "probe-").replace('}', "");
    let w = world();
    METHODS
        .iter()
        .filter(|m| {
            let req = Request::builder()
                .method((*m).clone())
                .uri(&uri)
                .header("authorization", format!("Bearer {TOKEN}"))
                .header("content-type", "application/json")
                .body(axum::body::Body::from("{}"))
                .expect("a request");
            let status = w.rt.block_on(async {
                let mut router = w.router.clone();
                tower_service::Service::call(&mut router, req).await.expect("infallible").status()
            });
            status != StatusCode::METHOD_NOT_ALLOWED
        })
        .map(|m| m.as_str().to_ascii_lowercase())
        .collect()
}

#[test]
fn the_openapi_document_is_the_router() {
    let doc: serde_json::Value = serde_json::from_str(super::OPENAPI).expect("JSON");
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(path, item)| {
            let item = item.as_object().expect("a path item");
            METHODS
                .iter()
                .map(|m| m.as_str().to_ascii_lowercase())
                .filter(|m| item.contains_key(m))
                .map(|m| (path.clone(), m))
                .collect::<Vec<_>>()
        })
        .collect();
    let mut served = BTreeSet::new();
    for path in super::paths::<MemoryStore, FileTenants>() {
        // The Prometheus scrape is text for Prometheus, documented in
        // docs/OBSERVABILITY.md, not part of the JSON API.
        if path == "/metrics" {
            continue;
        }
        let methods = routed_methods(path);
        assert!(
            !methods.is_empty() && methods.len() < METHODS.len(),
            "{path}: the router takes {methods:?} (no route, or every method?)"
        );
        served.extend(methods.into_iter().map(|m| (path.to_owned(), m)));
    }
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty() && unserved.is_empty(),
        "served but not in openapi.json: {undocumented:?}\nin openapi.json but not served: {unserved:?}"
    );
}
