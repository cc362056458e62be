//! Helpers shared by the benches: free ports, child processes ended by their PID, idgate
//! and redis-server started on loopback, percentiles.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
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

/// A child process, killed (by its PID) and reaped on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        // Only the process this bench started, by its PID.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `idgate serve` with `[server]` on free loopback ports plus `rest`; returns the
/// process, its public address and its admin address.
pub fn start_idgate(
    upstream: SocketAddr,
    dir: &std::path::Path,
    name: &str,
    rest: &str,
) -> (Proc, SocketAddr, SocketAddr) {
    let port = free_port();
    let admin = free_port();
    // BENCH_IDGATE_WORKERS sets [server].workers (default: one per core).
    let workers = std::env::var("BENCH_IDGATE_WORKERS")
        .ok()
        .and_then(|w| w.parse::<usize>().ok())
        .map_or(String::new(), |w| format!("workers = {w}\n"));
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin}\"\n\
         upstream = \"http://{upstream}\"\n{workers}{rest}\n"
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_idgate"))
        .args(["serve", "--config"])
        .arg(&path)
        .env("IDGATE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start idgate");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let proc = Proc(child);
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
    let proc = Proc(child);
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
