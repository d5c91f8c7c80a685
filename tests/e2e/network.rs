//! Credentials injected at the network layer, strict egress and `moat trace`, against local
//! HTTPS servers impersonating the real hosts (SPEC promises 1–4).

use std::process::Output;

use moat_e2e::TestEnv;
use moat_e2e::docker_inspect;
use moat_e2e::require_docker;
use moat_e2e::text;
use moat_e2e::upstream::Reply;
use moat_e2e::upstream::TlsUpstream;

const TOKEN: &str = "ghp_e2eNetworkToken0123456789abcdefghijk";

/// api.github.com: `/user` answers only the real token; `/echo` reflects the request headers.
fn github() -> TlsUpstream {
    TlsUpstream::start(&["api.github.com", "uploads.github.com"], |req| {
        let auth = req
            .headers
            .get("authorization")
            .cloned()
            .unwrap_or_default();
        match req.path.split('?').next().unwrap_or_default() {
            "/user" if auth == format!("Bearer {TOKEN}") => {
                Reply::json(200, &serde_json::json!({"login": "octocat", "id": 1}))
            }
            "/echo" => Reply::json(200, &serde_json::json!({ "headers": req.headers })),
            _ => Reply::json(401, &serde_json::json!({"message": "Bad credentials"})),
        }
    })
}

struct Net {
    env: TestEnv,
    gh: TlsUpstream,
}

impl Net {
    fn new() -> Self {
        let env = TestEnv::new();
        let gh = github();
        let net = Self { env, gh };
        let out = net
            .moat(&["grant", "github"])
            .env("GITHUB_TOKEN", TOKEN)
            .output()
            .unwrap();
        assert!(out.status.success(), "grant: {}", text(&out.stderr));
        net
    }

    fn moat(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = self.env.moat(args);
        cmd.env(
            "MOAT_RESOLVE",
            self.gh.resolve(&["api.github.com", "uploads.github.com"]),
        )
        .env("MOAT_UPSTREAM_CA", &self.gh.ca_path)
        .env("MOAT_KEYRING", "file")
        .env_remove("GITHUB_TOKEN")
        .env_remove("GH_TOKEN");
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.moat(args).output().unwrap()
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[test]
fn the_readme_example_works_verbatim() {
    require_docker();
    let net = Net::new();
    // moat run --grant github -- curl -s https://api.github.com/user
    let out = net.run(&[
        "run",
        "--grant",
        "github",
        "--",
        "curl",
        "-s",
        "https://api.github.com/user",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let user: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(user["login"], "octocat");

    // moat run --grant github -- env | grep -i token   (placeholders only)
    let out = net.run(&["run", "--grant", "github", "--", "env"]);
    let env = text(&out.stdout);
    let tokens: Vec<&str> = env
        .lines()
        .filter(|l| l.to_lowercase().contains("token"))
        .collect();
    assert!(!tokens.is_empty(), "placeholders are set: {env}");
    for line in &tokens {
        let value = line.split_once('=').unwrap().1;
        assert!(
            value.starts_with("ghp_") && value.len() == 40,
            "format-valid placeholder: {line}"
        );
        assert_ne!(value, TOKEN);
    }
    assert!(!env.contains(TOKEN));

    // moat trace --network
    let out = net.run(&["trace", "--network", &first_run_id(&net.env)]);
    let trace = text(&out.stdout);
    let line = trace.lines().next().unwrap_or_default();
    let (ts, rest) = line.split_once(' ').unwrap();
    assert!(
        ts.starts_with('[') && ts.ends_with(']') && ts.len() == 14,
        "{line}"
    );
    assert!(
        rest.starts_with("GET https://api.github.com/user 200 ("),
        "{line}"
    );
    assert!(rest.contains("ms)"), "{line}");
    // The upstream saw the real token.
    assert!(net.gh.requests().iter().any(|r| {
        r.path == "/user"
            && r.headers.get("authorization").map(String::as_str)
                == Some(&format!("Bearer {TOKEN}"))
    }));
}

#[test]
fn requests_are_traced_while_the_run_is_live() {
    require_docker();
    let net = Net::new();
    let out = net.run(&[
        "run",
        "-d",
        "-n",
        "live",
        "--grant",
        "github",
        "--",
        "sh",
        "-c",
        "curl -s https://api.github.com/user >/dev/null; sleep 300",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let trace = text(&net.run(&["trace", "--network", "live"]).stdout);
        if trace.contains("GET https://api.github.com/user 200") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no live trace: {trace}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(
        net.env.run_json("live")["state"],
        "running",
        "recorded before exit"
    );
    assert!(net.run(&["stop", "live"]).status.success());
}

#[test]
fn concurrent_requests_are_all_injected_recorded_and_audited() {
    require_docker();
    let net = Net::new();
    // 40 requests in parallel from one run, each answered only with the real token.
    let out = net.run(&[
        "run",
        "-n",
        "many",
        "--grant",
        "github",
        "--",
        "sh",
        "-c",
        "for i in $(seq 40); do curl -s -o /dev/null -w '%{http_code}\\n' \
         https://api.github.com/user?i=$i & done; wait",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let codes = text(&out.stdout);
    assert_eq!(codes.lines().filter(|l| *l == "200").count(), 40, "{codes}");
    // One record per request in network.jsonl, none lost, each with the grant.
    let out = net.run(&["trace", "--network", "--json", "many"]);
    let records: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut urls: Vec<String> = records
        .iter()
        .filter(|r| r["status"] == 200 && r["grant"] == "github")
        .map(|r| r["url"].as_str().unwrap_or_default().to_owned())
        .collect();
    urls.sort();
    urls.dedup();
    assert_eq!(urls.len(), 40, "{records:?}");
    // And one signed audit event per request (plus one per injection), the log intact.
    let out = net.run(&["audit", "--json", "many"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["verdict"], "intact", "{report}");
    assert_eq!(report["event_types"]["network.request"], 40, "{report}");
    assert_eq!(report["event_types"]["credential.injected"], 40, "{report}");
}

#[test]
fn internal_destinations_are_refused_by_the_proxy_even_when_policy_allows_all() {
    require_docker();
    let env = TestEnv::new();
    // A permissive run: policy allows every host, the destination guard still refuses cloud
    // metadata, the run's gateway (this host) and private addresses, over HTTP and HTTPS.
    let out = env.run(&[
        "run",
        "--",
        "sh",
        "-c",
        "GW=$(ip route | awk '/default/ {print $3}'); \
         for url in http://169.254.169.254/latest/meta-data/ http://$GW:22/ https://10.1.2.3/; do \
           curl -s -D - -o /dev/null \"$url\" | tr -d '\\r' | grep -i '^x-moat-blocked'; \
         done",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert_eq!(
        shown
            .lines()
            .filter(|l| l.eq_ignore_ascii_case("x-moat-blocked: destination-not-allowed"))
            .count(),
        3,
        "{shown}"
    );
    let records = text(&env.run(&["trace", "--network", "--json"]).stdout);
    let denied = records
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["decision"] == "denied" && r["reason"] == "destination-not-allowed")
        .count();
    assert_eq!(denied, 3, "{records}");
}

#[test]
fn config_yaml_settings_apply_and_the_environment_wins() {
    require_docker();
    let env = TestEnv::new();
    let gh = github();
    // Everything from config.yaml: upstream overrides and trust, and a default image that
    // does not exist.
    std::fs::write(
        env.home.path().join("config.yaml"),
        format!(
            "default_image: moat-no-such-image:x\nkeyring: file\nproxy:\n  resolve: [\"{}\"]\n  upstream_ca: {}\n",
            gh.resolve(&["api.github.com"]),
            gh.ca_path.display()
        ),
    )
    .unwrap();
    let moat = |args: &[&str]| {
        let mut cmd = env.moat(args);
        cmd.env_remove("MOAT_RESOLVE")
            .env_remove("MOAT_UPSTREAM_CA")
            .env_remove("MOAT_KEYRING")
            .env_remove("GITHUB_TOKEN")
            .env_remove("GH_TOKEN");
        cmd
    };
    // Grant validation reaches the impersonated host through config.yaml's overrides.
    let out = moat(&["grant", "github"])
        .env("GITHUB_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    // MOAT_DEFAULT_IMAGE (set by the harness) wins over config.yaml's image; the proxy uses
    // config.yaml's overrides too.
    let out = moat(&[
        "run",
        "--grant",
        "github",
        "--",
        "curl",
        "-s",
        "https://api.github.com/user",
    ])
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("octocat"),
        "{}",
        text(&out.stdout)
    );
    // Without the variable, config.yaml's image is the one asked for.
    let out = moat(&["run", "--", "true"])
        .env_remove("MOAT_DEFAULT_IMAGE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("moat-no-such-image"),
        "{}",
        text(&out.stderr)
    );
    // MOAT_RESOLVE wins over config.yaml's overrides: pointed at nothing, the request fails.
    let out = moat(&[
        "run",
        "--grant",
        "github",
        "--",
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "https://api.github.com/user",
    ])
    .env("MOAT_RESOLVE", "api.github.com:443=127.0.0.1:9")
    .output()
    .unwrap();
    assert_eq!(text(&out.stdout), "502", "{}", text(&out.stderr));
}

fn first_run_id(env: &TestEnv) -> String {
    env.list().into_iter().next().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn the_real_token_never_reaches_the_container() {
    require_docker();
    let net = Net::new();
    let script = "env > /workspace/env.txt; cat /proc/*/environ > /workspace/proc-environ.txt 2>/dev/null; \
                  cat /proc/*/cmdline > /workspace/proc-cmdline.txt 2>/dev/null; \
                  curl -s https://api.github.com/echo > /workspace/echo.json; \
                  curl -s -H 'Authorization: Bearer '$GH_TOKEN https://api.github.com/user > /workspace/user.json; \
                  cat /workspace/echo.json";
    let out = net.run(&[
        "run", "-n", "leak", "--keep", "--grant", "github", "--", "sh", "-c", script,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The placeholder the container sent was replaced upstream.
    let user = std::fs::read_to_string(net.env.ws.path().join("user.json")).unwrap();
    assert!(
        user.contains("octocat"),
        "placeholder replaced by the real token: {user}"
    );
    // The upstream reflected the injected header back: it must be scrubbed.
    assert!(net.gh.requests().iter().any(|r| {
        r.path == "/echo"
            && r.headers
                .get("authorization")
                .is_some_and(|a| a.contains(TOKEN))
    }));
    let echo = std::fs::read(net.env.ws.path().join("echo.json")).unwrap();
    assert!(
        !contains(&echo, TOKEN),
        "reflected token scrubbed: {}",
        text(&echo)
    );
    for f in [
        "env.txt",
        "proc-environ.txt",
        "proc-cmdline.txt",
        "echo.json",
        "user.json",
    ] {
        let bytes = std::fs::read(net.env.ws.path().join(f)).unwrap();
        assert!(!contains(&bytes, TOKEN), "token in container {f}");
    }
    assert!(!contains(&out.stdout, TOKEN));

    let run = net.env.run_json("leak");
    let container = run["container_id"].as_str().unwrap();
    let inspect = std::process::Command::new("docker")
        .args(["inspect", container])
        .output()
        .unwrap();
    assert!(inspect.status.success());
    assert!(!contains(&inspect.stdout, TOKEN), "token in docker inspect");
    // The container's whole filesystem.
    let export = std::process::Command::new("docker")
        .args(["export", container])
        .output()
        .unwrap();
    assert!(export.status.success());
    assert!(export.stdout.len() > 1_000_000);
    assert!(
        !contains(&export.stdout, TOKEN),
        "token in the container filesystem"
    );
    // moat's own records of the run.
    let dir = net.env.run_dir(run["id"].as_str().unwrap());
    for f in ["logs.jsonl", "network.jsonl", "metadata.json", "audit.db"] {
        let bytes = std::fs::read(dir.join(f)).unwrap_or_default();
        assert!(!contains(&bytes, TOKEN), "token in {f}");
    }
    let network = std::fs::read_to_string(dir.join("network.jsonl")).unwrap();
    assert!(
        network.contains("[REDACTED]"),
        "credential headers are redacted: {network}"
    );
    assert!(network.contains("\"grant\":\"github\""), "{network}");
    let out = net.run(&["destroy", "leak"]);
    assert!(out.status.success());
    assert!(docker_inspect(container).is_none());
}

#[test]
fn strict_policy_allows_only_the_proxy_and_listed_hosts() {
    require_docker();
    let net = Net::new();
    // A host service on all interfaces: the run must not reach it directly.
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            drop(s);
        }
    });
    // A host UDP service too: no datagram may arrive from a strict run.
    let udp = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    let udp_port = udp.local_addr().unwrap().port();
    udp.set_read_timeout(Some(std::time::Duration::from_millis(500)))
        .unwrap();
    // The very first instruction of the container tries to get out directly.
    let out = net.run(&[
        "run",
        "--policy",
        "strict",
        "--grant",
        "github",
        "--",
        "curl",
        "-s",
        "-m",
        "3",
        "--noproxy",
        "*",
        &format!("http://172.17.0.1:{port}/"),
    ]);
    assert_ne!(
        out.status.code(),
        Some(0),
        "first instruction escaped: {}",
        text(&out.stdout)
    );

    let script = format!(
        "GW=$(echo $HTTP_PROXY | sed 's/.*@//; s/:.*//'); \
         echo api=$(curl -s -o /dev/null -w '%{{http_code}}' https://api.github.com/user); \
         echo unlisted=$(curl -s -o /dev/null -w '%{{http_connect}}' https://example.com/); \
         echo fronted=$(curl -s -o /dev/null -w '%{{http_code}}' -H 'Host: evil.example' https://api.github.com/user); \
         echo hostsvc=$(curl -s -m 3 --noproxy '*' -o /dev/null -w '%{{http_code}}' http://$GW:{port}/ || echo fail); \
         echo viaproxy-gw=$(curl -s -m 3 -x $HTTP_PROXY -o /dev/null -w '%{{http_code}}' http://$GW:{port}/); \
         echo metadata=$(curl -s -m 3 -x $HTTP_PROXY -o /dev/null -w '%{{http_code}}' http://169.254.169.254/latest/meta-data/); \
         echo loopback=$(curl -s -m 3 --noproxy '' -x $HTTP_PROXY -o /dev/null -w '%{{http_code}}' http://127.0.0.1:{port}/); \
         getent hosts deb.debian.org >/dev/null && echo dns=ok || echo dns=fail; \
         echo v6routes=$(ip -6 route show default | wc -l); \
         for h in $GW 172.17.0.1; do echo udp | nc -u -w1 $h {udp_port}; done; \
         curl -s -m 3 --noproxy '*' http://172.17.0.1:{port}/ -o /dev/null && echo direct=ok || echo direct=fail",
    );
    let out = net.run(&[
        "run", "-n", "strict", "--policy", "strict", "--grant", "github", "--", "sh", "-c", &script,
    ]);
    let stdout = text(&out.stdout);
    for expected in [
        "api=200",
        "unlisted=403",
        "hostsvc=000fail",
        "viaproxy-gw=403",
        "metadata=403",
        "loopback=403",
        "dns=fail",
        "v6routes=0",
        "direct=fail",
    ] {
        assert!(
            stdout.contains(expected),
            "{expected} missing:\n{stdout}\n{}",
            text(&out.stderr)
        );
    }
    assert!(
        !stdout.contains("fronted=200"),
        "domain fronting must be refused:\n{stdout}"
    );
    let mut buf = [0u8; 16];
    assert!(
        udp.recv_from(&mut buf).is_err(),
        "a UDP datagram escaped the strict run"
    );
    // No request with another Host got the token.
    assert!(net.gh.requests().iter().all(|r| {
        r.headers
            .get("host")
            .is_none_or(|h| h.starts_with("api.github.com"))
    }));

    // `moat trace --network --json` records each denial with its reason.
    let out = net.run(&["trace", "--network", "--json", "strict"]);
    let records: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let denied: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["decision"] == "denied")
        .collect();
    assert!(denied.len() >= 4, "{records:?}");
    assert!(
        denied
            .iter()
            .all(|r| r["reason"].as_str().is_some_and(|s| !s.is_empty()))
    );
    assert!(denied.iter().any(|r| r["host"] == "example.com"));
    assert!(denied.iter().any(|r| r["host"] == "169.254.169.254"));

    // The same DNS lookup and UDP datagram work under permissive policy, so the strict
    // results are meaningful.
    let script = format!(
        "getent hosts deb.debian.org >/dev/null && echo dns=ok; \
         echo udp | nc -u -w1 172.17.0.1 {udp_port}"
    );
    let out = net.run(&["run", "--", "sh", "-c", &script]);
    assert!(
        text(&out.stdout).contains("dns=ok"),
        "{}",
        text(&out.stdout)
    );
    assert!(
        udp.recv_from(&mut buf).is_ok(),
        "the permissive control datagram did not arrive"
    );
}

#[test]
fn missing_and_unknown_grants_stop_the_run_before_anything_is_created() {
    let env = TestEnv::new();
    let out = env
        .moat(&[
            "run", "--grant", "github", "--grant", "openai", "--", "true",
        ])
        .env("MOAT_KEYRING", "file")
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(
        stderr.contains("moat grant github") && stderr.contains("moat grant openai"),
        "{stderr}"
    );
    let out = env
        .moat(&["run", "--grant", "nosuch", "--", "true"])
        .env("MOAT_KEYRING", "file")
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(
        stderr.contains("anthropic") && stderr.contains("github"),
        "{stderr}"
    );
    assert!(env.run_dirs().is_empty());
}
