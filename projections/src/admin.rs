//! The rebuild endpoint, `POST /v1/projections/{name}/rebuild`: builds the next version of a
//! projection from the services' logs beside the live one, in the background, and switches reads
//! to it when it has caught up. The embedded `orderflow serve` mounts it on its one port; a
//! projections worker serves it with `projections run --listen` (behind the `admin` scope).
//!
//! One rebuild at a time per projection and process. Distributed, send rebuilds to one worker
//! (the console forwards them to the one it is given): two workers rebuilding the same
//! projection at once would both number their version `max + 1`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use crate::catalog::{self, Sinks};
use crate::{ProjectionFactory, ReadDb, RebuildOptions, ServiceLog};
use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::post;
use service_kit::http::ApiError;
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

/// `POST /v1/projections/{name}/rebuild`: builds the next version of a projection from the event
/// store beside the live one, in the background, and switches reads to it when it has caught up.
/// 202 `{projection, version, state: "building"}`; `GET /v1/projections` shows the progress.
/// 404 for an unknown projection, 409 while one of it is already running.
async fn rebuild(State(admin): State<Admin>, UrlPath(name): UrlPath<String>) -> Result<Response, ApiError> {
    let Some(name) = catalog::NAMES.into_iter().find(|known| *known == name) else {
        return Err(ApiError::not_found("projection", name));
    };
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
    // The number `projections::rebuild` gives the new version; nothing else registers versions
    // in the embedded read database while this process holds `running`.
    let version = admin
        .sinks
        .read_db
        .versions(name)
        .await?
        .iter()
        .map(|v| v.version)
        .max()
        .unwrap_or(0)
        + 1;
    tracing::info!(projection = name, version, "rebuild requested");
    admin
        .lock()
        .tasks
        .spawn(rebuild_in_background(admin.clone(), factory, version, running));
    let answer = serde_json::json!({"projection": name, "version": version, "state": "building"});
    Ok((StatusCode::ACCEPTED, Json(answer)).into_response())
}

async fn rebuild_in_background(admin: Admin, factory: ProjectionFactory, version: u32, running: Running) {
    let name = running.name;
    let db = &admin.sinks.read_db;
    // Set once the rebuild has registered `version`: only then is a `building` row of that
    // number this rebuild's to retire (another worker may have registered it first).
    let registered = std::sync::atomic::AtomicBool::new(false);
    let build = crate::rebuild(
        admin.logs.clone(),
        db,
        Arc::clone(&factory),
        RebuildOptions::default(),
        admin.stop.clone(),
        |_| registered.store(true, std::sync::atomic::Ordering::Relaxed),
    );
    let mut build = std::pin::pin!(build);
    // While building, the rebuild reads the whole log before it looks at its token again:
    // shutdown does not wait for that, it drops the build (its open transaction rolls back).
    // Once switched live, what is left is short (catch up to the head, then drop the replaced
    // version's tables at once since the token is cancelled): that is let finish.
    let outcome = tokio::select! {
        outcome = &mut build => Some(outcome),
        () = admin.stop.cancelled() => match state_of(db, name, version).await.as_deref() {
            Some("live") => Some(build.await),
            _ => None,
        },
    };
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
    let ours = registered.load(std::sync::atomic::Ordering::Relaxed);
    if ours && state_of(db, name, version).await.as_deref() == Some("building") {
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
