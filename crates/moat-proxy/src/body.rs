//! Streaming body wrappers: byte counting, response scrubbing (identity and gzip) and the
//! request record that is emitted when the response body ends or is dropped.

use std::collections::BTreeMap;
use std::io::Write;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::task::Context;
use std::task::Poll;
use std::time::Instant;

use bytes::Bytes;
use flate2::write::MultiGzDecoder;
use http::HeaderMap;
use http_body::Body;
use http_body::Frame;
use http_body::SizeHint;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use moat_core::egress::NetworkEventSink;
use moat_core::egress::NetworkRecord;
use moat_core::egress::REDACTED;
use moat_core::egress::REDACTED_HEADERS;

use crate::scrub::Scrubber;

/// Errors carried by proxied bodies.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type on both sides of the proxy.
pub(crate) type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// A body with nothing in it.
pub(crate) fn empty() -> ProxyBody {
    http_body_util::Empty::new()
        .map_err(|e| match e {})
        .boxed_unsync()
}

/// A body holding `bytes`.
pub(crate) fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    http_body_util::Full::new(bytes.into())
        .map_err(|e| match e {})
        .boxed_unsync()
}

/// Counts the data bytes that pass through a body.
pub(crate) struct Counting<B> {
    inner: B,
    count: Arc<AtomicU64>,
}

impl<B> Counting<B> {
    pub(crate) fn new(inner: B, count: Arc<AtomicU64>) -> Self {
        Self { inner, count }
    }
}

impl<B> Body for Counting<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.count.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A record waiting for its response body to finish.
pub(crate) struct PendingRecord {
    pub(crate) sink: Arc<dyn NetworkEventSink>,
    pub(crate) record: NetworkRecord,
    pub(crate) start: Instant,
    pub(crate) req_bytes: Option<Arc<AtomicU64>>,
}

impl PendingRecord {
    /// Emits the record with final timing and byte counts.
    pub(crate) fn emit(mut self, resp_bytes: u64) {
        self.record.duration_ms = self.start.elapsed().as_secs_f64() * 1000.0;
        self.record.resp_bytes = resp_bytes;
        if let Some(req) = &self.req_bytes {
            self.record.req_bytes = req.load(Ordering::Relaxed);
        }
        self.sink.record(self.record);
    }
}

/// How response body bytes are decoded before scrubbing.
pub(crate) enum Decode {
    Identity,
    Gzip(Box<MultiGzDecoder<Vec<u8>>>),
}

/// The response body handed to the client: optional scrubbing, byte counting and the record
/// emitted at end of stream (or when the client goes away).
pub(crate) struct ResponseBody {
    inner: ProxyBody,
    scrub: Option<(Decode, Scrubber)>,
    sent: u64,
    pending: Option<PendingRecord>,
    trailers: Option<HeaderMap>,
    pending_in: Bytes,
    done: bool,
}

/// Compressed bytes decoded per step; deflate expands at most ~1032:1, so one decoded frame
/// stays around a megabyte.
const GZIP_SLICE: usize = 1024;

impl ResponseBody {
    pub(crate) fn new(
        inner: ProxyBody,
        scrub: Option<(Decode, Scrubber)>,
        pending: Option<PendingRecord>,
    ) -> Self {
        Self {
            inner,
            scrub,
            sent: 0,
            pending,
            trailers: None,
            pending_in: Bytes::new(),
            done: false,
        }
    }

    fn finish(&mut self) {
        if let Some(p) = self.pending.take() {
            p.emit(self.sent);
        }
    }

    /// Transforms one upstream data chunk into what the client may see.
    fn transform(&mut self, data: Bytes) -> Result<Bytes, BoxError> {
        let Some((decode, scrubber)) = &mut self.scrub else {
            return Ok(data);
        };
        let plain = match decode {
            Decode::Identity => data,
            Decode::Gzip(dec) => {
                dec.write_all(&data)?;
                dec.flush()?;
                Bytes::from(std::mem::take(dec.get_mut()))
            }
        };
        Ok(scrubber.push(plain))
    }

    /// What one transformed chunk gives the client: nothing yet (`None`), a data frame, or an
    /// error that ends the body (and emits its record).
    fn emit(&mut self, out: Result<Bytes, BoxError>) -> Option<Result<Frame<Bytes>, BoxError>> {
        match out {
            Ok(out) if out.is_empty() => None,
            Ok(out) => {
                self.sent += out.len() as u64;
                Some(Ok(Frame::data(out)))
            }
            Err(e) => {
                self.done = true;
                self.finish();
                Some(Err(e))
            }
        }
    }

    /// Flushes decoder and scrubber at end of stream.
    fn drain(&mut self) -> Result<Bytes, BoxError> {
        let Some((decode, scrubber)) = &mut self.scrub else {
            return Ok(Bytes::new());
        };
        let mut out = Vec::new();
        if let Decode::Gzip(dec) = decode {
            dec.try_finish()?;
            let tail = Bytes::from(std::mem::take(dec.get_mut()));
            out.extend_from_slice(&scrubber.push(tail));
        }
        out.extend_from_slice(&scrubber.finish());
        Ok(Bytes::from(out))
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(trailers) = this.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            if !this.pending_in.is_empty() {
                let take = this.pending_in.len().min(GZIP_SLICE);
                let slice = this.pending_in.split_to(take);
                let out = this.transform(slice);
                if let Some(frame) = this.emit(out) {
                    return Poll::Ready(Some(frame));
                }
                continue;
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(this.emit(Err(e))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) if matches!(this.scrub, Some((Decode::Gzip(_), _))) => {
                        // Decompress in small slices so a highly compressed chunk cannot
                        // balloon into one huge buffer.
                        this.pending_in = data;
                        continue;
                    }
                    Ok(data) => {
                        let out = this.transform(data);
                        if let Some(frame) = this.emit(out) {
                            return Poll::Ready(Some(frame));
                        }
                    }
                    Err(mut frame) => {
                        if let (Some((_, scrubber)), Some(trailers)) =
                            (&this.scrub, frame.trailers_mut())
                        {
                            scrubber.scrub_headers(trailers);
                        }
                        // Trailers end the body: the held-back tail goes out first, then the
                        // trailers on the next poll.
                        let tail = this.drain();
                        return Poll::Ready(match this.emit(tail) {
                            Some(Ok(data)) => {
                                this.trailers = frame.into_trailers().ok();
                                Some(Ok(data))
                            }
                            Some(Err(e)) => Some(Err(e)),
                            None => Some(Ok(frame)),
                        });
                    }
                },
                Poll::Ready(None) => {
                    // The end: the held-back tail (if any) is the last frame.
                    this.done = true;
                    let tail = this.drain();
                    let last = this.emit(tail);
                    this.finish();
                    return Poll::Ready(last);
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.trailers.is_none()
            && (self.done || (self.scrub.is_none() && self.inner.is_end_stream()))
    }

    fn size_hint(&self) -> SizeHint {
        if self.scrub.is_some() {
            SizeHint::default()
        } else {
            self.inner.size_hint()
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Headers as recorded: credential headers, cookies, proxy authentication, the run's injected
/// headers and any value containing a secret are replaced by `[REDACTED]`.
pub(crate) fn redact_headers(
    headers: &HeaderMap,
    extra: &[String],
    secrets: &[crate::inject::ScrubPair],
) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        let n = name.as_str();
        let hidden = value.is_sensitive()
            || REDACTED_HEADERS.contains(&n)
            || extra.iter().any(|e| e.eq_ignore_ascii_case(n))
            || secrets
                .iter()
                .any(|(s, _)| !s.is_empty() && memchr::memmem::find(value.as_bytes(), s).is_some());
        let shown = if hidden {
            REDACTED.to_owned()
        } else {
            String::from_utf8_lossy(value.as_bytes()).into_owned()
        };
        match out.get_mut(n) {
            Some(v) => {
                v.push_str(", ");
                v.push_str(&shown);
            }
            None => {
                out.insert(n.to_owned(), shown);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use http::HeaderValue;
    use zeroize::Zeroizing;

    use super::*;

    struct Frames(VecDeque<Frame<Bytes>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.get_mut().0.pop_front().map(Ok))
        }
    }

    #[tokio::test]
    async fn gzip_bombs_are_decoded_in_bounded_frames() {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let total = 20 * 1024 * 1024;
        enc.write_all(&vec![0u8; total])
            .unwrap_or_else(|e| panic!("{e}"));
        enc.write_all(b" SECRET").unwrap_or_else(|e| panic!("{e}"));
        let gz = enc.finish().unwrap_or_else(|e| panic!("{e}"));
        assert!(gz.len() < 64 * 1024);
        let frames = Frames(VecDeque::from([Frame::data(Bytes::from(gz))]));
        let pairs: Arc<[crate::inject::ScrubPair]> =
            vec![(Zeroizing::new(b"SECRET".to_vec()), b"PH".to_vec())].into();
        let mut body = ResponseBody::new(
            frames.boxed_unsync(),
            Some((
                Decode::Gzip(Box::new(MultiGzDecoder::new(Vec::new()))),
                Scrubber::new(pairs),
            )),
            None,
        );
        let mut seen = 0usize;
        let mut last = Vec::new();
        while let Some(frame) = body.frame().await {
            let data = frame
                .unwrap_or_else(|e| panic!("{e}"))
                .into_data()
                .unwrap_or_default();
            assert!(
                data.len() <= 2 * 1024 * 1024,
                "frame of {} bytes",
                data.len()
            );
            seen += data.len();
            last = data.to_vec();
        }
        assert_eq!(seen, total + 3);
        assert!(last.ends_with(b" PH"));
    }

    #[tokio::test]
    async fn scrubs_data_split_before_trailers_and_trailers() {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-t", HeaderValue::from_static("v=SECRET"));
        let frames = Frames(VecDeque::from([
            Frame::data(Bytes::from_static(b"a SEC")),
            Frame::data(Bytes::from_static(b"RET b SEC")),
            Frame::trailers(trailers),
        ]));
        let pairs: Arc<[crate::inject::ScrubPair]> =
            vec![(Zeroizing::new(b"SECRET".to_vec()), b"PH".to_vec())].into();
        let body = ResponseBody::new(
            frames.boxed_unsync(),
            Some((Decode::Identity, Scrubber::new(pairs))),
            None,
        );
        let collected = body.collect().await.unwrap_or_else(|e| panic!("{e}"));
        let t = collected.trailers().cloned().unwrap_or_default();
        assert_eq!(t["x-t"], "v=PH");
        assert_eq!(&collected.to_bytes()[..], b"a PH b SEC");
    }

    #[test]
    fn redaction() {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Bearer x"));
        h.insert("x-custom", HeaderValue::from_static("has SECRET inside"));
        h.insert("x-token", HeaderValue::from_static("t"));
        h.append("accept", HeaderValue::from_static("a"));
        h.append("accept", HeaderValue::from_static("b"));
        let secrets = [(zeroize::Zeroizing::new(b"SECRET".to_vec()), Vec::new())];
        let r = redact_headers(&h, &["X-Token".to_owned()], &secrets);
        assert_eq!(r["authorization"], REDACTED);
        assert_eq!(r["x-custom"], REDACTED);
        assert_eq!(r["x-token"], REDACTED);
        assert_eq!(r["accept"], "a, b");
    }
}
