//! Storage faults against the real binary (issue 9): the data dir on a small tmpfs that fills
//! up. Mounting needs root; CI runs as root, so there the test must run, and it fails rather
//! than skips when it cannot mount.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use crate::support::Daemon;

const TOKEN: &str = "phc_disk_full";

/// A tmpfs mounted for the length of a test.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mount a tmpfs of `mib` MiB on `dir`; `None` when not root outside CI.
    fn mount(dir: &Path, mib: u64) -> Option<Tmpfs> {
        let root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        if !root {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must run this test as root: it mounts a tmpfs"
            );
            eprintln!("skipped: mounting a tmpfs needs root");
            return None;
        }
        std::fs::create_dir_all(dir).expect("mount point");
        let size = format!("size={mib}m");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &size, "tmpfs"])
            .arg(dir)
            .status()
            .expect("run mount")
            .success();
        assert!(ok, "mount -t tmpfs failed on {}", dir.display());
        Some(Tmpfs {
            dir: dir.to_path_buf(),
        })
    }

    fn resize(&self, mib: u64) {
        let opt = format!("remount,size={mib}m");
        let ok = Command::new("mount")
            .args(["-o", &opt])
            .arg(&self.dir)
            .status()
            .expect("run mount")
            .success();
        assert!(ok, "remount failed");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// A batch of `n` new users' events, ~1 KB each, so that the disk fills quickly.
fn batch(request: usize, n: usize) -> Value {
    let pad = "p".repeat(1000);
    let events: Vec<Value> = (0..n)
        .map(|j| {
            json!({"event": "e", "distinct_id": format!("u{request}-{j}"),
                   "uuid": format!("00000000-0000-4000-8000-{:06}{:06}", request, j),
                   "properties": {"pad": pad, "$set": {"n": j}}})
        })
        .collect();
    json!({"api_key": TOKEN, "batch": events})
}

fn header<'a>(r: &'a idstitch::cli::client::Response, name: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

#[test]
fn a_full_disk_answers_503_keeps_serving_reads_and_loses_nothing_acknowledged() {
    let tmp = tempfile::tempdir().expect("tmp");
    let Some(fs) = Tmpfs::mount(&tmp.path().join("mnt"), 24) else {
        return;
    };
    let log = tmp.path().join("daemon.log");
    let mut d = Daemon::on_logged(&fs.dir.join("store"), &[], Some(&log));

    // Fill the disk: every 200 is remembered; the first 503 ends the filling.
    let mut acked: Vec<usize> = Vec::new();
    let mut refused = None;
    for request in 0..2_000 {
        let r = d.post("/batch/", &batch(request, 50));
        match r.status {
            200 => acked.push(request),
            503 => {
                refused = Some(r);
                break;
            }
            s => panic!(
                "unexpected status {s}: {}",
                String::from_utf8_lossy(&r.body)
            ),
        }
    }
    let refused = refused.expect("24 MiB filled up within 100 MB of events");
    assert!(!acked.is_empty(), "some batches fit before the disk filled");
    assert!(
        header(&refused, "retry-after").is_some(),
        "a 503 says when to retry"
    );
    let body = String::from_utf8_lossy(&refused.body).to_string();
    assert!(body.contains("No space left"), "names the cause: {body}");

    // Writes keep failing fast with 503, and the cause is not logged again per request.
    for request in 5_000..5_010 {
        let r = d.post("/batch/", &batch(request, 1));
        assert_eq!(r.status, 503);
        assert!(header(&r, "retry-after").is_some());
    }
    // A redelivery of an acknowledged batch has nothing to write, and is refused all the
    // same: a daemon that cannot write takes no captures.
    let again = d.post("/batch/", &batch(acked[0], 50));
    assert_eq!(
        again.status,
        503,
        "{}",
        String::from_utf8_lossy(&again.body)
    );
    let text = std::fs::read_to_string(&log).expect("log");
    assert_eq!(
        text.lines()
            .filter(|l| l.contains("No space left on device"))
            .count(),
        1,
        "the cause is logged once:\n{text}"
    );

    // Reads go on: persons, events, health (503, naming the cause).
    let first = d
        .person(TOKEN, "u0-0")
        .expect("an acknowledged person is readable");
    assert_eq!(first["properties"]["n"], 0);
    let h = d.get("/_health");
    assert_eq!(h.status, 503);
    assert!(String::from_utf8_lossy(&h.body).contains("No space left"));

    // SIGTERM now exits non-zero with the cause.
    let status = d.terminate();
    assert_eq!(
        status.code(),
        Some(2),
        "a daemon that lost its writes exits 2"
    );
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(
        text.contains("No space left on device. Fix the cause")
            && text.contains("then restart idstitch: it recovers every acknowledged event"),
        "the last line says what to do:\n{text}"
    );

    // Space returns; a restart recovers every acknowledged event and person, and writes work.
    fs.resize(256);
    d.start_again();
    let persons = d.all_persons(TOKEN);
    let expected = acked.len() * 50;
    assert!(
        persons.len() >= expected,
        "{} persons after the restart, {} acknowledged",
        persons.len(),
        expected
    );
    for request in [
        acked[0],
        acked[acked.len() / 2],
        *acked.last().expect("one"),
    ] {
        for j in [0, 49] {
            let did = format!("u{request}-{j}");
            let p = d
                .person(TOKEN, &did)
                .unwrap_or_else(|| panic!("acknowledged {did} lost"));
            assert_eq!(p["properties"]["n"], j);
            let uuid = p["uuid"].as_str().expect("uuid");
            assert_eq!(d.events_of_person(TOKEN, uuid).len(), 1, "{did}'s event");
        }
    }
    d.capture(TOKEN, batch(9_999, 1)["batch"].clone());
    assert!(d.person(TOKEN, "u9999-0").is_some());
    // verify opens the store itself: stop the daemon first.
    assert!(d.terminate().success());
    d.assert_verifies();
}

#[test]
fn on_storage_error_exit_stops_the_daemon_with_code_2() {
    let tmp = tempfile::tempdir().expect("tmp");
    let Some(fs) = Tmpfs::mount(&tmp.path().join("mnt"), 24) else {
        return;
    };
    let mut d = Daemon::on(&fs.dir.join("store"), &["--on-storage-error", "exit"]);
    let mut failed = false;
    for request in 0..2_000 {
        match d.try_request(
            "POST",
            "/batch/",
            &[("content-type", "application/json")],
            serde_json::to_vec(&batch(request, 50)).expect("json"),
        ) {
            Ok(r) if r.status == 200 => continue,
            _ => {
                failed = true;
                break;
            }
        }
    }
    assert!(failed, "the disk filled up");
    let status = d.terminate();
    assert_eq!(status.code(), Some(2));
}

/// api.md: exit 3 when corruption is detected. A log entry that does not decode, found by the
/// recovery at start, stops `serve` with 3 and a line that says what to do.
/// A data dir that cannot be created is the path's fault, not damaged data: exit 1 (not 3,
/// which says to restore a snapshot), naming the dir and why.
#[test]
fn a_data_dir_that_cannot_be_created_exits_1_saying_why() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "not a dir").unwrap();
    let dir = file.join("store");
    let out = Command::new(crate::support::bin())
        .args(["serve", "--data-dir"])
        .arg(&dir)
        .arg("--socket")
        .arg(tmp.path().join("s.sock"))
        .output()
        .expect("run serve");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot create data dir {}", dir.display()))
            && !stderr.contains("snapshot restore"),
        "{stderr}"
    );
    // A data dir that is a file: the socket's directory (the data dir) cannot be created.
    let out = Command::new(crate::support::bin())
        .args(["serve", "--data-dir"])
        .arg(&file)
        .output()
        .expect("run serve");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot create {}", file.display())),
        "{stderr}"
    );
    assert!(stderr.contains("--data-dir"), "{stderr}");
}

#[test]
fn a_corrupt_log_entry_found_at_start_exits_3() {
    let mut d = Daemon::start();
    d.capture(TOKEN, json!([{"event": "e", "distinct_id": "u"}]));
    assert_eq!(d.terminate().code(), Some(0));
    {
        let store = idstitch::store::Store::open(&d.dir).expect("open");
        let next = idstitch::domain::Seq(store.last_log_seq().unwrap().0 + 1);
        let log = store.db().cf_handle("log").unwrap();
        // Not a log record: an unknown format version byte, then noise.
        store
            .db()
            .put_cf(&log, idstitch::store::keys::log(next), b"\xEEnot an entry")
            .unwrap();
    }
    let out = Command::new(crate::support::bin())
        .args(["serve", "--data-dir"])
        .arg(&d.dir)
        .arg("--socket")
        .arg(d.dir.join("corrupt.sock"))
        .output()
        .expect("run serve");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("snapshot restore"),
        "says what to do: {stderr}"
    );
}

/// The one write-ahead log file of a data dir whose daemon was killed: what RocksDB replays.
fn the_write_ahead_log(dir: &Path) -> PathBuf {
    let logs: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("data dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    assert_eq!(logs.len(), 1, "{logs:?}");
    logs.into_iter().next().unwrap()
}

/// `idstitch <args> --data-dir <dir>`: its exit code and what it printed.
fn run_on(dir: &Path, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(crate::support::bin())
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .output()
        .expect("run idstitch");
    let said = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    (out.status.code(), said.into_owned())
}

/// A damaged record in the middle of the write-ahead log (disk corruption after a crash, with
/// acknowledged events only there) is found: `verify` and `serve` exit 3 saying what to do,
/// where RocksDB's default recovery dropped that record and every one after it without a
/// word. `serve --salvage-wal` keeps what comes before it. A record cut short at the end (a
/// crash while it was written, so never acknowledged) is not damage: the daemon starts.
#[test]
fn a_damaged_write_ahead_log_record_is_refused_with_exit_3_unless_salvaged() {
    let mut d = Daemon::start();
    for i in 0..40 {
        let pad = format!("{i:0>600}");
        let ev = json!({"event": "e", "distinct_id": format!("u{i}"), "properties": {"pad": pad}});
        d.capture(TOKEN, json!([ev]));
    }
    d.kill();
    let wal = the_write_ahead_log(&d.dir);
    let bytes = std::fs::read(&wal).expect("read the log");
    let tmp = tempfile::tempdir().unwrap();
    let copy = |name: &str| {
        let dir = tmp.path().join(name);
        let ok = Command::new("cp").arg("-a").arg(&d.dir).arg(&dir).status();
        assert!(ok.expect("cp").success());
        dir
    };

    // Cut short by 10 bytes: the last record, as a crash in the middle of its write leaves it.
    let cut = copy("cut");
    std::fs::write(the_write_ahead_log(&cut), &bytes[..bytes.len() - 10]).unwrap();
    let (code, said) = run_on(&cut, &["verify"]);
    assert_eq!(code, Some(0), "{said}");
    // That log file stays (RocksDB does not flush at the open) while a new one takes new
    // writes: after another crash, both are replayed.
    let mut again = Daemon::on(&cut, &[]);
    let before = again.all_persons(TOKEN).len();
    assert!(before >= 39, "{before} persons");
    again.capture(
        TOKEN,
        json!([{"event": "e", "distinct_id": "after-the-cut"}]),
    );
    again.restart();
    assert_eq!(again.all_persons(TOKEN).len(), before + 1);
    again.kill();

    // Damaged in the middle: a few bytes of one event's padding overwritten.
    let damaged = copy("damaged");
    let mut bad = bytes.clone();
    let at = bytes.len() / 2;
    bad[at..at + 4].copy_from_slice(b"\xff\xfe\xfd\xfc");
    std::fs::write(the_write_ahead_log(&damaged), &bad).unwrap();
    let (code, said) = run_on(&damaged, &["verify"]);
    assert_eq!(code, Some(3), "verify: {said}");
    assert!(
        said.contains("Corruption") && said.contains("--salvage-wal"),
        "{said}"
    );
    let socket = damaged.with_extension("sock");
    let socket = socket.to_str().unwrap();
    let (code, said) = run_on(&damaged, &["serve", "--socket", socket]);
    assert_eq!(code, Some(3), "serve: {said}");
    assert!(
        said.contains("snapshot restore") && said.contains("--salvage-wal"),
        "{said}"
    );

    let mut salvaged = Daemon::on(&damaged, &["--salvage-wal"]);
    let kept = salvaged.all_persons(TOKEN).len();
    assert!((1..40).contains(&kept), "kept {kept} of 40 persons");
    assert!(salvaged.person(TOKEN, "u0").is_some());
    assert_eq!(salvaged.terminate().code(), Some(0));
    let (code, said) = run_on(&damaged, &["verify"]);
    assert_eq!(code, Some(0), "after the salvage: {said}");
}

/// api.md: SIGTERM stops the daemon with exit 0. After an unclean stop, RocksDB's own open
/// replays its write-ahead log (here ~40 MB of memtable writes, never flushed), before the
/// daemon's replay; a signal that arrives then is served once the daemon is up, as during the
/// daemon's replay, instead of ending the process by the signal's default action.
#[test]
fn sigterm_while_rocksdb_replays_its_write_ahead_log_at_open_stops_cleanly() {
    use idstitch::domain::{ProjectId, Props};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let persons = 40_000u64;
    {
        let store = idstitch::store::Store::open(&dir).expect("open");
        let p = ProjectId(1);
        let props: Props = serde_json::from_value(json!({"bio": "x".repeat(400)})).unwrap();
        let entries: Vec<_> = (1..=persons)
            .map(|i| crate::support::creation(p, i, format!("user-{i}"), props.clone(), 0))
            .collect();
        for group in entries.chunks(4096) {
            idstitch::store::log::write_group(&store, group, true).expect("write");
        }
        // Dropped without a flush, as by a crash: the writes are only in the write-ahead log.
    }
    sigterm_on_line_then_verify(&dir, "Opening the data dir.", persons);
}

/// api.md: SIGTERM stops the daemon with exit 0. One that arrives while the start-up replay
/// runs (here a rebuild of 60,000 entries) is served once the replay is done: a clean stop,
/// not death by the signal, and nothing is lost.
#[test]
fn sigterm_during_the_start_up_replay_stops_cleanly() {
    use idstitch::domain::ProjectId;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    {
        let store = idstitch::store::Store::open(&dir).expect("open");
        let p = ProjectId(1);
        let entries: Vec<_> = (1..=60_000u64)
            .map(|i| crate::support::creation(p, i, format!("user-{i}"), Default::default(), 0))
            .collect();
        idstitch::store::log::write_group(&store, &entries, true).expect("write");
        // As after an upgrade of the derived format: the next start rebuilds from the log.
        let meta = store.db().cf_handle("meta").unwrap();
        store.db().delete_cf(&meta, b"derived_format").unwrap();
        store.db().flush_wal(true).unwrap();
    }
    sigterm_on_line_then_verify(&dir, "Replaying the log.", 60_000);
}

/// Start `serve` on `dir`, send SIGTERM as soon as its log says `line` (checking that it is
/// not up yet), and expect a clean stop (exit 0) once it is up, then `persons` persons in a
/// full `verify`.
fn sigterm_on_line_then_verify(dir: &Path, line: &str, persons: u64) {
    let log = dir.with_extension("log");
    let mut child = Command::new(crate::support::bin())
        .args(["serve", "--data-dir"])
        .arg(dir)
        .arg("--socket")
        .arg(dir.join("s.sock"))
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start serve");
    let started = std::time::Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains(line)
    {
        assert!(started.elapsed().as_secs() < 60, "no {line:?} seen");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text.contains("Recovered."),
        "the signal must land before the daemon is up: {text}"
    );
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = child.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(0), "{status}: {text}");
    assert!(
        text.contains("Recovered.") && text.contains("Stopped."),
        "{text}"
    );
    let verify = Command::new(crate::support::bin())
        .args(["verify", "--data-dir"])
        .arg(dir)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&verify.stdout);
    assert!(
        verify.status.success() && out.contains(&format!("{persons} persons")),
        "{out}"
    );
}
