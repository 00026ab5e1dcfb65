//! Extractors that answer [`ApiError`] instead of axum's plain-text rejections, and name the
//! offending field where they can.
//!
//! - [`ApiJson`]: a JSON body (`Content-Type: application/json`, within the body limit, no
//!   trailing data); a type error names its path (`lines[0].quantity`).
//! - [`EmptyBody`]: a command without fields: no body at all, or the JSON `{}`.
//! - [`ApiQuery`]: query parameters (unknown parameters are refused by the target types).
//! - [`IdPath`] and [`StreamIdPath`]: a UUID or a canonical stream id in the path.
//! - [`CommandMeta`]: the headers a command carries (`Idempotency-Key`, `If-Match`) and the
//!   request's correlation id, request id and principal, turned into a [`CommandContext`].

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, header};
use event_schemas::Category;
use event_store::{EventMetadata, IdempotencyKey};
use serde::Serialize;
use serde::de::{DeserializeOwned, Deserializer, Visitor};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::HttpState;
use super::auth::Principal;
use super::objects_only::ObjectsOnly;
use crate::CommandContext;
use service_kit::client::{CAUSATION_ID, CallContext};
use service_kit::http::ApiError;
use service_kit::http::{RequestContext, single_header, visible_ascii};

/// A JSON request body of type `T`.
#[derive(Debug)]
pub(crate) struct ApiJson<T>(pub(crate) T);

impl<T: DeserializeOwned> FromRequest<HttpState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &HttpState) -> Result<Self, ApiError> {
        let content_type = content_type(req.headers());
        let bytes = read_body(req, state).await?;
        if !is_json(content_type.as_deref()) {
            return Err(ApiError::unsupported_media_type(content_type.as_deref()));
        }
        parse_json(&bytes).map(ApiJson)
    }
}

/// The body of a command that has no fields: nothing at all, or the JSON object `{}` (with
/// `Content-Type: application/json`). Anything else is refused like any other body.
#[derive(Debug, Default, Clone, Copy, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmptyBody {}

impl FromRequest<HttpState> for EmptyBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &HttpState) -> Result<Self, ApiError> {
        let content_type = content_type(req.headers());
        let bytes = read_body(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(EmptyBody {});
        }
        if !is_json(content_type.as_deref()) {
            return Err(ApiError::unsupported_media_type(content_type.as_deref()));
        }
        parse_json(&bytes)
    }
}

fn content_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

/// `application/json` or `application/<something>+json`, with any parameters (`charset=utf-8`).
fn is_json(content_type: Option<&str>) -> bool {
    let Some(content_type) = content_type else {
        return false;
    };
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    kind.eq_ignore_ascii_case("application")
        && (subtype.eq_ignore_ascii_case("json") || subtype.to_ascii_lowercase().ends_with("+json"))
}

/// The whole body, within the router's body limit (`DefaultBodyLimit`): 413 beyond it.
async fn read_body(req: Request, state: &HttpState) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|rejection| {
        if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::payload_too_large(state.body_limit_bytes())
        } else {
            ApiError::bad_request("the request body could not be read")
        }
    })
}

/// Deserializes a whole JSON document. Syntax errors are `invalid_json`; a value that does not
/// fit the type (missing, unknown, mistyped or out-of-range field, an array where an object
/// belongs: [`ObjectsOnly`]) is `bad_request` naming the field's path.
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(ObjectsOnly(&mut deserializer)).map_err(|e| {
        let path = e.path().to_string();
        json_error(&path, e.inner())
    })?;
    deserializer.end().map_err(|e| json_error(".", &e))?;
    Ok(value)
}

fn json_error(path: &str, e: &serde_json::Error) -> ApiError {
    let message = strip_position(&e.to_string());
    match e.classify() {
        serde_json::error::Category::Data => {
            let field = field_of(path, &message);
            match field {
                Some(field) => ApiError::bad_field(&field, message),
                None => ApiError::bad_request(format!("the body does not match the expected shape: {message}"))
                    .with_detail("reason", message),
            }
        }
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof | serde_json::error::Category::Io => {
            ApiError::invalid_json(message)
                .with_detail("line", e.line())
                .with_detail("column", e.column())
        }
    }
}

/// serde_json's message without its " at line L column C" suffix (the details carry them).
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

/// The field an error is about: the path where deserializing failed, or for a missing or
/// unknown field (reported at the enclosing object) that path plus the field's name.
fn field_of(path: &str, message: &str) -> Option<String> {
    let named = ["missing field `", "unknown field `", "duplicate field `"]
        .iter()
        .find_map(|prefix| message.strip_prefix(prefix))
        .and_then(|rest| rest.split('`').next());
    match (path, named) {
        (".", Some(name)) => Some(name.to_owned()),
        (".", None) => None,
        // An unknown field is reported at its own path already.
        (path, Some(name)) if path == name || path.ends_with(&format!(".{name}")) => Some(path.to_owned()),
        (path, Some(name)) => Some(format!("{path}.{name}")),
        (path, None) => Some(path.to_owned()),
    }
}

/// Query parameters of type `T` (which should `deny_unknown_fields`).
#[derive(Debug)]
pub(crate) struct ApiQuery<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or_default();
        let deserializer = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(deserializer)
            .map(ApiQuery)
            .map_err(|e| {
                let path = e.path().to_string();
                let message = e.inner().to_string();
                match field_of(&path, &message) {
                    Some(field) => ApiError::bad_field(&field, message),
                    None => ApiError::bad_request(format!("invalid query: {message}")).with_detail("reason", message),
                }
            })
    }
}

/// A position or a stream version in a query: 0 to `i64::MAX`, what the stores keep (and what
/// the document's `int64` says), so a larger number is refused rather than read as "the end".
pub(crate) fn stored_number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    use serde::Deserialize as _;
    match Option::<u64>::deserialize(deserializer)? {
        Some(n) if i64::try_from(n).is_err() => Err(serde::de::Error::custom(format!(
            "must be at most {} (got {n})",
            i64::MAX
        ))),
        n => Ok(n),
    }
}

/// A UUID path parameter (`/v1/orders/{id}/...`): any UUID spelling, 400 naming `id` otherwise.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IdPath(pub(crate) Uuid);

impl<S: Send + Sync> FromRequestParts<S> for IdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad_field("id", e.body_text()))?;
        Uuid::try_parse(&raw)
            .map(IdPath)
            .map_err(|_| ApiError::bad_field("id", format!("{raw:?} is not a UUID")))
    }
}

/// A product's id and an order's id in the path (`/v1/products/{id}/reservations/{order_id}`):
/// 400 naming the one that is not a UUID.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProductOrderPath(pub(crate) Uuid, pub(crate) Uuid);

impl<S: Send + Sync> FromRequestParts<S> for ProductOrderPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path((id, order_id)) = Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad_field("id", e.body_text()))?;
        let parse = |field: &str, raw: &str| {
            Uuid::try_parse(raw).map_err(|_| ApiError::bad_field(field, format!("{raw:?} is not a UUID")))
        };
        Ok(ProductOrderPath(parse("id", &id)?, parse("order_id", &order_id)?))
    }
}

/// A stream id path parameter in its canonical spelling (`order-{uuid}`, see
/// [`event_schemas::parse_stream_id`]).
#[derive(Debug, Clone)]
pub(crate) struct StreamIdPath(pub(crate) String);

impl<S: Send + Sync> FromRequestParts<S> for StreamIdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad_field("stream_id", e.body_text()))?;
        event_schemas::parse_stream_id(&raw).map_err(|_| {
            ApiError::bad_field(
                "stream_id",
                format!("{raw:?} is not a stream id like order-<lower-case hyphenated uuid>"),
            )
        })?;
        Ok(StreamIdPath(raw))
    }
}

/// The namespace of the ids [`CommandMeta::new_id`] derives from idempotency keys. Never change
/// it: a retried request would name another aggregate.
const IDS_FROM_KEYS: Uuid = Uuid::from_u128(0x6f72_6465_7266_6c6f_7769_6473_2d6b_6579);

/// What a command request carries besides its body.
#[derive(Debug, Clone)]
pub(crate) struct CommandMeta {
    method: Method,
    path: String,
    metadata: EventMetadata,
    /// This request's own id (the cause of what it calls).
    request_id: uuid::Uuid,
    idempotency_key: Option<String>,
    if_match: Option<u64>,
}

impl CommandMeta {
    /// The handler's context for a command whose (typed, validated) body is `body`. The
    /// idempotency key's request hash is SHA-256 of the method, the path and the body as
    /// canonical JSON (the typed body re-serialized: field order and whitespace of the request
    /// do not matter, a different value does).
    pub(crate) fn context<B: Serialize>(&self, body: &B) -> CommandContext {
        let idempotency = self.idempotency_key.as_ref().map(|key| {
            let mut hash = Sha256::new();
            hash.update(self.method.as_str().as_bytes());
            hash.update(b" ");
            hash.update(self.path.as_bytes());
            hash.update(b"\n");
            // Serializing a plain data struct to JSON cannot fail.
            hash.update(serde_json::to_vec(body).unwrap_or_default());
            IdempotencyKey {
                key: key.clone(),
                request_hash: hash.finalize().to_vec(),
            }
        });
        CommandContext {
            metadata: self.metadata.clone(),
            idempotency,
            if_match: self.if_match,
        }
    }

    /// The id of the aggregate a creating command makes when the body names none: a new one,
    /// or for a request with an idempotency key one derived from the key (a name-based UUID),
    /// so that copies of the request sent at once name the same aggregate (an order's copies
    /// then reserve its stock once, under the same keys, instead of each for an order of its
    /// own).
    pub(crate) fn new_id(&self, category: Category) -> Uuid {
        match &self.idempotency_key {
            Some(key) => Uuid::new_v5(&IDS_FROM_KEYS, format!("{}:{key}", category.name()).as_bytes()),
            None => Uuid::now_v7(),
        }
    }

    /// What a call this command makes to another service carries: the same correlation id,
    /// and this request as the cause.
    pub(crate) fn call(&self) -> CallContext {
        CallContext::new(self.metadata.correlation_id.clone(), self.request_id.to_string())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for CommandMeta {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let idempotency_key = single_header(&parts.headers, "idempotency-key")?
            .map(|value| visible_ascii("Idempotency-Key", value))
            .transpose()?;
        let if_match = single_header(&parts.headers, "if-match")?
            .map(parse_if_match)
            .transpose()?;
        let context = parts
            .extensions
            .get::<RequestContext>()
            .cloned()
            .unwrap_or_else(RequestContext::new);
        let actor = parts
            .extensions
            .get::<Principal>()
            .map_or_else(|| Principal::ANONYMOUS.to_owned(), |p| p.name.clone());
        // A call from another service names its cause (the request that made it); the events
        // this request appends are caused by that, not by this hop.
        let causation_id = single_header(&parts.headers, CAUSATION_ID.as_str())?
            .map(|value| visible_ascii("X-Causation-Id", value))
            .transpose()?
            .unwrap_or_else(|| context.request_id.to_string());
        Ok(CommandMeta {
            method: parts.method.clone(),
            path: parts.uri.path().to_owned(),
            metadata: EventMetadata {
                correlation_id: context.correlation_id,
                causation_id,
                actor,
            },
            request_id: context.request_id,
            idempotency_key,
            if_match,
        })
    }
}

/// `If-Match: 3` or `If-Match: "3"`: the stream version the client saw.
fn parse_if_match(value: &[u8]) -> Result<u64, ApiError> {
    let bad = || ApiError::bad_field("If-Match", r#"must be a stream version, like 3 or "3""#);
    let text = std::str::from_utf8(value).map_err(|_| bad())?.trim();
    let digits = match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        Some(inner) => inner,
        None => text,
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    digits.parse().map_err(|_| bad())
}

/// Deserializes an `i64` that must be 0 or more, so that a negative or out-of-range number is a
/// 400 naming its field (the domain's own limits, e.g. a quantity above the maximum, are 422).
pub(crate) fn non_negative<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    struct NonNegative;

    impl Visitor<'_> for NonNegative {
        type Value = i64;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "an integer from 0 to {}", i64::MAX)
        }

        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<i64, E> {
            if v < 0 {
                return Err(E::custom(format!("must not be negative (got {v})")));
            }
            Ok(v)
        }

        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<i64, E> {
            i64::try_from(v).map_err(|_| E::custom(format!("must be at most {} (got {v})", i64::MAX)))
        }

        /// JSON has one number type: `3.0` is the integer 3 (JSON Schema says so too, and a
        /// client's serializer may write it so). A fraction, or a value past `i64`, is not.
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<i64, E> {
            // 2^63 is the first f64 past i64::MAX; every integral f64 below it converts exactly.
            if v.fract() == 0.0 && (0.0..9_223_372_036_854_775_808.0).contains(&v) {
                return Ok(v as i64);
            }
            Err(E::custom(format!(
                "must be an integer from 0 to {} (got {v})",
                i64::MAX
            )))
        }
    }

    deserializer.deserialize_i64(NonNegative)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Line {
        product_id: Uuid,
        #[serde(deserialize_with = "non_negative")]
        quantity: i64,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        lines: Vec<Line>,
    }

    fn field(json: &str) -> (String, Option<String>) {
        let e = parse_json::<Body>(json.as_bytes()).expect_err(json);
        (
            e.code().to_owned(),
            e.details().get("field").and_then(|f| f.as_str()).map(str::to_owned),
        )
    }

    #[test]
    fn an_integral_number_written_with_a_fraction_or_exponent_is_that_integer() {
        let id = "0190b1e2-0000-7000-8000-000000000000";
        // The last: a value where a parser off by one ULP reads ...641.5 (the fuzzer found it).
        for (written, expected) in [
            ("3.0", 3),
            ("1e2", 100),
            ("-0.0", 0),
            ("0", 0),
            ("3831643271199642.0", 3_831_643_271_199_642),
        ] {
            let json = format!(r#"{{"name":"a","lines":[{{"product_id":"{id}","quantity":{written}}}]}}"#);
            let body = parse_json::<Body>(json.as_bytes()).unwrap_or_else(|e| panic!("{written}: {e:?}"));
            assert_eq!(body.lines[0].quantity, expected, "{written}");
        }
    }

    #[test]
    fn json_errors_name_the_field() {
        let id = "0190b1e2-0000-7000-8000-000000000000";
        assert_eq!(field("{"), ("invalid_json".into(), None));
        assert_eq!(field(r#"{"name":"a","lines":[]} x"#), ("invalid_json".into(), None));
        assert_eq!(field(r#"{"lines":[]}"#), ("bad_request".into(), Some("name".into())));
        assert_eq!(
            field(r#"{"name":"a","lines":[],"extra":1}"#),
            ("bad_request".into(), Some("extra".into()))
        );
        assert_eq!(
            field(&format!(
                r#"{{"name":"a","lines":[{{"product_id":"{id}","quantity":1,"x":2}}]}}"#
            )),
            ("bad_request".into(), Some("lines[0].x".into()))
        );
        for quantity in ["-1", "9223372036854775808", "1e40", "1.5", "\"3\""] {
            let json = format!(r#"{{"name":"a","lines":[{{"product_id":"{id}","quantity":{quantity}}}]}}"#);
            assert_eq!(
                field(&json),
                ("bad_request".into(), Some("lines[0].quantity".into())),
                "{quantity}"
            );
        }
        let json = r#"{"name":"a","lines":[{"product_id":"nope","quantity":1}]}"#;
        assert_eq!(field(json), ("bad_request".into(), Some("lines[0].product_id".into())));
        let json = format!(r#"{{"name":"a","lines":[{{"product_id":"{id}"}}]}}"#);
        assert_eq!(field(&json), ("bad_request".into(), Some("lines[0].quantity".into())));
        let ok = format!(r#"{{"name":"a","lines":[{{"product_id":"{id}","quantity":9223372036854775807}}]}}"#);
        assert!(parse_json::<Body>(ok.as_bytes()).is_ok());
    }

    #[test]
    fn if_match_is_a_plain_or_quoted_version() {
        assert_eq!(parse_if_match(b"3").ok(), Some(3));
        assert_eq!(parse_if_match(b"\"3\"").ok(), Some(3));
        assert_eq!(parse_if_match(b" 12 ").ok(), Some(12));
        for bad in [
            &b""[..],
            b"\"\"",
            b"-1",
            b"W/\"3\"",
            b"*",
            b"3a",
            b"99999999999999999999999",
        ] {
            assert!(parse_if_match(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn keys_are_visible_ascii() {
        assert!(visible_ascii("k", b"abc-123_!~").is_ok());
        assert!(visible_ascii("k", &[b'a'; service_kit::http::MAX_HEADER_ID_BYTES]).is_ok());
        for bad in [
            &b""[..],
            b"a b",
            b"a\tb",
            "é".as_bytes(),
            &[b'a'; service_kit::http::MAX_HEADER_ID_BYTES + 1],
        ] {
            assert!(visible_ascii("k", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn json_content_types() {
        for good in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/problem+json",
        ] {
            assert!(is_json(Some(good)), "{good}");
        }
        for bad in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "json",
            "",
            "application/jsonx",
        ] {
            assert!(!is_json(Some(bad)), "{bad}");
        }
        assert!(!is_json(None));
    }
}
