//! SSH agent protocol messages (draft-miller-ssh-agent, OpenSSH `PROTOCOL.agent`).
//!
//! [`Request::parse`] decodes what a client (the container) sends; [`Response::parse`] decodes
//! what an agent answers. Both take a message body without its length prefix (see
//! [`crate::wire::read_frame`]) and never panic on malformed input.

use crate::key::PublicKeyBlob;
use crate::wire::Reader;
use crate::wire::WireError;
use crate::wire::put_bool;
use crate::wire::put_string;
use crate::wire::put_u32;

/// Message numbers from draft-miller-ssh-agent §6.1 and OpenSSH `PROTOCOL.agent`.
pub mod msg {
    /// `SSH_AGENT_FAILURE`.
    pub const FAILURE: u8 = 5;
    /// `SSH_AGENT_SUCCESS`.
    pub const SUCCESS: u8 = 6;
    /// `SSH_AGENTC_REQUEST_IDENTITIES`.
    pub const REQUEST_IDENTITIES: u8 = 11;
    /// `SSH_AGENT_IDENTITIES_ANSWER`.
    pub const IDENTITIES_ANSWER: u8 = 12;
    /// `SSH_AGENTC_SIGN_REQUEST`.
    pub const SIGN_REQUEST: u8 = 13;
    /// `SSH_AGENT_SIGN_RESPONSE`.
    pub const SIGN_RESPONSE: u8 = 14;
    /// `SSH_AGENTC_ADD_IDENTITY`.
    pub const ADD_IDENTITY: u8 = 17;
    /// `SSH_AGENTC_REMOVE_IDENTITY`.
    pub const REMOVE_IDENTITY: u8 = 18;
    /// `SSH_AGENTC_REMOVE_ALL_IDENTITIES`.
    pub const REMOVE_ALL_IDENTITIES: u8 = 19;
    /// `SSH_AGENTC_ADD_SMARTCARD_KEY`.
    pub const ADD_SMARTCARD_KEY: u8 = 20;
    /// `SSH_AGENTC_REMOVE_SMARTCARD_KEY`.
    pub const REMOVE_SMARTCARD_KEY: u8 = 21;
    /// `SSH_AGENTC_LOCK`.
    pub const LOCK: u8 = 22;
    /// `SSH_AGENTC_UNLOCK`.
    pub const UNLOCK: u8 = 23;
    /// `SSH_AGENTC_ADD_ID_CONSTRAINED`.
    pub const ADD_ID_CONSTRAINED: u8 = 25;
    /// `SSH_AGENTC_ADD_SMARTCARD_KEY_CONSTRAINED`.
    pub const ADD_SMARTCARD_KEY_CONSTRAINED: u8 = 26;
    /// `SSH_AGENTC_EXTENSION`.
    pub const EXTENSION: u8 = 27;
    /// `SSH_AGENT_EXTENSION_FAILURE`.
    pub const EXTENSION_FAILURE: u8 = 28;
}

/// Signature flags of `SSH_AGENTC_SIGN_REQUEST` (draft-miller-ssh-agent §4.5.1).
pub mod sign_flags {
    /// `SSH_AGENT_RSA_SHA2_256`: sign with `rsa-sha2-256`.
    pub const RSA_SHA2_256: u32 = 0x02;
    /// `SSH_AGENT_RSA_SHA2_512`: sign with `rsa-sha2-512`.
    pub const RSA_SHA2_512: u32 = 0x04;
}

/// The name of OpenSSH's session binding extension.
pub const SESSION_BIND: &str = "session-bind@openssh.com";

/// A decoded client request.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Request {
    /// `SSH_AGENTC_REQUEST_IDENTITIES`.
    RequestIdentities,
    /// `SSH_AGENTC_SIGN_REQUEST`.
    Sign(SignRequest),
    /// `session-bind@openssh.com`.
    SessionBind(SessionBind),
    /// Any other extension, by name.
    Extension {
        /// The extension name.
        name: String,
    },
    /// A request that changes the agent's state: adding or removing keys, locking.
    Mutation(Mutation),
    /// A message number this proxy does not know.
    Unknown {
        /// The message number.
        number: u8,
    },
}

/// A state-changing request; the proxy refuses all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Mutation {
    /// Add a key (`ADD_IDENTITY`, `ADD_ID_CONSTRAINED`).
    AddIdentity,
    /// Remove one key.
    RemoveIdentity,
    /// Remove every key.
    RemoveAllIdentities,
    /// Add or remove a smartcard key.
    Smartcard,
    /// Lock the agent.
    Lock,
    /// Unlock the agent.
    Unlock,
}

/// `SSH_AGENTC_SIGN_REQUEST`: `string key blob, string data, uint32 flags`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignRequest {
    /// The key to sign with.
    pub key: Vec<u8>,
    /// The data to sign.
    pub data: Vec<u8>,
    /// Signature flags such as [`sign_flags::RSA_SHA2_256`].
    pub flags: u32,
}

/// `session-bind@openssh.com`: `string hostkey, string session identifier, string signature,
/// bool is_forwarding`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionBind {
    /// The server's host key (wire blob).
    pub host_key: Vec<u8>,
    /// The SSH session identifier (exchange hash of the first key exchange).
    pub session_id: Vec<u8>,
    /// The server's signature of the session identifier (wire signature blob).
    pub signature: Vec<u8>,
    /// Whether the connection is being forwarded to that host rather than used to log in.
    pub is_forwarding: bool,
}

/// A decoded agent reply.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Response {
    /// `SSH_AGENT_SUCCESS`.
    Success,
    /// `SSH_AGENT_FAILURE` or `SSH_AGENT_EXTENSION_FAILURE`.
    Failure,
    /// `SSH_AGENT_IDENTITIES_ANSWER`.
    Identities(Vec<Identity>),
    /// `SSH_AGENT_SIGN_RESPONSE` with the signature blob.
    Signature(Vec<u8>),
    /// Any other reply, by number.
    Other {
        /// The message number.
        number: u8,
    },
}

/// One key an agent holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The public key.
    pub key: PublicKeyBlob,
    /// The key's comment, often a file path or `user@host`; not necessarily UTF-8.
    pub comment: Vec<u8>,
}

/// Why a message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The message had no type byte.
    #[error("empty agent message")]
    Empty,
    /// A field was malformed.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// An identity in an answer had an invalid key blob.
    #[error("agent listed a malformed public key")]
    BadIdentity,
}

impl Request {
    /// Decodes a request body.
    pub fn parse(body: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(body);
        let number = r.u8("message type").map_err(|_| ProtocolError::Empty)?;
        let request = match number {
            msg::REQUEST_IDENTITIES => {
                r.finish("request identities")?;
                Self::RequestIdentities
            }
            msg::SIGN_REQUEST => {
                let key = r.string("sign key")?.to_vec();
                let data = r.string("sign data")?.to_vec();
                let flags = r.u32("sign flags")?;
                r.finish("sign request")?;
                Self::Sign(SignRequest { key, data, flags })
            }
            msg::EXTENSION => {
                let name = r.utf8("extension name")?;
                if name == SESSION_BIND {
                    let host_key = r.string("session-bind host key")?.to_vec();
                    let session_id = r.string("session-bind session id")?.to_vec();
                    let signature = r.string("session-bind signature")?.to_vec();
                    let is_forwarding = r.bool("session-bind is_forwarding")?;
                    r.finish("session-bind")?;
                    Self::SessionBind(SessionBind {
                        host_key,
                        session_id,
                        signature,
                        is_forwarding,
                    })
                } else {
                    Self::Extension {
                        name: name.to_owned(),
                    }
                }
            }
            msg::ADD_IDENTITY | msg::ADD_ID_CONSTRAINED => Self::Mutation(Mutation::AddIdentity),
            msg::REMOVE_IDENTITY => Self::Mutation(Mutation::RemoveIdentity),
            msg::REMOVE_ALL_IDENTITIES => Self::Mutation(Mutation::RemoveAllIdentities),
            msg::ADD_SMARTCARD_KEY
            | msg::REMOVE_SMARTCARD_KEY
            | msg::ADD_SMARTCARD_KEY_CONSTRAINED => Self::Mutation(Mutation::Smartcard),
            msg::LOCK => Self::Mutation(Mutation::Lock),
            msg::UNLOCK => Self::Mutation(Mutation::Unlock),
            number => Self::Unknown { number },
        };
        Ok(request)
    }
}

impl SignRequest {
    /// Encodes the request body.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.key.len() + self.data.len() + 16);
        out.push(msg::SIGN_REQUEST);
        put_string(&mut out, &self.key);
        put_string(&mut out, &self.data);
        put_u32(&mut out, self.flags);
        out
    }
}

impl SessionBind {
    /// Encodes the request body (an `SSH_AGENTC_EXTENSION` message).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.push(msg::EXTENSION);
        put_string(&mut out, SESSION_BIND.as_bytes());
        put_string(&mut out, &self.host_key);
        put_string(&mut out, &self.session_id);
        put_string(&mut out, &self.signature);
        put_bool(&mut out, self.is_forwarding);
        out
    }
}

impl Response {
    /// Decodes a reply body.
    pub fn parse(body: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(body);
        let number = r.u8("message type").map_err(|_| ProtocolError::Empty)?;
        let response = match number {
            msg::SUCCESS => Self::Success,
            msg::FAILURE | msg::EXTENSION_FAILURE => Self::Failure,
            msg::IDENTITIES_ANSWER => {
                let count = r.u32("identity count")?;
                let mut identities = Vec::new();
                for _ in 0..count {
                    let key = r.string("identity key")?;
                    let comment = r.string("identity comment")?;
                    let key =
                        PublicKeyBlob::from_bytes(key).map_err(|_| ProtocolError::BadIdentity)?;
                    identities.push(Identity {
                        key,
                        comment: comment.to_vec(),
                    });
                }
                r.finish("identities answer")?;
                Self::Identities(identities)
            }
            msg::SIGN_RESPONSE => {
                let signature = r.string("signature")?.to_vec();
                r.finish("sign response")?;
                Self::Signature(signature)
            }
            number => Self::Other { number },
        };
        Ok(response)
    }

    /// Encodes the reply body.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Self::Success => out.push(msg::SUCCESS),
            Self::Failure => out.push(msg::FAILURE),
            Self::Identities(identities) => {
                out.push(msg::IDENTITIES_ANSWER);
                put_u32(
                    &mut out,
                    u32::try_from(identities.len()).unwrap_or(u32::MAX),
                );
                for identity in identities {
                    put_string(&mut out, identity.key.as_bytes());
                    put_string(&mut out, &identity.comment);
                }
            }
            Self::Signature(signature) => {
                out.push(msg::SIGN_RESPONSE);
                put_string(&mut out, signature);
            }
            Self::Other { number } => out.push(*number),
        }
        out
    }
}

/// The body of an `SSH_AGENTC_REQUEST_IDENTITIES` message.
pub fn request_identities() -> Vec<u8> {
    vec![msg::REQUEST_IDENTITIES]
}

/// The algorithm name at the start of a signature blob, e.g. `rsa-sha2-512`.
pub fn signature_algorithm(signature: &[u8]) -> Option<&str> {
    Reader::new(signature).utf8("signature algorithm").ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ed25519_blob() -> Vec<u8> {
        let mut blob = Vec::new();
        put_string(&mut blob, b"ssh-ed25519");
        put_string(&mut blob, &[7_u8; 32]);
        blob
    }

    // Message vectors written out byte by byte from draft-miller-ssh-agent §4 and
    // OpenSSH PROTOCOL.agent §1 so an encoder bug cannot hide behind a round trip.

    #[test]
    fn request_identities_vector() {
        assert_eq!(Request::parse(&[11]), Ok(Request::RequestIdentities));
        // Trailing garbage after a message without fields is refused.
        assert!(Request::parse(&[11, 0]).is_err());
    }

    #[test]
    fn sign_request_vector() {
        let body = [
            13, // SSH_AGENTC_SIGN_REQUEST
            0, 0, 0, 3, b'k', b'e', b'y', // string key blob
            0, 0, 0, 2, b'h', b'i', // string data
            0, 0, 0, 4, // uint32 flags = SSH_AGENT_RSA_SHA2_512
        ];
        let parsed = Request::parse(&body).expect("parse");
        let expected = SignRequest {
            key: b"key".to_vec(),
            data: b"hi".to_vec(),
            flags: sign_flags::RSA_SHA2_512,
        };
        assert_eq!(parsed, Request::Sign(expected.clone()));
        assert_eq!(expected.encode(), body);
    }

    #[test]
    fn truncated_sign_requests_are_errors_at_every_length() {
        let full = SignRequest {
            key: ed25519_blob(),
            data: vec![1; 40],
            flags: 2,
        }
        .encode();
        for len in 1..full.len() {
            let truncated = full.get(..len).expect("prefix");
            assert!(
                Request::parse(truncated).is_err(),
                "prefix of {len} bytes was accepted"
            );
        }
        assert!(Request::parse(&full).is_ok());
    }

    #[test]
    fn session_bind_vector() {
        let mut body = vec![27];
        body.extend_from_slice(&[0, 0, 0, 24]);
        body.extend_from_slice(b"session-bind@openssh.com");
        body.extend_from_slice(&[0, 0, 0, 2, 0xaa, 0xbb]); // host key
        body.extend_from_slice(&[0, 0, 0, 1, 0x01]); // session id
        body.extend_from_slice(&[0, 0, 0, 0]); // signature
        body.push(1); // is_forwarding
        let bind = SessionBind {
            host_key: vec![0xaa, 0xbb],
            session_id: vec![1],
            signature: vec![],
            is_forwarding: true,
        };
        assert_eq!(
            Request::parse(&body),
            Ok(Request::SessionBind(bind.clone()))
        );
        assert_eq!(bind.encode(), body);
        // A bad boolean and a missing boolean are both refused.
        let last = body.len() - 1;
        body[last] = 2;
        assert!(Request::parse(&body).is_err());
        body.pop();
        assert!(Request::parse(&body).is_err());
    }

    #[test]
    fn other_extensions_and_mutations_are_classified() {
        let mut body = vec![27];
        put_string(&mut body, b"query");
        assert_eq!(
            Request::parse(&body),
            Ok(Request::Extension {
                name: "query".to_owned()
            })
        );
        assert_eq!(
            Request::parse(&[17, 1, 2]),
            Ok(Request::Mutation(Mutation::AddIdentity))
        );
        assert_eq!(
            Request::parse(&[25]),
            Ok(Request::Mutation(Mutation::AddIdentity))
        );
        assert_eq!(
            Request::parse(&[18]),
            Ok(Request::Mutation(Mutation::RemoveIdentity))
        );
        assert_eq!(
            Request::parse(&[19]),
            Ok(Request::Mutation(Mutation::RemoveAllIdentities))
        );
        assert_eq!(
            Request::parse(&[20]),
            Ok(Request::Mutation(Mutation::Smartcard))
        );
        assert_eq!(Request::parse(&[22]), Ok(Request::Mutation(Mutation::Lock)));
        assert_eq!(
            Request::parse(&[23]),
            Ok(Request::Mutation(Mutation::Unlock))
        );
        assert_eq!(Request::parse(&[1]), Ok(Request::Unknown { number: 1 }));
        assert_eq!(Request::parse(&[]), Err(ProtocolError::Empty));
    }

    #[test]
    fn extension_name_must_be_utf8() {
        let mut body = vec![27];
        put_string(&mut body, &[0xff, 0xfe]);
        assert!(Request::parse(&body).is_err());
    }

    #[test]
    fn identities_answer_vector_and_round_trip() {
        let blob = ed25519_blob();
        let mut body = vec![12, 0, 0, 0, 1];
        put_string(&mut body, &blob);
        put_string(&mut body, b"me@laptop");
        let parsed = Response::parse(&body).expect("parse");
        let Response::Identities(ids) = &parsed else {
            panic!("not identities: {parsed:?}")
        };
        assert_eq!(ids.len(), 1);
        assert_eq!(ids[0].key.algorithm(), "ssh-ed25519");
        assert_eq!(ids[0].comment, b"me@laptop");
        assert_eq!(parsed.encode(), body);
    }

    #[test]
    fn identities_answer_with_lying_count_is_refused() {
        // Claims a billion identities but carries none: must fail fast, not allocate.
        let body = [12, 0x3b, 0x9a, 0xca, 0x00];
        assert!(Response::parse(&body).is_err());
    }

    #[test]
    fn sign_response_and_status_vectors() {
        let mut sig = Vec::new();
        put_string(&mut sig, b"rsa-sha2-256");
        put_string(&mut sig, &[9; 4]);
        let mut body = vec![14];
        put_string(&mut body, &sig);
        let parsed = Response::parse(&body).expect("parse");
        assert_eq!(parsed, Response::Signature(sig.clone()));
        assert_eq!(signature_algorithm(&sig), Some("rsa-sha2-256"));
        assert_eq!(Response::parse(&[5]), Ok(Response::Failure));
        assert_eq!(Response::parse(&[28]), Ok(Response::Failure));
        assert_eq!(Response::parse(&[6]), Ok(Response::Success));
        assert_eq!(Response::Failure.encode(), [5]);
    }
}
