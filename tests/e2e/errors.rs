//! Bad input: a specific error, the right exit code, and no run directory.

use moat_e2e::TestEnv;
use moat_e2e::require_docker;
use moat_e2e::text;

fn fails_before_run(env: &TestEnv, args: &[&str], expect: &[&str]) -> String {
    let out = env.run(args);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "stderr: {stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    for e in expect {
        assert!(stderr.contains(e), "expected {e:?} in: {stderr}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(env.run_dirs().is_empty(), "a run directory was left behind");
    stderr
}

#[test]
fn unknown_key_in_moat_yaml() {
    let env = TestEnv::new();
    std::fs::write(env.ws.path().join("moat.yaml"), "name: x\nimagee: foo\n").unwrap();
    let err = fails_before_run(
        &env,
        &["run", "--", "true"],
        &["moat.yaml:2:1", "unknown field `imagee`", "hint:"],
    );
    assert!(err.contains("moat schema"), "{err}");
}

#[test]
fn bad_config_yaml_fails_run_before_anything_is_created() {
    let env = TestEnv::new();
    std::fs::write(env.home.path().join("config.yaml"), "runtime: podman\n").unwrap();
    fails_before_run(&env, &["run", "--", "true"], &["config.yaml"]);
}

#[test]
fn wrong_type_in_moat_yaml() {
    let env = TestEnv::new();
    std::fs::write(env.ws.path().join("moat.yaml"), "grants: github\n").unwrap();
    fails_before_run(
        &env,
        &["run", "--", "true"],
        &["moat.yaml:1:9", "invalid type", "hint:"],
    );
}

#[test]
fn bad_policy_value() {
    let env = TestEnv::new();
    std::fs::write(
        env.ws.path().join("moat.yaml"),
        "network:\n  policy: open\n",
    )
    .unwrap();
    fails_before_run(
        &env,
        &["run", "--", "true"],
        &[
            "moat.yaml:2:11",
            "unknown variant `open`",
            "permissive",
            "strict",
        ],
    );
}

#[test]
fn missing_workspace() {
    let env = TestEnv::new();
    fails_before_run(
        &env,
        &["run", "/nonexistent/moat-ws", "--", "true"],
        &["/nonexistent/moat-ws", "does not exist", "hint:"],
    );
}

#[test]
fn no_docker_engine() {
    let env = TestEnv::new();
    let out = env
        .moat(&["run", "--", "true"])
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(
        stderr.contains("/nonexistent/docker.sock"),
        "names the socket: {stderr}"
    );
    assert!(stderr.contains("hint:"), "{stderr}");
    assert!(env.run_dirs().is_empty());
}

#[test]
fn missing_image() {
    require_docker();
    let env = TestEnv::new();
    fails_before_run(
        &env,
        &["run", "--image", "moat-no-such-image:nope", "--", "true"],
        &["moat-no-such-image", "--image"],
    );
}

#[test]
fn unknown_run_reference() {
    let env = TestEnv::new();
    let out = env.run(&["logs", "no-such-run"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no run matches `no-such-run`"));
    let out = env.run(&["stop"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no running runs"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn usage_errors_exit_2() {
    let env = TestEnv::new();
    let out = env.run(&["run", "--policy-typo"]);
    assert_eq!(out.status.code(), Some(2));
    let out = env.run(&["run", "-e", "NOEQUALS", "--", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(text(&out.stderr).contains("KEY=VALUE"));
}

#[test]
fn features_not_yet_available_are_refused_not_ignored() {
    let env = TestEnv::new();
    std::fs::write(
        env.ws.path().join("moat.yaml"),
        "secrets:\n  TOKEN: op://vault/item/field\n",
    )
    .unwrap();
    fails_before_run(&env, &["run", "--", "true"], &["secrets", "not available"]);
}
