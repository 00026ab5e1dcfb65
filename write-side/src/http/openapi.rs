//! The OpenAPI document (`/openapi.json`), generated from the handlers' `#[utoipa::path]`
//! attributes and the request and answer types. [`CommonParts`] adds what every route shares
//! rather than repeating it on each: the command headers (`Idempotency-Key`, `If-Match`),
//! `X-Correlation-Id`, and the error answers every `/v1` route can give (400, 413, 415, 500,
//! 503); the bearer scheme with its 401 and 403 only when the process enforces it.

use utoipa::openapi::path::Operation;
use utoipa::openapi::{RefOr, Required};
use utoipa::{Modify, OpenApi};

use event_schemas::Service;

use super::{customers, inventory, ops, orders, payments, reads, sagas};
use crate::domain;
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
    let mut hosted = 0;
    for service in services {
        hosted += 1;
        doc.merge(match service {
            Service::Customers => Customers::openapi(),
            Service::Inventory => Inventory::openapi(),
            Service::Orders => Orders::openapi(),
            Service::Payments => Payments::openapi(),
        });
    }
    CommonParts.modify(&mut doc);
    Constraints.modify(&mut doc);
    // Several services on one port: the log is ambiguous without `service`.
    if hosted > 1
        && let Some(op) = doc.paths.paths.get_mut("/v1/log").and_then(|item| item.get.as_mut())
    {
        for parameter in op.parameters.iter_mut().flatten() {
            if let RefOr::T(parameter) = parameter
                && parameter.name == "service"
            {
                parameter.required = Required::True;
            }
        }
    }
    declare_security(&mut doc, auth);
    doc
}

/// What the domain and the extractors accept, field by field, for the request bodies: the one
/// place the document learns the rules that `#[derive(ToSchema)]` cannot see (trimming, control
/// characters, the domain's maximums). A client generated from the document then sends nothing
/// the service refuses for its form.
struct Constraints;

/// One field's rule.
#[derive(Debug, Clone, Copy)]
enum Rule {
    /// [`domain::validate::text`]: trimmed, 1 to `n` characters, no control characters; an
    /// example (a generator that cannot satisfy the pattern falls back on it).
    Text(usize, &'static str),
    /// [`domain::validate::email`].
    Email,
    /// [`domain::validate::sku`].
    Sku,
    /// Three upper-case ASCII letters.
    Currency,
    /// An integer from `min` to `max`.
    Int(i64, i64),
    /// A number from `min` to `max`.
    Number(f64, f64),
    /// An array of `min` to `max` items.
    Items(usize, usize),
}

/// (schema, field, rule) for every request body field the domain constrains.
const RULES: &[(&str, &str, Rule)] = &[
    (
        "RegisterCustomer",
        "name",
        Rule::Text(domain::MAX_NAME_CHARS, "Ada Lovelace"),
    ),
    ("RegisterCustomer", "email", Rule::Email),
    ("RenameCustomer", "name", Rule::Text(domain::MAX_NAME_CHARS, "Ada King")),
    ("ChangeCustomerEmail", "email", Rule::Email),
    ("AddProduct", "sku", Rule::Sku),
    (
        "AddProduct",
        "name",
        Rule::Text(domain::MAX_NAME_CHARS, "Notes on the Engine"),
    ),
    ("AddProduct", "price_minor", Rule::Int(0, domain::MAX_PRICE_MINOR)),
    ("AddProduct", "currency", Rule::Currency),
    ("AddProduct", "stock", Rule::Int(0, domain::MAX_STOCK)),
    (
        "ChangeProductPrice",
        "price_minor",
        Rule::Int(0, domain::MAX_PRICE_MINOR),
    ),
    ("RestockProduct", "quantity", Rule::Int(1, domain::MAX_QUANTITY)),
    ("ReserveStockBody", "quantity", Rule::Int(1, domain::MAX_QUANTITY)),
    ("PlaceOrderBody", "lines", Rule::Items(1, domain::MAX_ORDER_LINES)),
    ("OrderLineInput", "quantity", Rule::Int(1, domain::MAX_QUANTITY)),
    (
        "CancelOrderBody",
        "reason",
        Rule::Text(domain::MAX_REASON_CHARS, "changed my mind"),
    ),
    (
        "ShipOrderBody",
        "carrier",
        Rule::Text(domain::MAX_SHIPPING_CHARS, "DHL"),
    ),
    (
        "ShipOrderBody",
        "tracking",
        Rule::Text(domain::MAX_SHIPPING_CHARS, "JD014600006281482"),
    ),
    (
        "AbandonSagaBody",
        "reason",
        Rule::Text(domain::MAX_REASON_CHARS, "customer called"),
    ),
    ("AuthorizePaymentBody", "amount_minor", Rule::Int(1, i64::MAX)),
    ("AuthorizePaymentBody", "currency", Rule::Currency),
    ("PaymentAmountBody", "amount_minor", Rule::Int(1, i64::MAX)),
    (
        "PaymentReasonBody",
        "reason",
        Rule::Text(domain::MAX_REASON_CHARS, "order cancelled"),
    ),
    ("GatewaySettings", "decline_rate", Rule::Number(0.0, 1.0)),
    (
        "GatewaySettings",
        "latency_ms",
        Rule::Int(0, crate::gateway::MAX_LATENCY_MS as i64),
    ),
];

/// Control characters (Unicode Cc), which no text field may hold.
const CONTROL: &str = r"\u0000-\u001F\u007F-\u009F";
/// What Rust's `str::trim` removes besides control characters: the other White_Space
/// characters. Spelled out, since `\s` differs between regex dialects.
const SPACE: &str = r" \u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000";

impl Rule {
    fn apply(self, schema: &mut utoipa::openapi::schema::Schema) {
        use utoipa::openapi::schema::Schema;
        match (self, schema) {
            (Rule::Text(max, example), Schema::Object(field)) => {
                field.example = Some(example.into());
                // Padding of white space (control characters among them) is trimmed; what is
                // left is 1 to `max` characters, none a control character, not starting or
                // ending with a space.
                let padding = format!(r"[\t-\r\u0085{SPACE}]*");
                let edge = format!("[^{CONTROL}{SPACE}]");
                field.pattern = Some(format!(
                    "^{padding}{edge}(?:[^{CONTROL}]{{0,{}}}{edge})?{padding}$",
                    max - 2
                ));
                field.min_length = Some(1);
            }
            (Rule::Email, Schema::Object(field)) => {
                let part = format!("[^@.{CONTROL}{SPACE}]+");
                field.pattern = Some(format!("^[^@{CONTROL}{SPACE}]+@{part}(?:\\.{part})+$"));
                field.max_length = Some(domain::MAX_EMAIL_CHARS);
                field.example = Some("ada@example.com".into());
            }
            (Rule::Sku, Schema::Object(field)) => {
                field.pattern = Some(format!("^[A-Za-z0-9._-]{{1,{}}}$", domain::MAX_SKU_CHARS));
            }
            (Rule::Currency, Schema::Object(field)) => {
                field.pattern = Some("^[A-Z]{3}$".to_owned());
                field.example = Some("EUR".into());
            }
            (Rule::Int(min, max), Schema::Object(field)) => {
                field.minimum = Some(utoipa::Number::Int(min as isize));
                field.maximum = Some(utoipa::Number::Int(max as isize));
            }
            (Rule::Number(min, max), Schema::Object(field)) => {
                field.minimum = Some(utoipa::Number::Float(min));
                field.maximum = Some(utoipa::Number::Float(max));
            }
            (Rule::Items(min, max), Schema::Array(field)) => {
                field.min_items = Some(min);
                field.max_items = Some(max);
            }
            (rule, _) => debug_assert!(false, "{rule:?} does not fit its field's schema"),
        }
    }
}

impl Modify for Constraints {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let Some(components) = openapi.components.as_mut() else {
            return;
        };
        for (schema, field, rule) in RULES {
            // A process hosting one service has only its schemas.
            let Some(RefOr::T(utoipa::openapi::schema::Schema::Object(object))) = components.schemas.get_mut(*schema)
            else {
                continue;
            };
            if let Some(RefOr::T(property)) = object.properties.get_mut(*field) {
                rule.apply(property);
            }
        }
    }
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
                error(op, "409", "`conflict`: the stream is not at the `If-Match` version");
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn document() -> Value {
        let doc = api_doc(Service::ALL, &Auth::Disabled);
        serde_json::from_str(&doc.to_json().expect("the document renders")).expect("JSON")
    }

    #[test]
    fn every_rule_reaches_its_field() {
        let doc = document();
        for (schema, field, rule) in RULES {
            let property = &doc["components"]["schemas"][*schema]["properties"][*field];
            assert!(property.is_object(), "{schema}.{field} is not in the document");
            let constrained = match rule {
                Rule::Text(..) | Rule::Email | Rule::Sku | Rule::Currency => property["pattern"].is_string(),
                Rule::Int(..) | Rule::Number(..) => property["minimum"].is_number() && property["maximum"].is_number(),
                Rule::Items(..) => property["minItems"].is_number() && property["maxItems"].is_number(),
            };
            assert!(constrained, "{schema}.{field}: {rule:?} left no trace: {property}");
        }
        let name = &doc["components"]["schemas"]["RegisterCustomer"]["properties"]["name"]["pattern"];
        assert!(
            name.as_str()
                .is_some_and(|p| p.contains(&format!("{{0,{}}}", domain::MAX_NAME_CHARS - 2))),
            "{name}"
        );
    }

    #[test]
    fn the_stream_id_pattern_names_every_category() {
        let doc = document();
        let parameters = doc["paths"]["/v1/streams/{stream_id}/events"]["get"]["parameters"]
            .as_array()
            .expect("parameters");
        let pattern = parameters
            .iter()
            .find(|p| p["name"] == "stream_id")
            .and_then(|p| p["schema"]["pattern"].as_str())
            .expect("a stream_id pattern");
        let names: Vec<&str> = event_schemas::Category::ALL.iter().map(|c| c.name()).collect();
        assert!(pattern.starts_with(&format!("^({})-", names.join("|"))), "{pattern}");
    }

    #[test]
    fn a_process_hosting_several_services_requires_the_log_s_service() {
        let required = |doc: &utoipa::openapi::OpenApi| {
            let doc: Value = serde_json::from_str(&doc.to_json().expect("JSON")).expect("JSON");
            doc["paths"]["/v1/log"]["get"]["parameters"]
                .as_array()
                .and_then(|ps| ps.iter().find(|p| p["name"] == "service"))
                .map(|p| p["required"] == true)
        };
        assert_eq!(required(&api_doc(Service::ALL, &Auth::Disabled)), Some(true));
        assert_eq!(required(&api_doc([Service::Orders], &Auth::Disabled)), Some(false));
    }
}
