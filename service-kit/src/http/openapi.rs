//! What every service's OpenAPI document shares: error answers and header parameters added to
//! many operations at once, and the bearer security a document declares only when the process
//! enforces it (a client generated from the document must not be told to send a token a
//! service ignores, nor be left without one a service requires).

use utoipa::openapi::path::{Operation, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Content, OpenApi, Ref, RefOr, Required, ResponseBuilder};

use crate::auth::Auth;

/// The name of the bearer security scheme in every document.
pub const BEARER: &str = "bearer";

const UNAUTHORIZED: &str = "`unauthorized`: no bearer token, or an unknown one";
const FORBIDDEN: &str = "`forbidden`: the token lacks the route's scope";

/// Adds an error answer (the `ErrorBody` schema) for `status` to `op`, unless it has one.
pub fn error_response(op: &mut Operation, status: &str, description: &str) {
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

/// Adds an optional header parameter whose value matches `pattern` and is at most `max_length`
/// characters.
pub fn header_parameter(op: &mut Operation, name: &str, description: &str, pattern: &str, max_length: usize) {
    let parameter = ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(description))
        .schema(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(pattern))
                .min_length(Some(1))
                .max_length(Some(max_length)),
        ))
        .build();
    op.parameters.get_or_insert_with(Vec::new).push(RefOr::T(parameter));
}

/// Requires a bearer token with `scope` on `op`, and describes its 401 and 403.
pub fn require_scope(op: &mut Operation, scope: &str) {
    op.security = Some(vec![SecurityRequirement::new(BEARER, [scope])]);
}

/// Makes the document's security what `auth` enforces. With tokens: the bearer scheme, and a
/// 401 and a 403 on every operation that requires a scope. Without: no scheme, no operation
/// requiring one, and no 401 or 403 described.
pub fn declare_security(doc: &mut OpenApi, auth: &Auth) {
    let enforced = matches!(auth, Auth::Tokens(_));
    let components = doc.components.get_or_insert_with(Default::default);
    if enforced {
        components.add_security_scheme(BEARER, SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    } else {
        components.security_schemes.remove(BEARER);
    }
    for item in doc.paths.paths.values_mut() {
        for op in [
            item.get.as_mut(),
            item.post.as_mut(),
            item.put.as_mut(),
            item.delete.as_mut(),
            item.patch.as_mut(),
            item.head.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
            if enforced && secured {
                error_response(op, "401", UNAUTHORIZED);
                error_response(op, "403", FORBIDDEN);
            } else {
                op.security = None;
                op.responses.responses.remove("401");
                // A 403 of the route's own (not about tokens) stays.
                let about_tokens = |response: &RefOr<utoipa::openapi::Response>| matches!(response, RefOr::T(r) if r.description == FORBIDDEN);
                if op.responses.responses.get("403").is_some_and(about_tokens) {
                    op.responses.responses.remove("403");
                }
            }
        }
    }
}
