//! Responses the proxy writes itself: denials (`X-Moat-Blocked`), its own failures
//! (`X-Moat-Error`), proxy authentication challenges and malformed requests.

use http::HeaderValue;
use http::Response;
use http::StatusCode;
use http::header;

use crate::body::ProxyBody;
use crate::body::full;

/// Header naming why the proxy refused a request.
pub const BLOCKED_HEADER: &str = "x-moat-blocked";
/// Header naming a proxy-side failure, so it is never mistaken for an upstream answer.
pub const ERROR_HEADER: &str = "x-moat-error";

/// A `403` refusal: what was blocked, why, and what would allow it.
pub(crate) fn blocked(code: &'static str, what: &str, fix: &str) -> Response<ProxyBody> {
    let body = format!("moat blocked this request: {what}\n\n{fix}\n");
    with_header(StatusCode::FORBIDDEN, BLOCKED_HEADER, code, body)
}

/// A proxy-side failure (`502`, `504`, `400`, …).
pub(crate) fn error(status: StatusCode, code: &'static str, message: &str) -> Response<ProxyBody> {
    let body = format!("moat proxy error ({code}): {message}\n");
    with_header(status, ERROR_HEADER, code, body)
}

/// `407` asking for the run's proxy token.
pub(crate) fn proxy_auth_required() -> Response<ProxyBody> {
    let mut resp = with_header(
        StatusCode::PROXY_AUTHENTICATION_REQUIRED,
        ERROR_HEADER,
        "proxy-auth-required",
        "moat proxy: authenticate with the run's proxy url (http://moat:<token>@host:port)\n"
            .to_owned(),
    );
    resp.headers_mut().insert(
        header::PROXY_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"moat\""),
    );
    resp
}

fn with_header(
    status: StatusCode,
    name: &'static str,
    code: &'static str,
    body: String,
) -> Response<ProxyBody> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(name, HeaderValue::from_static(code));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
