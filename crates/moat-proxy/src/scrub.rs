//! Streaming removal of real credential values from response bodies.
//!
//! The matcher keeps back only the longest tail of the data seen so far that could still be the
//! start of a secret, so a value split across chunks is caught while ordinary data (an SSE event
//! ending in a blank line) is forwarded at once.

use std::sync::Arc;

use bytes::Bytes;
use bytes::BytesMut;

use crate::inject::ScrubPair;

/// Replaces every occurrence of each secret by its replacement, across chunk boundaries.
#[derive(Debug, Clone)]
pub(crate) struct Scrubber {
    pairs: Arc<[ScrubPair]>,
    carry: BytesMut,
    max_len: usize,
}

impl Scrubber {
    /// `pairs` are (secret, replacement); empty secrets are ignored.
    pub(crate) fn new(pairs: Arc<[ScrubPair]>) -> Self {
        let max_len = pairs.iter().map(|(s, _)| s.len()).max().unwrap_or(0);
        Self {
            pairs,
            carry: BytesMut::new(),
            max_len,
        }
    }

    /// Replaces secrets in header values (response trailers), in place.
    pub(crate) fn scrub_headers(&self, headers: &mut http::HeaderMap) {
        scrub_headers(&self.pairs, headers);
    }

    /// Feeds one chunk; returns what can be forwarded now.
    pub(crate) fn push(&mut self, chunk: Bytes) -> Bytes {
        if self.max_len == 0 {
            return chunk;
        }
        // Fast path: nothing held back, nothing to replace, nothing to hold: forward as is.
        if self.carry.is_empty()
            && !self.pairs.iter().any(|(s, _)| contains(&chunk, s))
            && self.partial_tail(&chunk) == 0
        {
            return chunk;
        }
        self.carry.extend_from_slice(&chunk);
        let mut data = std::mem::take(&mut self.carry).to_vec();
        for (secret, replacement) in self.pairs.iter().filter(|(s, _)| !s.is_empty()) {
            if contains(&data, secret) {
                data = replace_all(&data, secret, replacement);
            }
        }
        let hold = self.partial_tail(&data);
        let keep_from = data.len() - hold;
        self.carry
            .extend_from_slice(data.get(keep_from..).unwrap_or_default());
        data.truncate(keep_from);
        Bytes::from(data)
    }

    /// Flushes the held-back tail at the end of the body.
    pub(crate) fn finish(&mut self) -> Bytes {
        std::mem::take(&mut self.carry).freeze()
    }

    /// Length of the longest proper suffix of `data` that is a prefix of some secret.
    fn partial_tail(&self, data: &[u8]) -> usize {
        let longest = self.max_len.saturating_sub(1).min(data.len());
        for k in (1..=longest).rev() {
            let Some(tail) = data.get(data.len() - k..) else {
                continue;
            };
            if self
                .pairs
                .iter()
                .any(|(s, _)| s.len() > k && s.starts_with(tail))
            {
                return k;
            }
        }
        0
    }
}

/// Replaces secrets in every header value, in place.
pub(crate) fn scrub_headers(pairs: &[ScrubPair], headers: &mut http::HeaderMap) {
    for value in headers.values_mut() {
        if let Some(clean) = scrub_all(pairs, value.as_bytes())
            && let Ok(v) = http::HeaderValue::from_bytes(&clean)
        {
            *value = v;
        }
    }
}

/// Replaces secrets in a complete value (a header).
pub(crate) fn scrub_all(pairs: &[ScrubPair], value: &[u8]) -> Option<Vec<u8>> {
    let mut out: Option<Vec<u8>> = None;
    for (secret, replacement) in pairs.iter().filter(|(s, _)| !s.is_empty()) {
        let cur = out.as_deref().unwrap_or(value);
        if contains(cur, secret) {
            out = Some(replace_all(cur, secret, replacement));
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && memchr::memmem::find(hay, needle).is_some()
}

/// `hay` with every occurrence of `needle` replaced; also used by injection.
pub(crate) fn replace_all(hay: &[u8], needle: &[u8], replacement: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(hay.len() + replacement.len());
    let mut start = 0;
    if !needle.is_empty() {
        for at in memchr::memmem::find_iter(hay, needle) {
            if at < start {
                continue;
            }
            out.extend_from_slice(hay.get(start..at).unwrap_or_default());
            out.extend_from_slice(replacement);
            start = at + needle.len();
        }
    }
    out.extend_from_slice(hay.get(start..).unwrap_or_default());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrubber() -> Scrubber {
        Scrubber::new(
            vec![(
                zeroize::Zeroizing::new(b"ghp_SECRET".to_vec()),
                b"PLACEHOLDER".to_vec(),
            )]
            .into(),
        )
    }

    fn run(s: &mut Scrubber, chunks: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for c in chunks {
            out.extend_from_slice(&s.push(Bytes::copy_from_slice(c)));
        }
        out.extend_from_slice(&s.finish());
        out
    }

    #[test]
    fn replaces_whole_and_split_values() {
        let mut s = scrubber();
        assert_eq!(run(&mut s, &[b"a ghp_SECRET b"]), b"a PLACEHOLDER b");
        for split in 1..10 {
            let text = b"xx ghp_SECRET yy ghp_SECRET";
            let (a, b) = text.split_at(3 + split);
            let mut s = scrubber();
            assert_eq!(
                run(&mut s, &[a, b]),
                b"xx PLACEHOLDER yy PLACEHOLDER",
                "split {split}"
            );
        }
        // One byte at a time.
        let text = b"ghp_SECRETghp_SECRET";
        let chunks: Vec<&[u8]> = text.chunks(1).collect();
        let mut s = scrubber();
        assert_eq!(run(&mut s, &chunks), b"PLACEHOLDERPLACEHOLDER");
    }

    #[test]
    fn holds_back_only_possible_prefixes() {
        let mut s = scrubber();
        assert_eq!(
            &s.push(Bytes::from_static(b"data: 1\n\n"))[..],
            b"data: 1\n\n"
        );
        assert_eq!(&s.push(Bytes::from_static(b"x ghp_"))[..], b"x ");
        assert_eq!(&s.push(Bytes::from_static(b"nope"))[..], b"ghp_nope");
        assert_eq!(&s.finish()[..], b"");
        let mut s = scrubber();
        assert_eq!(&s.push(Bytes::from_static(b"ghp_SEC"))[..], b"");
        assert_eq!(&s.finish()[..], b"ghp_SEC");
    }

    proptest::proptest! {
        /// However the body is cut into chunks, the output is the same as scrubbing it whole,
        /// and no secret survives.
        #[test]
        fn chunking_does_not_matter(
            parts in proptest::collection::vec("(ghp_SECRET|ghp_|SEC|RET|[a-z ]{0,6})", 0..20),
            cuts in proptest::collection::vec(0usize..200, 0..10),
        ) {
            let text: Vec<u8> = parts.concat().into_bytes();
            let mut whole = scrubber();
            let expected = run(&mut whole, &[&text]);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(text.len())).collect();
            cuts.sort_unstable();
            let mut chunks: Vec<&[u8]> = Vec::new();
            let mut start = 0;
            for c in cuts {
                chunks.push(&text[start..c]);
                start = c;
            }
            chunks.push(&text[start..]);
            let mut s = scrubber();
            let got = run(&mut s, &chunks);
            proptest::prop_assert_eq!(&got, &expected);
            proptest::prop_assert!(!got.windows(10).any(|w| w == b"ghp_SECRET"));
        }
    }

    #[test]
    fn headers() {
        let pairs = vec![(zeroize::Zeroizing::new(b"S".to_vec()), b"P".to_vec())];
        assert_eq!(scrub_all(&pairs, b"aSbS"), Some(b"aPbP".to_vec()));
        assert_eq!(scrub_all(&pairs, b"ab"), None);
    }
}
