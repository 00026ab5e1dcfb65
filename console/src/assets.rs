//! The pages and their assets, compiled into the binary by the build script and served gzipped
//! to every browser that accepts it (all of them do), with an ETag so a reload costs a 304.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// One compiled-in file.
pub(crate) struct Asset {
    /// Its path under `/assets/`.
    pub(crate) path: &'static str,
    pub(crate) content_type: &'static str,
    /// A quoted strong ETag: the start of the SHA-256 of the body.
    pub(crate) etag: &'static str,
    /// The gzipped body's.
    pub(crate) etag_gzip: &'static str,
    pub(crate) body: &'static [u8],
    pub(crate) gzipped: &'static [u8],
}

include!(concat!(env!("OUT_DIR"), "/assets.rs"));

/// The page every route of the single-page app starts from.
const INDEX: &str = "index.html";

/// `GET /` (the app) and `GET /assets/{path}`. They need no token: the page asks for one when
/// an API answers 401, and holds no data itself.
pub fn routes() -> Router {
    Router::new()
        .route("/", get(index))
        .route("/assets/{*path}", get(asset))
}

async fn index(headers: HeaderMap) -> Response {
    serve(INDEX, &headers)
}

async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    serve(&path, &headers)
}

fn find(path: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|asset| asset.path == path)
}

fn serve(path: &str, headers: &HeaderMap) -> Response {
    let Some(asset) = find(path) else {
        return service_kit::http::ApiError::not_found("asset", path).into_response();
    };
    // The gzipped body is other bytes than the plain one, so it has an ETag of its own: a cache
    // never answers a client with the coding it did not ask for.
    let gzip = accepts_gzip(headers);
    let etag = if gzip { asset.etag_gzip } else { asset.etag };
    let mut response = if if_none_match(headers, etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else if gzip {
        let mut response = asset.gzipped.into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        response
    } else {
        asset.body.into_response()
    };
    let out = response.headers_mut();
    out.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    out.insert(header::ETAG, HeaderValue::from_static(etag));
    // The file names carry no hash, so a browser must ask again each time; the ETag makes that
    // a 304 without a body.
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    out.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    out.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if path == INDEX {
        // Everything the page loads is its own: scripts, styles and requests stay same-origin.
        out.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; \
                 frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
            ),
        );
    }
    response
}

fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| {
            let tag = tag.trim();
            tag == "*" || tag.trim_start_matches("W/") == etag
        })
}

/// Whether `Accept-Encoding` allows gzip (and does not refuse it with `q=0`).
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';');
            let name = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q == 0.0)
            });
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
        })
}

/// The compiled-in assets' sizes, for the benchmark and the documentation: (path, bytes,
/// gzipped bytes).
pub fn sizes() -> impl Iterator<Item = (&'static str, usize, usize)> {
    ASSETS.iter().map(|a| (a.path, a.body.len(), a.gzipped.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt as _;

    async fn get(path: &str, headers: &[(&str, &str)]) -> Response {
        let mut request = Request::get(path);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        routes()
            .oneshot(request.body(Body::empty()).expect("request"))
            .await
            .expect("infallible")
    }

    async fn body(response: Response) -> Vec<u8> {
        use http_body_util::BodyExt as _;
        response.into_body().collect().await.expect("body").to_bytes().to_vec()
    }

    #[tokio::test]
    async fn the_page_is_served_gzipped_to_who_accepts_it_and_plain_otherwise() {
        let plain = get("/", &[]).await;
        assert_eq!(plain.status(), StatusCode::OK);
        assert!(plain.headers().get(header::CONTENT_ENCODING).is_none());
        let html = body(plain).await;
        assert!(String::from_utf8_lossy(&html).contains("/assets/app.js"));

        let gzipped = get("/", &[("accept-encoding", "br, gzip;q=0.8")]).await;
        assert_eq!(gzipped.headers()[header::CONTENT_ENCODING], "gzip");
        let compressed = body(gzipped).await;
        assert!(compressed.len() < html.len());
        // A gzip member (RFC 1952) whose trailer gives the page's uncompressed length.
        assert_eq!(&compressed[..2], &[0x1f, 0x8b]);
        let trailer: [u8; 4] = compressed[compressed.len() - 4..].try_into().expect("4 bytes");
        assert_eq!(u32::from_le_bytes(trailer) as usize, html.len());

        let refused = get("/", &[("accept-encoding", "gzip;q=0")]).await;
        assert!(refused.headers().get(header::CONTENT_ENCODING).is_none());
    }

    #[tokio::test]
    async fn a_known_etag_answers_304_and_an_unknown_asset_404() {
        let first = get("/assets/app.js", &[]).await;
        assert_eq!(first.status(), StatusCode::OK);
        assert_eq!(first.headers()[header::CONTENT_TYPE], "text/javascript; charset=utf-8");
        let etag = first.headers()[header::ETAG].to_str().expect("ascii").to_owned();
        let again = get("/assets/app.js", &[("if-none-match", &etag)]).await;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert!(body(again).await.is_empty());

        let missing = get("/assets/nope.js", &[]).await;
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        let missing = get("/assets/../Cargo.toml", &[]).await;
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    }
}
