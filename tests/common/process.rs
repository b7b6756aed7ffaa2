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
    loop {
        let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the server never logged its address");
        };
        if let Some(rest) = line.split("addr=").nth(1) {
            let addr = rest.split_whitespace().next().unwrap().to_owned();
            return (ServeProcess(child), format!("http://{addr}"), rx);
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
