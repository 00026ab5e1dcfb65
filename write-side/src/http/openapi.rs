//! The OpenAPI document (`/openapi.json`), generated from the handlers' `#[utoipa::path]`
//! attributes and the request and answer types. [`CommonParts`] adds what every route shares
//! rather than repeating it on each: the bearer security scheme, the command headers
//! (`Idempotency-Key`, `If-Match`), `X-Correlation-Id`, and the error answers every `/v1`
//! route can give (400, 401, 403, 413, 415, 500, 503).

use utoipa::openapi::path::{Operation, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{Content, Ref, RefOr, Required, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use super::{commands, ops, reads};
use service_kit::http::ErrorBody;

/// The write side's HTTP API.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "orderflow write-side",
        description = "Commands of the order domain, the event store's streams and log, and orders folded as of a time or position. Errors are `{\"error\": {\"code\", \"message\", \"details\"}}`."
    ),
    paths(
        commands::register_customer,
        commands::rename_customer,
        commands::change_customer_email,
        commands::add_product,
        commands::restock_product,
        commands::change_product_price,
        commands::place_order,
        commands::confirm_order,
        commands::cancel_order,
        commands::ship_order,
        commands::deliver_order,
        reads::stream_events,
        reads::log,
        reads::order_state,
        ops::health,
        ops::ready,
        ops::metrics,
        ops::openapi,
    ),
    components(schemas(ErrorBody)),
    modifiers(&CommonParts),
    tags(
        (name = "customers", description = "customer commands"),
        (name = "products", description = "product commands"),
        (name = "orders", description = "order commands"),
        (name = "reads", description = "streams, the global log (admin scope) and order state, from the event store"),
        (name = "operations", description = "health, readiness, metrics and this document; no token needed"),
    )
)]
pub struct ApiDoc;

/// Adds the security scheme, the shared headers and the shared error answers.
pub(crate) struct CommonParts;

impl Modify for CommonParts {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
        for (path, item) in openapi.paths.paths.iter_mut() {
            if !path.starts_with("/v1/") {
                continue;
            }
            if let Some(op) = item.post.as_mut() {
                command_headers(op);
                error(op, "413", "`payload_too_large`: the body exceeds the limit");
                error(
                    op,
                    "415",
                    "`unsupported_media_type`: the body is not `application/json`",
                );
                error(op, "422", "`invalid` field value, or `idempotency_key_reused`");
            }
            for op in [item.get.as_mut(), item.post.as_mut()].into_iter().flatten() {
                header(
                    op,
                    "X-Correlation-Id",
                    "Correlation id of the events this request causes (1 to 255 visible ASCII); made up when absent, echoed on the answer.",
                );
                error(
                    op,
                    "400",
                    "`invalid_json` or `bad_request`: malformed body, unknown or missing field, negative or out-of-range number, bad id, query parameter or header",
                );
                error(op, "401", "`unauthorized`: no or unknown bearer token");
                error(op, "403", "`forbidden`: the token lacks the route's scope");
                error(op, "500", "`internal`");
                error(op, "503", "`unavailable` (event store) or `timeout`");
            }
        }
    }
}

fn command_headers(op: &mut Operation) {
    header(
        op,
        "Idempotency-Key",
        "Makes the command safe to retry: a repeat with the same key and body answers the first result and appends nothing; the same key with another body is a 422. 1 to 255 visible ASCII characters.",
    );
    header(
        op,
        "If-Match",
        "The stream version the client saw (`3` or `\"3\"`); another current version answers 409 `conflict` and appends nothing.",
    );
}

fn header(op: &mut Operation, name: &str, description: &str) {
    let parameter = ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(description))
        .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
        .build();
    op.parameters.get_or_insert_with(Vec::new).push(RefOr::T(parameter));
}

fn error(op: &mut Operation, status: &str, description: &str) {
    op.responses.responses.entry(status.to_owned()).or_insert_with(|| {
        RefOr::T(
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    Content::new(Some(Ref::from_schema_name("ErrorBody"))),
                )
                .build(),
        )
    });
}
