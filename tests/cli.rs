//! The binary's start-up contract: bad flags and missing configuration exit 2, an unreachable
//! cluster or missing CRDs exit 1, always with one clear line on stderr and never a panic.

use std::{
    io::Write,
    process::{Command, Output},
};

const BIN: &str = env!("CARGO_BIN_EXE_afk-operator");

fn run(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let home = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_clear()
        .env("HOME", home.path())
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        // `run` checks its sidecar port first: never depend on 8080 being free here.
        .env("AFK_LISTEN", "127.0.0.1:0");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_no_panic(out: &Output) {
    assert!(!stderr(out).contains("panicked"), "panic: {}", stderr(out));
}

#[test]
fn crd_prints_yaml() {
    let out = run(&["crd"], &[]);
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("name: afkconfigs.afk.dev"));
    assert!(stdout.contains("name: afkruns.afk.dev"));
}

#[test]
fn help_lists_the_subcommands() {
    let out = run(&["--help"], &[]);
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    for sub in ["run", "sidecar", "crd"] {
        assert!(stdout.contains(sub), "{stdout}");
    }
    for sub in ["run", "sidecar"] {
        let out = run(&[sub, "--help"], &[]);
        assert!(out.status.success(), "{sub} --help");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("AFK_LISTEN"),
            "env fallbacks are documented"
        );
    }
}

#[test]
fn bad_flag_exits_2() {
    let out = run(&["run", "--no-such-flag"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert_no_panic(&out);
    let out = run(&["sidecar", "--listen", "not-an-address"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--listen"));
}

#[test]
fn missing_kube_config_exits_2_with_one_line() {
    let out = run(&["run"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_no_panic(&out);
    let err = stderr(&out);
    let lines: Vec<_> = err.lines().filter(|l| l.contains("afk-operator:")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("no Kubernetes configuration found"), "{err}");
}

fn kubeconfig_for(server: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    write!(
        file,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n\
         contexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\n\
         users:\n- name: u\n  user:\n    token: not-a-secret\n"
    )
    .unwrap();
    file
}

#[test]
fn unreachable_cluster_exits_1_with_one_line() {
    // Bind then drop a listener to get a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let kubeconfig = kubeconfig_for(&format!("http://127.0.0.1:{port}"));
    let out = run(
        &[
            "run",
            "--kubeconfig",
            kubeconfig.path().to_str().unwrap(),
            "--connect-timeout-secs",
            "2",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_no_panic(&out);
    let err = stderr(&out);
    let lines: Vec<_> = err.lines().filter(|l| l.starts_with("afk-operator:")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].contains("cannot reach the Kubernetes API server"),
        "{err}"
    );
    assert!(!err.contains("not-a-secret"), "the token must never be printed");
}

#[test]
fn missing_crds_exit_1_with_an_install_hint() {
    use std::net::TcpListener;
    // A minimal API server: /version answers, everything else is 404 as for an unknown resource.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            let mut buf = [0u8; 4096];
            let n = std::io::Read::read(&mut stream, &mut buf).unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]);
            let (status, body) = if request.starts_with("GET /version") {
                (
                    "200 OK",
                    r#"{"major":"1","minor":"37","gitVersion":"v1.37.0","gitCommit":"","gitTreeState":"","buildDate":"","goVersion":"","compiler":"","platform":"linux/amd64"}"#,
                )
            } else {
                (
                    "404 Not Found",
                    r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"the server could not find the requested resource","reason":"NotFound","code":404}"#,
                )
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let kubeconfig = kubeconfig_for(&format!("http://{addr}"));
    let out = run(&["run", "--kubeconfig", kubeconfig.path().to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_no_panic(&out);
    assert!(
        stderr(&out).contains("kubectl apply -f crds/"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn broken_agents_dir_exits_2() {
    let empty = tempfile::tempdir().unwrap();
    let out = run(
        &[
            "sidecar",
            "--agents-dir",
            empty.path().to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("missing from the agents directory"),
        "{}",
        stderr(&out)
    );
}

/// `--claude-bin tests/fixtures/fake-claude`, relative, as the README's "try it" writes it: the
/// CLI runs in its own empty working directory, so the path must be resolved at start-up.
#[test]
fn a_relative_claude_bin_resolves_against_the_start_up_directory() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "tok").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _child = Kill(
        Command::new(BIN)
            .args([
                "sidecar",
                "--listen",
                &listen,
                "--claude-bin",
                "tests/fixtures/fake-claude",
            ])
            .arg("--api-token-file")
            .arg(&token)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let body = r#"{"model":"sonnet","messages":[{"role":"user","content":"hello there"}]}"#;
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    // Wait for the port (a condition, with a generous deadline for a loaded machine).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut stream = loop {
        match std::net::TcpStream::connect(&listen) {
            Ok(s) => break s,
            Err(e) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "sidecar never listened: {e}"
                );
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    };
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut stream, &mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("chat.completion"), "{answer}");
    assert!(!answer.contains("cli_unavailable"), "{answer}");
}

#[test]
fn run_with_a_busy_sidecar_port_exits_2_with_one_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = run(
        &[
            "run",
            "--listen",
            &addr,
            "--kubeconfig",
            "/nonexistent/kubeconfig",
        ],
        &[],
    );
    assert_no_panic(&out);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

/// The agent definitions are built in: started from a directory with no `agents/`, `run` gets
/// past them (and stops at the missing kubeconfig, exit 2).
#[test]
fn run_needs_no_agents_dir_in_the_working_directory() {
    let elsewhere = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args([
            "run",
            "--kubeconfig",
            "/nonexistent/kubeconfig",
            "--listen",
            "127.0.0.1:0",
        ])
        .current_dir(elsewhere.path())
        .env_remove("AFK_AGENTS_DIR")
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("kubeconfig"), "{err}");
    assert!(!err.contains("agent"), "{err}");
}

#[test]
fn run_help_has_headings_and_examples() {
    let out = run(&["run", "--help"], &[]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for heading in [
        "Cluster and controllers:",
        "Sidecar (HTTP server, console):",
        "Voice gateway (claude CLI):",
        "Breakglass and VM power verbs:",
        "Examples:",
    ] {
        assert!(help.contains(heading), "{heading} missing:\n{help}");
    }
}
