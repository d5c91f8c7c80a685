//! `moat run` in the foreground: streams, exit codes, logs, ownership, hardening.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::process::Stdio;

use moat_e2e::TestEnv;
use moat_e2e::docker_inspect;
use moat_e2e::require_docker;
use moat_e2e::text;

#[test]
fn streams_exit_code_logs_and_list() {
    require_docker();
    let env = TestEnv::new();
    let out = env.run(&[
        "run",
        "-n",
        "streams",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 7",
    ]);
    assert_eq!(out.status.code(), Some(7), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "out\n");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("err\n"), "stderr: {stderr}");
    assert!(
        !stderr.contains("out\n"),
        "stdout leaked to stderr: {stderr}"
    );

    let logs = env.run(&["logs", "streams"]);
    assert!(logs.status.success());
    let logs = text(&logs.stdout);
    let mut lines: Vec<&str> = logs.lines().collect();
    assert_eq!(lines.len(), 2, "{logs}");
    // `2026-11-25T15:04:05.123Z stdout out`; the two streams are not ordered among each other.
    lines.sort_by_key(|l| l.contains("stderr"));
    for (line, stream, content) in [(lines[0], "stdout", "out"), (lines[1], "stderr", "err")] {
        let (ts, rest) = line.split_once(' ').unwrap();
        assert!(
            ts.len() == 24 && ts.ends_with('Z') && ts.contains('T'),
            "{line}"
        );
        assert_eq!(
            rest.split_whitespace().collect::<Vec<_>>(),
            [stream, content]
        );
    }

    let run = env.run_json("streams");
    assert_eq!(run["exit_code"], 7);
    assert_eq!(run["state"], "exited");
    assert!(run["id"].as_str().unwrap().starts_with("run_"));

    // logs.jsonl carries the source timestamps and stream tags.
    let dir = env.run_dir(run["id"].as_str().unwrap());
    let jsonl = std::fs::read_to_string(dir.join("logs.jsonl")).unwrap();
    let records: Vec<serde_json::Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let out_record = records.iter().find(|r| r["stream"] == "stdout").unwrap();
    assert_eq!(out_record["line"], "out");
    assert!(out_record["ts"].as_str().unwrap().starts_with("20"));
    assert!(
        records
            .iter()
            .any(|r| r["stream"] == "stderr" && r["line"] == "err")
    );

    // The container and network are removed (no --keep), right after moat returns.
    assert!(moat_e2e::wait_gone(run["container_id"].as_str().unwrap()));
    assert!(moat_e2e::wait_gone(run["network_id"].as_str().unwrap()));
}

#[test]
fn signal_exit_code_is_128_plus_n() {
    require_docker();
    let env = TestEnv::new();
    let out = env.run(&["run", "--", "sh", "-c", "kill -KILL $$"]);
    assert_eq!(
        out.status.code(),
        Some(137),
        "stderr: {}",
        text(&out.stderr)
    );
}

#[test]
fn long_lines_are_kept_whole_and_nothing_is_dropped() {
    require_docker();
    let env = TestEnv::new();
    // 100 KB line (Docker splits at 16 KB), then 2000 short lines, then an unterminated tail.
    let script = "head -c 100000 /dev/zero | tr '\\0' a; echo; \
                  i=0; while [ $i -lt 2000 ]; do echo line$i; i=$((i+1)); done; printf tail";
    let out = env.run(&["run", "-n", "long", "--", "sh", "-c", script]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert_eq!(
        out.stdout.len(),
        100_001 + (0..2000).map(|i| format!("line{i}\n").len()).sum::<usize>() + 4
    );
    let run = env.run_json("long");
    let dir = env.run_dir(run["id"].as_str().unwrap());
    let jsonl = std::fs::read_to_string(dir.join("logs.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2002);
    assert_eq!(lines[0]["line"].as_str().unwrap().len(), 100_000);
    assert_eq!(lines[1000]["line"], "line999");
    assert_eq!(lines[2001]["line"], "tail");
}

#[test]
fn stdin_is_forwarded_with_interactive() {
    require_docker();
    let env = TestEnv::new();
    let mut child = env
        .moat(&[
            "run",
            "-i",
            "--",
            "sh",
            "-c",
            "read a; read b; echo got:$a:$b",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"hello\nworld\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "got:hello:world\n");
}

#[test]
fn workspace_is_mounted_and_files_belong_to_its_owner() {
    require_docker();
    let env = TestEnv::new();
    std::fs::write(env.ws.path().join("input.txt"), "from host\n").unwrap();
    // A workspace owned by someone other than the invoking user: the container runs as its
    // owner, so files it creates belong to that owner on the host.
    std::os::unix::fs::chown(env.ws.path(), Some(4242), Some(4343)).unwrap();
    let out = env.run(&[
        "run",
        "--",
        "sh",
        "-c",
        "cat /workspace/input.txt; id -u; id -g; echo made > /workspace/made.txt; pwd",
    ]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "from host\n4242\n4343\n/workspace\n");
    let meta = std::fs::metadata(env.ws.path().join("made.txt")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (4242, 4343));

    // The invoking user's own workspace: files are the invoking user's.
    let env = TestEnv::new();
    let out = env.run(&["run", "--", "touch", "/workspace/mine"]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let meta = std::fs::metadata(env.ws.path().join("mine")).unwrap();
    let me = std::fs::metadata(env.ws.path()).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (me.uid(), me.gid()));
}

#[test]
fn workspace_paths_with_colons_and_spaces_mount_and_mounts_can_be_read_only() {
    require_docker();
    let env = TestEnv::new();
    // `:` would split a `src:dst:mode` bind string.
    let ws = env.ws.path().join("moat-ws:a b");
    std::fs::create_dir(&ws).unwrap();
    std::fs::write(ws.join("marker"), "here\n").unwrap();
    let data = env.ws.path().join("shared:data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(
        ws.join("moat.yaml"),
        format!(
            "mounts:\n  - {{source: \"{}\", target: /data, readonly: true}}\n",
            data.display()
        ),
    )
    .unwrap();
    let out = env.run(&[
        "run",
        ws.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "pwd; cat marker; touch /data/x 2>/dev/null && echo WROTE || echo readonly",
    ]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "/workspace\nhere\nreadonly\n");
}

#[test]
fn from_inside_the_container_no_privilege_can_be_used_or_regained() {
    require_docker();
    let env = TestEnv::new();
    // Runs as the workspace owner (root here, as in CI): root without capabilities.
    let out = env.run(&[
        "run",
        "--",
        "sh",
        "-c",
        "grep -E '^(CapPrm|CapEff|CapBnd|NoNewPrivs)' /proc/self/status; \
         cat /sys/fs/cgroup/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids/pids.max; \
         touch f; chown 1:1 f 2>/dev/null && echo CHOWNED; \
         mount -t tmpfs none /mnt 2>/dev/null && echo MOUNTED; \
         ip link add dummy0 type dummy 2>/dev/null && echo NETADMIN; \
         echo done",
    ]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let shown = text(&out.stdout);
    for line in [
        "CapPrm:\t0000000000000000",
        "CapEff:\t0000000000000000",
        "CapBnd:\t0000000000000000",
        "NoNewPrivs:\t1",
        "4096",
        "done",
    ] {
        assert!(
            shown.lines().any(|l| l == line),
            "missing {line:?} in {shown}"
        );
    }
    for escaped in ["CHOWNED", "MOUNTED", "NETADMIN"] {
        assert!(!shown.contains(escaped), "{escaped}: {shown}");
    }
}

#[test]
fn environment_and_resource_limits_reach_the_container() {
    require_docker();
    let env = TestEnv::new();
    std::fs::write(
        env.ws.path().join("moat.yaml"),
        "env:\n  A: from-yaml\n  B: 2\ncontainer:\n  memory: 256m\n  cpus: 0.5\n",
    )
    .unwrap();
    // A non-root workspace owner gets HOME=/tmp; -e wins over moat.yaml's env.
    std::os::unix::fs::chown(env.ws.path(), Some(4242), Some(4343)).unwrap();
    let out = env.run(&[
        "run",
        "-e",
        "A=from-flag",
        "--",
        "sh",
        "-c",
        "echo \"$A $B $HOME\"; \
         cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes; \
         cat /sys/fs/cgroup/cpu.max 2>/dev/null || cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us",
    ]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let shown = text(&out.stdout);
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines.first(), Some(&"from-flag 2 /tmp"), "{shown}");
    assert_eq!(lines.get(1), Some(&"268435456"), "256m: {shown}");
    // Half a CPU: a 50,000 µs quota per 100,000 µs period.
    assert!(
        lines.get(2).is_some_and(|l| l.starts_with("50000")),
        "{shown}"
    );
}

#[test]
fn kept_container_is_hardened_and_labelled() {
    require_docker();
    let env = TestEnv::new();
    std::fs::write(
        env.ws.path().join("moat.yaml"),
        "name: hardened\nports: [18080]\n",
    )
    .unwrap();
    let out = env.run(&["run", "--keep", "--", "true"]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let run = env.run_json("hardened");
    let id = run["id"].as_str().unwrap();
    let c = docker_inspect(run["container_id"].as_str().unwrap()).expect("kept container exists");
    let host = &c["HostConfig"];
    assert_eq!(host["CapDrop"], serde_json::json!(["ALL"]));
    assert!(
        host["CapAdd"].as_array().is_none_or(|a| a.is_empty()),
        "{}",
        host["CapAdd"]
    );
    assert!(
        host["SecurityOpt"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o.as_str().unwrap().starts_with("no-new-privileges")),
        "{}",
        host["SecurityOpt"]
    );
    assert!(host["PidsLimit"].as_i64().unwrap() > 0);
    assert_eq!(host["Init"], true);
    assert_eq!(host["Privileged"], false);
    let mode = host["NetworkMode"].as_str().unwrap();
    assert!(
        mode != "host" && mode != "default" && mode != "bridge",
        "{mode}"
    );
    let bindings = &host["PortBindings"]["18080/tcp"];
    assert_eq!(bindings[0]["HostIp"], "127.0.0.1", "{bindings}");
    assert_eq!(c["Config"]["Labels"]["dev.moat.run-id"], id);
    assert_eq!(c["Config"]["WorkingDir"], "/workspace");
    let net = docker_inspect(run["network_id"].as_str().unwrap()).expect("network exists");
    assert_eq!(net["Labels"]["dev.moat.run-id"], id);

    // destroy removes container, network and run directory.
    let out = env.run(&["destroy", "hardened"]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert!(docker_inspect(run["container_id"].as_str().unwrap()).is_none());
    assert!(docker_inspect(run["network_id"].as_str().unwrap()).is_none());
    assert!(!env.run_dir(id).exists());
}

#[test]
fn the_embedding_example_runs_a_sandboxed_command() {
    require_docker();
    let env = TestEnv::new();
    std::fs::write(env.ws.path().join("input.txt"), "from the host\n").unwrap();
    let store = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(moat_e2e::example_bin("moat-runtime", "sandbox"))
        .arg(store.path())
        .arg(env.ws.path())
        .arg(moat_e2e::test_image())
        .args(["sh", "-c", "cat input.txt; exit 3"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "from the host\n");
    // The library kept the run in the store it was given.
    assert_eq!(std::fs::read_dir(store.path()).unwrap().count(), 1);
}
