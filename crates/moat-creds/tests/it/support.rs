//! Shared helpers: fakes for the terminal and validator, a local TLS upstream.

use std::net::SocketAddr;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;

use async_trait::async_trait;
use moat_core::Secret;
use moat_creds::PromptError;
use moat_creds::Prompter;
use moat_creds::Provider;
use moat_creds::Validated;
use moat_creds::ValidationError;
use moat_creds::Validator;
use tokio::io::AsyncReadExt as _;
use tokio::io::AsyncWriteExt as _;

pub(crate) type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// A store in `dir` whose key lives in a key file there (no OS keyring, no passphrase).
pub(crate) fn key_file_store(
    dir: &Path,
) -> Result<moat_creds::CredentialStore, Box<dyn std::error::Error + Send + Sync>> {
    let key = moat_creds::StoreKey::resolve(
        moat_creds::KeyringMode::File,
        dir,
        None,
        &moat_creds::UnavailableOsKeyring,
    )?;
    Ok(moat_creds::CredentialStore::open(dir, key)?)
}

/// A scripted terminal.
#[derive(Debug, Default)]
pub(crate) struct FakePrompter {
    pub(crate) terminal: bool,
    pub(crate) answers: Vec<bool>,
    pub(crate) input: Option<String>,
    pub(crate) questions: Vec<String>,
    pub(crate) prompts: Vec<String>,
    pub(crate) infos: Vec<String>,
}

impl Prompter for FakePrompter {
    fn is_terminal(&self) -> bool {
        self.terminal
    }

    fn confirm(&mut self, question: &str) -> Result<bool, PromptError> {
        self.questions.push(question.to_owned());
        if self.answers.is_empty() {
            return Err(PromptError::Cancelled);
        }
        Ok(self.answers.remove(0))
    }

    fn hidden_input(&mut self, prompt: &str) -> Result<Secret, PromptError> {
        self.prompts.push(prompt.to_owned());
        self.input
            .take()
            .map(Secret::new)
            .ok_or(PromptError::Cancelled)
    }

    fn info(&mut self, message: &str) {
        self.infos.push(message.to_owned());
    }
}

/// Accepts everything, reporting a fixed account; counts calls.
#[derive(Debug, Default)]
pub(crate) struct AcceptingValidator {
    pub(crate) calls: Mutex<Vec<String>>,
}

#[async_trait]
impl Validator for AcceptingValidator {
    async fn validate(
        &self,
        provider: &Provider,
        value: &Secret,
    ) -> Result<Option<Validated>, ValidationError> {
        if let Ok(mut calls) = self.calls.lock() {
            calls.push(format!("{}={}", provider.name(), value.expose()));
        }
        Ok(Some(Validated {
            account: Some("octocat".to_owned()),
        }))
    }
}

/// Writes an executable shell script without this process ever holding a writable
/// descriptor to it (a forked sibling test holding one would make exec fail with ETXTBSY).
pub(crate) fn install_script(
    dir: &Path,
    name: &str,
    body: &str,
) -> Result<PathBuf, std::io::Error> {
    let src = dir.join(format!("{name}.src"));
    std::fs::write(&src, format!("#!/bin/sh\n{body}\n"))?;
    let dst = dir.join(name);
    let status = std::process::Command::new("install")
        .args(["-m", "755"])
        .arg(&src)
        .arg(&dst)
        .status()?;
    if !status.success() {
        return Err(std::io::Error::other(format!("install failed: {status}")));
    }
    Ok(dst)
}

/// A local HTTPS server with a certificate for `hosts`, signed by its own CA.
pub(crate) struct TestUpstream {
    pub(crate) addr: SocketAddr,
    pub(crate) ca_pem: String,
    /// Heads (request line and headers) of every request received.
    pub(crate) requests: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Responds to a request head with a status and a JSON body.
pub(crate) type Handler = Arc<dyn Fn(&str) -> (u16, String) + Send + Sync>;

impl TestUpstream {
    pub(crate) async fn start(
        hosts: &[&str],
        handler: Handler,
    ) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let ca_key = rcgen::KeyPair::generate()?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "moat-creds test CA");
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key)?;
        let leaf_key = rcgen::KeyPair::generate()?;
        let leaf_params = rcgen::CertificateParams::new(
            hosts.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>(),
        )?;
        let leaf = leaf_params.signed_by(&leaf_key, &ca)?;

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
            )?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let handler = handler.clone();
                let seen = seen.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(buf.get(..n).unwrap_or_default()),
                        }
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let (status, body) = handler(&head);
                    if let Ok(mut seen) = seen.lock() {
                        seen.push(head);
                    }
                    // Redirects point back at this server, so a client that follows them
                    // shows up as a second request.
                    let location = if (300..400).contains(&status) {
                        "location: /redirected\r\n"
                    } else {
                        ""
                    };
                    let response = format!(
                        "HTTP/1.1 {status} X\r\n{location}content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tls.write_all(response.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        Ok(Self {
            addr,
            ca_pem: ca.pem(),
            requests,
            task,
        })
    }

    pub(crate) fn requests(&self) -> Vec<String> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

/// The value of header `name` (case-insensitive) in a request head.
pub(crate) fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}
