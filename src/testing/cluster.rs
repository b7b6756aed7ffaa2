//! A throwaway Postgres cluster of a test's own, for tests that stop, kill or restart the
//! database: `initdb` and `pg_ctl` from the local binaries (`/usr/lib/postgresql/*/bin`),
//! run as the `postgres` user when the tests run as root, in a temporary directory, on a
//! free port, listening on loopback only, removed when dropped. The machine's shared
//! server is never touched.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// A running (or stopped) cluster.
pub struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub url: String,
}

/// The directory of the newest local Postgres binaries, if any.
pub fn local_binaries() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .map(|entry| entry.path().join("bin"))
        .filter(|bin| bin.join("initdb").exists() && bin.join("pg_ctl").exists())
        .collect();
    dirs.sort_by_key(|dir| {
        dir.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    dirs.pop()
}

/// Whether this process runs as root (then clusters run as the `postgres` user).
pub fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// A temporary directory for a cluster, owned by `postgres` when running as root (Postgres
/// refuses to run as root).
pub fn owned_temp_dir(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
    if running_as_root() {
        let chown = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(chown.success(), "chown of {} failed", dir.path().display());
    }
    dir
}

/// A TCP port on 127.0.0.1 that nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Cluster {
    /// Creates and starts a cluster (trust authentication, user `postgres`).
    ///
    /// # Panics
    /// With a message saying how to get them, when there are no local Postgres binaries.
    pub fn start() -> Self {
        let bin = local_binaries().expect(
            "this test needs the Postgres server binaries (initdb, pg_ctl) to make a throwaway \
             cluster: apt-get install postgresql (Debian), or point DATABASE_URL at a server \
             for the other tests (docker compose up -d)",
        );
        let dir = owned_temp_dir("ks-cluster-");
        let mut cluster = Self::on_port(dir, bin, free_port());
        let data = cluster.data_dir();
        cluster.run_checked(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        cluster.start_first_time();
        cluster
    }

    /// A hot standby of `primary`, streaming from it (`pg_basebackup -R`), started.
    pub fn standby_of(primary: &Cluster) -> Self {
        let dir = owned_temp_dir("ks-standby-");
        let mut standby = Self::on_port(dir, primary.bin.clone(), free_port());
        let data = standby.data_dir();
        standby.run_checked(
            "pg_basebackup",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &primary.port.to_string(),
                "-U",
                "postgres",
                "-D",
                data.to_str().unwrap(),
                "-R",
                "-X",
                "stream",
                "--checkpoint=fast",
                "--no-sync",
            ],
        );
        standby.start_first_time();
        standby
    }

    fn on_port(dir: tempfile::TempDir, bin: PathBuf, port: u16) -> Self {
        Self {
            url: Self::url_on(port),
            dir,
            bin,
            port,
        }
    }

    /// The URL of a cluster on `port`, as user `postgres`.
    fn url_on(port: u16) -> String {
        format!("postgres://postgres@127.0.0.1:{port}/postgres")
    }

    /// Starts a new cluster. [`free_port`] only finds a port that was free a moment ago:
    /// another test's server (or any process) may take it before this one binds it. Then
    /// the cluster moves to another port, as nothing refers to this one yet.
    fn start_first_time(&mut self) {
        for _ in 0..5 {
            match self.try_start() {
                Ok(()) => return self.wait_accepting(Duration::from_secs(60)),
                Err(failure) if failure.port_taken => {
                    self.port = free_port();
                    self.url = Self::url_on(self.port);
                }
                Err(failure) => panic!("{}", failure.message),
            }
        }
        panic!("five free ports in a row were taken before the cluster could bind them");
    }

    /// Runs one SQL statement on the cluster with `psql` (as its owner), returning its output.
    pub fn psql(&self, sql: &str) -> String {
        let out = self.run_client("psql", &["-tAc", sql]);
        assert!(
            out.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_file(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// Runs a Postgres binary as the cluster's owner.
    fn run(&self, tool: &str, args: &[&str]) -> Output {
        let program = self.bin.join(tool);
        let mut command = if running_as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        command
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()))
    }

    /// Runs a client tool against the cluster as user `postgres`, then `args`.
    fn run_client(&self, tool: &str, args: &[&str]) -> Output {
        let port = self.port.to_string();
        let mut all = vec!["-h", "127.0.0.1", "-p", &port, "-U", "postgres"];
        all.extend(args);
        self.run(tool, &all)
    }

    fn run_checked(&self, tool: &str, args: &[&str]) {
        let out = self.run(tool, args);
        assert!(
            out.status.success(),
            "{tool} failed: {}\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts the (stopped) cluster and waits until it accepts connections. Its clients
    /// know its port, so it keeps it: when another process took the port while the cluster
    /// was down, this waits (up to a minute) for the port to be free again.
    pub fn start_again(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.try_start() {
                Ok(()) => return self.wait_accepting(Duration::from_secs(60)),
                Err(failure) if failure.port_taken && Instant::now() < deadline => {
                    while std::net::TcpListener::bind(("127.0.0.1", self.port)).is_err()
                        && Instant::now() < deadline
                    {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
                Err(failure) => panic!("{}", failure.message),
            }
        }
    }

    /// `pg_ctl start`, waiting for the server; on failure, what went wrong, with what the
    /// server logged during this start (where Postgres says why), and whether its port was
    /// taken.
    fn try_start(&self) -> Result<(), StartFailure> {
        let data = self.data_dir();
        let socket_dir = self.dir.path().to_str().unwrap().to_owned();
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {socket_dir} -c max_connections=200",
            self.port
        );
        let log_before = self.log().len();
        let out = self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-l",
                self.log_file().to_str().unwrap(),
                "-o",
                &options,
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        if out.status.success() {
            return Ok(());
        }
        let log = self.log();
        let this_start = log.get(log_before..).unwrap_or(&log);
        Err(StartFailure {
            port_taken: this_start.contains("could not bind")
                || this_start.contains("Address already in use"),
            message: format!(
                "pg_ctl start on port {} failed: {}\n{}{}\nthe server's log of this start:\n{}",
                self.port,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                this_start
            ),
        })
    }

    /// Waits until the server accepts connections (after a start, or crash recovery).
    pub fn wait_accepting(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let ready = self.run_client("pg_isready", &[]);
            if ready.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster never accepted connections"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `pg_ctl stop -m fast`: disconnects every client, shuts down cleanly.
    pub fn stop_fast(&self) {
        let data = self.data_dir();
        self.run_checked(
            "pg_ctl",
            &["-D", data.to_str().unwrap(), "-m", "fast", "-w", "stop"],
        );
    }

    /// `kill -9` of the postmaster (its backends follow): a crash; the next start runs
    /// crash recovery.
    pub fn kill_postmaster(&self) {
        let pid = self.postmaster_pid().expect("the cluster is not running");
        let children: Vec<String> = Command::new("pgrep")
            .args(["-P", &pid.to_string()])
            .output()
            .map(|out| {
                String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let status = Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        // The backends notice their postmaster is gone and exit (a new postmaster would
        // refuse to start beside them): wait for them and for the port.
        let deadline = Instant::now() + Duration::from_secs(20);
        let alive = |pid: &str| Path::new(&format!("/proc/{pid}")).exists();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            || alive(&pid.to_string())
            || children.iter().any(|child| alive(child))
        {
            assert!(
                Instant::now() < deadline,
                "the killed postmaster kept running"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // What a crashed server leaves behind would block the next start's port check.
        let _ = std::fs::remove_file(self.data_dir().join("postmaster.pid"));
    }

    fn postmaster_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// Keeps the cluster running until this test process ends, then stops and removes it
    /// (a watchdog process waits for this one to exit): the suite's own server when no
    /// Postgres is configured or running. Returns its URL.
    pub fn for_this_process(self) -> String {
        // Neither this nor its directory is dropped here: the watchdog stops and removes them.
        let this = std::mem::ManuallyDrop::new(self);
        let url = this.url.clone();
        let data = this.data_dir();
        let pg_ctl = this.bin.join("pg_ctl");
        let as_owner = if running_as_root() {
            "runuser -u postgres -- "
        } else {
            ""
        };
        let dir = this.dir.path().to_path_buf();
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; \
             {as_owner}{pg_ctl} -D {data} -m immediate stop >/dev/null 2>&1; rm -rf {dir}",
            pid = std::process::id(),
            pg_ctl = pg_ctl.display(),
            data = data.display(),
            dir = dir.display(),
        );
        // Outlives this process on purpose: it is what cleans up after it.
        #[allow(clippy::zombie_processes)]
        Command::new("sh")
            .args(["-c", &script])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start the cluster's watchdog");
        url
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_file()).unwrap_or_default()
    }
}

/// Why `pg_ctl start` failed.
struct StartFailure {
    /// Another process holds the port.
    port_taken: bool,
    /// The whole story, for the panic.
    message: String,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(pid) = self.postmaster_pid() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}
