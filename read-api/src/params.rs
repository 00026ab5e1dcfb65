//! Strict query parameters: every endpoint names the parameters it accepts; an unknown or
//! repeated one, or a value that does not parse, is a 400 naming it. Values reach SQL only as
//! bound parameters (or, for enumerations, as one of a fixed set).
//!
//! [`doc`] declares the same rules in the OpenAPI document: a value matches its parameter's
//! schema if and only if the parser here accepts it (patterns, formats, enumerations, ranges),
//! so a client generated from the document sends nothing the API refuses for its form alone.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use event_schemas::{ConsistencyToken, Service};
use uuid::Uuid;

use crate::ApiError;

/// The most digits a position in a consistency token may have: 19, so that every token the
/// document's pattern admits fits a `u64` (and a log's positions, `i64` in the stores, never
/// need more).
const MAX_POSITION_DIGITS: usize = 19;

/// The parsed query string of one request.
#[derive(Debug, Default)]
pub(crate) struct Params {
    values: BTreeMap<String, String>,
}

impl Params {
    /// Parses `query`, accepting only the names in `allowed`.
    pub(crate) fn parse(query: Option<&str>, allowed: &[&str]) -> Result<Self, ApiError> {
        let mut values = BTreeMap::new();
        for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            if !allowed.contains(&name.as_ref()) {
                return Err(ApiError::bad_parameter(&name, format!("unknown parameter {name:?}"))
                    .with_detail("allowed", allowed.to_vec()));
            }
            if values.insert(name.to_string(), value.into_owned()).is_some() {
                return Err(ApiError::bad_parameter(
                    &name,
                    format!("parameter {name:?} is given more than once"),
                ));
            }
        }
        Ok(Params { values })
    }

    pub(crate) fn text(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// An RFC 3339 time, as JSON Schema's `date-time` format has it: `T` (or `t`) between date
    /// and time, any number of fractional digits, `Z` (or `z`) or an offset `+hh:mm`/`-hh:mm`.
    /// Leap seconds (`:60`) are refused ([`doc::TIME_PATTERN`] excludes them).
    pub(crate) fn time(&self, name: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
        use chrono::Timelike as _;
        self.text(name)
            .map(|text| {
                let bad = || {
                    ApiError::bad_parameter(
                        name,
                        format!("{name} must be an RFC 3339 time, e.g. 2026-11-01T00:00:00Z"),
                    )
                };
                // chrono also takes a space between date and time; date-time does not.
                if !matches!(text.as_bytes().get(10), Some(b'T' | b't')) {
                    return Err(bad());
                }
                let time = DateTime::parse_from_rfc3339(text).map_err(|_| bad())?;
                if time.nanosecond() >= 1_000_000_000 {
                    return Err(ApiError::bad_parameter(
                        name,
                        format!("{name}: leap seconds (:60) are not accepted"),
                    ));
                }
                Ok(time.with_timezone(&Utc))
            })
            .transpose()
    }

    /// An integer in `min..=max`.
    pub(crate) fn integer(&self, name: &str, min: u64, max: u64) -> Result<Option<u64>, ApiError> {
        self.text(name)
            .map(|text| match text.parse::<u64>() {
                Ok(n) if (min..=max).contains(&n) => Ok(n),
                _ => Err(
                    ApiError::bad_parameter(name, format!("{name} must be an integer from {min} to {max}"))
                        .with_detail("min", min)
                        .with_detail("max", max),
                ),
            })
            .transpose()
    }

    /// A UUID, hyphenated (8-4-4-4-12 hex digits, either case): JSON Schema's `uuid` format.
    pub(crate) fn uuid(&self, name: &str) -> Result<Option<Uuid>, ApiError> {
        self.text(name)
            .map(|text| {
                hyphenated_uuid(text).ok_or_else(|| {
                    ApiError::bad_parameter(name, format!("{name} must be a UUID, e.g. {}", Uuid::nil()))
                })
            })
            .transpose()
    }

    /// An opaque cursor: hex digits only (what [`doc::cursor`] declares), which the cursor's own
    /// decoder then reads (it would also take a `+` before a digit).
    pub(crate) fn hex(&self, name: &str) -> Result<Option<&str>, ApiError> {
        match self.text(name) {
            Some(text) if !text.bytes().all(|b| b.is_ascii_hexdigit()) => Err(ApiError::bad_parameter(
                name,
                format!("{name} is not a cursor from this API"),
            )),
            text => Ok(text),
        }
    }

    /// One of `choices`.
    pub(crate) fn choice<T: Copy>(&self, name: &str, choices: &[(&str, T)]) -> Result<Option<T>, ApiError> {
        self.text(name)
            .map(|text| {
                choices
                    .iter()
                    .find(|(label, _)| *label == text)
                    .map(|(_, value)| *value)
                    .ok_or_else(|| {
                        let labels: Vec<&str> = choices.iter().map(|(label, _)| *label).collect();
                        ApiError::bad_parameter(name, format!("{name} must be one of {}", labels.join(", ")))
                            .with_detail("allowed", labels)
                    })
            })
            .transpose()
    }

    /// A consistency token (`orders:12`, what a command answers as `token`). A bare position is
    /// refused: every service has its own log, so it would not say which.
    /// The position has 1 to [`MAX_POSITION_DIGITS`] digits.
    pub(crate) fn token(&self, name: &str) -> Result<Option<ConsistencyToken>, ApiError> {
        self.text(name)
            .map(|text| {
                let bad = |message: String| {
                    ApiError::bad_parameter(name, message)
                        .with_detail("expected", "<service>:<position>, e.g. orders:12")
                };
                let token = text
                    .parse::<ConsistencyToken>()
                    .map_err(|e| bad(format!("{name}: {e}")))?;
                if text.len() - token.service.name().len() - 1 > MAX_POSITION_DIGITS {
                    return Err(bad(format!(
                        "{name}: a position has at most {MAX_POSITION_DIGITS} digits"
                    )));
                }
                Ok(token)
            })
            .transpose()
    }

    /// The read-your-writes token, `min_position`: the `token` a command answered.
    pub(crate) fn min_position(&self) -> Result<Option<ConsistencyToken>, ApiError> {
        self.token("min_position")
    }

    /// `as_of` (an RFC 3339 time) or `at_position` (a position of the orders log, `orders:12`:
    /// an order's rows are versioned by the order's events); not both.
    pub(crate) fn as_of(&self) -> Result<Option<projections::dashboard::AsOf>, ApiError> {
        use projections::dashboard::AsOf;
        match (self.time("as_of")?, self.token("at_position")?) {
            (Some(_), Some(_)) => Err(ApiError::conflicting_parameters(
                &["as_of", "at_position"],
                "give as_of or at_position, not both",
            )),
            (Some(time), None) => Ok(Some(AsOf::Time(time))),
            (None, Some(token)) if token.service == Service::Orders => Ok(Some(AsOf::Position(token.position))),
            (None, Some(token)) => Err(ApiError::bad_parameter(
                "at_position",
                format!(
                    "at_position is a position of the orders log (orders:12), not of {}",
                    token.service
                ),
            )),
            (None, None) => Ok(None),
        }
    }
}

/// `text` as a hyphenated UUID (what [`Uuid::try_parse`] takes of 36 characters), else `None`:
/// the simple, braced and URN forms are not JSON Schema's `uuid`.
pub(crate) fn hyphenated_uuid(text: &str) -> Option<Uuid> {
    (text.len() == 36).then(|| Uuid::try_parse(text).ok()).flatten()
}

/// The OpenAPI declarations of the parameters [`Params`] parses, and of the errors every query
/// answers: each schema admits exactly what the parser accepts.
pub(crate) mod doc {
    use std::collections::BTreeMap;

    use event_schemas::Service;
    use serde_json::json;
    use service_kit::http::MAX_HEADER_ID_BYTES;
    use utoipa::openapi::header::HeaderBuilder;
    use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
    use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
    use utoipa::openapi::{Content, Ref, RefOr, Required, Response, ResponseBuilder};

    use super::MAX_POSITION_DIGITS;

    /// The start of an RFC 3339 time whose seconds are 00 to 59: with `format: date-time`, it
    /// excludes leap seconds, which the parser refuses.
    pub(crate) const TIME_PATTERN: &str = "^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-5][0-9]";

    /// A consistency token of `services`' logs: `orders:12`.
    pub(crate) fn token_pattern(services: &[Service]) -> String {
        let names: Vec<&str> = services.iter().map(|s| s.name()).collect();
        format!("^({}):[0-9]{{1,{MAX_POSITION_DIGITS}}}$", names.join("|"))
    }

    /// An optional query parameter.
    pub(crate) fn query(name: &str, description: &str, schema: ObjectBuilder) -> Parameter {
        ParameterBuilder::new()
            .name(name)
            .parameter_in(ParameterIn::Query)
            .required(Required::False)
            .description(Some(description))
            .schema(Some(schema))
            .build()
    }

    fn string() -> ObjectBuilder {
        ObjectBuilder::new().schema_type(Type::String)
    }

    /// `min_position`, the same on every route that waits.
    pub(crate) fn min_position() -> Parameter {
        query(
            "min_position",
            "Read-your-writes: a consistency token (`orders:12`, the `token` a command answered: a service, a colon, a position of that service's log). The read waits until the projection has applied it, up to the configured wait, else answers 503 `not_caught_up`. A bare position is refused.",
            string().pattern(Some(token_pattern(&Service::ALL))),
        )
    }

    /// `as_of` and `at_position`, which exclude each other.
    pub(crate) fn as_of(what: &str) -> [Parameter; 2] {
        [
            query(
                "as_of",
                &format!("RFC 3339 time: {what} as it stood then. Not with `at_position` (400 when both are given)."),
                time_schema(),
            ),
            query(
                "at_position",
                &format!(
                    "A position of the orders log as a consistency token (`orders:12`): {what} as it stood once the orders log was applied up to it. Not with `as_of` (400 when both are given)."
                ),
                string().pattern(Some(token_pattern(&[Service::Orders]))),
            ),
        ]
    }

    fn time_schema() -> ObjectBuilder {
        string()
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
            .pattern(Some(TIME_PATTERN))
    }

    /// An RFC 3339 time (leap seconds excluded).
    pub(crate) fn time(name: &str, description: &str) -> Parameter {
        query(
            name,
            &format!(
                "{description}. RFC 3339 (`date-time`), e.g. `2026-11-01T00:00:00Z`; leap seconds (`:60`) are refused."
            ),
            time_schema(),
        )
    }

    /// One of `labels`.
    pub(crate) fn choice<'a>(name: &str, labels: impl IntoIterator<Item = &'a str>, description: &str) -> Parameter {
        query(
            name,
            description,
            string().enum_values(Some(labels.into_iter().collect::<Vec<_>>())),
        )
    }

    /// A hyphenated UUID in the query.
    pub(crate) fn uuid(name: &str, description: &str) -> Parameter {
        query(name, description, uuid_schema())
    }

    fn uuid_schema() -> ObjectBuilder {
        string().format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid)))
    }

    /// The path's `{id}`, a hyphenated UUID.
    pub(crate) fn path_id(description: &str) -> Parameter {
        ParameterBuilder::new()
            .name("id")
            .parameter_in(ParameterIn::Path)
            .required(Required::True)
            .description(Some(description))
            .schema(Some(uuid_schema()))
            .build()
    }

    /// A page size in `1..=max`, `default` when absent.
    pub(crate) fn limit(max: u64, default: u64) -> Parameter {
        query(
            "limit",
            &format!("How many rows, 1 to {max} (default {default})."),
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(1))
                .maximum(Some(max))
                .default(Some(json!(default))),
        )
    }

    /// An opaque cursor the API issued: hex-encoded, from `min_bytes` to `max_bytes` bytes.
    /// Which such strings are cursors no schema can say.
    pub(crate) fn cursor(name: &str, description: &str, min_bytes: usize, max_bytes: Option<usize>) -> Parameter {
        let max = max_bytes.map_or_else(String::new, |max| max.to_string());
        query(
            name,
            description,
            string().pattern(Some(format!("^(?:[0-9a-fA-F]{{2}}){{{min_bytes},{max}}}$"))),
        )
    }

    /// `X-Correlation-Id`, which the edge of every route checks.
    pub(crate) fn correlation_id() -> Parameter {
        ParameterBuilder::new()
            .name("X-Correlation-Id")
            .parameter_in(ParameterIn::Header)
            .required(Required::False)
            .description(Some(format!(
                "Correlation id (1 to {MAX_HEADER_ID_BYTES} visible ASCII characters); made up when absent, echoed on the answer."
            )))
            .schema(Some(
                string()
                    .pattern(Some("^[!-~]+$"))
                    .min_length(Some(1))
                    .max_length(Some(MAX_HEADER_ID_BYTES)),
            ))
            .build()
    }

    /// An error answer: the `ErrorBody` schema.
    fn error(description: &str) -> ResponseBuilder {
        ResponseBuilder::new().description(description).content(
            "application/json",
            Content::new(Some(Ref::from_schema_name("ErrorBody"))),
        )
    }

    /// The errors every query may answer: 400 (a parameter, or `X-Correlation-Id`), 500 and 503
    /// (with `Retry-After`); `waits`: it takes `min_position`, so 503 `not_caught_up` too.
    pub(crate) fn errors(waits: bool) -> BTreeMap<String, RefOr<Response>> {
        let retry_after = HeaderBuilder::new()
            .schema(Some(ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(0))))
            .description(Some("Seconds to wait before retrying."))
            .build();
        let unavailable = if waits {
            "`not_caught_up` (`min_position` was not applied within the wait; `details.position` is how far it was), `unavailable` (a read database failed), `timeout` or `overloaded` (too many requests in flight). Retry after `Retry-After` seconds."
        } else {
            "`unavailable` (a read database failed), `timeout` or `overloaded` (too many requests in flight). Retry after `Retry-After` seconds."
        };
        BTreeMap::from([
            (
                "400".to_owned(),
                RefOr::T(
                    error("`bad_request`: an unknown, repeated or malformed query parameter (`details.parameter` names it), a bad path id, or a bad `X-Correlation-Id`").build(),
                ),
            ),
            ("500".to_owned(), RefOr::T(error("`internal`: stored data could not be read (logged)").build())),
            (
                "503".to_owned(),
                RefOr::T(error(unavailable).header("Retry-After", retry_after).build()),
            ),
        ])
    }

    /// [`errors`] of a query that takes `min_position`.
    pub(crate) struct QueryErrors;

    impl utoipa::IntoResponses for QueryErrors {
        fn responses() -> BTreeMap<String, RefOr<Response>> {
            errors(true)
        }
    }

    /// [`errors`] of a query without `min_position`.
    pub(crate) struct StatusErrors;

    impl utoipa::IntoResponses for StatusErrors {
        fn responses() -> BTreeMap<String, RefOr<Response>> {
            errors(false)
        }
    }
}
