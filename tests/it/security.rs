//! What a local or TCP client can learn or reach: the socket's mode, and the admin key, which
//! is compared in constant time (`api::server`'s unit test) and never written to the log.
//! (Snapshot paths outside `--snapshot-dir` are refused: see snapshots.rs.)

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{bin, free_port, Daemon};

#[test]
fn the_socket_is_created_with_the_configured_mode() {
    let d = Daemon::start_with(&["--socket-mode", "660"]);
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
}

#[test]
fn a_socket_mode_that_is_not_octal_is_refused_with_exit_1() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(bin())
        .args(["serve", "--socket-mode", "rw-rw----", "--data-dir"])
        .arg(tmp.path().join("store"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an octal mode"));
}

/// One HTTP/1.1 request over TCP; returns the status line.
fn tcp_status(addr: &str, path: &str, auth: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.lines().next().unwrap_or_default().to_string()
}

#[test]
fn the_admin_key_never_appears_in_the_log_even_at_trace_level() {
    let tmp = tempfile::tempdir().unwrap();
    let key = "k3y-that-must-not-leak-7f3a";
    let key_file = tmp.path().join("admin.key");
    std::fs::write(&key_file, format!("{key}\n")).unwrap();
    let log = tmp.path().join("stderr.log");
    let addr = format!("127.0.0.1:{}", free_port());
    let socket = tmp.path().join("store/idstitch.sock");
    let mut child = Command::new(bin())
        .args(["serve", "--http", &addr, "--admin-key-file"])
        .arg(&key_file)
        .arg("--data-dir")
        .arg(tmp.path().join("store"))
        .env("RUST_LOG", "trace")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !(socket.exists() && TcpStream::connect(&addr).is_ok()) {
        assert!(start.elapsed() < Duration::from_secs(60), "not ready");
        assert!(child.try_wait().unwrap().is_none(), "idstitch exited");
        std::thread::sleep(Duration::from_millis(20));
    }
    let wrong = "k3y-that-must-not-leak-7f3b";
    let right = format!("Bearer {key}");
    assert!(tcp_status(&addr, "/api/projects/", &right).contains("200"));
    assert!(tcp_status(&addr, "/api/projects/", &format!("Bearer {wrong}")).contains("401"));
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    assert!(child.wait().unwrap().success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.is_empty(), "trace logging produced nothing to check");
    assert!(!text.contains(key), "the admin key is in the log");
    assert!(!text.contains(wrong), "a presented key is in the log");
}
