//! The answer of every command: where its events went, and the consistency token a read can
//! wait for.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use event_schemas::{ConsistencyToken, Service};
use serde::{Deserialize, Serialize};
use service_kit::http::ApiError;
use utoipa::ToSchema;

use crate::{CommandAnswer, CommandError};

/// The answer to every command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CommandAnswerBody {
    /// The stream the command wrote (for an order: the order's stream), e.g. `order-{uuid}`.
    pub stream_id: String,
    /// The stream's version after the command: send it as `If-Match` to make the next command
    /// conditional.
    pub version: u64,
    /// The highest position the command wrote in its service's log.
    pub position: u64,
    /// The service that owns the stream: `customers`, `inventory`, `orders` or `payments`.
    pub service: String,
    /// `service:position`, e.g. `orders:12`: what a read's `min_position` waits for.
    pub token: String,
}

impl CommandAnswerBody {
    /// The body of `answer`.
    pub fn new(answer: CommandAnswer) -> Self {
        let service = service_of(&answer.stream_id);
        let token = ConsistencyToken {
            service,
            position: answer.position,
        };
        CommandAnswerBody {
            stream_id: answer.stream_id,
            version: answer.version,
            position: answer.position,
            service: service.name().to_owned(),
            token: token.to_string(),
        }
    }
}

/// The service owning `stream_id` (every stream id the handler answers is canonical).
fn service_of(stream_id: &str) -> Service {
    event_schemas::parse_stream_id(stream_id)
        .map(|(category, _)| Service::owning(category))
        .unwrap_or(Service::Orders)
}

/// A command's HTTP answer: the body, its status and `ETag: "<version>"`.
pub(crate) struct Answered {
    status: StatusCode,
    body: CommandAnswerBody,
}

impl Answered {
    pub(crate) fn new(status: StatusCode, answer: CommandAnswer) -> Self {
        Answered {
            status,
            body: CommandAnswerBody::new(answer),
        }
    }
}

impl IntoResponse for Answered {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(&self.body)).into_response();
        if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", self.body.version)) {
            response.headers_mut().insert(header::ETAG, etag);
        }
        response
    }
}

/// Turns the handler's answer into the HTTP answer.
pub(crate) fn answer(status: StatusCode, result: Result<CommandAnswer, CommandError>) -> Result<Answered, ApiError> {
    Ok(Answered::new(status, result?))
}
