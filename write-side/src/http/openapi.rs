//! The OpenAPI document (`/openapi.json`), generated from the handlers' `#[utoipa::path]`
//! attributes and the request and answer types. [`CommonParts`] adds what every route shares
//! rather than repeating it on each: the command headers (`Idempotency-Key`, `If-Match`),
//! `X-Correlation-Id`, and the error answers every `/v1` route can give (400, 413, 415, 500,
//! 503); the bearer scheme with its 401 and 403 only when the process enforces it.

use utoipa::openapi::path::Operation;
use utoipa::{Modify, OpenApi};

use event_schemas::Service;

use super::{customers, inventory, ops, orders, payments, reads, sagas};
use service_kit::auth::Auth;
use service_kit::http::openapi::{declare_security, error_response as error, header_parameter};
use service_kit::http::{ErrorBody, MAX_HEADER_ID_BYTES};

/// What `visible_ascii` accepts in a header: visible ASCII, no spaces.
const VISIBLE_ASCII: &str = "^[!-~]+$";

/// What every write service's document has: the shared reads and the operations endpoints.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "orderflow write services",
        description = "Commands of the order domain, each service's streams and log, and orders folded as of a time or a position of the orders log. Every command answers a consistency token (`orders:12`) that reads take as `min_position`. Errors are `{\"error\": {\"code\", \"message\", \"details\"}}`."
    ),
    paths(reads::stream_events, reads::log, ops::health, ops::ready, ops::metrics, ops::openapi),
    components(schemas(ErrorBody)),
    tags(
        (name = "reads", description = "streams and a service's log (admin scope), from the owning service's event store"),
        (name = "operations", description = "health, readiness, metrics and this document; no token needed"),
    )
)]
struct Common;

#[derive(OpenApi)]
#[openapi(
    paths(
        customers::register_customer,
        customers::customer,
        customers::rename_customer,
        customers::change_customer_email,
    ),
    tags((name = "customers", description = "the customers service"))
)]
struct Customers;

#[derive(OpenApi)]
#[openapi(
    paths(
        inventory::add_product,
        inventory::product,
        inventory::restock_product,
        inventory::change_product_price,
        inventory::reserve_stock,
        inventory::reservation,
        inventory::release_stock,
    ),
    tags((name = "products", description = "the inventory service: products, prices, stock and reservations"))
)]
struct Inventory;

#[derive(OpenApi)]
#[openapi(
    paths(
        orders::place_order,
        orders::confirm_order,
        orders::cancel_order,
        orders::ship_order,
        orders::deliver_order,
        reads::order_state,
        sagas::overview,
        sagas::saga,
        sagas::parked,
        sagas::retry,
        sagas::abandon,
        sagas::services,
    ),
    tags(
        (name = "orders", description = "the orders service"),
        (name = "sagas", description = "the orders service's place-order sagas (admin scope): their state, the parked ones, retrying and abandoning one, and the services they call"),
    )
)]
struct Orders;

#[derive(OpenApi)]
#[openapi(
    paths(
        payments::authorize_payment,
        payments::payment,
        payments::capture_payment,
        payments::void_payment,
        payments::refund_payment,
        payments::decline_payment,
        payments::gateway_settings,
        payments::set_gateway_settings,
    ),
    tags((name = "payments", description = "the payments service"))
)]
struct Payments;

/// The OpenAPI document of a process hosting `services` with `auth`: their routes only, with
/// what every route shares (`CommonParts`) and the security the process enforces.
pub fn api_doc(services: impl IntoIterator<Item = Service>, auth: &Auth) -> utoipa::openapi::OpenApi {
    let mut doc = Common::openapi();
    for service in services {
        doc.merge(match service {
            Service::Customers => Customers::openapi(),
            Service::Inventory => Inventory::openapi(),
            Service::Orders => Orders::openapi(),
            Service::Payments => Payments::openapi(),
        });
    }
    CommonParts.modify(&mut doc);
    declare_security(&mut doc, auth);
    doc
}

/// Adds the shared headers and the shared error answers.
pub(crate) struct CommonParts;

impl Modify for CommonParts {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            if !path.starts_with("/v1/") {
                continue;
            }
            if let Some(op) = item.put.as_mut() {
                error(op, "413", "`payload_too_large`: the body exceeds the limit");
                error(
                    op,
                    "415",
                    "`unsupported_media_type`: the body is not `application/json`",
                );
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
            for op in [item.get.as_mut(), item.post.as_mut(), item.put.as_mut()]
                .into_iter()
                .flatten()
            {
                header_parameter(
                    op,
                    "X-Correlation-Id",
                    "Correlation id of the events this request causes (1 to 255 visible ASCII); made up when absent, echoed on the answer.",
                    VISIBLE_ASCII,
                    MAX_HEADER_ID_BYTES,
                );
                error(
                    op,
                    "400",
                    "`invalid_json` or `bad_request`: malformed body, unknown or missing field, negative or out-of-range number, bad id, query parameter or header",
                );
                error(op, "500", "`internal`");
                error(op, "503", "`unavailable` (event store) or `timeout`");
            }
        }
    }
}

fn command_headers(op: &mut Operation) {
    header_parameter(
        op,
        "Idempotency-Key",
        "Makes the command safe to retry: a repeat with the same key and body answers the first result and appends nothing; the same key with another body is a 422. 1 to 255 visible ASCII characters.",
        VISIBLE_ASCII,
        MAX_HEADER_ID_BYTES,
    );
    header_parameter(
        op,
        "If-Match",
        "The stream version the client saw (`3` or `\"3\"`); another current version answers 409 `conflict` and appends nothing.",
        r#"^([0-9]{1,19}|"[0-9]{1,19}")$"#,
        21,
    );
}
