//! SSH wire encoding (RFC 4251 §5) and agent message framing (draft-miller-ssh-agent §3).
//!
//! Every read is bounds-checked: bytes from the container or from an agent never cause a
//! panic, only a [`WireError`] or a [`FrameError`].

use tokio::io::AsyncRead;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWrite;
use tokio::io::AsyncWriteExt;

/// The largest agent message accepted in either direction, in bytes (256 KiB).
///
/// OpenSSH's `ssh-agent` uses the same limit (`AGENT_MAX_LEN`).
pub const MAX_MESSAGE_LEN: usize = 256 * 1024;

/// Why a field could not be decoded from a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The message ended in the middle of a field.
    #[error(
        "message truncated while reading {field}; the sender is not speaking the ssh agent protocol"
    )]
    Truncated {
        /// The field being read.
        field: &'static str,
    },
    /// A boolean field held a value other than 0 or 1.
    #[error("invalid boolean value {value} in {field}")]
    InvalidBool {
        /// The field being read.
        field: &'static str,
        /// The byte found.
        value: u8,
    },
    /// Bytes were left over after the last field.
    #[error("{count} unexpected trailing bytes after {context}")]
    TrailingBytes {
        /// What had been decoded.
        context: &'static str,
        /// How many bytes were left over.
        count: usize,
    },
    /// A string that must be text was not UTF-8.
    #[error("{field} is not valid utf-8")]
    NotUtf8 {
        /// The field being read.
        field: &'static str,
    },
}

/// Why a framed message could not be read from a stream.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The announced length exceeds the limit.
    #[error("agent message of {len} bytes exceeds the {max} byte limit")]
    TooLong {
        /// The announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The peer closed the stream in the middle of a message.
    #[error("connection closed in the middle of an agent message")]
    Truncated,
    /// Reading or writing the stream failed.
    #[error("agent socket i/o failed: {source}")]
    Io {
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// A cursor over a received message that decodes SSH wire types.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Starts reading at the beginning of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    /// The bytes not read yet.
    pub fn rest(&self) -> &'a [u8] {
        self.buf
    }

    /// Whether everything has been read.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Reads one byte.
    pub fn u8(&mut self, field: &'static str) -> Result<u8, WireError> {
        let (&first, rest) = self
            .buf
            .split_first()
            .ok_or(WireError::Truncated { field })?;
        self.buf = rest;
        Ok(first)
    }

    /// Reads a big-endian `uint32`.
    pub fn u32(&mut self, field: &'static str) -> Result<u32, WireError> {
        let bytes = self.take(4, field)?;
        let array: [u8; 4] = bytes
            .try_into()
            .map_err(|_| WireError::Truncated { field })?;
        Ok(u32::from_be_bytes(array))
    }

    /// Reads a `boolean` (0 or 1).
    pub fn bool(&mut self, field: &'static str) -> Result<bool, WireError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(WireError::InvalidBool { field, value }),
        }
    }

    /// Reads a length-prefixed `string` as bytes.
    pub fn string(&mut self, field: &'static str) -> Result<&'a [u8], WireError> {
        let len = self.u32(field)?;
        let len = usize::try_from(len).map_err(|_| WireError::Truncated { field })?;
        self.take(len, field)
    }

    /// Reads a length-prefixed `string` that must be UTF-8 text.
    pub fn utf8(&mut self, field: &'static str) -> Result<&'a str, WireError> {
        let bytes = self.string(field)?;
        std::str::from_utf8(bytes).map_err(|_| WireError::NotUtf8 { field })
    }

    /// Fails unless everything has been read.
    pub fn finish(&self, context: &'static str) -> Result<(), WireError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(WireError::TrailingBytes {
                context,
                count: self.buf.len(),
            })
        }
    }

    fn take(&mut self, len: usize, field: &'static str) -> Result<&'a [u8], WireError> {
        if self.buf.len() < len {
            return Err(WireError::Truncated { field });
        }
        let (head, tail) = self.buf.split_at(len);
        self.buf = tail;
        Ok(head)
    }
}

/// Appends a big-endian `uint32`.
pub fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_be_bytes());
}

/// Appends a length-prefixed `string`.
///
/// Strings longer than `u32::MAX` cannot occur here: every buffer this crate encodes is
/// bounded by [`MAX_MESSAGE_LEN`] before it is written, so the length saturates harmlessly
/// and the frame writer rejects the message.
pub fn put_string(out: &mut Vec<u8>, value: &[u8]) {
    put_u32(out, u32::try_from(value.len()).unwrap_or(u32::MAX));
    out.extend_from_slice(value);
}

/// Appends a `boolean`.
pub fn put_bool(out: &mut Vec<u8>, value: bool) {
    out.push(u8::from(value));
}

/// Reads one length-prefixed message body.
///
/// Returns `Ok(None)` when the peer closed the stream cleanly between messages. A length over
/// `max` is refused before any of the body is read, so a hostile peer cannot make us allocate.
pub async fn read_frame<R>(reader: &mut R, max: usize) -> Result<Option<Vec<u8>>, FrameError>
where
    R: AsyncRead + Unpin,
{
    let mut len_bytes = [0_u8; 4];
    let mut filled = 0;
    while filled < len_bytes.len() {
        let Some(slot) = len_bytes.get_mut(filled..) else {
            return Err(FrameError::Truncated);
        };
        let n = reader
            .read(slot)
            .await
            .map_err(|source| FrameError::Io { source })?;
        if n == 0 {
            return if filled == 0 {
                Ok(None)
            } else {
                Err(FrameError::Truncated)
            };
        }
        filled += n;
    }
    let len = usize::try_from(u32::from_be_bytes(len_bytes)).unwrap_or(usize::MAX);
    if len > max {
        return Err(FrameError::TooLong { len, max });
    }
    let mut body = vec![0_u8; len];
    match reader.read_exact(&mut body).await {
        Ok(_) => Ok(Some(body)),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(FrameError::Truncated),
        Err(source) => Err(FrameError::Io { source }),
    }
}

/// Writes one length-prefixed message body.
pub async fn write_frame<W>(writer: &mut W, body: &[u8]) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin,
{
    if body.len() > MAX_MESSAGE_LEN {
        return Err(FrameError::TooLong {
            len: body.len(),
            max: MAX_MESSAGE_LEN,
        });
    }
    let mut framed = Vec::with_capacity(body.len() + 4);
    put_string(&mut framed, body);
    writer
        .write_all(&framed)
        .await
        .map_err(|source| FrameError::Io { source })?;
    writer
        .flush()
        .await
        .map_err(|source| FrameError::Io { source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fields_in_order() {
        let mut buf = Vec::new();
        buf.push(13);
        put_string(&mut buf, b"key");
        put_bool(&mut buf, true);
        put_u32(&mut buf, 4);
        let mut r = Reader::new(&buf);
        assert_eq!(r.u8("type"), Ok(13));
        assert_eq!(r.string("key"), Ok(&b"key"[..]));
        assert_eq!(r.bool("flag"), Ok(true));
        assert_eq!(r.u32("flags"), Ok(4));
        assert_eq!(r.finish("test"), Ok(()));
    }

    #[test]
    fn string_longer_than_buffer_is_truncated_not_a_panic() {
        // Announces 0xffffffff bytes, carries 3.
        let buf = [0xff, 0xff, 0xff, 0xff, b'a', b'b', b'c'];
        let mut r = Reader::new(&buf);
        assert_eq!(
            r.string("blob"),
            Err(WireError::Truncated { field: "blob" })
        );
    }

    #[test]
    fn short_u32_is_truncated() {
        let mut r = Reader::new(&[0, 0, 1]);
        assert_eq!(r.u32("flags"), Err(WireError::Truncated { field: "flags" }));
    }

    #[test]
    fn bool_other_than_zero_or_one_is_refused() {
        let mut r = Reader::new(&[2]);
        assert_eq!(
            r.bool("b"),
            Err(WireError::InvalidBool {
                field: "b",
                value: 2
            })
        );
    }

    #[test]
    fn trailing_bytes_are_reported() {
        let r = Reader::new(&[1, 2]);
        assert_eq!(
            r.finish("ctx"),
            Err(WireError::TrailingBytes {
                context: "ctx",
                count: 2
            })
        );
    }

    #[tokio::test]
    async fn frame_round_trip_and_clean_eof() {
        let mut out = Vec::new();
        write_frame(&mut out, &[11]).await.expect("write");
        assert_eq!(out, [0, 0, 0, 1, 11]);
        let mut input = &out[..];
        let body = read_frame(&mut input, MAX_MESSAGE_LEN).await.expect("read");
        assert_eq!(body, Some(vec![11]));
        let eof = read_frame(&mut input, MAX_MESSAGE_LEN).await.expect("eof");
        assert_eq!(eof, None);
    }

    #[tokio::test]
    async fn oversized_frame_is_refused_before_reading_body() {
        // 256 KiB + 1, with no body at all: must fail on the length alone.
        let len = u32::try_from(MAX_MESSAGE_LEN + 1).expect("fits");
        let bytes = len.to_be_bytes();
        let mut input = &bytes[..];
        let err = read_frame(&mut input, MAX_MESSAGE_LEN)
            .await
            .expect_err("too long");
        assert!(matches!(err, FrameError::TooLong { len: l, .. } if l == MAX_MESSAGE_LEN + 1));
    }

    #[tokio::test]
    async fn truncated_length_and_body_are_errors() {
        let mut input: &[u8] = &[0, 0];
        assert!(matches!(
            read_frame(&mut input, 16).await,
            Err(FrameError::Truncated)
        ));
        let mut input: &[u8] = &[0, 0, 0, 5, 11, 12];
        assert!(matches!(
            read_frame(&mut input, 16).await,
            Err(FrameError::Truncated)
        ));
    }

    #[tokio::test]
    async fn writer_refuses_oversized_body() {
        let mut out = Vec::new();
        let body = vec![0_u8; MAX_MESSAGE_LEN + 1];
        assert!(matches!(
            write_frame(&mut out, &body).await,
            Err(FrameError::TooLong { .. })
        ));
        assert!(out.is_empty());
    }
}
