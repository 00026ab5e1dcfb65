//! Bearer-token authentication with four scopes, for every HTTP service that needs it (the
//! write services, the projections worker's rebuild endpoint).
//!
//! Tokens come from configuration as `name:scope+scope:sha256hex` ([`TokenSpec`]): the service
//! never holds a token itself, only the SHA-256 of it, so a leaked configuration does not leak
//! a credential. A request's token is hashed and compared with every configured hash; the
//! comparison is of SHA-256 digests, and it is constant-time anyway (XOR-fold, no early exit)
//! and visits every configured token, so the answer's timing tells nothing useful about any
//! of them. Tokens are never logged; the token's *name* becomes the request's principal (the
//! `actor` of every event the request appends).
//!
//! Scopes ([`Scope`]) are independent, but for one rule: `read` may `GET` (and `HEAD`) every
//! guarded route, whatever scope the route's other methods need, so that the operations console
//! and a dashboard's viewers browse everything with a token that can change nothing. Otherwise:
//! `commands` for the clients' command routes and the
//! stream and order-state reads; `admin` for the global log (`/v1/log`), the sagas' operations
//! and the simulated payment provider's settings; `service` for what one service asks of
//! another (reserving and releasing stock, authorizing, capturing, voiding and refunding
//! payments: the place-order saga's steps), so that a client's token cannot reserve stock or
//! move money by itself. A token that should do several lists them (`ops:commands+admin:...`). Missing or unknown token: 401 with
//! `WWW-Authenticate: Bearer`; a known token without the route's scope: 403.
//!
//! [`Auth::Disabled`] turns all of this off (the embedded demo); every request is then the
//! principal `anonymous`.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::http::ApiError;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Read: `GET` any guarded route; nothing else.
    Read,
    /// Send commands, read streams and order state.
    Commands,
    /// Read the global log; operate sagas and the simulated payment provider.
    Admin,
    /// What one service asks of another: reserve and release stock, authorize, capture, void
    /// and refund payments. The orders service's own token has it; a client's does not.
    Service,
}

impl Scope {
    /// The name used in configuration and in 403 answers.
    pub const fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Commands => "commands",
            Scope::Admin => "admin",
            Scope::Service => "service",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        match name {
            "read" => Some(Scope::Read),
            "commands" => Some(Scope::Commands),
            "admin" => Some(Scope::Admin),
            "service" => Some(Scope::Service),
            _ => None,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One configured token: its name, its scopes and the SHA-256 of its secret. `Debug` shows
/// the name and scopes only.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenSpec {
    name: String,
    scopes: Vec<Scope>,
    sha256: [u8; 32],
}

impl TokenSpec {
    /// A token from its name, scopes and the SHA-256 digest of its secret.
    pub fn new(name: impl Into<String>, scopes: impl IntoIterator<Item = Scope>, sha256: [u8; 32]) -> Self {
        let mut scopes: Vec<Scope> = scopes.into_iter().collect();
        scopes.sort();
        scopes.dedup();
        TokenSpec {
            name: name.into(),
            scopes,
            sha256,
        }
    }

    /// A token from its secret (hashed at once): for tests and for tools that mint tokens.
    pub fn from_secret(name: impl Into<String>, scopes: impl IntoIterator<Item = Scope>, secret: &str) -> Self {
        Self::new(name, scopes, Sha256::digest(secret.as_bytes()).into())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn scopes(&self) -> &[Scope] {
        &self.scopes
    }

    /// The configuration line for this token, `name:scope+scope:sha256hex`.
    pub fn to_config(&self) -> String {
        let scopes: Vec<&str> = self.scopes.iter().map(|s| s.as_str()).collect();
        format!("{}:{}:{}", self.name, scopes.join("+"), hex(&self.sha256))
    }
}

impl fmt::Debug for TokenSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSpec")
            .field("name", &self.name)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

/// A token configuration line that could not be read. Its message never repeats the hash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid token {what}: expected name:scope+scope:sha256hex, e.g. ops:commands+admin:<64 hex digits>")]
pub struct InvalidTokenSpec {
    what: &'static str,
}

impl FromStr for TokenSpec {
    type Err = InvalidTokenSpec;

    /// `name:scope+scope:sha256hex`: a name of ASCII letters, digits, `-`, `_` or `.`; one or
    /// more of `read`, `commands`, `admin` and `service` joined with `+`; the hex SHA-256 of the secret (64 digits,
    /// any case). Surrounding whitespace is ignored.
    fn from_str(line: &str) -> Result<Self, Self::Err> {
        let mut parts = line.trim().split(':');
        let (Some(name), Some(scopes), Some(digest), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(InvalidTokenSpec { what: "line" });
        };
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(InvalidTokenSpec { what: "name" });
        }
        let scopes = scopes
            .split('+')
            .map(Scope::parse)
            .collect::<Option<Vec<_>>>()
            .ok_or(InvalidTokenSpec { what: "scope" })?;
        let sha256 = unhex(digest).ok_or(InvalidTokenSpec { what: "hash" })?;
        Ok(TokenSpec::new(name, scopes, sha256))
    }
}

/// The SHA-256 of a token secret as lower-case hex: the third part of a token configuration
/// line.
pub fn hash_token(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0_u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let digits = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(digits, 16).ok()?;
    }
    Some(out)
}

/// Whether and how requests are authenticated.
#[derive(Debug, Clone)]
pub enum Auth {
    /// Every request is allowed, as the principal `anonymous` (the embedded demo).
    Disabled,
    /// Every `/v1` request needs one of these tokens with the route's scope.
    Tokens(Arc<[TokenSpec]>),
}

impl Auth {
    /// Authentication with these tokens.
    pub fn tokens(tokens: impl IntoIterator<Item = TokenSpec>) -> Self {
        Auth::Tokens(tokens.into_iter().collect())
    }

    /// The token whose secret is `secret`, comparing digests in constant time and visiting
    /// every configured token whatever matches.
    fn find<'a>(tokens: &'a [TokenSpec], secret: &[u8]) -> Option<&'a TokenSpec> {
        let digest: [u8; 32] = Sha256::digest(secret).into();
        let mut found = None;
        for token in tokens {
            let difference = token.sha256.iter().zip(&digest).fold(0_u8, |acc, (a, b)| acc | (a ^ b));
            if difference == 0 && found.is_none() {
                found = Some(token);
            }
        }
        found
    }
}

/// The flags of a service that checks bearer tokens (`write-side`, `projections run --listen`):
/// `--token` (repeatable, or `ORDERFLOW_TOKENS` comma-separated) and `--no-auth`.
#[derive(Debug, Clone, clap::Args)]
pub struct AuthArgs {
    /// A bearer token, as name:scope+scope:sha256hex (scopes: read, commands, admin, service;
    /// the hex SHA-256 of the secret, e.g. `printf %s "$SECRET" | sha256sum`). Repeat the flag,
    /// or list them comma-separated in the variable.
    #[arg(
        long = "token",
        env = "ORDERFLOW_TOKENS",
        value_delimiter = ',',
        hide_env_values = true,
        value_name = "NAME:SCOPES:SHA256"
    )]
    pub tokens: Vec<TokenSpec>,
    /// Serve without authentication (every request is `anonymous`): for demos and loopback only.
    #[arg(long, env = "ORDERFLOW_NO_AUTH")]
    pub no_auth: bool,
}

/// Authentication is on (no `--no-auth`) and no token is configured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("authentication is on but no token is configured: pass --token (or ORDERFLOW_TOKENS), or --no-auth")]
pub struct NoToken;

impl AuthArgs {
    /// The configured tokens, or [`Auth::Disabled`] with `--no-auth` (logged as a warning). The
    /// tokens' names are logged, never their hashes.
    pub fn auth(&self) -> Result<Auth, NoToken> {
        if self.no_auth {
            tracing::warn!("authentication is OFF (--no-auth): every request is accepted as `anonymous`");
            return Ok(Auth::Disabled);
        }
        if self.tokens.is_empty() {
            return Err(NoToken);
        }
        let names: Vec<&str> = self.tokens.iter().map(TokenSpec::name).collect();
        tracing::info!(tokens = ?names, "bearer-token authentication on");
        Ok(Auth::tokens(self.tokens.iter().cloned()))
    }
}

/// Who made a request: the token's name, or [`Principal::ANONYMOUS`] with auth off. Put into
/// the request's extensions by the auth middleware.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
}

impl Principal {
    /// The principal of every request when auth is off.
    pub const ANONYMOUS: &'static str = "anonymous";
}

/// The middleware's state: the configuration and the scope of the routes it guards.
#[derive(Debug, Clone)]
pub struct Guard {
    pub auth: Auth,
    pub scope: Scope,
}

/// Middleware: 401 without a known bearer token, 403 without the scope (a `read` token passes
/// on `GET` and `HEAD`); otherwise records the [`Principal`] and runs the route.
pub async fn require(State(guard): State<Guard>, mut req: Request, next: Next) -> Response {
    let principal = match &guard.auth {
        Auth::Disabled => Principal::ANONYMOUS.to_owned(),
        Auth::Tokens(tokens) => {
            let token = match bearer(&req) {
                Ok(token) => token,
                Err(e) => return e.into_response(),
            };
            let Some(spec) = Auth::find(tokens, token) else {
                tracing::info!("request with an unknown bearer token");
                return ApiError::unauthorized(true).into_response();
            };
            let reading = matches!(*req.method(), axum::http::Method::GET | axum::http::Method::HEAD);
            let allowed = spec.scopes.contains(&guard.scope) || (reading && spec.scopes.contains(&Scope::Read));
            if !allowed {
                tracing::info!(principal = %spec.name, scope = %guard.scope, "token lacks the route's scope");
                return ApiError::forbidden(guard.scope.as_str()).into_response();
            }
            spec.name.clone()
        }
    };
    tracing::Span::current().record("principal", principal.as_str());
    req.extensions_mut().insert(Principal { name: principal });
    next.run(req).await
}

/// The token of `Authorization: Bearer <token>` (scheme in any case).
fn bearer(req: &Request) -> Result<&[u8], ApiError> {
    let mut values = req.headers().get_all(header::AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(ApiError::unauthorized(false));
    };
    let value = value.as_bytes();
    let Some((scheme, token)) = value.split_at_checked(7) else {
        return Err(ApiError::unauthorized(true));
    };
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return Err(ApiError::unauthorized(true));
    }
    let token = token.trim_ascii();
    if token.is_empty() {
        return Err(ApiError::unauthorized(true));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_lines_round_trip_and_never_show_the_hash() {
        let spec = TokenSpec::from_secret("ops", [Scope::Admin, Scope::Commands], "s3cret");
        let line = spec.to_config();
        assert_eq!(line, format!("ops:commands+admin:{}", hash_token("s3cret")));
        assert_eq!(line.parse::<TokenSpec>(), Ok(spec.clone()));
        assert_eq!(
            line.to_uppercase()
                .replace("OPS:COMMANDS+ADMIN", "ops:commands+admin")
                .parse(),
            Ok(spec.clone())
        );
        assert!(!format!("{spec:?}").contains(&hash_token("s3cret")));
    }

    #[test]
    fn bad_token_lines_are_refused() {
        let hash = hash_token("x");
        for bad in [
            String::new(),
            "ops:commands".to_owned(),
            format!(":commands:{hash}"),
            format!("o ps:commands:{hash}"),
            format!("ops::{hash}"),
            format!("ops:root:{hash}"),
            format!("ops:commands:{}", &hash[..63]),
            format!("ops:commands:{hash}0"),
            format!("ops:commands:{}", hash.replace(|c: char| c.is_ascii_digit(), "g")),
            format!("ops:commands:{hash}:x"),
        ] {
            let err = bad.parse::<TokenSpec>().expect_err(&bad);
            assert!(!err.to_string().contains(&hash), "{err}");
        }
    }

    #[test]
    fn find_matches_only_the_right_secret() {
        let tokens = [
            TokenSpec::from_secret("a", [Scope::Commands], "alpha"),
            TokenSpec::from_secret("b", [Scope::Admin], "beta"),
        ];
        assert_eq!(Auth::find(&tokens, b"alpha").map(TokenSpec::name), Some("a"));
        assert_eq!(Auth::find(&tokens, b"beta").map(TokenSpec::name), Some("b"));
        assert_eq!(Auth::find(&tokens, b"gamma").map(TokenSpec::name), None);
        assert_eq!(Auth::find(&tokens, b"").map(TokenSpec::name), None);
    }
}
