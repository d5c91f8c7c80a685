//! Detached runs: `run -d`, `logs -f`, `attach`, `stop`, `destroy`, Ctrl-C and a supervisor
//! killed with SIGKILL.

use std::io::Read;
use std::io::Write;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use moat_e2e::TestEnv;
use moat_e2e::docker_inspect;
use moat_e2e::require_docker;
use moat_e2e::text;

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn detach(env: &TestEnv, args: &[&str]) -> String {
    let mut full = vec!["run", "-d"];
    full.extend_from_slice(args);
    let out = env.run(&full);
    assert!(out.status.success(), "run -d failed: {}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_owned();
    assert!(
        id.len() == 16 && id.starts_with("run_"),
        "run -d must print only the run ID on stdout, got {id:?}"
    );
    id
}

#[test]
fn detached_run_follow_stop_destroy() {
    require_docker();
    let env = TestEnv::new();
    // A run that outlives `run -d`: the ID comes back while the container still runs.
    let id = detach(
        &env,
        &["-n", "bg", "--", "sh", "-c", "echo started; sleep 300"],
    );
    let run = env.run_json(&id);
    assert_eq!(run["state"], "running");
    let container = run["container_id"].as_str().unwrap().to_owned();
    let network = run["network_id"].as_str().unwrap().to_owned();

    // `logs -f` from another process sees live output, and ends when the run is stopped.
    let mut follow = env
        .moat(&["logs", "-f", "bg"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut follow_out = follow.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        follow_out.read_to_string(&mut s).unwrap();
        s
    });
    wait_for("the first log line", Duration::from_secs(30), || {
        text(&env.run(&["logs", "bg"]).stdout).contains("started")
    });

    let out = env.run(&["stop"]); // most recent running run
    assert!(out.status.success(), "stop: {}", text(&out.stderr));
    let run = env.run_json(&id);
    assert_eq!(run["state"], "stopped");
    assert_eq!(run["exit_code"], 143); // SIGTERM
    let status = follow.wait().unwrap();
    assert!(status.success());
    assert!(reader.join().unwrap().contains("stdout started"));
    // Stopped runs keep their artifacts but not their container.
    assert!(env.run_dir(&id).join("logs.jsonl").exists());
    assert!(docker_inspect(&container).is_none());
    assert!(docker_inspect(&network).is_none());
    // Stopping it again is not an error, and scripts still get the run as JSON.
    let out = env.run(&["stop", "--json", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let again: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(again["state"], "stopped");

    let out = env.run(&["destroy", &id[..8]]); // unique ID prefix
    assert!(out.status.success(), "destroy: {}", text(&out.stderr));
    assert!(!env.run_dir(&id).exists());
    assert!(env.list().is_empty());
}

#[test]
fn detached_run_follows_to_completion() {
    require_docker();
    let env = TestEnv::new();
    let id = detach(
        &env,
        &[
            "--",
            "sh",
            "-c",
            "for i in 1 2 3 4 5; do echo tick$i; sleep 0.3; done; exit 3",
        ],
    );
    let out = env.run(&["logs", "-f", &id]);
    assert!(out.status.success());
    let logs = text(&out.stdout);
    for i in 1..=5 {
        assert!(logs.contains(&format!("tick{i}")), "{logs}");
    }
    let out = env.run(&["logs", "-n", "2", &id]);
    let tail = text(&out.stdout);
    assert_eq!(tail.lines().count(), 2, "{tail}");
    assert!(tail.contains("tick4") && tail.contains("tick5"), "{tail}");
    wait_for("the run to finish", Duration::from_secs(30), || {
        env.run_json(&id)["state"] == "exited"
    });
    assert_eq!(env.run_json(&id)["exit_code"], 3);
}

#[test]
fn attach_reaches_the_tty_of_a_detached_run() {
    require_docker();
    let env = TestEnv::new();
    let id = detach(
        &env,
        &[
            "-i",
            "-n",
            "tty",
            "--",
            "sh",
            "-c",
            "read line; echo got:$line; tty; exit 5",
        ],
    );
    // `moat attach` in a real terminal; what we write reaches the container.
    let mut child = env.moat_in_terminal(&["attach", "tty"]).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    stdin.write_all(b"hello-tty\r").unwrap();
    stdin.flush().unwrap();
    let out = child.wait_with_output().unwrap();
    let screen = text(&out.stdout);
    assert!(screen.contains("got:hello-tty"), "attach output: {screen}");
    assert!(
        screen.contains("/dev/pts/"),
        "the container has a TTY: {screen}"
    );
    assert_eq!(
        out.status.code(),
        Some(5),
        "attach returns the exit code: {screen}"
    );
    wait_for("the run to finish", Duration::from_secs(30), || {
        env.run_json(&id)["state"] == "exited"
    });
}

#[test]
fn ctrl_c_stops_the_container_and_finishes_the_run() {
    require_docker();
    let env = TestEnv::new();
    let mut child = env
        .moat(&["run", "-n", "intr", "--", "sh", "-c", "echo up; sleep 300"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the container to start", Duration::from_secs(30), || {
        env.list()
            .iter()
            .any(|r| r["name"] == "intr" && r["state"] == "running")
    });
    nix_kill(child.id(), "INT");
    let started = Instant::now();
    let status = child.wait().unwrap();
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(
        status.code(),
        Some(143),
        "exit code of the stopped container"
    );
    let run = env.run_json("intr");
    assert_eq!(run["state"], "stopped");
    assert!(run["ended_at"].is_string());
    assert!(moat_e2e::wait_gone(run["container_id"].as_str().unwrap()));
    let logs = text(&env.run(&["logs", "intr"]).stdout);
    assert!(logs.contains("up"), "{logs}");
}

#[test]
fn what_a_container_says_while_stopping_is_kept_and_the_audit_log_is_closed() {
    require_docker();
    let env = TestEnv::new();
    let child = env
        .moat(&[
            "run",
            "-n",
            "bye",
            "--",
            "sh",
            "-c",
            "trap 'echo bye; exit 3' TERM; echo up; while :; do sleep 0.1; done",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the first line", Duration::from_secs(30), || {
        text(&env.run(&["logs", "bye"]).stdout).contains("up")
    });
    nix_kill(child.id(), "INT");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("bye"), "passed through");
    let run = env.run_json("bye");
    assert_eq!(run["state"], "stopped");
    assert_eq!(run["exit_code"], 3);
    assert!(
        text(&env.run(&["logs", "bye"]).stdout).contains("bye"),
        "recorded"
    );
    let out = env.run(&["audit", "--json", "bye"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["verdict"], "intact", "{report}");
    assert_eq!(report["last_checkpoint_covers_all"], true, "{report}");
    assert_eq!(report["event_types"]["run.finished"], 1, "{report}");
}

#[test]
fn killed_supervisor_leaves_no_orphan() {
    require_docker();
    let env = TestEnv::new();
    let id = detach(&env, &["--", "sleep", "300"]);
    let run = env.run_json(&id);
    let container = run["container_id"].as_str().unwrap().to_owned();
    let pid = run["supervisor_pid"].as_u64().unwrap();
    nix_kill(u32::try_from(pid).unwrap(), "KILL");
    // The container outlived its supervisor until someone looks.
    std::thread::sleep(Duration::from_millis(300));
    let run = env.run_json(&id); // `moat list` reconciles
    assert_eq!(run["state"], "failed", "{run}");
    assert!(
        run["error"].as_str().unwrap().contains("supervisor"),
        "{run}"
    );
    assert!(
        docker_inspect(&container).is_none(),
        "orphan container left behind"
    );
    assert!(docker_inspect(run["network_id"].as_str().unwrap()).is_none());
}

fn nix_kill(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}
