//! `/v1/projections`: each projection's live version, rebuilds in progress, applied position,
//! lag and dead letters.

use axum::Json;
use axum::extract::{RawQuery, State};
use chrono::Utc;
use event_schemas::{ConsistencyToken, Service};
use projections::{PartitionProgress, applied_position, catalog, lag_records, source_service};
use serde::Serialize;

use crate::params::Params;
use crate::{ApiError, ReadState};

#[derive(Debug, Serialize)]
pub(crate) struct Projections {
    projections: Vec<ProjectionStatus>,
}

#[derive(Debug, Serialize)]
pub(crate) struct ProjectionStatus {
    name: &'static str,
    /// `live`, `rebuilding` (a new version is being built beside the live one) or `not_started`.
    state: &'static str,
    live_version: Option<u32>,
    /// Events not applied yet, every service's log together.
    lag_events: Option<u64>,
    /// The largest of the services' `lag_seconds`: 0 when caught up.
    lag_seconds: f64,
    /// Per service whose log the projection follows: how far it is applied, and the lag.
    services: Vec<SourceStatus>,
    dead_letters: u64,
    rebuild: Option<Rebuild>,
    versions: Vec<Version>,
}

/// A projection's progress through one service's log.
#[derive(Debug, Serialize)]
pub(crate) struct SourceStatus {
    service: &'static str,
    /// Every event of the service's log up to this position is applied (see
    /// `projections::applied_position`).
    position: u64,
    /// The same as a consistency token, `orders:12`.
    token: String,
    /// Events not applied yet: from the store's head (embedded) or the partitions' ends.
    lag_events: Option<u64>,
    /// While events of this log wait: how long ago the last event applied from a lagging
    /// partition was recorded, a bound on how long the oldest waiting one has waited (it was
    /// recorded after). 0 when caught up.
    lag_seconds: f64,
}

#[derive(Debug, Serialize)]
pub(crate) struct Rebuild {
    version: u32,
    percent: f64,
    events_applied: u64,
    events_per_second: f64,
    eta_seconds: Option<f64>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Version {
    version: u32,
    state: String,
    events_applied: u64,
    until_position: Option<u64>,
}

/// `/v1/projections` takes no query parameter (any is a 400), only `X-Correlation-Id`.
pub(crate) struct StatusParams;

impl utoipa::IntoParams for StatusParams {
    fn into_params(
        _: impl Fn() -> Option<utoipa::openapi::path::ParameterIn>,
    ) -> Vec<utoipa::openapi::path::Parameter> {
        vec![crate::params::doc::correlation_id()]
    }
}

/// Every projection's status.
#[utoipa::path(get, path = "/v1/projections", tag = "projections", operation_id = "projections_status",
    params(StatusParams),
    responses((status = 200, description = "each projection's version, position, lag and rebuild progress", body = Object),
              crate::params::doc::StatusErrors))]
pub(crate) async fn projections(
    State(state): State<ReadState>,
    RawQuery(query): RawQuery,
) -> Result<Json<Projections>, ApiError> {
    Params::parse(query.as_deref(), &[])?;
    let mut projections = Vec::new();
    for name in catalog::NAMES {
        projections.push(status(&state, name).await?);
    }
    Ok(Json(Projections { projections }))
}

async fn status(state: &ReadState, name: &'static str) -> Result<ProjectionStatus, ApiError> {
    let db = state.db();
    let versions = db.versions(name).await?;
    let live = versions.iter().find(|v| v.state == "live").map(|v| v.version);
    let building = versions.iter().find(|v| v.state == "building");
    let (services, dead_letters) = match live {
        Some(version) => {
            let progress = db.progress(name, version).await?;
            let services = Service::ALL
                .into_iter()
                .map(|service| source_status(state, &progress, service))
                .collect();
            (services, db.dead_letter_count(name, version).await?)
        }
        None => (Vec::new(), 0),
    };
    let lag_events = services
        .iter()
        .map(|s: &SourceStatus| s.lag_events)
        .try_fold(0u64, |total, lag| lag.map(|lag| total + lag));
    let lag_seconds = services.iter().map(|s| s.lag_seconds).fold(0.0, f64::max);
    let rebuild = building.map(|v| {
        let percent = if v.target_position == 0 {
            0.0
        } else {
            (v.events_applied as f64 / v.target_position as f64 * 100.0).min(100.0)
        };
        let remaining = v.target_position.saturating_sub(v.events_applied) as f64;
        Rebuild {
            version: v.version,
            percent: (percent * 10.0).round() / 10.0,
            events_applied: v.events_applied,
            events_per_second: v.events_per_second.round(),
            eta_seconds: (v.events_per_second > 0.0).then(|| (remaining / v.events_per_second).round()),
        }
    });
    Ok(ProjectionStatus {
        name,
        state: match (live, &rebuild) {
            (_, Some(_)) => "rebuilding",
            (Some(_), None) => "live",
            (None, None) => "not_started",
        },
        live_version: live,
        lag_events,
        lag_seconds,
        services,
        dead_letters,
        rebuild,
        versions: versions
            .iter()
            .map(|v| Version {
                version: v.version,
                state: v.state.clone(),
                events_applied: v.events_applied,
                until_position: v.until_position,
            })
            .collect(),
    })
}

/// How far a live version is through `service`'s log, and its lag there.
fn source_status(state: &ReadState, progress: &[PartitionProgress], service: Service) -> SourceStatus {
    let position = applied_position(progress, service);
    let lag_events = match &state.head {
        Some(head) => Some(head(service).saturating_sub(position)),
        None => lag_records(progress, service),
    };
    // A partition counts as behind while the service lags, unless it says it is not: drained,
    // or its own reported end is just past what it applied (an idle partition's last event can
    // be old without anything waiting behind it).
    let behind = progress
        .iter()
        .filter(|p| source_service(&p.source) == Some(service))
        .filter(|p| !p.drained && lag_events.is_none_or(|lag| lag > 0))
        .filter(|p| p.high_watermark.is_none_or(|end| end > p.offset + 1));
    let oldest = behind.filter_map(|p| p.recorded_at).min();
    let lag_seconds = match (lag_events, oldest) {
        (Some(0), _) | (_, None) => 0.0,
        (_, Some(time)) => (Utc::now() - time).num_milliseconds().max(0) as f64 / 1000.0,
    };
    SourceStatus {
        service: service.name(),
        position,
        token: ConsistencyToken { service, position }.to_string(),
        lag_events,
        lag_seconds,
    }
}
