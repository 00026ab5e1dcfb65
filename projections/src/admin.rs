//! The rebuild endpoint, `POST /v1/projections/{name}/rebuild`: builds the next version of a
//! projection from the services' logs beside the live one, in the background, and switches reads
//! to it when it has caught up. The embedded `orderflow serve` mounts it on its one port; a
//! projections worker serves it with `projections run --listen` (behind the `admin` scope).
//!
//! One rebuild at a time per projection and process. Distributed, send rebuilds to one worker
//! (the console forwards them to the one it is given): two workers rebuilding the same
//! projection at once would both number their version `max + 1`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::catalog::{self, Sinks};
use crate::{ProjectionFactory, ReadDb, RebuildOptions, ServiceLog};
use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::post;
use service_kit::http::ApiError;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The rebuild endpoint's state.
#[derive(Clone)]
pub struct Admin {
    logs: Vec<ServiceLog>,
    sinks: Sinks,
    rebuilds: Arc<Mutex<Rebuilds>>,
    /// Stops the rebuilds with the projection runners.
    stop: CancellationToken,
}

/// The rebuilds this process runs.
#[derive(Default)]
struct Rebuilds {
    /// Projections being rebuilt: one rebuild at a time per projection, so that the version a
    /// request answers is the one its rebuild registers.
    running: HashSet<&'static str>,
    tasks: JoinSet<()>,
}

impl Admin {
    /// Rebuilds read `logs` and write into `sinks`; they stop when `stop` is cancelled.
    pub fn new(logs: Vec<ServiceLog>, sinks: Sinks, stop: CancellationToken) -> Self {
        Admin {
            logs,
            sinks,
            rebuilds: Arc::new(Mutex::new(Rebuilds::default())),
            stop,
        }
    }

    /// The rebuilds in flight, to wait for on the way out.
    pub fn take_tasks(&self) -> JoinSet<()> {
        std::mem::take(&mut self.lock().tasks)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Rebuilds> {
        self.rebuilds.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Takes a projection off [`Rebuilds::running`] when dropped (the rebuild ended, failed to
/// start, or panicked).
struct Running {
    admin: Admin,
    name: &'static str,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.admin.lock().running.remove(self.name);
    }
}

/// The route, without authentication: the caller guards it (or not, embedded).
pub fn routes(admin: Admin) -> Router {
    Router::new()
        .route("/v1/projections/{name}/rebuild", post(rebuild))
        .method_not_allowed_fallback(service_kit::http::method_not_allowed)
        .with_state(admin)
}

/// The rebuild endpoint's OpenAPI document (merged into the embedded `serve`'s).
pub fn api_doc() -> utoipa::openapi::OpenApi {
    use utoipa::OpenApi as _;
    AdminDoc::openapi()
}

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(rebuild),
    tags((name = "projections", description = "rebuilding a projection beside the live one"))
)]
struct AdminDoc;

/// `POST /v1/projections/{name}/rebuild`: builds the next version of a projection from the event
/// store beside the live one, in the background, and switches reads to it when it has caught up.
/// 202 `{projection, version, state: "building"}` once the version is registered (its number is
/// the one the registry gave, never a guess); `GET /v1/projections` shows the progress. 404 for
/// an unknown projection, 409 while one of it is already running in this process, 403 for a
/// request a browser says came from another site, 503 when the process is stopping or the
/// rebuild could not start (the cause is logged).
#[utoipa::path(
    post,
    path = "/v1/projections/{name}/rebuild",
    tag = "projections",
    params(
        ("name" = String, Path, description = "the projection", example = "order_dashboard",
         pattern = r"^(order_dashboard|sales_analytics)$"),
        ("Sec-Fetch-Site" = Option<String>, Header, description = "set by browsers: a request from another site is refused"),
    ),
    responses(
        (status = 202, description = "the rebuild started: `{projection, version, state: \"building\"}`", body = Object),
        (status = 403, description = "`cross_site`: a browser says the request came from another site; or, where tokens are checked, `forbidden`: the token lacks `admin`", body = service_kit::http::ErrorBody),
        (status = 404, description = "`not_found`: no such projection", body = service_kit::http::ErrorBody),
        (status = 409, description = "`conflict`: a rebuild of this projection is running", body = service_kit::http::ErrorBody),
        (status = 503, description = "`unavailable`: the process is stopping, or the rebuild could not start", body = service_kit::http::ErrorBody),
    ),
    security(("bearer" = ["admin"]))
)]
async fn rebuild(
    State(admin): State<Admin>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    refuse_cross_site(&headers)?;
    let Some(name) = catalog::NAMES.into_iter().find(|known| *known == name) else {
        return Err(ApiError::not_found("projection", name));
    };
    if admin.stop.is_cancelled() {
        return Err(ApiError::unavailable("the rebuild endpoint (the process is stopping)"));
    }
    let factory = catalog::factory(name, &admin.sinks)?;
    if !admin.lock().running.insert(name) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            "a rebuild of this projection is running",
        )
        .with_detail("projection", name));
    }
    let running = Running {
        admin: admin.clone(),
        name,
    };
    tracing::info!(projection = name, "rebuild requested");
    let (registered_tx, registered_rx) = oneshot::channel();
    admin
        .lock()
        .tasks
        .spawn(rebuild_in_background(admin.clone(), factory, running, registered_tx));
    let Ok(version) = registered_rx.await else {
        return Err(ApiError::unavailable("the rebuild (it could not start; see the log)"));
    };
    let answer = serde_json::json!({"projection": name, "version": version, "state": "building"});
    Ok((StatusCode::ACCEPTED, Json(answer)).into_response())
}

/// With authentication off (embedded, a worker run with `--no-auth`), a page on another site
/// could make a visitor's browser send this body-less POST: a "simple" request, with no
/// preflight. Browsers say where a request comes from (`Sec-Fetch-Site`); a request from
/// another site is refused. Tools that send no such header (curl, the CLI) are not browsers
/// and pass.
fn refuse_cross_site(headers: &HeaderMap) -> Result<(), ApiError> {
    match headers.get("sec-fetch-site").map(|v| v.as_bytes()) {
        None | Some(b"same-origin" | b"none") => Ok(()),
        Some(_) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "cross_site",
            "a rebuild cannot be requested from another site",
        )),
    }
}

async fn rebuild_in_background(
    admin: Admin,
    factory: ProjectionFactory,
    running: Running,
    registered_tx: oneshot::Sender<u32>,
) {
    let name = running.name;
    let db = &admin.sinks.read_db;
    // The version this rebuild registered (0: none yet). Only a `building` row of that number is
    // this rebuild's to retire: another worker may have registered the number it first tried.
    let registered = AtomicU32::new(0);
    let mut registered_tx = Some(registered_tx);
    let build = crate::rebuild(
        admin.logs.clone(),
        db,
        Arc::clone(&factory),
        RebuildOptions::default(),
        admin.stop.clone(),
        |progress| {
            registered.store(progress.version, Ordering::Relaxed);
            if let Some(tx) = registered_tx.take() {
                let _ = tx.send(progress.version);
            }
        },
    );
    let mut build = std::pin::pin!(build);
    // While building, the rebuild reads the whole log before it looks at its token again:
    // shutdown does not wait for that, it drops the build (its open transaction rolls back).
    // Once switched live, what is left is short (catch up to the head, then drop the replaced
    // version's tables at once since the token is cancelled): that is let finish.
    let outcome = tokio::select! {
        outcome = &mut build => Some(outcome),
        () = admin.stop.cancelled() => {
            let version = registered.load(Ordering::Relaxed);
            match state_of(db, name, version).await.as_deref() {
                Some("live") if version != 0 => Some(build.await),
                _ => None,
            }
        }
    };
    let version = registered.load(Ordering::Relaxed);
    match outcome {
        Some(Ok(report)) => {
            tracing::info!(projection = name, version = report.version, replaced = ?report.replaced,
                events = report.events_applied, seconds = report.seconds, "rebuild done");
            return;
        }
        Some(Err(e)) => tracing::error!(projection = name, version, error = %e, "rebuild failed"),
        None => tracing::warn!(
            projection = name,
            version,
            "rebuild interrupted by shutdown; request it again"
        ),
    }
    // A version left `building` would show as a rebuild in progress forever: retire it and drop
    // its tables. One that was switched live already stays.
    if version != 0 && state_of(db, name, version).await.as_deref() == Some("building") {
        if let Err(e) = db.set_state(name, version, "retired").await {
            tracing::error!(projection = name, version, error = %e, "cannot retire the abandoned version");
        } else if let Err(e) = factory(version).drop_version().await {
            tracing::error!(projection = name, version, error = %e, "cannot drop the abandoned version's tables");
        }
    }
    drop(running);
}

/// The state of one version of a projection (`None`: not registered, or unreadable, logged).
async fn state_of(db: &ReadDb, name: &str, version: u32) -> Option<String> {
    match db.versions(name).await {
        Ok(versions) => versions.into_iter().find(|v| v.version == version).map(|v| v.state),
        Err(e) => {
            tracing::error!(projection = name, version, error = %e, "cannot read the versions");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(site: Option<&'static str>) -> Result<(), u16> {
        let mut headers = HeaderMap::new();
        if let Some(site) = site {
            headers.insert("sec-fetch-site", axum::http::HeaderValue::from_static(site));
        }
        refuse_cross_site(&headers).map_err(|e| e.status().as_u16())
    }

    #[test]
    fn a_rebuild_from_another_site_is_refused_and_tools_pass() {
        assert_eq!(from(None), Ok(()), "curl and the CLI send no Sec-Fetch-Site");
        assert_eq!(from(Some("same-origin")), Ok(()), "the console's own page");
        assert_eq!(from(Some("none")), Ok(()), "typed into the address bar");
        assert_eq!(from(Some("cross-site")), Err(403));
        assert_eq!(
            from(Some("same-site")),
            Err(403),
            "another port or subdomain is another site here"
        );
    }

    #[test]
    fn the_document_names_every_projection_that_can_be_rebuilt() {
        let doc: serde_json::Value =
            serde_json::from_str(&api_doc().to_json().expect("the document renders")).expect("JSON");
        let pattern = doc["paths"]["/v1/projections/{name}/rebuild"]["post"]["parameters"][0]["schema"]["pattern"]
            .as_str()
            .expect("a pattern for the name")
            .to_owned();
        assert_eq!(pattern, format!("^({})$", catalog::NAMES.join("|")));
    }
}
