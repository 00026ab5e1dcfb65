//! Strict query parameters: every endpoint names the parameters it accepts; an unknown or
//! repeated one, or a value that does not parse, is a 400 naming it. Values reach SQL only as
//! bound parameters (or, for enumerations, as one of a fixed set).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
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

    /// The read-your-writes token, `min_position`.
    pub(crate) fn min_position(&self) -> Result<Option<u64>, ApiError> {
        self.integer("min_position", 0, i64::MAX as u64)
    }

    /// `as_of` (an RFC 3339 time) or `at_position` (a global position); not both.
    pub(crate) fn as_of(&self) -> Result<Option<projections::dashboard::AsOf>, ApiError> {
        use projections::dashboard::AsOf;
        match (self.time("as_of")?, self.integer("at_position", 0, i64::MAX as u64)?) {
            (Some(_), Some(_)) => Err(ApiError::bad_parameter("as_of", "give as_of or at_position, not both")),
            (Some(time), None) => Ok(Some(AsOf::Time(time))),
            (None, Some(position)) => Ok(Some(AsOf::Position(position))),
            (None, None) => Ok(None),
        }
    }
}
