//! Helpers shared by the benches: free ports, child processes ended by their PID, idgate
//! and redis-server started on loopback, percentiles.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// idgate's `[server].workers` in every bench: `BENCH_IDGATE_WORKERS`, or idgate's own
/// default (one per CPU this process may use). The processes of the servers compared
/// with idgate (nginx, Apache) are set to the same number.
pub fn idgate_workers() -> usize {
    std::env::var("BENCH_IDGATE_WORKERS")
        .ok()
        .and_then(|w| w.parse::<usize>().ok())
        .filter(|w| *w > 0)
        .unwrap_or_else(idgate::config::default_workers)
}

/// Whether this process runs as root (nginx and Apache then need a `user` to drop to).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_for_port(addr: SocketAddr, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not start listening on {addr}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process, ended (by its PID) and reaped on drop.
pub struct Proc {
    child: Child,
    /// Ask with SIGTERM first: a process with children of its own (nginx's master and
    /// its workers) or a profiler wrapping idgate must get to clean up, or workers are
    /// orphaned and profiles never written.
    gentle: bool,
    /// The child leads a process group of its own (`process_group(0)`), and the whole
    /// group is ended: a profiler wrapping idgate may exit on SIGTERM and leave idgate
    /// running, orphaned, under init.
    group: bool,
}

impl Proc {
    /// Killed with SIGKILL on drop.
    pub fn new(child: Child) -> Proc {
        Proc {
            child,
            gentle: false,
            group: false,
        }
    }

    /// Sent SIGTERM on drop, and SIGKILL only if it is still there after 10 s.
    pub fn gentle(child: Child) -> Proc {
        Proc {
            child,
            gentle: true,
            group: false,
        }
    }

    /// As [`Proc::gentle`], for a child spawned with `process_group(0)`: SIGTERM and
    /// then SIGKILL go to its whole group, so nothing it started outlives it.
    pub fn gentle_group(child: Child) -> Proc {
        Proc {
            child,
            gentle: true,
            group: true,
        }
    }

    /// The process id, for reading its CPU time.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Only the process this bench started, by its PID, or the group it leads.
        let target = if self.group {
            format!("-{}", self.child.id())
        } else {
            self.child.id().to_string()
        };
        let signal = |sig: &str| {
            let _ = Command::new("kill")
                .args([sig, "--", &target])
                .stderr(Stdio::null())
                .status();
        };
        if self.gentle {
            signal("-TERM");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if self.group {
            // The leader may be gone while what it wrapped is not.
            signal("-KILL");
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU time (user + system) used so far by `pid` and its direct children (nginx's
/// workers), in microseconds, from `/proc`. None where `/proc` is not readable.
pub fn cpu_micros(pid: u32) -> Option<u64> {
    let ticks = |stat: &str| -> Option<(u32, u64)> {
        // The command name is in parentheses and may hold spaces: split after it.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ppid = fields.get(1)?.parse().ok()?;
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        Some((ppid, utime + stime))
    };
    let own = ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)?.1;
    let children: u64 = std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|p| ticks(&std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?))
        .filter(|(ppid, _)| *ppid == pid)
        .map(|(_, t)| t)
        .sum();
    // Linux reports in USER_HZ, which is 100 on every architecture it runs on.
    Some((own + children) * 10_000)
}

/// Starts `idgate serve` with `[server]` on free loopback ports plus `rest`; returns the
/// process, its public address and its admin address.
pub fn start_idgate(
    upstream: SocketAddr,
    dir: &std::path::Path,
    name: &str,
    rest: &str,
) -> (Proc, SocketAddr, SocketAddr) {
    start_idgate_bin(env!("CARGO_BIN_EXE_idgate"), upstream, dir, name, rest)
}

/// [`start_idgate`] with another idgate binary (a baseline build to compare against).
pub fn start_idgate_bin(
    bin: &str,
    upstream: SocketAddr,
    dir: &std::path::Path,
    name: &str,
    rest: &str,
) -> (Proc, SocketAddr, SocketAddr) {
    start_idgate_on(bin, free_port(), upstream, dir, name, rest)
}

/// [`start_idgate_bin`] on a listen port chosen by the caller (whose config names it,
/// as `public_url` does).
pub fn start_idgate_on(
    bin: &str,
    port: u16,
    upstream: SocketAddr,
    dir: &std::path::Path,
    name: &str,
    rest: &str,
) -> (Proc, SocketAddr, SocketAddr) {
    let admin = free_port();
    // Written out, not left to idgate's default, so that the baselines given the same
    // count (nginx's worker_processes, Apache's processes) match it by construction.
    let workers = idgate_workers();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin}\"\n\
         upstream = \"http://{upstream}\"\nworkers = {workers}\n{rest}\n"
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config).unwrap();
    // BENCH_IDGATE_WRAPPER runs idgate under a profiler, for example
    // "valgrind --tool=callgrind --callgrind-out-file=/tmp/cg-%p.out".
    let wrapper = std::env::var("BENCH_IDGATE_WRAPPER").unwrap_or_default();
    let mut words = wrapper.split_whitespace();
    let mut cmd = match words.next() {
        Some(program) => {
            let mut cmd = Command::new(program);
            cmd.args(words).arg(bin).process_group(0);
            cmd
        }
        None => Command::new(bin),
    };
    let child = cmd
        .args(["serve", "--config"])
        .arg(&path)
        .env("IDGATE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start idgate");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let proc = if wrapper.is_empty() {
        Proc::new(child)
    } else {
        Proc::gentle_group(child)
    };
    wait_for_port(addr, "idgate");
    (proc, addr, format!("127.0.0.1:{admin}").parse().unwrap())
}

pub fn start_redis(dir: &std::path::Path) -> (Proc, u16) {
    let port = free_port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", "no", "--dir"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("redis-server is installed by `make bench`");
    let proc = Proc::new(child);
    wait_for_port(format!("127.0.0.1:{port}").parse().unwrap(), "redis-server");
    (proc, port)
}

/// Total calls over every command, from `INFO commandstats`.
pub fn redis_calls(port: u16) -> u64 {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "INFO", "commandstats"])
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split("calls=").nth(1))
        .filter_map(|rest| rest.split(',').next()?.parse::<u64>().ok())
        .sum()
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}
