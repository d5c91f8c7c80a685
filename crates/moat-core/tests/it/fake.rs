//! An in-memory [`Runtime`] that records what the orchestrator asks of it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::DateTime;
use chrono::Utc;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use moat_core::runtime::AttachSession;
use moat_core::runtime::ContainerSpec;
use moat_core::runtime::ContainerStatus;
use moat_core::runtime::LogChunk;
use moat_core::runtime::NetworkSpec;
use moat_core::runtime::PullProgress;
use moat_core::runtime::RunObjects;
use moat_core::runtime::Runtime;
use moat_core::runtime::RuntimeError;
use moat_core::store::LogStream;
use tokio::sync::Notify;

/// What the fake container does.
#[derive(Debug, Clone, Default)]
pub(crate) struct Script {
    /// Chunks the follow stream delivers.
    pub(crate) chunks: Vec<(LogStream, &'static str)>,
    /// Chunks only a later (non-follow) read sees, as if the engine wrote them late.
    pub(crate) late_chunks: Vec<(LogStream, &'static str)>,
    /// Exit code when it ends by itself; `None` runs until stopped.
    pub(crate) exit_code: Option<i64>,
    /// `create_container` fails.
    pub(crate) fail_create: bool,
    /// The follow stream never ends after its chunks (an engine that does not close it).
    pub(crate) follow_hangs: bool,
}

#[derive(Debug, Default)]
pub(crate) struct State {
    pub(crate) calls: Vec<String>,
    pub(crate) networks: BTreeMap<String, NetworkSpec>,
    pub(crate) containers: BTreeMap<String, (ContainerSpec, ContainerStatus)>,
}

#[derive(Debug, Clone)]
pub(crate) struct FakeRuntime {
    pub(crate) script: Script,
    pub(crate) state: Arc<Mutex<State>>,
    stopped: Arc<Notify>,
}

impl FakeRuntime {
    pub(crate) fn new(script: Script) -> Self {
        Self {
            script,
            state: Arc::default(),
            stopped: Arc::new(Notify::new()),
        }
    }

    pub(crate) fn calls(&self) -> Vec<String> {
        self.state.lock().unwrap().calls.clone()
    }

    fn call(&self, name: impl Into<String>) {
        self.state.lock().unwrap().calls.push(name.into());
    }

    fn ts(i: usize) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + i as i64, 0).unwrap()
    }

    fn chunks(
        list: &[(LogStream, &'static str)],
        offset: usize,
    ) -> Vec<Result<LogChunk, RuntimeError>> {
        list.iter()
            .enumerate()
            .map(|(i, (stream, text))| {
                Ok(LogChunk {
                    ts: Self::ts(offset + i),
                    stream: *stream,
                    bytes: Bytes::from_static(text.as_bytes()),
                })
            })
            .collect()
    }
}

#[async_trait]
impl Runtime for FakeRuntime {
    fn name(&self) -> &'static str {
        "fake"
    }

    async fn ping(&self) -> Result<(), RuntimeError> {
        Ok(())
    }

    async fn image_id(&self, image: &str) -> Result<Option<String>, RuntimeError> {
        Ok((image != "missing").then(|| "sha256:fake".to_owned()))
    }

    async fn pull_image(
        &self,
        image: &str,
        _progress: &(dyn Fn(PullProgress) + Send + Sync),
    ) -> Result<(), RuntimeError> {
        Err(RuntimeError::PullFailed {
            image: image.to_owned(),
            message: "no registry".into(),
        })
    }

    async fn create_network(&self, spec: &NetworkSpec) -> Result<String, RuntimeError> {
        self.call("create_network");
        let id = format!("net-{}", spec.name);
        self.state
            .lock()
            .unwrap()
            .networks
            .insert(id.clone(), spec.clone());
        Ok(id)
    }

    async fn remove_network(&self, id: &str) -> Result<(), RuntimeError> {
        self.call("remove_network");
        self.state.lock().unwrap().networks.remove(id);
        Ok(())
    }

    async fn create_container(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        self.call("create_container");
        if self.script.fail_create {
            return Err(RuntimeError::Api {
                operation: "create container",
                source: "no space left on device".into(),
            });
        }
        let id = format!("ctr-{}", spec.name);
        self.state
            .lock()
            .unwrap()
            .containers
            .insert(id.clone(), (spec.clone(), ContainerStatus::Created));
        Ok(id)
    }

    async fn attach(
        &self,
        _id: &str,
        _stdin: bool,
        _output: bool,
        _detach_keys: Option<&str>,
    ) -> Result<AttachSession, RuntimeError> {
        self.call("attach");
        Ok(AttachSession {
            input: Box::pin(tokio::io::sink()),
            output: futures_util::stream::empty().boxed(),
        })
    }

    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        self.call("start");
        if let Some(c) = self.state.lock().unwrap().containers.get_mut(id) {
            c.1 = ContainerStatus::Running;
        }
        Ok(())
    }

    async fn logs(
        &self,
        _id: &str,
        follow: bool,
        _since: Option<DateTime<Utc>>,
    ) -> Result<BoxStream<'static, Result<LogChunk, RuntimeError>>, RuntimeError> {
        let mut all = Self::chunks(&self.script.chunks, 0);
        if follow {
            let stream = futures_util::stream::iter(all);
            return Ok(if self.script.follow_hangs {
                stream.chain(futures_util::stream::pending()).boxed()
            } else {
                stream.boxed()
            });
        }
        all.extend(Self::chunks(
            &self.script.late_chunks,
            self.script.chunks.len(),
        ));
        Ok(futures_util::stream::iter(all).boxed())
    }

    async fn wait(&self, id: &str) -> Result<i64, RuntimeError> {
        let code = match self.script.exit_code {
            Some(code) => code,
            None => {
                if !matches!(self.status(id).await?, ContainerStatus::Exited(_)) {
                    self.stopped.notified().await;
                }
                143
            }
        };
        if let Some(c) = self.state.lock().unwrap().containers.get_mut(id) {
            c.1 = ContainerStatus::Exited(code);
        }
        Ok(code)
    }

    async fn stop(&self, id: &str, _grace: Duration) -> Result<(), RuntimeError> {
        self.call("stop");
        if let Some(c) = self.state.lock().unwrap().containers.get_mut(id) {
            c.1 = ContainerStatus::Exited(143);
        }
        self.stopped.notify_waiters();
        self.stopped.notify_one();
        Ok(())
    }

    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        self.call("remove_container");
        self.state.lock().unwrap().containers.remove(id);
        Ok(())
    }

    async fn resize(&self, _id: &str, _rows: u16, _cols: u16) -> Result<(), RuntimeError> {
        Ok(())
    }

    async fn status(&self, id: &str) -> Result<ContainerStatus, RuntimeError> {
        Ok(self
            .state
            .lock()
            .unwrap()
            .containers
            .get(id)
            .map_or(ContainerStatus::Missing, |c| c.1.clone()))
    }

    async fn network_gateway(&self, _id: &str) -> Result<std::net::IpAddr, RuntimeError> {
        Ok(std::net::IpAddr::from([127, 0, 0, 1]))
    }

    async fn read_file(&self, _id: &str, _path: &str) -> Result<Option<Vec<u8>>, RuntimeError> {
        Ok(None)
    }

    async fn write_files(
        &self,
        _id: &str,
        files: &[(String, Vec<u8>, u32)],
    ) -> Result<(), RuntimeError> {
        let mut state = self.state.lock().unwrap();
        for (path, _, _) in files {
            state.calls.push(format!("write_file {path}"));
        }
        Ok(())
    }

    async fn restrict_host_access(
        &self,
        _network_id: &str,
        _allow: &[std::net::SocketAddr],
    ) -> Result<(), RuntimeError> {
        self.call("restrict_host_access");
        Ok(())
    }

    async fn release_host_access(&self, _network_id: &str) -> Result<(), RuntimeError> {
        self.call("release_host_access");
        Ok(())
    }

    async fn objects_of_run(&self, run_id: &str) -> Result<RunObjects, RuntimeError> {
        let state = self.state.lock().unwrap();
        Ok(RunObjects {
            containers: state
                .containers
                .iter()
                .filter(|(_, c)| {
                    c.0.labels.get("dev.moat.run-id").map(String::as_str) == Some(run_id)
                })
                .map(|(id, _)| id.clone())
                .collect(),
            networks: state
                .networks
                .iter()
                .filter(|(_, n)| {
                    n.labels.get("dev.moat.run-id").map(String::as_str) == Some(run_id)
                })
                .map(|(id, _)| id.clone())
                .collect(),
        })
    }
}
