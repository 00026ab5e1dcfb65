//! The HTTP edge every orderflow service shares.
//!
//! - `error`: [`ApiError`], the one error answer of every service, and [`HttpError`], how a
//!   layer's own error enum says which answer each of its variants becomes.
//! - `edge`: [`edge`], the outermost middleware (correlation and request ids, span, timeout, a
//!   panic as a 500, metrics per route), and the [`RequestContext`] it leaves for handlers.
//! - `ops`: the operations answers (`/health`, `/metrics`, `/openapi.json`, unknown routes and
//!   methods).
//! - `serve`: [`serve_on`], serving until shutdown, then draining with a deadline.
//! - `shed`: [`InFlightLimit`], the bound on requests in flight and the 503 `overloaded` past
//!   it, which the edge applies.
//! - [`openapi`]: what every OpenAPI document shares (error answers, header parameters, the
//!   bearer security a process declares only when it enforces it).

mod edge;
mod error;
pub mod openapi;
mod ops;
mod serve;
mod shed;

/// HTTP status codes, for the crates that map their errors without an HTTP server of their own.
pub use axum::http::StatusCode;
pub use edge::{CORRELATION_ID, Edge, REQUEST_DURATION, REQUEST_ID, REQUESTS_TOTAL, RequestContext, edge};
pub use error::{ApiError, ErrorBody, ErrorObject, HttpError, chain};
pub use ops::{Health, health, method_not_allowed, metrics, no_route, openapi_json};
pub use serve::serve_on;
pub use shed::{Admitted, DEFAULT_MAX_IN_FLIGHT, IN_FLIGHT, IN_FLIGHT_LIMIT, InFlightLimit, LoadArgs, SHED_TOTAL};

/// The one value of header `name`, if any: a header that may appear at most once.
pub fn single_header<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> Result<Option<&'a [u8]>, ApiError> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(ApiError::bad_field(name, "must be sent at most once"));
    }
    Ok(first.map(|v| v.as_bytes()))
}

/// 1 to [`MAX_HEADER_ID_BYTES`] visible ASCII characters (`!` to `~`: no spaces, no control
/// characters), as ids and keys in headers must be.
pub fn visible_ascii(name: &str, value: &[u8]) -> Result<String, ApiError> {
    if value.is_empty() || value.len() > MAX_HEADER_ID_BYTES || !value.iter().all(|b| (b'!'..=b'~').contains(b)) {
        return Err(ApiError::bad_field(
            name,
            format!("must be 1 to {MAX_HEADER_ID_BYTES} visible ASCII characters"),
        ));
    }
    Ok(String::from_utf8_lossy(value).into_owned())
}

/// Longest id or key a header may carry ([`visible_ascii`]).
pub const MAX_HEADER_ID_BYTES: usize = 255;
