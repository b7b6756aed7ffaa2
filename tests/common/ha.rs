//! Postgres as production runs it, built and torn down by a test: PgBouncer in front of a
//! server, and a Patroni cluster (one etcd, two Postgres nodes in synchronous mode) behind
//! HAProxy, which sends connections to the leader by Patroni's REST check (`/primary`).
//! Everything listens on loopback, on free ports, in temporary directories, as user
//! `postgres` where Postgres needs it. The machine's shared server is never touched (a
//! PgBouncer may sit in front of it: it only opens connections).
//!
//! The programs come from Debian's packages (`patroni`, `etcd-server`, `haproxy`,
//! `pgbouncer`): `.ci/install-ha-tools` installs them (`.ci/run` runs it first, and a test
//! that finds one missing runs it); a test that still cannot find one fails saying so.

use super::cluster::{free_port, local_binaries, owned_temp_dir, running_as_root};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The path of `program`. On a machine without it, the first call runs
/// `.ci/install-ha-tools` (Debian's packages, no services started); if it is still
/// missing, a panic says which package brings it.
fn require(program: &str, package: &str) -> PathBuf {
    let find = || {
        ["/usr/bin", "/usr/sbin", "/usr/local/bin"]
            .iter()
            .map(|dir| Path::new(dir).join(program))
            .find(|path| path.exists())
    };
    if let Some(path) = find() {
        return path;
    }
    static INSTALLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let installed = *INSTALLED.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/install-ha-tools");
        eprintln!("{program} is missing: running {}", script.display());
        Command::new("bash")
            .arg(script)
            .status()
            .is_ok_and(|status| status.success())
    });
    find().unwrap_or_else(|| {
        panic!(
            "this test needs {program} (Debian package {package}), and `bash \
             .ci/install-ha-tools` {} install it: install it (apt-get install {package}), \
             or run the other tests with `cargo test -- --skip postgres_ha`",
            if installed { "did not" } else { "could not" }
        )
    })
}

/// A long-running program of a test's own, in its own process group, its output in `log`.
/// Dropping it stops the group (SIGTERM, then SIGKILL after 10 s).
pub struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    /// Starts `program args` as user `postgres` (when the tests run as root) in `dir`.
    fn start(program: &Path, args: &[&str], dir: &Path, log_name: &str) -> Self {
        let log = dir.join(log_name);
        let out = std::fs::File::create(&log).unwrap();
        let mut command = if running_as_root() {
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "--",
            ])
            .arg(program);
            c
        } else {
            Command::new(program)
        };
        use std::os::unix::process::CommandExt;
        let child = command
            .args(args)
            .current_dir(dir)
            .env("HOME", dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        Self { child, log }
    }

    /// Its output so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `kill -9` of the whole group: the program dies without cleaning up.
    pub fn kill(&mut self) {
        signal_group(self.child.id(), "-KILL");
        let _ = self.child.wait();
    }

    fn stop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        signal_group(self.child.id(), "-TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        signal_group(self.child.id(), "-KILL");
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

fn signal_group(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([signal, "--", &format!("-{pid}")])
        .stderr(Stdio::null())
        .status();
}

/// Waits until something listens on `port`.
fn wait_listening(port: u16, what: &Daemon, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{name} never listened on {port}:\n{}",
            what.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `url` (a Postgres URL) with its host and port replaced by `127.0.0.1:port`.
pub fn at_port(url: &str, port: u16) -> String {
    let mut parsed = reqwest::Url::parse(url).unwrap();
    parsed.set_host(Some("127.0.0.1")).unwrap();
    parsed.set_port(Some(port)).unwrap();
    parsed.to_string()
}

/// PgBouncer in front of the Postgres at `127.0.0.1:upstream`, every database, trust
/// authentication, in `pool_mode` (`session` or `transaction`), with few server
/// connections per database so that clients share them.
pub struct PgBouncer {
    /// Stopped when dropped, before its directory goes.
    _daemon: Daemon,
    /// Its port on 127.0.0.1.
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl PgBouncer {
    /// Starts one.
    pub fn start(upstream: u16, pool_mode: &str) -> Self {
        let program = require("pgbouncer", "pgbouncer");
        let dir = owned_temp_dir("ks-pgbouncer-");
        let port = free_port();
        let path = dir.path();
        let config = format!(
            "[databases]\n\
             * = host=127.0.0.1 port={upstream}\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = {users}\n\
             pool_mode = {pool_mode}\n\
             default_pool_size = 4\n\
             max_client_conn = 500\n\
             ignore_startup_parameters = extra_float_digits,options\n",
            users = path.join("users.txt").display(),
        );
        std::fs::write(path.join("users.txt"), "\"postgres\" \"\"\n").unwrap();
        std::fs::write(path.join("pgbouncer.ini"), config).unwrap();
        chown_to_postgres(path);
        let daemon = Daemon::start(&program, &["pgbouncer.ini"], path, "pgbouncer.log");
        wait_listening(port, &daemon, "pgbouncer");
        Self {
            _daemon: daemon,
            port,
            _dir: dir,
        }
    }

    /// `url` routed through this PgBouncer.
    pub fn url_for(&self, url: &str) -> String {
        at_port(url, self.port)
    }
}

/// Gives `path` and what the test wrote directly in it (configuration files, logs) to user
/// `postgres`, which the daemons run as. Not recursive: the daemons' own directories are
/// theirs already, and walking them raced with etcd, which creates and removes files there
/// (`chown -R` then failed on a file gone meanwhile). An entry gone meanwhile is skipped.
fn chown_to_postgres(path: &Path) {
    if !running_as_root() {
        return;
    }
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    let (uid, gid) = (id("-u"), id("-g"));
    let entries = std::fs::read_dir(path)
        .unwrap()
        .map(|entry| entry.unwrap().path());
    for entry in std::iter::once(path.to_path_buf()).chain(entries) {
        match std::os::unix::fs::lchown(&entry, Some(uid), Some(gid)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("chown {}: {e}", entry.display()),
        }
    }
}

/// One Postgres node managed by Patroni.
pub struct Node {
    /// Patroni's member name.
    pub name: String,
    /// Postgres' port.
    pub pg_port: u16,
    /// Patroni's REST port.
    pub rest_port: u16,
    config: PathBuf,
    data: PathBuf,
    patroni: Daemon,
}

impl Node {
    /// `kill -9` of Patroni and of its postmaster: the node is lost, as in a machine crash.
    pub fn crash(&mut self) {
        let postmaster = std::fs::read_to_string(self.data.join("postmaster.pid"))
            .ok()
            .and_then(|text| text.lines().next().map(str::to_owned));
        self.patroni.kill();
        if let Some(pid) = postmaster {
            let _ = Command::new("kill").args(["-9", pid.trim()]).status();
        }
    }

    fn stop_postgres(&self) {
        let Some(bin) = local_binaries() else { return };
        if !self.data.join("postmaster.pid").exists() {
            return;
        }
        let pg_ctl = bin.join("pg_ctl");
        let data = self.data.to_str().unwrap();
        let mut command = if running_as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&pg_ctl);
            c
        } else {
            Command::new(&pg_ctl)
        };
        let _ = command
            .args(["-D", data, "-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A Patroni cluster of two nodes in synchronous mode (an acknowledged commit is on both),
/// its etcd, and HAProxy routing to the leader.
pub struct PatroniCluster {
    /// The nodes (index 0 bootstrapped the cluster).
    pub nodes: Vec<Node>,
    haproxy: Daemon,
    /// HAProxy's port: where clients connect.
    pub port: u16,
    stats_socket: PathBuf,
    etcd: Daemon,
    /// Removed after `Drop` stopped everything.
    _dir: tempfile::TempDir,
}

/// How HAProxy treats open sessions to a server its check marks down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenSessions {
    /// `on-marked-down shutdown-sessions` (Patroni's reference configuration).
    Killed,
    /// Left open: clients keep talking to the old server until it closes them.
    Kept,
}

impl PatroniCluster {
    /// Starts etcd, two Patroni nodes (waiting until one leads and the other is its
    /// synchronous standby), and HAProxy with Patroni's reference check timing.
    pub async fn start(sessions: OpenSessions) -> Self {
        let patroni = require("patroni", "patroni");
        let etcd_bin = require("etcd", "etcd-server");
        let haproxy_bin = require("haproxy", "haproxy");
        let bin =
            local_binaries().expect("the Postgres server binaries (apt-get install postgresql)");
        let dir = owned_temp_dir("ks-patroni-");
        let path = dir.path().to_path_buf();
        let (etcd_port, peer_port) = (free_port(), free_port());
        let etcd = Daemon::start(
            &etcd_bin,
            &[
                "--name",
                "etcd",
                "--data-dir",
                path.join("etcd").to_str().unwrap(),
                "--listen-client-urls",
                &format!("http://127.0.0.1:{etcd_port}"),
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{etcd_port}"),
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{peer_port}"),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer_port}"),
                "--initial-cluster",
                &format!("etcd=http://127.0.0.1:{peer_port}"),
                "--enable-v2=true",
            ],
            &path,
            "etcd.log",
        );
        wait_listening(etcd_port, &etcd, "etcd");
        let mut nodes = Vec::new();
        for index in 0..2 {
            let name = format!("node{index}");
            let (pg_port, rest_port) = (free_port(), free_port());
            let config = path.join(format!("{name}.yml"));
            let data = path.join(&name);
            std::fs::write(
                &config,
                patroni_config(&name, &path, &bin, etcd_port, pg_port, rest_port),
            )
            .unwrap();
            chown_to_postgres(&path);
            let daemon = Daemon::start(
                &patroni,
                &[config.to_str().unwrap()],
                &path,
                &format!("{name}.log"),
            );
            nodes.push(Node {
                name,
                pg_port,
                rest_port,
                config,
                data,
                patroni: daemon,
            });
            // The first node bootstraps the cluster; the second clones it.
            if index == 0 {
                wait_for(Duration::from_secs(90), "node0 to lead", || async {
                    rest_status(rest_port, "primary").await == Some(200)
                })
                .await;
            }
        }
        let port = free_port();
        let stats_socket = path.join("haproxy.sock");
        let config = haproxy_config(port, &stats_socket, &nodes, sessions);
        std::fs::write(path.join("haproxy.cfg"), config).unwrap();
        chown_to_postgres(&path);
        let haproxy = Daemon::start(
            &haproxy_bin,
            &["-f", "haproxy.cfg", "-db"],
            &path,
            "haproxy.log",
        );
        wait_listening(port, &haproxy, "haproxy");
        let cluster = Self {
            nodes,
            haproxy,
            port,
            stats_socket,
            etcd,
            _dir: dir,
        };
        cluster.wait_replicating(0).await;
        cluster
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres` through HAProxy.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Waits until node `leader` leads, the other node is its synchronous standby, and
    /// HAProxy routes to the leader only.
    pub async fn wait_replicating(&self, leader: usize) {
        let standby = 1 - leader;
        let (lead_rest, standby_rest) =
            (self.nodes[leader].rest_port, self.nodes[standby].rest_port);
        wait_for(Duration::from_secs(90), "a synchronous standby", || async {
            rest_status(lead_rest, "primary").await == Some(200)
                && rest_status(standby_rest, "sync").await == Some(200)
        })
        .await;
        self.wait_routed_to(leader).await;
    }

    /// Waits until HAProxy marks node `index` up and every other node down; returns when
    /// it saw that.
    pub async fn wait_routed_to(&self, index: usize) -> Instant {
        let name = self.nodes[index].name.clone();
        wait_for(
            Duration::from_secs(60),
            "HAProxy to route to the leader",
            || {
                let name = name.clone();
                async move { self.routes_only_to(&name) }
            },
        )
        .await;
        Instant::now()
    }

    /// Whether HAProxy's stats show `name` up and every other server down.
    pub fn routes_only_to(&self, name: &str) -> bool {
        let Some(states) = self.server_states() else {
            return false;
        };
        !states.is_empty()
            && states
                .iter()
                .all(|(server, up)| *up == (server.as_str() == name))
    }

    /// (server, up) for each server of the `primary` listener, from the stats socket.
    fn server_states(&self) -> Option<Vec<(String, bool)>> {
        use std::io::{Read, Write};
        let mut socket = std::os::unix::net::UnixStream::connect(&self.stats_socket).ok()?;
        socket.write_all(b"show stat\n").ok()?;
        let mut text = String::new();
        socket.read_to_string(&mut text).ok()?;
        // CSV: pxname, svname, ... status is the 18th column.
        Some(
            text.lines()
                .filter(|line| line.starts_with("primary,"))
                .filter_map(|line| {
                    let columns: Vec<&str> = line.split(',').collect();
                    let server = (*columns.get(1)?).to_owned();
                    if server == "FRONTEND" || server == "BACKEND" {
                        return None;
                    }
                    Some((server, columns.get(17)?.starts_with("UP")))
                })
                .collect(),
        )
    }

    /// The index of the node that leads now, by Patroni's REST check.
    pub async fn leader(&self) -> Option<usize> {
        for (index, node) in self.nodes.iter().enumerate() {
            if rest_status(node.rest_port, "primary").await == Some(200) {
                return Some(index);
            }
        }
        None
    }

    /// `patronictl switchover` from node `from` to the other one, as an operator does it.
    pub fn switchover(&self, from: usize) {
        let to = 1 - from;
        let out = Command::new("patronictl")
            .arg("-c")
            .arg(&self.nodes[from].config)
            .args([
                "switchover",
                "--leader",
                &self.nodes[from].name,
                "--candidate",
                &self.nodes[to].name,
                "--force",
            ])
            .output()
            .expect("run patronictl");
        assert!(
            out.status.success(),
            "patronictl switchover failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Every program's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut all = String::new();
        for node in &self.nodes {
            all.push_str(&format!("--- {}\n{}", node.name, node.patroni.log()));
        }
        all.push_str(&format!("--- haproxy\n{}", self.haproxy.log()));
        all
    }
}

impl Drop for PatroniCluster {
    fn drop(&mut self) {
        self.haproxy.stop();
        for node in &mut self.nodes {
            node.patroni.stop();
        }
        // Patroni detaches its postmaster: stop what it left.
        for node in &self.nodes {
            node.stop_postgres();
        }
        self.etcd.stop();
    }
}

fn patroni_config(
    name: &str,
    dir: &Path,
    bin: &Path,
    etcd_port: u16,
    pg_port: u16,
    rest_port: u16,
) -> String {
    // ttl 10 s, loop_wait 1 s and retry_timeout 4 s: a lost leader's key expires within
    // 10 s (loop_wait + 2 * retry_timeout <= ttl, as Patroni requires).
    format!(
        "scope: ks\n\
         name: {name}\n\
         restapi:\n  listen: 127.0.0.1:{rest_port}\n  connect_address: 127.0.0.1:{rest_port}\n\
         etcd:\n  host: 127.0.0.1:{etcd_port}\n\
         bootstrap:\n\
         \x20 dcs:\n\
         \x20   ttl: 10\n\
         \x20   loop_wait: 1\n\
         \x20   retry_timeout: 4\n\
         \x20   maximum_lag_on_failover: 1048576\n\
         \x20   synchronous_mode: true\n\
         \x20   postgresql:\n\
         \x20     use_pg_rewind: true\n\
         \x20     parameters:\n\
         \x20       wal_log_hints: 'on'\n\
         \x20       max_connections: 200\n\
         \x20 initdb:\n  - encoding: UTF8\n  - auth: trust\n  - no-sync\n\
         \x20 pg_hba:\n\
         \x20 - local all all trust\n\
         \x20 - host replication all 127.0.0.1/32 trust\n\
         \x20 - host all all 127.0.0.1/32 trust\n\
         postgresql:\n\
         \x20 listen: 127.0.0.1:{pg_port}\n\
         \x20 connect_address: 127.0.0.1:{pg_port}\n\
         \x20 data_dir: {data}\n\
         \x20 bin_dir: {bin}\n\
         \x20 pgpass: {pgpass}\n\
         \x20 authentication:\n\
         \x20   replication:\n      username: postgres\n\
         \x20   superuser:\n      username: postgres\n\
         \x20 parameters:\n\
         \x20   unix_socket_directories: '{dir}'\n",
        data = dir.join(name).display(),
        bin = bin.display(),
        pgpass = dir.join(format!("{name}.pgpass")).display(),
        dir = dir.display(),
    )
}

fn haproxy_config(port: u16, stats: &Path, nodes: &[Node], sessions: OpenSessions) -> String {
    let on_down = match sessions {
        OpenSessions::Killed => " on-marked-down shutdown-sessions",
        OpenSessions::Kept => "",
    };
    let mut config = format!(
        "global\n\
         \x20   maxconn 400\n\
         \x20   stats socket {stats} mode 600 level admin\n\
         defaults\n\
         \x20   mode tcp\n\
         \x20   retries 2\n\
         \x20   timeout client 30m\n\
         \x20   timeout connect 4s\n\
         \x20   timeout server 30m\n\
         \x20   timeout check 5s\n\
         listen primary\n\
         \x20   bind 127.0.0.1:{port}\n\
         \x20   option httpchk OPTIONS /primary\n\
         \x20   http-check expect status 200\n\
         \x20   default-server inter 3s fall 3 rise 2{on_down}\n",
        stats = stats.display(),
    );
    for node in nodes {
        config.push_str(&format!(
            "    server {} 127.0.0.1:{} maxconn 200 check port {}\n",
            node.name, node.pg_port, node.rest_port
        ));
    }
    config
}

/// The status of Patroni's REST `GET /{check}` on `port`, if it answers.
pub async fn rest_status(port: u16, check: &str) -> Option<u16> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .ok()?;
    let response = client
        .get(format!("http://127.0.0.1:{port}/{check}"))
        .send()
        .await
        .ok()?;
    Some(response.status().as_u16())
}

/// Polls `ready` every 100 ms until it holds, or panics after `limit` naming `what`.
pub async fn wait_for<F, Fut>(limit: Duration, what: &str, mut ready: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !ready().await {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
