//! Strict query parameters: every endpoint names the parameters it accepts; an unknown or
//! repeated one, or a value that does not parse, is a 400 naming it. Values reach SQL only as
//! bound parameters (or, for enumerations, as one of a fixed set).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use event_schemas::{ConsistencyToken, Service};
use uuid::Uuid;

use crate::ApiError;

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

    /// An RFC 3339 time.
    pub(crate) fn time(&self, name: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
        self.text(name)
            .map(|text| {
                DateTime::parse_from_rfc3339(text)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|_| {
                        ApiError::bad_parameter(
                            name,
                            format!("{name} must be an RFC 3339 time, e.g. 2026-11-01T00:00:00Z"),
                        )
                    })
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

    pub(crate) fn uuid(&self, name: &str) -> Result<Option<Uuid>, ApiError> {
        self.text(name)
            .map(|text| {
                Uuid::try_parse(text).map_err(|_| ApiError::bad_parameter(name, format!("{name} must be a UUID")))
            })
            .transpose()
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
    pub(crate) fn token(&self, name: &str) -> Result<Option<ConsistencyToken>, ApiError> {
        self.text(name)
            .map(|text| {
                text.parse::<ConsistencyToken>().map_err(|e| {
                    ApiError::bad_parameter(name, format!("{name}: {e}"))
                        .with_detail("expected", "<service>:<position>, e.g. orders:12")
                })
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
            (Some(_), Some(_)) => Err(ApiError::bad_parameter("as_of", "give as_of or at_position, not both")),
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
