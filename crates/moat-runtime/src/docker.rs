//! Docker Engine backend (bollard).

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::models::ContainerCreateBody;
use bollard::models::ContainerStateStatusEnum;
use bollard::models::HostConfig;
use bollard::models::HostConfigLogConfig;
use bollard::models::Mount;
use bollard::models::MountType;
use bollard::models::NetworkCreateRequest;
use bollard::models::PortBinding;
use bollard::query_parameters::AttachContainerOptions;
use bollard::query_parameters::CreateContainerOptions;
use bollard::query_parameters::CreateImageOptions;
use bollard::query_parameters::DownloadFromContainerOptions;
use bollard::query_parameters::ListContainersOptions;
use bollard::query_parameters::ListNetworksOptions;
use bollard::query_parameters::LogsOptions;
use bollard::query_parameters::RemoveContainerOptions;
use bollard::query_parameters::ResizeContainerTTYOptions;
use bollard::query_parameters::StopContainerOptions;
use bollard::query_parameters::UploadToContainerOptions;
use bollard::query_parameters::WaitContainerOptions;
use bytes::Bytes;
use chrono::DateTime;
use chrono::Utc;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use moat_core::runtime::AttachSession;
use moat_core::runtime::ContainerSpec;
use moat_core::runtime::ContainerStatus;
use moat_core::runtime::LABEL_RUN_ID;
use moat_core::runtime::LogChunk;
use moat_core::runtime::NetworkAttachment;
use moat_core::runtime::NetworkSpec;
use moat_core::runtime::OutputChunk;
use moat_core::runtime::PullProgress;
use moat_core::runtime::RunObjects;
use moat_core::runtime::Runtime;
use moat_core::runtime::RuntimeError;
use moat_core::store::LogStream;

/// A connection to Docker Engine.
#[derive(Debug, Clone)]
pub struct DockerRuntime {
    docker: Docker,
    endpoint: String,
}

impl DockerRuntime {
    /// Connects to the engine at `endpoint` (`unix:///path`, a bare socket path, or
    /// `tcp://host:port`/`http://…`) and negotiates the API version.
    pub async fn connect(endpoint: &str) -> Result<Self, RuntimeError> {
        let unreachable = |source: BollardError| RuntimeError::Unreachable {
            runtime: "docker",
            endpoint: endpoint.to_owned(),
            source: Box::new(source),
        };
        let docker = if let Some(rest) = endpoint
            .strip_prefix("tcp://")
            .or_else(|| endpoint.strip_prefix("http://"))
        {
            Docker::connect_with_http(&format!("http://{rest}"), 120, bollard::API_DEFAULT_VERSION)
        } else {
            let path = endpoint.strip_prefix("unix://").unwrap_or(endpoint);
            Docker::connect_with_unix(path, 120, bollard::API_DEFAULT_VERSION)
        }
        .map_err(unreachable)?;
        let docker = tokio::time::timeout(Duration::from_secs(10), docker.negotiate_version())
            .await
            .map_err(|_| RuntimeError::Unreachable {
                runtime: "docker",
                endpoint: endpoint.to_owned(),
                source: "the engine did not answer within 10 seconds".into(),
            })?
            .map_err(unreachable)?;
        Ok(Self {
            docker,
            endpoint: endpoint.to_owned(),
        })
    }

    /// The endpoint this runtime talks to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }
}

fn api(operation: &'static str) -> impl FnOnce(BollardError) -> RuntimeError {
    move |e| RuntimeError::Api {
        operation,
        source: Box::new(e),
    }
}

fn api_io(operation: &'static str, e: std::io::Error) -> RuntimeError {
    RuntimeError::Api {
        operation,
        source: Box::new(e),
    }
}

fn is_not_found(e: &BollardError) -> bool {
    matches!(
        e,
        BollardError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// Splits a Docker log frame `"<RFC 3339 timestamp> <payload>"`.
fn split_timestamp(message: &Bytes) -> (DateTime<Utc>, Bytes) {
    if let Some(space) = message.iter().position(|b| *b == b' ')
        && let Ok(text) = std::str::from_utf8(&message[..space])
        && let Ok(ts) = DateTime::parse_from_rfc3339(text)
    {
        return (ts.with_timezone(&Utc), message.slice(space + 1..));
    }
    (Utc::now(), message.clone())
}

#[async_trait]
impl Runtime for DockerRuntime {
    fn name(&self) -> &'static str {
        "docker"
    }

    async fn ping(&self) -> Result<(), RuntimeError> {
        self.docker
            .ping()
            .await
            .map(|_| ())
            .map_err(|source| RuntimeError::Unreachable {
                runtime: "docker",
                endpoint: self.endpoint.clone(),
                source: Box::new(source),
            })
    }

    async fn image_id(&self, image: &str) -> Result<Option<String>, RuntimeError> {
        match self.docker.inspect_image(image).await {
            Ok(info) => Ok(Some(info.id.unwrap_or_default())),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(api("inspect image")(e)),
        }
    }

    async fn pull_image(
        &self,
        image: &str,
        progress: &(dyn Fn(PullProgress) + Send + Sync),
    ) -> Result<(), RuntimeError> {
        let (repo, tag) = split_image(image);
        let options = CreateImageOptions {
            from_image: Some(repo.to_owned()),
            tag: Some(tag.to_owned()),
            ..Default::default()
        };
        let mut stream = self.docker.create_image(Some(options), None, None);
        let mut layers: HashMap<String, (u64, u64)> = HashMap::new();
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| RuntimeError::PullFailed {
                image: image.to_owned(),
                message: match e {
                    BollardError::DockerResponseServerError { message, .. } => message,
                    other => other.to_string(),
                },
            })?;
            if let Some(detail) = info.error_detail {
                return Err(RuntimeError::PullFailed {
                    image: image.to_owned(),
                    message: detail.message.unwrap_or_else(|| "unknown error".into()),
                });
            }
            if let (Some(id), Some(detail)) = (info.id, info.progress_detail) {
                let entry = layers.entry(id).or_default();
                entry.0 = detail.current.unwrap_or(0).max(0) as u64;
                entry.1 = detail.total.unwrap_or(0).max(0) as u64;
            }
            progress(PullProgress {
                current: layers.values().map(|l| l.0).sum(),
                total: layers.values().map(|l| l.1).sum(),
                status: info.status.unwrap_or_default(),
            });
        }
        Ok(())
    }

    async fn create_network(&self, spec: &NetworkSpec) -> Result<String, RuntimeError> {
        let request = NetworkCreateRequest {
            name: spec.name.clone(),
            driver: Some("bridge".into()),
            internal: Some(spec.internal),
            labels: Some(spec.labels.clone().into_iter().collect()),
            ..Default::default()
        };
        let created = self
            .docker
            .create_network(request)
            .await
            .map_err(api("create network"))?;
        Ok(created.id)
    }

    async fn remove_network(&self, id: &str) -> Result<(), RuntimeError> {
        match self.docker.remove_network(id).await {
            Err(e) if !is_not_found(&e) => Err(api("remove network")(e)),
            _ => Ok(()),
        }
    }

    async fn create_container(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        // Structured bind mounts, not `src:dst:mode` strings: a path may contain `:`, and a
        // missing source is an error rather than a directory the engine creates as root.
        let mounts = spec
            .mounts
            .iter()
            .map(|m| Mount {
                typ: Some(MountType::BIND),
                source: Some(m.source.clone()),
                target: Some(m.target.clone()),
                read_only: Some(m.readonly),
                ..Mount::default()
            })
            .collect();
        let mut port_bindings = HashMap::new();
        let mut exposed = Vec::new();
        for (host, container) in &spec.ports {
            let key = format!("{container}/tcp");
            exposed.push(key.clone());
            port_bindings.insert(
                key,
                Some(vec![PortBinding {
                    // Published ports are reachable from this machine only.
                    host_ip: Some("127.0.0.1".into()),
                    host_port: Some(host.to_string()),
                }]),
            );
        }
        let network_mode = match &spec.network {
            NetworkAttachment::Network(id) => id.clone(),
            NetworkAttachment::None => "none".into(),
        };
        let host_config = HostConfig {
            mounts: Some(mounts),
            network_mode: Some(network_mode),
            port_bindings: Some(port_bindings),
            cap_drop: Some(vec!["ALL".into()]),
            cap_add: Some(spec.cap_add.clone()),
            security_opt: Some(vec!["no-new-privileges:true".into()]),
            pids_limit: Some(spec.pids_limit),
            init: Some(true),
            privileged: Some(false),
            ipc_mode: Some("private".into()),
            memory: spec.memory_bytes.map(|m| m as i64),
            nano_cpus: spec.cpus.map(|c| (c * 1e9) as i64),
            dns: spec.dns.clone(),
            log_config: Some(HostConfigLogConfig {
                typ: Some("json-file".into()),
                config: None,
            }),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: spec.command.clone(),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            working_dir: Some(spec.workdir.clone()),
            user: Some(spec.user.clone()),
            labels: Some(spec.labels.clone().into_iter().collect()),
            tty: Some(spec.tty),
            open_stdin: Some(spec.stdin),
            stdin_once: Some(spec.stdin && !spec.tty),
            attach_stdin: Some(spec.stdin),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            exposed_ports: Some(exposed),
            host_config: Some(host_config),
            ..Default::default()
        };
        let options = CreateContainerOptions {
            name: Some(spec.name.clone()),
            ..Default::default()
        };
        let created = self
            .docker
            .create_container(Some(options), body)
            .await
            .map_err(api("create container"))?;
        Ok(created.id)
    }

    async fn attach(
        &self,
        id: &str,
        stdin: bool,
        output: bool,
        detach_keys: Option<&str>,
    ) -> Result<AttachSession, RuntimeError> {
        let options = AttachContainerOptions {
            stdin,
            stdout: output,
            stderr: output,
            stream: true,
            logs: false,
            detach_keys: detach_keys.map(str::to_owned),
        };
        let results = self
            .docker
            .attach_container(id, Some(options))
            .await
            .map_err(api("attach to container"))?;
        let output = results
            .output
            .filter_map(|item| async move {
                match item {
                    Ok(LogOutput::StdOut { message }) => Some(Ok(OutputChunk {
                        stream: LogStream::Stdout,
                        bytes: message,
                    })),
                    Ok(LogOutput::StdErr { message }) => Some(Ok(OutputChunk {
                        stream: LogStream::Stderr,
                        bytes: message,
                    })),
                    Ok(LogOutput::Console { message }) => Some(Ok(OutputChunk {
                        stream: LogStream::Tty,
                        bytes: message,
                    })),
                    Ok(LogOutput::StdIn { .. }) => None,
                    Err(e) => Some(Err(api("read attached output")(e))),
                }
            })
            .boxed();
        Ok(AttachSession {
            input: results.input,
            output,
        })
    }

    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        self.docker
            .start_container(id, None)
            .await
            .map_err(api("start container"))
    }

    async fn logs(
        &self,
        id: &str,
        follow: bool,
        since: Option<DateTime<Utc>>,
    ) -> Result<BoxStream<'static, Result<LogChunk, RuntimeError>>, RuntimeError> {
        let options = LogsOptions {
            follow,
            since: since
                .and_then(|t| i32::try_from(t.timestamp()).ok())
                .unwrap_or(0),
            stdout: true,
            stderr: true,
            timestamps: true,
            tail: "all".into(),
            ..Default::default()
        };
        let stream = self
            .docker
            .logs(id, Some(options))
            .filter_map(|item| async move {
                let (stream, message) = match item {
                    Ok(LogOutput::StdOut { message }) => (LogStream::Stdout, message),
                    Ok(LogOutput::StdErr { message }) => (LogStream::Stderr, message),
                    Ok(LogOutput::Console { message }) => (LogStream::Tty, message),
                    Ok(LogOutput::StdIn { .. }) => return None,
                    Err(e) => return Some(Err(api("read container logs")(e))),
                };
                let (ts, bytes) = split_timestamp(&message);
                Some(Ok(LogChunk { ts, stream, bytes }))
            })
            .boxed();
        Ok(stream)
    }

    async fn wait(&self, id: &str) -> Result<i64, RuntimeError> {
        let mut stream = self.docker.wait_container(id, None::<WaitContainerOptions>);
        match stream.next().await {
            Some(Ok(resp)) => Ok(resp.status_code),
            // bollard reports non-zero exit codes as errors.
            Some(Err(BollardError::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(e)) if is_not_found(&e) => match self.status(id).await? {
                ContainerStatus::Exited(code) => Ok(code),
                _ => Err(api("wait for container")(e)),
            },
            Some(Err(e)) => Err(api("wait for container")(e)),
            None => match self.status(id).await? {
                ContainerStatus::Exited(code) => Ok(code),
                other => Err(RuntimeError::Api {
                    operation: "wait for container",
                    source: format!("the engine ended the wait without an exit code ({other:?})")
                        .into(),
                }),
            },
        }
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let options = StopContainerOptions {
            t: Some(i32::try_from(grace.as_secs()).unwrap_or(10)),
            signal: None,
        };
        match self.docker.stop_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            // 304: already stopped; 404: gone.
            Err(BollardError::DockerResponseServerError {
                status_code: 304 | 404,
                ..
            }) => Ok(()),
            Err(e) => Err(api("stop container")(e)),
        }
    }

    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            link: false,
        };
        match self.docker.remove_container(id, Some(options)).await {
            // Another process (a background teardown) is already removing it.
            Err(BollardError::DockerResponseServerError {
                status_code: 409,
                message,
            }) if message.contains("already in progress") => Ok(()),
            Err(e) if !is_not_found(&e) => Err(api("remove container")(e)),
            _ => Ok(()),
        }
    }

    async fn resize(&self, id: &str, rows: u16, cols: u16) -> Result<(), RuntimeError> {
        let options = ResizeContainerTTYOptions {
            h: i32::from(rows),
            w: i32::from(cols),
        };
        self.docker
            .resize_container_tty(id, options)
            .await
            .map_err(api("resize terminal"))
    }

    async fn status(&self, id: &str) -> Result<ContainerStatus, RuntimeError> {
        match self.docker.inspect_container(id, None).await {
            Ok(info) => {
                let state = info.state.unwrap_or_default();
                Ok(match state.status {
                    Some(ContainerStateStatusEnum::RUNNING)
                    | Some(ContainerStateStatusEnum::RESTARTING)
                    | Some(ContainerStateStatusEnum::PAUSED) => ContainerStatus::Running,
                    Some(ContainerStateStatusEnum::CREATED) => ContainerStatus::Created,
                    _ => ContainerStatus::Exited(state.exit_code.unwrap_or(-1)),
                })
            }
            Err(e) if is_not_found(&e) => Ok(ContainerStatus::Missing),
            Err(e) => Err(api("inspect container")(e)),
        }
    }

    async fn network_gateway(&self, id: &str) -> Result<std::net::IpAddr, RuntimeError> {
        let info = self
            .docker
            .inspect_network(id, None)
            .await
            .map_err(api("inspect network"))?;
        info.ipam
            .and_then(|ipam| ipam.config)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|c| c.gateway)
            .find_map(|g| g.split('/').next().and_then(|g| g.parse().ok()))
            .ok_or_else(|| RuntimeError::Api {
                operation: "inspect network",
                source: format!("network {id} has no gateway address").into(),
            })
    }

    async fn read_file(&self, id: &str, path: &str) -> Result<Option<Vec<u8>>, RuntimeError> {
        let options = DownloadFromContainerOptions {
            path: path.to_owned(),
        };
        let mut stream = self.docker.download_from_container(id, Some(options));
        let mut archive = Vec::new();
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(bytes) => archive.extend_from_slice(&bytes),
                Err(e) if is_not_found(&e) => return Ok(None),
                Err(e) => return Err(api("read a file from the container")(e)),
            }
        }
        let mut tar = tar::Archive::new(archive.as_slice());
        let entries = tar
            .entries()
            .map_err(|e| api_io("read a file from the container", e))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| api_io("read a file from the container", e))?;
            if entry.header().entry_type().is_file() {
                let mut data = Vec::new();
                std::io::Read::read_to_end(&mut entry, &mut data)
                    .map_err(|e| api_io("read a file from the container", e))?;
                return Ok(Some(data));
            }
        }
        Ok(None)
    }

    async fn write_files(
        &self,
        id: &str,
        files: &[(String, Vec<u8>, u32)],
    ) -> Result<(), RuntimeError> {
        let mut builder = tar::Builder::new(Vec::new());
        let mut dirs: Vec<String> = Vec::new();
        for (path, _, _) in files {
            let mut dir = String::new();
            let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
            for part in parts.iter().take(parts.len().saturating_sub(1)) {
                dir.push_str(part);
                dir.push('/');
                if !dirs.contains(&dir) {
                    dirs.push(dir.clone());
                }
            }
        }
        for dir in &dirs {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            header.set_uid(0);
            header.set_gid(0);
            builder
                .append_data(&mut header, dir, std::io::empty())
                .map_err(|e| api_io("write files into the container", e))?;
        }
        for (path, data, mode) in files {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(*mode);
            header.set_size(data.len() as u64);
            header.set_uid(0);
            header.set_gid(0);
            builder
                .append_data(&mut header, path.trim_start_matches('/'), data.as_slice())
                .map_err(|e| api_io("write files into the container", e))?;
        }
        let archive = builder
            .into_inner()
            .map_err(|e| api_io("write files into the container", e))?;
        let options = UploadToContainerOptions {
            path: "/".to_owned(),
            ..Default::default()
        };
        self.docker
            .upload_to_container(id, Some(options), bollard::body_full(archive.into()))
            .await
            .map_err(api("write files into the container"))
    }

    async fn restrict_host_access(
        &self,
        network_id: &str,
        allow: &[std::net::SocketAddr],
    ) -> Result<(), RuntimeError> {
        let bridge = bridge_name(network_id);
        let tag = rule_tag(network_id);
        // Inserted at the top in reverse order: the ACCEPTs for the proxy and relays end up
        // before the DROP.
        let drop_rule = [
            "-I",
            "INPUT",
            "1",
            "-i",
            &bridge,
            "-m",
            "comment",
            "--comment",
            &tag,
            "-j",
            "DROP",
        ];
        iptables(&drop_rule).await?;
        for addr in allow {
            let ip = addr.ip().to_string();
            let port = addr.port().to_string();
            let accept = [
                "-I",
                "INPUT",
                "1",
                "-i",
                &bridge,
                "-d",
                &ip,
                "-p",
                "tcp",
                "--dport",
                &port,
                "-m",
                "comment",
                "--comment",
                &tag,
                "-j",
                "ACCEPT",
            ];
            if let Err(e) = iptables(&accept).await {
                let _ = self.release_host_access(network_id).await;
                return Err(e);
            }
        }
        Ok(())
    }

    async fn release_host_access(&self, network_id: &str) -> Result<(), RuntimeError> {
        let tag = rule_tag(network_id);
        // Delete every INPUT rule carrying this run network's tag.
        let out = tokio::process::Command::new("iptables")
            .args(["-w", "-S", "INPUT"])
            .output()
            .await
            .map_err(|e| api_io("list host firewall rules", e))?;
        let listing = String::from_utf8_lossy(&out.stdout);
        for rule in listing.lines().filter(|l| l.contains(&tag)) {
            let Some(spec) = rule.strip_prefix("-A ") else {
                continue;
            };
            let mut args = vec!["-D"];
            args.extend(split_rule(spec));
            let _ = iptables(&args).await;
        }
        Ok(())
    }

    async fn objects_of_run(&self, run_id: &str) -> Result<RunObjects, RuntimeError> {
        let filters =
            HashMap::from([("label".to_owned(), vec![format!("{LABEL_RUN_ID}={run_id}")])]);
        let containers = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters.clone()),
                ..Default::default()
            }))
            .await
            .map_err(api("list containers"))?
            .into_iter()
            .filter_map(|c| c.id)
            .collect();
        let networks = self
            .docker
            .list_networks(Some(ListNetworksOptions {
                filters: Some(filters),
            }))
            .await
            .map_err(api("list networks"))?
            .into_iter()
            .filter_map(|n| n.id)
            .collect();
        Ok(RunObjects {
            containers,
            networks,
        })
    }
}

/// The Linux bridge Docker creates for a user-defined network.
fn bridge_name(network_id: &str) -> String {
    format!("br-{}", network_id.get(..12).unwrap_or(network_id))
}

fn rule_tag(network_id: &str) -> String {
    format!("moat:{}", network_id.get(..12).unwrap_or(network_id))
}

/// Splits an `iptables -S` rule into arguments (quoted comments included).
fn split_rule(spec: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = spec.trim();
    while !rest.is_empty() {
        if let Some(quoted) = rest.strip_prefix('"') {
            let end = quoted.find('"').unwrap_or(quoted.len());
            out.push(&quoted[..end]);
            rest = quoted.get(end + 1..).unwrap_or("").trim_start();
        } else {
            let end = rest.find(' ').unwrap_or(rest.len());
            out.push(&rest[..end]);
            rest = rest[end..].trim_start();
        }
    }
    out
}

async fn iptables(args: &[&str]) -> Result<(), RuntimeError> {
    let out = tokio::process::Command::new("iptables")
        .arg("-w")
        .args(args)
        .output()
        .await
        .map_err(|e| RuntimeError::Unsupported {
            runtime: "docker",
            reason: format!(
                "strict network policy needs `iptables` to keep the run away from host services, and it cannot run ({e}); install iptables and run moat as root, or use `--policy permissive`"
            ),
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(RuntimeError::Unsupported {
            runtime: "docker",
            reason: format!(
                "strict network policy needs to firewall host services from the run, and iptables refused ({}); run moat as root, or use `--policy permissive`",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        })
    }
}

/// Splits `repo[:tag]` (a registry port is not a tag); digests are kept whole.
fn split_image(image: &str) -> (&str, &str) {
    if image.contains('@') {
        return (image, "");
    }
    match image.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, tag),
        _ => (image, "latest"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iptables_rules_are_split_like_the_shell() {
        assert_eq!(
            split_rule("INPUT -i br-0123 -m comment --comment \"moat:0123\" -j DROP"),
            [
                "INPUT",
                "-i",
                "br-0123",
                "-m",
                "comment",
                "--comment",
                "moat:0123",
                "-j",
                "DROP"
            ]
        );
        assert_eq!(bridge_name("0123456789abcdef"), "br-0123456789ab");
    }

    #[test]
    fn image_split() {
        assert_eq!(split_image("debian"), ("debian", "latest"));
        assert_eq!(split_image("debian:bookworm"), ("debian", "bookworm"));
        assert_eq!(
            split_image("localhost:5000/x"),
            ("localhost:5000/x", "latest")
        );
        assert_eq!(split_image("localhost:5000/x:1"), ("localhost:5000/x", "1"));
    }

    #[test]
    fn timestamps_are_split_from_frames() {
        let (ts, rest) = split_timestamp(&Bytes::from_static(
            b"2026-11-25T15:04:05.123456789Z hello world\n",
        ));
        assert_eq!(ts.to_rfc3339(), "2026-11-25T15:04:05.123456789+00:00");
        assert_eq!(&rest[..], b"hello world\n");
        let (_, rest) = split_timestamp(&Bytes::from_static(b"no timestamp"));
        assert_eq!(&rest[..], b"no timestamp");
    }
}
