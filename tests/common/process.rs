//! The real `kuma-secrets` binary as a child process.

use std::io::{BufRead, BufReader};
use std::ops::{Deref, DerefMut};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A `kuma-secrets serve` child process, killed when dropped so a failing test never
/// leaves a server behind.
pub struct ServeProcess(Child);

impl Deref for ServeProcess {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for ServeProcess {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts `kuma-secrets serve` with `args` and returns it with its API address, read from
/// its log, and the rest of its log lines.
pub fn spawn_serve(
    args: &[&str],
    dir: &std::path::Path,
) -> (ServeProcess, String, mpsc::Receiver<String>) {
    match try_spawn_serve(args, dir) {
        Ok(started) => started,
        Err(not) => panic!(
            "the server never logged its address ({:?}):\n{}",
            not.status,
            not.said.join("\n")
        ),
    }
}

/// A `serve` that never logged its address.
pub struct NotStarted {
    /// How it exited; `None` if it was still running after 20 s (it is killed then).
    pub status: Option<std::process::ExitStatus>,
    /// What it logged.
    pub said: Vec<String>,
}

/// As [`spawn_serve`], but a server that exits (or is silent for 20 s) before logging its
/// address is an `Err`.
pub fn try_spawn_serve(
    args: &[&str],
    dir: &std::path::Path,
) -> Result<(ServeProcess, String, mpsc::Receiver<String>), NotStarted> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kuma-secrets"))
        .arg("serve")
        .args(["--api-addr", "127.0.0.1:0"])
        .args(args)
        .current_dir(dir)
        .env_remove("KUMA_SECRETS_STORE")
        .env("KUMA_SECRETS_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kuma-secrets");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut said = Vec::new();
    loop {
        let line = match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => line,
            // Its stderr closed: it exited.
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.wait().ok();
                return Err(NotStarted { status, said });
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(NotStarted { status: None, said });
            }
        };
        if let Some(rest) = line.split("addr=").nth(1) {
            let addr = rest.split_whitespace().next().unwrap().to_owned();
            return Ok((ServeProcess(child), format!("http://{addr}"), rx));
        }
        said.push(line);
    }
}

/// Starts `serve` on the store `url`, sealed with the test keyring (written into `dir`),
/// with `extra` flags, and waits until it is ready.
pub async fn serve_sealed(
    url: &str,
    dir: &std::path::Path,
    extra: &[&str],
) -> (ServeProcess, String, mpsc::Receiver<String>) {
    let keys = super::test_keyring_file(dir);
    let mut args = vec!["--store", url, "--encryption-keys", keys.to_str().unwrap()];
    args.extend_from_slice(extra);
    let (process, base, log) = spawn_serve(&args, dir);
    super::server::wait_ready(&base).await;
    (process, base, log)
}

/// Starts `count` `serve` processes on the Postgres database `url`, sealed with the test
/// keyring (written into `dir`), each ready: replicas of one control plane.
pub async fn spawn_replicas(
    url: &str,
    dir: &std::path::Path,
    count: usize,
) -> Vec<(ServeProcess, String)> {
    let mut replicas = Vec::new();
    for _ in 0..count {
        let (process, base, _log) = serve_sealed(url, dir, &[]).await;
        replicas.push((process, base));
    }
    replicas
}

/// Every line `serve` logged that `log` has not yet given, once it has exited: read until
/// its stderr closes (the thread forwarding it may still be behind when the process is
/// gone), failing after 30 s.
pub fn rest_of_log(log: &mpsc::Receiver<String>) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut lines = Vec::new();
    loop {
        match log.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => lines.push(line),
            Err(mpsc::RecvTimeoutError::Disconnected) => return lines,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("the log did not end within 30 s: {lines:?}")
            }
        }
    }
}

/// Sends SIGTERM.
pub fn terminate(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits (with a deadline) for the process to exit.
pub fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "the server did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What a CLI run printed and how it exited.
#[derive(Debug)]
pub struct CliRun {
    /// Exit code (-1 if killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl CliRun {
    /// Panics with the whole run unless it exited 0.
    #[track_caller]
    pub fn ok(self) -> Self {
        assert_eq!(self.code, 0, "expected success: {self:#?}");
        self
    }

    /// Panics unless it failed with one line on stderr (`Error: …`) and no panic.
    #[track_caller]
    pub fn failed(self) -> Self {
        assert_ne!(self.code, 0, "expected failure: {self:#?}");
        assert!(
            !self.stderr.contains("panicked") && !self.stderr.contains("backtrace"),
            "a failure is a message, not a panic: {self:#?}"
        );
        assert!(
            self.stderr.lines().any(|l| l.starts_with("Error: ")),
            "a failure ends with one `Error:` line: {self:#?}"
        );
        self
    }

    /// As [`CliRun::failed`], saying `text` on stderr.
    #[track_caller]
    pub fn fails_with(self, text: &str) -> Self {
        let run = self.failed();
        assert!(run.stderr.contains(text), "{text:?} not said: {run:#?}");
        run
    }
}

/// Runs `kuma-secrets ARGS` with `stdin`, without inheriting any `KUMA_SECRETS_*`
/// settings. Async so an in-process test server keeps serving meanwhile.
pub async fn kuma(args: &[&str], stdin: Option<&str>) -> CliRun {
    kuma_with_env(args, stdin, &[]).await
}

/// As [`kuma`], with these environment variables set.
pub async fn kuma_with_env(args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> CliRun {
    use tokio::io::AsyncWriteExt;
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_kuma-secrets"));
    command
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (key, _) in std::env::vars() {
        if key.starts_with("KUMA_SECRETS_") {
            command.env_remove(key);
        }
    }
    command.envs(env.iter().copied());
    let mut child = command.spawn().expect("start kuma-secrets");
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(text.as_bytes()).await.unwrap();
        drop(pipe);
    }
    let output = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("kuma-secrets finished within 2 minutes")
        .unwrap();
    CliRun {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Starts `kuma-secrets ARGS` and kills it (SIGKILL, no chance to clean up) as soon as a
/// line of its stderr satisfies `reached`: a job interrupted midway. Panics if it exits
/// before, with what it printed.
pub async fn kill_when(args: &[&str], reached: impl Fn(&str) -> bool) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_kuma-secrets"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start kuma-secrets");
    let mut stderr = tokio::io::BufReader::new(child.stderr.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut log = String::new();
    loop {
        let mut line = String::new();
        let read = tokio::time::timeout_at(deadline.into(), stderr.read_line(&mut line))
            .await
            .expect("the job reports progress within a minute")
            .unwrap();
        assert!(read > 0, "the job ended before it was killed: {log}");
        if reached(&line) {
            break;
        }
        log.push_str(&line);
    }
    child.kill().await.unwrap();
}
