//! Small helpers shared by the `TryFrom<proto::…>` implementations: each turns one wire field
//! into its domain type, or into a [`DecodeError`] that names the field.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{Currency, DecodeError, Money, proto};

/// A UUID field. Any spelling `uuid` accepts is read; the hyphenated lower-case one is written.
pub(crate) fn uuid(field: &'static str, value: &str) -> Result<Uuid, DecodeError> {
    Uuid::try_parse(value).map_err(|source| DecodeError::InvalidUuid { field, source })
}

/// A currency code field.
pub(crate) fn currency(field: &'static str, value: &str) -> Result<Currency, DecodeError> {
    Currency::new(value).map_err(|source| DecodeError::InvalidCurrency { field, source })
}

/// A sub-message proto3 makes optional but the event requires.
pub(crate) fn required<T>(field: &'static str, value: Option<T>) -> Result<T, DecodeError> {
    value.ok_or(DecodeError::MissingField { field })
}

/// A required `Money` sub-message.
pub(crate) fn money(field: &'static str, value: Option<proto::Money>) -> Result<Money, DecodeError> {
    let value = required(field, value)?;
    Ok(Money {
        amount_minor: value.amount_minor,
        currency: currency(field, &value.currency)?,
    })
}

impl From<Money> for proto::Money {
    fn from(money: Money) -> Self {
        Self {
            amount_minor: money.amount_minor,
            currency: money.currency.as_str().to_owned(),
        }
    }
}

/// How every id is written: hyphenated, lower-case.
pub(crate) fn id(id: Uuid) -> String {
    id.hyphenated().to_string()
}

const NANOS_PER_MICRO: u32 = 1_000;

/// A protobuf timestamp with microsecond precision.
pub(crate) fn timestamp(time: DateTime<Utc>) -> prost_types::Timestamp {
    // A leap second shows as 1_000_000 or more microseconds; keep it inside the second, which
    // is how protobuf timestamps (smeared, no leap seconds) see it anyway.
    let micros = time.timestamp_subsec_micros().min(999_999);
    prost_types::Timestamp {
        seconds: time.timestamp(),
        // < 1_000_000_000, so it fits.
        nanos: i32::try_from(micros * NANOS_PER_MICRO).unwrap_or(0),
    }
}

/// A required protobuf timestamp, truncated to microseconds.
pub(crate) fn date_time(
    field: &'static str,
    value: Option<prost_types::Timestamp>,
) -> Result<DateTime<Utc>, DecodeError> {
    let value = required(field, value)?;
    let nanos = u32::try_from(value.nanos)
        .ok()
        .filter(|nanos| *nanos < 1_000_000_000)
        .ok_or(DecodeError::InvalidTimestamp { field })?;
    let nanos = nanos / NANOS_PER_MICRO * NANOS_PER_MICRO;
    DateTime::from_timestamp(value.seconds, nanos).ok_or(DecodeError::InvalidTimestamp { field })
}
