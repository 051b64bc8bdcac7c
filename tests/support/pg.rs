//! A PostgreSQL cluster of the test's own, which it may stop, restart and slow down (the
//! shared cluster of `scripts/test` must stay up for every other test). Server binaries from
//! `PG_BIN` (`scripts/test` exports it) or the newest `/usr/lib/postgresql/*/bin`; as root,
//! the server runs as the `postgres` user, as PostgreSQL requires.

use std::path::{Path, PathBuf};
use std::process::Command;
use tempfile::TempDir;

pub struct Cluster {
    dir: TempDir,
    bin: PathBuf,
    pub port: u16,
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn pg_bin() -> PathBuf {
    if let Ok(b) = std::env::var("PG_BIN") {
        return PathBuf::from(b);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries (run scripts/test, which installs them)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    found.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
    });
    found
        .pop()
        .expect("no /usr/lib/postgresql/*/bin/initdb: run scripts/test, which installs it")
}

impl Cluster {
    /// Init and start a cluster on a free port.
    pub fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let bin = pg_bin();
        let port = super::peers::free_port();
        if is_root() {
            run(
                "chown",
                &["postgres:postgres", &dir.path().display().to_string()],
            );
        }
        let data = dir.path().join("data");
        let c = Cluster { dir, bin, port };
        c.as_owner(
            "initdb",
            &[
                "-D",
                &data.display().to_string(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
            ],
        );
        let conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\nfsync = off\nmax_connections = 100\n",
            c.dir.path().display()
        );
        let mut text = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
        text.push_str(&conf);
        std::fs::write(data.join("postgresql.conf"), text).unwrap();
        c.up();
        c
    }

    /// `postgres://…` of its `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Start it (again), on the same port and data.
    pub fn up(&self) {
        let data = self.dir.path().join("data").display().to_string();
        let log = self.dir.path().join("postgres.log").display().to_string();
        self.as_owner(
            "pg_ctl",
            &["-D", &data, "-l", &log, "-w", "-t", "60", "start"],
        );
    }

    /// Stop it the way an outage does: at once, connections cut.
    pub fn down(&self) {
        let data = self.dir.path().join("data").display().to_string();
        self.as_owner("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
    }

    fn as_owner(&self, tool: &str, args: &[&str]) {
        let exe = self.bin.join(tool);
        let out = if is_root() {
            let mut all = vec!["-u", "postgres", "--", exe.to_str().unwrap()];
            all.extend_from_slice(args);
            Command::new("runuser").args(&all).output()
        } else {
            Command::new(&exe).args(args).output()
        }
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
        assert!(
            out.status.success(),
            "{tool} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        if data.join("postmaster.pid").exists() {
            let data = data.display().to_string();
            let exe = self.bin.join("pg_ctl");
            let args = ["-D", data.as_str(), "-m", "immediate", "stop"];
            let _ = if is_root() {
                Command::new("runuser")
                    .args(["-u", "postgres", "--", exe.to_str().unwrap()])
                    .args(args)
                    .output()
            } else {
                Command::new(&exe).args(args).output()
            };
        }
    }
}

fn run(cmd: &str, args: &[&str]) {
    let st = Command::new(cmd).args(args).status().unwrap();
    assert!(st.success(), "{cmd} {args:?}");
}
