//! SSH grants end to end: real OpenSSH on both sides. An sshd in a container of its own stands
//! in for the git host; the host's agent holds two keys; the run's agent proxy signs only for
//! the granted host's key.

use std::path::Path;
use std::process::Command;

use moat_e2e::TestEnv;
use moat_e2e::docker_quiet;
use moat_e2e::require_docker;
use moat_e2e::test_image;
use moat_e2e::text;

/// A running sshd container that accepts `authorized` for root.
struct Sshd {
    name: String,
    port: u16,
    host_key: String,
}

impl Sshd {
    fn start(tag: &str, authorized: &str) -> Self {
        let name = format!("moat-e2e-sshd-{tag}-{}", std::process::id());
        let script = format!(
            "rm -f /etc/ssh/ssh_host_* && ssh-keygen -A >/dev/null && mkdir -p /run/sshd /root/.ssh && \
             printf '%s\\n' '{authorized}' > /root/.ssh/authorized_keys && \
             chmod 600 /root/.ssh/authorized_keys && exec /usr/sbin/sshd -D -e"
        );
        let out = Command::new("docker")
            .args([
                "run",
                "-d",
                "--rm",
                "--name",
                &name,
                "-p",
                "0:22",
                &test_image(),
                "sh",
                "-c",
                &script,
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "sshd: {}", text(&out.stderr));
        let mut host_key = String::new();
        for _ in 0..100 {
            host_key = docker_quiet(&["exec", &name, "cat", "/etc/ssh/ssh_host_ed25519_key.pub"]);
            if !host_key.trim().is_empty()
                && !docker_quiet(&["exec", &name, "pgrep", "sshd"]).is_empty()
            {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let port_line = docker_quiet(&["port", &name, "22/tcp"]);
        let port = port_line
            .lines()
            .next()
            .and_then(|l| l.rsplit(':').next())
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("no published port: {port_line}"));
        let host_key = host_key
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        Self {
            name,
            port,
            host_key,
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        docker_quiet(&["rm", "-f", &self.name]);
    }
}

/// A throwaway ssh-agent holding an ed25519 and an RSA key.
struct Agent {
    dir: tempfile::TempDir,
    pid: String,
    sock: String,
}

impl Agent {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("agent.sock").display().to_string();
        let out = Command::new("ssh-agent")
            .args(["-a", &sock, "-s"])
            .output()
            .unwrap();
        let stdout = text(&out.stdout);
        let pid = stdout
            .split(';')
            .find_map(|p| p.trim().strip_prefix("SSH_AGENT_PID="))
            .unwrap()
            .to_owned();
        for (kind, file) in [("ed25519", "id_ed25519"), ("rsa", "id_rsa")] {
            let path = dir.path().join(file);
            let mut keygen = Command::new("ssh-keygen");
            keygen.args(["-q", "-t", kind, "-N", "", "-f"]).arg(&path);
            if kind == "rsa" {
                keygen.args(["-b", "2048"]);
            }
            assert!(keygen.status().unwrap().success());
            let add = Command::new("ssh-add")
                .arg(&path)
                .env("SSH_AUTH_SOCK", &sock)
                .output()
                .unwrap();
            assert!(add.status.success(), "{}", text(&add.stderr));
        }
        Self { dir, pid, sock }
    }

    fn pub_key(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{file}.pub")))
            .unwrap()
            .trim()
            .to_owned()
    }

    fn pub_path(&self, file: &str) -> String {
        self.dir
            .path()
            .join(format!("{file}.pub"))
            .display()
            .to_string()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(&self.pid).status();
    }
}

fn known_hosts(dir: &Path, entries: &[(&str, &Sshd)]) -> String {
    let path = dir.join("known_hosts");
    let text: String = entries
        .iter()
        .map(|(h, s)| format!("{h} {}\n", s.host_key))
        .collect();
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn signing_is_bound_to_the_granted_host() {
    require_docker();
    let env = TestEnv::new();
    let agent = Agent::start();
    let authorized = format!(
        "{}\n{}",
        agent.pub_key("id_ed25519"),
        agent.pub_key("id_rsa")
    );
    let git = Sshd::start("git", &authorized);
    let other = Sshd::start("other", &authorized);
    let kh = known_hosts(
        env.ws.path(),
        &[("gitserver", &git), ("otherserver", &other)],
    );

    let grant = |key: &str| {
        let out = env
            .moat(&[
                "grant",
                "ssh",
                "--host",
                "gitserver",
                "--key",
                &agent.pub_path(key),
                "--known-hosts",
                &kh,
            ])
            .env("SSH_AUTH_SOCK", &agent.sock)
            .output()
            .unwrap();
        assert!(out.status.success(), "grant ssh: {}", text(&out.stderr));
    };
    grant("id_ed25519");
    let listed = text(&env.run(&["grant", "list"]).stdout);
    assert!(listed.contains("ssh:gitserver"), "{listed}");

    let script = format!(
        "GW=$(ip route | awk '/default/ {{print $3}}'); \
         echo KEYS; ssh-add -l; \
         ssh -o BatchMode=yes -o HostKeyAlias=gitserver -p {} root@$GW 'echo granted-ok'; \
         echo granted-exit=$?; \
         ssh -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
             -o HostKeyAlias=otherserver -p {} root@$GW 'echo other-ok'; \
         echo other-exit=$?",
        git.port, other.port
    );
    let out = env
        .moat(&[
            "run",
            "-n",
            "ssh1",
            "-g",
            "ssh:gitserver",
            "--",
            "sh",
            "-c",
            &script,
        ])
        .env("SSH_AUTH_SOCK", &agent.sock)
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    let keys: Vec<&str> = stdout
        .split("KEYS\n")
        .nth(1)
        .unwrap()
        .lines()
        .take_while(|l| l.starts_with("256 ") || l.starts_with("2048 ") || l.contains("SHA256:"))
        .collect();
    assert_eq!(keys.len(), 1, "only the granted key is listed: {stdout}");
    assert!(keys[0].contains("ED25519"), "{stdout}");
    assert!(
        stdout.contains("granted-ok") && stdout.contains("granted-exit=0"),
        "{stdout}\n{stderr}"
    );
    assert!(
        !stdout.contains("other-ok") && stdout.contains("other-exit=255"),
        "{stdout}\n{stderr}"
    );

    // Every list and sign is in the audit log, allowed or denied, with the bound host.
    let report = env.run(&["audit", "--json", "ssh1"]);
    let report: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    assert!(
        report["event_types"]["ssh.list"].as_u64().unwrap_or(0) >= 1,
        "{report}"
    );
    assert!(
        report["event_types"]["ssh.sign"].as_u64().unwrap_or(0) >= 2,
        "{report}"
    );
    let run = env.run_json("ssh1");
    let log =
        std::fs::read_to_string(env.run_dir(run["id"].as_str().unwrap()).join("audit.db")).unwrap();
    assert!(log.contains("gitserver"), "bound host recorded");
    assert!(
        log.contains("\"decision\":\"allowed\"") && log.contains("\"denial\":\"host_not_granted\""),
        "{log}"
    );

    // An RSA key signs with SHA-2 (never ssh-rsa/SHA-1).
    grant("id_rsa");
    let script = format!(
        "GW=$(ip route | awk '/default/ {{print $3}}'); \
         ssh -o BatchMode=yes -o HostKeyAlias=gitserver -p {} root@$GW 'echo rsa-ok'",
        git.port
    );
    let out = env
        .moat(&[
            "run",
            "-n",
            "ssh2",
            "-g",
            "ssh:gitserver",
            "--",
            "sh",
            "-c",
            &script,
        ])
        .env("SSH_AUTH_SOCK", &agent.sock)
        .output()
        .unwrap();
    assert!(
        text(&out.stdout).contains("rsa-ok"),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let run = env.run_json("ssh2");
    let log =
        std::fs::read_to_string(env.run_dir(run["id"].as_str().unwrap()).join("audit.db")).unwrap();
    assert!(log.contains("rsa-sha2-"), "{log}");
}

#[test]
fn a_missing_agent_or_grant_stops_the_run_before_it_starts() {
    let env = TestEnv::new();
    let out = env
        .moat(&["run", "-g", "ssh:gitserver", "--", "true"])
        .env_remove("SSH_AUTH_SOCK")
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(
        stderr.contains("moat grant ssh --host gitserver"),
        "{stderr}"
    );
    assert!(env.run_dirs().is_empty());
}

#[test]
fn a_granted_run_without_a_live_agent_stops_before_it_starts() {
    require_docker();
    let env = TestEnv::new();
    let agent = Agent::start();
    // Any valid key serves as the pinned host key here: no host is contacted.
    let kh = env.ws.path().join("known_hosts");
    std::fs::write(&kh, format!("gitserver {}\n", agent.pub_key("id_ed25519"))).unwrap();
    let out = env
        .moat(&[
            "grant",
            "ssh",
            "--host",
            "gitserver",
            "--key",
            &agent.pub_path("id_ed25519"),
            "--known-hosts",
            kh.to_str().unwrap(),
        ])
        .env("SSH_AUTH_SOCK", &agent.sock)
        .output()
        .unwrap();
    assert!(out.status.success(), "grant ssh: {}", text(&out.stderr));
    // A socket file whose agent is gone.
    let stale = env.ws.path().join("dead-agent.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    for (sock, says) in [
        (None, "SSH_AUTH_SOCK"),
        (Some(&stale), "no SSH agent answers"),
    ] {
        let mut cmd = env.moat(&["run", "-g", "ssh:gitserver", "--", "true"]);
        match sock {
            Some(s) => cmd.env("SSH_AUTH_SOCK", s),
            None => cmd.env_remove("SSH_AUTH_SOCK"),
        };
        let out = cmd.output().unwrap();
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{stderr}");
        assert!(stderr.contains(says), "{stderr}");
        assert!(stderr.contains("ssh-agent"), "{stderr}");
        assert!(env.run_dirs().is_empty(), "{stderr}");
    }
}

#[test]
fn ssh_to_a_granted_host_works_under_strict_policy_and_nothing_else_does() {
    require_docker();
    let env = TestEnv::new();
    let agent = Agent::start();
    let git = Sshd::start("strict", &agent.pub_key("id_ed25519"));
    let kh = known_hosts(env.ws.path(), &[("gitserver", &git)]);
    let out = env
        .moat(&[
            "grant",
            "ssh",
            "--host",
            "gitserver",
            "--key",
            &agent.pub_path("id_ed25519"),
            "--known-hosts",
            &kh,
        ])
        .env("SSH_AUTH_SOCK", &agent.sock)
        .output()
        .unwrap();
    assert!(out.status.success(), "grant ssh: {}", text(&out.stderr));
    // No user configuration inside: moat routes the granted host through its relay.
    let script = format!(
        "GW=$(echo $HTTP_PROXY | sed 's/.*@//; s/:.*//'); \
         ssh -o BatchMode=yes root@gitserver 'echo strict-ok'; echo granted-exit=$?; \
         ssh -o BatchMode=yes -o ConnectTimeout=3 -o StrictHostKeyChecking=no -p {} root@$GW true; \
         echo direct-exit=$?; \
         ssh -o BatchMode=yes -o ConnectTimeout=3 root@otherhost true; echo other-exit=$?",
        git.port
    );
    let out = env
        .moat(&[
            "run",
            "-n",
            "sshstrict",
            "--policy",
            "strict",
            "-g",
            "ssh:gitserver",
            "--",
            "sh",
            "-c",
            &script,
        ])
        .env("SSH_AUTH_SOCK", &agent.sock)
        .env(
            "MOAT_RESOLVE",
            format!("gitserver:22=127.0.0.1:{}", git.port),
        )
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("strict-ok") && stdout.contains("granted-exit=0"),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    assert!(stdout.contains("direct-exit=255"), "{stdout}");
    assert!(stdout.contains("other-exit=255"), "{stdout}");
    let trace = text(&env.run(&["trace", "--network", "sshstrict"]).stdout);
    assert!(trace.contains("SSH ssh://gitserver:22"), "{trace}");
}
