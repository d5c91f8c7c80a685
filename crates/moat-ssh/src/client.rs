//! A client for the user's SSH agent (the upstream of the proxy, and the source of keys for
//! `moat grant ssh`).

use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

use tokio::net::UnixStream;

use crate::protocol::Identity;
use crate::protocol::ProtocolError;
use crate::protocol::Response;
use crate::protocol::SignRequest;
use crate::protocol::request_identities;
use crate::wire::FrameError;
use crate::wire::MAX_MESSAGE_LEN;
use crate::wire::read_frame;
use crate::wire::write_frame;

/// A connection to an SSH agent.
#[derive(Debug)]
pub struct AgentClient {
    stream: UnixStream,
    path: PathBuf,
    timeout: Duration,
}

/// Why talking to the SSH agent failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The socket does not exist.
    #[error("no ssh agent socket at {}; start an agent (`eval $(ssh-agent)`, then `ssh-add`) and check SSH_AUTH_SOCK", path.display())]
    NotFound {
        /// The socket path.
        path: PathBuf,
    },
    /// The socket exists but nothing listens on it.
    #[error("the ssh agent at {} is not running (connection refused); restart it and add your keys with `ssh-add`", path.display())]
    Dead {
        /// The socket path.
        path: PathBuf,
    },
    /// Connecting failed otherwise.
    #[error("cannot connect to the ssh agent at {}: {source}", path.display())]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The agent did not answer in time.
    #[error("the ssh agent at {} did not answer within {} s; check whether it is waiting for a confirmation or a hardware key", path.display(), timeout.as_secs())]
    Timeout {
        /// The socket path.
        path: PathBuf,
        /// The time waited.
        timeout: Duration,
    },
    /// The connection failed or the agent closed it.
    #[error("lost the connection to the ssh agent at {}: {source}", path.display())]
    Frame {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        source: FrameError,
    },
    /// The agent closed the connection instead of answering.
    #[error("the ssh agent at {} closed the connection without answering", path.display())]
    Closed {
        /// The socket path.
        path: PathBuf,
    },
    /// The answer was malformed.
    #[error("the ssh agent at {} sent a malformed answer: {source}", path.display())]
    Protocol {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        source: ProtocolError,
    },
    /// The agent refused (`SSH_AGENT_FAILURE`) or answered with an unexpected message.
    #[error("the ssh agent at {} refused the request (it may be locked, or the key was removed)", path.display())]
    Refused {
        /// The socket path.
        path: PathBuf,
    },
}

impl AgentClient {
    /// Connects to the agent socket at `path`; every later call waits at most `timeout`.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Self, AgentError> {
        let path = path.to_path_buf();
        let connect = tokio::time::timeout(timeout, UnixStream::connect(&path)).await;
        let stream = match connect {
            Err(_) => return Err(AgentError::Timeout { path, timeout }),
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                return Err(match e.kind() {
                    std::io::ErrorKind::NotFound => AgentError::NotFound { path },
                    std::io::ErrorKind::ConnectionRefused => AgentError::Dead { path },
                    _ => AgentError::Connect { path, source: e },
                });
            }
        };
        Ok(Self {
            stream,
            path,
            timeout,
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sends one request body and returns the reply body.
    pub async fn call(&mut self, body: &[u8]) -> Result<Vec<u8>, AgentError> {
        let path = &self.path;
        let exchange = async {
            write_frame(&mut self.stream, body).await?;
            read_frame(&mut self.stream, MAX_MESSAGE_LEN).await
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => Err(AgentError::Timeout {
                path: path.clone(),
                timeout: self.timeout,
            }),
            Ok(Err(source)) => Err(AgentError::Frame {
                path: path.clone(),
                source,
            }),
            Ok(Ok(None)) => Err(AgentError::Closed { path: path.clone() }),
            Ok(Ok(Some(reply))) => Ok(reply),
        }
    }

    /// Lists the keys the agent holds.
    pub async fn list_identities(&mut self) -> Result<Vec<Identity>, AgentError> {
        let reply = self.call(&request_identities()).await?;
        match self.parse(&reply)? {
            Response::Identities(ids) => Ok(ids),
            _ => Err(AgentError::Refused {
                path: self.path.clone(),
            }),
        }
    }

    /// Asks the agent to sign; returns the signature blob.
    pub async fn sign(&mut self, request: &SignRequest) -> Result<Vec<u8>, AgentError> {
        let reply = self.call(&request.encode()).await?;
        match self.parse(&reply)? {
            Response::Signature(sig) => Ok(sig),
            _ => Err(AgentError::Refused {
                path: self.path.clone(),
            }),
        }
    }

    fn parse(&self, reply: &[u8]) -> Result<Response, AgentError> {
        Response::parse(reply).map_err(|source| AgentError::Protocol {
            path: self.path.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn missing_socket_is_not_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = AgentClient::connect(&dir.path().join("nope"), Duration::from_secs(5))
            .await
            .expect_err("missing");
        assert!(matches!(err, AgentError::NotFound { .. }), "{err:?}");
        assert!(err.to_string().contains("ssh-add"));
    }

    #[tokio::test]
    async fn dead_socket_is_dead() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.sock");
        // Bind and drop the listener: the socket file stays, nobody listens.
        drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
        let err = AgentClient::connect(&path, Duration::from_secs(5))
            .await
            .expect_err("dead");
        assert!(matches!(err, AgentError::Dead { .. }), "{err:?}");
    }
}
