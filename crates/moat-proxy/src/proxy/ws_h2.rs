//! WebSocket over HTTP/2 (RFC 8441) on the client side of an intercepted tunnel.
//!
//! A client that negotiated h2 opens a WebSocket with an extended CONNECT (`:protocol =
//! websocket`). The proxy checks it like any inner request, then opens the upstream side as
//! an HTTP/1.1 WebSocket upgrade (RFC 6455) with a key of its own, verifies the upstream's
//! `Sec-WebSocket-Accept`, answers the client's stream with `200`, and joins the two with
//! [`splice`], which scrubs upstream-to-client bytes for credentialed hosts.

use std::time::Instant;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::HeaderMap;
use http::HeaderValue;
use http::Method;
use http::Request;
use http::Response;
use http::StatusCode;
use http::Version;
use http::header;
use hyper::body::Incoming;
use moat_core::egress::RecordDecision;
use sha1::Digest as _;
use sha1::Sha1;

use super::PendingRecord;
use super::ProxyBody;
use super::Tunnel;
use super::finish_now;
use super::finish_parts;
use super::send;
use super::strip_hop_by_hop;
use super::unoffered_compression;
use crate::answer;
use crate::body::empty;
use crate::body::redact_headers;
use crate::scrub::scrub_headers;

/// The GUID RFC 6455 appends to `Sec-WebSocket-Key` before hashing it into the accept value.
const WS_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Whether `req` is an HTTP/2 extended CONNECT (RFC 8441), whatever protocol it names.
pub(super) fn is_extended_connect(req: &Request<Incoming>) -> bool {
    req.method() == Method::CONNECT && req.extensions().get::<hyper::ext::Protocol>().is_some()
}

/// The `Sec-WebSocket-Accept` value a server must answer to `key`.
pub(super) fn accept_for(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(WS_GUID);
    BASE64.encode(sha.finalize())
}

/// Checks the upstream's `101` against RFC 6455 §4.1: it switched to `websocket`, proved it
/// read `key`, and (for credentialed hosts) enabled no extension, since compressed frames would
/// hide a reflected credential from the scrubber.
fn check_switch(headers: &HeaderMap, key: &str, covered: bool) -> Result<(), &'static str> {
    let websocket = headers
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"websocket"));
    if !websocket {
        return Err("the upstream switched to a protocol other than websocket");
    }
    let expected = accept_for(key.as_bytes());
    let mut accepts = headers.get_all(header::SEC_WEBSOCKET_ACCEPT).iter();
    match (accepts.next(), accepts.next()) {
        (Some(v), None) if v.as_bytes().trim_ascii() == expected.as_bytes() => {}
        _ => {
            return Err(
                "the upstream's Sec-WebSocket-Accept does not match the key moat sent, so it \
                 did not complete a WebSocket handshake",
            );
        }
    }
    if covered && unoffered_compression(headers) {
        return Err("the upstream enabled a WebSocket extension moat did not offer");
    }
    Ok(())
}

fn handshake_failed(what: &str) -> Response<ProxyBody> {
    answer::error(StatusCode::BAD_GATEWAY, "websocket-handshake-failed", what)
}

impl Tunnel {
    /// Serves an HTTP/2 extended CONNECT: checks, injection, the upstream HTTP/1.1 handshake,
    /// and on success a `200` whose stream is joined to the upstream WebSocket.
    pub(super) async fn websocket_h2(&self, mut req: Request<Incoming>) -> Response<ProxyBody> {
        let start = Instant::now();
        let run = &self.run;
        // Policy sees, and the record shows, the `GET` the upstream receives (and an HTTP/1.1
        // client would have sent): path rules are written for HTTP methods, so `allow GET /ws`
        // or `deny GET /ws` apply to a WebSocket whichever HTTP version the client speaks.
        let (path, mut record) = self.open_record(&req, "GET");
        let compiled = run.rules();
        let rules = &compiled.rules;
        if let Some((reason, resp)) = self.refusal(&req, rules, "GET") {
            record.decision = RecordDecision::Denied;
            record.reason = Some(reason);
            return finish_now(run, record, start, &req, resp);
        }
        let websocket = req
            .extensions()
            .get::<hyper::ext::Protocol>()
            .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"));
        if !websocket {
            let resp = answer::error(
                StatusCode::NOT_IMPLEMENTED,
                "unsupported-protocol",
                "moat carries only `websocket` over HTTP/2 extended CONNECT",
            );
            record.reason = Some("unsupported-protocol".into());
            return finish_now(run, record, start, &req, resp);
        }

        let client_upgrade = hyper::upgrade::on(&mut req);
        let mut headers = std::mem::take(req.headers_mut());
        drop(req);
        strip_hop_by_hop(&mut headers, false);
        let covered = self.prepare_headers(&compiled, &mut headers, &mut record);
        // The HTTP/1.1 handshake is the proxy's own: the client's hop has no key to forward.
        for name in [
            header::CONTENT_LENGTH,
            header::SEC_WEBSOCKET_KEY,
            header::SEC_WEBSOCKET_ACCEPT,
            header::SEC_WEBSOCKET_VERSION,
        ] {
            headers.remove(name);
        }
        let key = BASE64.encode(rand::random::<[u8; 16]>());
        let Ok(key_value) = HeaderValue::from_str(&key) else {
            let resp = handshake_failed("cannot encode the WebSocket key");
            record.reason = Some("websocket-handshake-failed".into());
            return finish_parts(run, record, start, resp, None);
        };
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        headers.insert(header::SEC_WEBSOCKET_KEY, key_value);
        let secrets = &compiled.scrub_pairs;
        let rule_headers = &compiled.headers;
        record.req_headers = redact_headers(&headers, rule_headers, secrets);

        let uri = match self.upstream_uri(path, &mut record) {
            Ok(u) => u,
            Err(resp) => return finish_parts(run, record, start, *resp, None),
        };
        let mut upstream_req = Request::new(empty());
        *upstream_req.method_mut() = Method::GET;
        *upstream_req.uri_mut() = uri;
        *upstream_req.version_mut() = Version::HTTP_11;
        *upstream_req.headers_mut() = headers;
        let client = self.shared.client_for_upgrade();
        let resp = match send(
            client,
            upstream_req,
            self.shared.response_timeout,
            &mut record,
        )
        .await
        {
            Ok(resp) => resp,
            Err(answer) => return finish_parts(run, record, start, answer, None),
        };
        let (rparts, rbody) = resp.into_parts();

        if rparts.status == StatusCode::SWITCHING_PROTOCOLS {
            if let Err(what) = check_switch(&rparts.headers, &key, covered) {
                record.reason = Some("websocket-handshake-failed".into());
                return finish_parts(run, record, start, handshake_failed(what), None);
            }
            // RFC 8441 §5: the negotiated subprotocol and extensions travel on the `200`.
            let mut answer_headers = HeaderMap::new();
            for name in [
                header::SEC_WEBSOCKET_PROTOCOL,
                header::SEC_WEBSOCKET_EXTENSIONS,
            ] {
                for value in rparts.headers.get_all(&name) {
                    answer_headers.append(name.clone(), value.clone());
                }
            }
            if covered {
                scrub_headers(secrets, &mut answer_headers);
            }
            let upstream_upgrade = hyper::upgrade::on(Response::from_parts(rparts, rbody));
            self.spawn_splice(client_upgrade, upstream_upgrade, covered, secrets);
            let mut resp = Response::new(empty());
            *resp.headers_mut() = answer_headers;
            return finish_parts(run, record, start, resp, None);
        }
        if rparts.status.is_success() || rparts.status.is_informational() {
            // A `2xx` on the client's CONNECT stream would open a tunnel to nothing.
            let what = format!(
                "the upstream answered {} instead of 101 Switching Protocols",
                rparts.status
            );
            record.reason = Some("websocket-handshake-failed".into());
            return finish_parts(run, record, start, handshake_failed(&what), None);
        }

        // Any other answer (a redirect, `401`, `404`, …) goes to the client, scrubbed.
        let pending = PendingRecord {
            sink: run.sink.clone(),
            record,
            start,
            req_bytes: None,
        };
        self.answer_client(
            pending,
            &compiled,
            covered,
            false,
            Response::from_parts(rparts, rbody),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_matches_rfc_6455_example() {
        assert_eq!(
            accept_for(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn switch_checks() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        h.insert(
            header::SEC_WEBSOCKET_ACCEPT,
            HeaderValue::from_static("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        );
        assert_eq!(check_switch(&h, key, true), Ok(()));
        assert!(check_switch(&h, "AAAAAAAAAAAAAAAAAAAAAA==", false).is_err());
        h.insert(
            header::SEC_WEBSOCKET_EXTENSIONS,
            HeaderValue::from_static("permessage-deflate"),
        );
        assert!(check_switch(&h, key, true).is_err());
        assert_eq!(check_switch(&h, key, false), Ok(()));
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        assert!(check_switch(&h, key, false).is_err());
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.append(
            header::SEC_WEBSOCKET_ACCEPT,
            HeaderValue::from_static("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        );
        assert!(check_switch(&h, key, false).is_err());
    }
}
