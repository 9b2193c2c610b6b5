//! A Backstage catalog: `GET <base>/api/catalog/entities` with `filter`, `fields`, `limit`
//! and `offset`, answering Components in Backstage's own shape
//! (`metadata.annotations["github.com/project-slug"]`, `spec.owner`), behind an optional
//! bearer token and base path (`https://host/backstage`).

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::Arc;

use super::{FakeServer, Faults};

pub const SLUG: &str = "github.com/project-slug";

#[derive(Default)]
pub struct Catalog {
    /// `owner/repo` → the owning group, as `spec.owner` states it.
    pub owners: Mutex<BTreeMap<String, String>>,
    token: Option<String>,
}

impl Catalog {
    pub fn set(&self, slug: &str, owner: &str) {
        self.owners
            .lock()
            .insert(slug.to_string(), owner.to_string());
    }
}

pub struct Fake {
    pub server: FakeServer,
    pub catalog: Arc<Catalog>,
    /// The base URL a client configures: the server and the base path.
    pub endpoint: String,
}

/// Starts the catalog under `base_path` (empty, or `/backstage`), requiring `token` when
/// given.
pub async fn start(
    base_path: &str,
    token: Option<&str>,
    owners: &[(&str, &str)],
) -> std::io::Result<Fake> {
    let catalog = Arc::new(Catalog {
        owners: Mutex::new(
            owners
                .iter()
                .map(|(s, o)| (s.to_string(), o.to_string()))
                .collect(),
        ),
        token: token.map(str::to_string),
    });
    let router = Router::new()
        .route(
            &format!("{base_path}/api/catalog/entities"),
            axum::routing::get(entities),
        )
        .with_state(catalog.clone());
    let server = FakeServer::start("backstage", router, Faults::new(7)).await?;
    let endpoint = format!("{}{base_path}", server.base_url());
    Ok(Fake {
        server,
        catalog,
        endpoint,
    })
}

async fn entities(
    State(c): State<Arc<Catalog>>,
    headers: HeaderMap,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    if let Some(token) = &c.token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if given != Some(&format!("Bearer {token}")) {
            return (
                StatusCode::UNAUTHORIZED,
                axum::Json(serde_json::json!({"error": {"name": "AuthenticationError", "message": "Missing credentials"}})),
            )
                .into_response();
        }
    }
    // Only the filter the catalog client sends is understood; any other is a client bug.
    if q.get("filter").map(String::as_str) != Some(&format!("metadata.annotations.{SLUG}")) {
        return (StatusCode::BAD_REQUEST, "unexpected filter\n").into_response();
    }
    let offset: usize = q.get("offset").and_then(|v| v.parse().ok()).unwrap_or(0);
    let limit: usize = q
        .get("limit")
        .and_then(|v| v.parse().ok())
        .unwrap_or(usize::MAX);
    let page: Vec<serde_json::Value> = c
        .owners
        .lock()
        .iter()
        .skip(offset)
        .take(limit)
        .map(|(slug, owner)| {
            let name = slug.rsplit('/').next().unwrap_or(slug);
            serde_json::json!({
                "apiVersion": "backstage.io/v1alpha1",
                "kind": "Component",
                "metadata": {
                    "name": name,
                    "namespace": "default",
                    "annotations": {SLUG: slug, "github.com/team-slug": format!("acme/{owner}")}
                },
                "spec": {"type": "service", "lifecycle": "production", "owner": owner}
            })
        })
        .collect();
    axum::Json(page).into_response()
}
