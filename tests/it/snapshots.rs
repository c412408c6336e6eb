//! Snapshot create / verify / restore, including point-in-time restore.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{json, Value};

use crate::support::{bin, dids, Daemon};

const T: &str = "phc_snap";

fn idstitch(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .output()
        .expect("run idstitch")
}

/// `idstitch args` must exit 0; the failure names its stderr.
fn succeeds(args: &[&str]) -> Output {
    let out = idstitch(args);
    assert!(
        out.status.success(),
        "idstitch {}: {}\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn s(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

fn persons(d: &Daemon) -> Vec<Value> {
    let mut v = d.all_persons(T);
    v.sort_by_key(|p| p["uuid"].as_str().unwrap().to_string());
    v
}

#[test]
fn a_snapshot_taken_while_ingesting_restores_to_the_state_at_its_seq() {
    let tmp = tempfile::tempdir().unwrap();
    let snaps = tmp.path().join("snaps");
    let mut d = Daemon::start_with(&["--snapshot-dir", s(&snaps)]);
    for i in 0..20 {
        d.capture(T, json!([{"event": "$identify", "distinct_id": format!("u{i}"), "properties": {"$anon_distinct_id": format!("a{i}")}}]));
    }
    let socket = d.socket.clone();
    let writer = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        for i in 20..200 {
            let body = serde_json::to_vec(
                &json!({"api_key": T, "batch": [{"event": "e", "distinct_id": format!("u{i}")}]}),
            )
            .unwrap();
            let _ = rt.block_on(async {
                let mut c = idstitch::cli::client::Conn::unix(&socket).await?;
                c.request(
                    "POST",
                    "/batch/",
                    &[("content-type", "application/json")],
                    body,
                )
                .await
            });
        }
    });
    let snap = snaps.join("during");
    succeeds(&["snapshot", "create", s(&snap), "--socket", s(&d.socket)]);
    writer.join().unwrap();
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(snap.join("manifest.json")).unwrap()).unwrap();
    let seq = manifest["last_seq"].as_u64().unwrap();
    assert!(seq > 0);
    succeeds(&["snapshot", "verify", s(&snap)]);

    let restored = tmp.path().join("restored");
    succeeds(&["snapshot", "restore", s(&snap), "--data-dir", s(&restored)]);
    succeeds(&["verify", "--data-dir", s(&restored)]);
    let r = Daemon::on(&restored, &[]);
    let n = r.all_persons(T).len() as u64;
    assert_eq!(n, manifest["counts"]["persons"].as_u64().unwrap());
    // A running daemon's data dir is its own: an offline snapshot of it is refused (exit 1),
    // and the refusal says what to use instead.
    let offline = tmp.path().join("offline");
    let out = idstitch(&["snapshot", "create", s(&offline), "--data-dir", s(&d.dir)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("use --socket"), "{stderr}");
    // The online snapshot equals the source's whole log replayed up to the manifest's seq.
    d.terminate();
    let full = tmp.path().join("full");
    succeeds(&["snapshot", "create", s(&full), "--data-dir", s(&d.dir)]);
    let replayed = tmp.path().join("replayed");
    succeeds(&[
        "snapshot",
        "restore",
        s(&full),
        "--data-dir",
        s(&replayed),
        "--as-of",
        &seq.to_string(),
    ]);
    let at_seq = Daemon::on(&replayed, &[]);
    assert_eq!(
        persons(&r),
        persons(&at_seq),
        "snapshot differs from the log replayed to its seq"
    );
    // It continues the sequence: new events land after the snapshot's last seq.
    r.capture(T, json!([{"event": "after", "distinct_id": "new-user"}]));
    let ev = r
        .get(&format!("/api/projects/{T}/events/?distinct_id=new-user"))
        .json();
    assert!(ev["results"][0]["seq"].as_u64().unwrap() > seq);
}

/// `--as-of` a seq past the snapshot's end is refused (exit 1) before the data dir is made:
/// it names a point the snapshot does not hold, most likely of another snapshot.
#[test]
fn a_restore_as_of_a_seq_past_the_snapshot_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut d = Daemon::start();
    d.capture(T, json!([{"event": "e", "distinct_id": "x"}]));
    d.terminate();
    let snap = tmp.path().join("snap");
    succeeds(&["snapshot", "create", s(&snap), "--data-dir", s(&d.dir)]);
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(snap.join("manifest.json")).unwrap()).unwrap();
    let last = manifest["last_seq"].as_u64().unwrap();
    let target = tmp.path().join("restored");
    let past = (last + 1).to_string();
    let out = idstitch(&[
        "snapshot",
        "restore",
        s(&snap),
        "--data-dir",
        s(&target),
        "--as-of",
        &past,
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "--as-of {past} is past the snapshot's last seq {last}"
        )),
        "{err}"
    );
    assert!(!target.exists(), "the refused restore made the data dir");
    // Its last seq itself is a cut that keeps everything.
    let at_end = last.to_string();
    succeeds(&[
        "snapshot",
        "restore",
        s(&snap),
        "--data-dir",
        s(&target),
        "--as-of",
        &at_end,
    ]);
    assert!(Daemon::on(&target, &[]).person(T, "x").is_some());
}

#[test]
fn verify_catches_a_flipped_byte_a_missing_file_and_a_foreign_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    let mut d = Daemon::start();
    d.capture(
        T,
        json!([{"event": "e", "distinct_id": "x", "$set": {"a": 1}}]),
    );
    d.terminate();
    let snap = tmp.path().join("s1");
    succeeds(&["snapshot", "create", s(&snap), "--data-dir", s(&d.dir)]);
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(snap.join("manifest.json")).unwrap()).unwrap();
    let victim = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .max_by_key(|f| f["size"].as_u64())
        .unwrap()["name"]
        .as_str()
        .unwrap()
        .to_string();

    let flipped = tmp.path().join("flipped");
    copy_tree(&snap, &flipped);
    let path = flipped.join("db").join(&victim);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xFF;
    std::fs::write(&path, bytes).unwrap();
    let out = idstitch(&["snapshot", "verify", s(&flipped)]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&victim));
    assert_restore_refused(&flipped, &victim);

    let truncated = tmp.path().join("truncated");
    copy_tree(&snap, &truncated);
    let path = truncated.join("db").join(&victim);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let out = idstitch(&["snapshot", "verify", s(&truncated)]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&victim));
    assert_restore_refused(&truncated, &victim);

    let missing = tmp.path().join("missing");
    copy_tree(&snap, &missing);
    std::fs::remove_file(missing.join("db").join(&victim)).unwrap();
    let out = idstitch(&["snapshot", "verify", s(&missing)]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing"));
    assert_restore_refused(&missing, "missing");

    d.start_again();
    d.capture(T, json!([{"event": "e", "distinct_id": "y"}]));
    d.terminate();
    let other = tmp.path().join("s2");
    succeeds(&["snapshot", "create", s(&other), "--data-dir", s(&d.dir)]);
    std::fs::copy(other.join("manifest.json"), snap.join("manifest.json")).unwrap();
    assert_eq!(
        idstitch(&["snapshot", "verify", s(&snap)]).status.code(),
        Some(3)
    );
    assert_restore_refused(&snap, "");
}

/// `snapshot restore` of `snap` into a new dir exits 3 naming `name`, and leaves no data dir.
fn assert_restore_refused(snap: &std::path::Path, name: &str) {
    let target = snap.with_extension("restored");
    let out = idstitch(&["snapshot", "restore", s(snap), "--data-dir", s(&target)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "restore accepted it: {err}");
    assert!(
        err.contains(name),
        "the error does not name {name:?}: {err}"
    );
    assert!(!target.exists(), "restore left a partial data dir");
}

#[test]
fn restore_refuses_a_flipped_byte_and_leaves_the_data_dir_as_it_was() {
    let tmp = tempfile::tempdir().unwrap();
    let (snap, manifest) = small_snapshot(tmp.path());
    // The last file in manifest order: every other file is copied before the mismatch shows.
    let files = manifest["files"].as_array().unwrap();
    let victim = files
        .iter()
        .rfind(|f| f["size"].as_u64().unwrap() > 0)
        .unwrap()["name"]
        .as_str()
        .unwrap()
        .to_string();
    let path = snap.join("db").join(&victim);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();

    // No data dir before: none after.
    assert_restore_refused(&snap, &victim);

    // An empty data dir before: still there, still empty.
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = idstitch(&["snapshot", "restore", s(&snap), "--data-dir", s(&empty)]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&victim));
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);

    // A non-empty data dir and --force: moved aside, then moved back with its contents.
    let busy = tmp.path().join("busy");
    std::fs::create_dir_all(&busy).unwrap();
    std::fs::write(busy.join("keep.txt"), "old").unwrap();
    let out = idstitch(&[
        "snapshot",
        "restore",
        s(&snap),
        "--data-dir",
        s(&busy),
        "--force",
    ]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&victim));
    let names: Vec<_> = std::fs::read_dir(&busy)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("keep.txt")]);
    assert_eq!(
        std::fs::read_to_string(busy.join("keep.txt")).unwrap(),
        "old"
    );
    let leftovers = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("before-restore")
        })
        .count();
    assert_eq!(leftovers, 0, "the aside dir was not moved back");

    // --full-verify refuses it too (at its checksum phase, before writing anything).
    let target = tmp.path().join("full");
    let out = idstitch(&[
        "snapshot",
        "restore",
        s(&snap),
        "--data-dir",
        s(&target),
        "--full-verify",
    ]);
    assert_eq!(out.status.code(), Some(3));
    assert!(!target.exists());
}

#[test]
fn restore_with_full_verify_restores_a_good_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let (snap, manifest) = small_snapshot(tmp.path());
    let restored = tmp.path().join("r");
    succeeds(&[
        "snapshot",
        "restore",
        s(&snap),
        "--data-dir",
        s(&restored),
        "--full-verify",
    ]);
    succeeds(&["verify", "--data-dir", s(&restored)]);
    let r = Daemon::on(&restored, &[]);
    assert_eq!(
        r.all_persons(T).len() as u64,
        manifest["counts"]["persons"].as_u64().unwrap()
    );
}

/// With no `--snapshot-dir`, snapshots go next to the data dir (`<data-dir>/../snapshots`):
/// `idstitch snapshot create OUT --socket` into that dir works, as the README shows it.
#[test]
fn an_online_snapshot_into_the_default_snapshot_dir_is_taken() {
    let d = Daemon::start();
    d.capture(T, json!([{"event": "e", "distinct_id": "x"}]));
    let out = d.dir.parent().unwrap().join("snapshots").join("first");
    succeeds(&["snapshot", "create", s(&out), "--socket", s(&d.socket)]);
    assert!(out.join("manifest.json").exists());
    let outside = d.dir.parent().unwrap().join("elsewhere");
    let refused = idstitch(&["snapshot", "create", s(&outside), "--socket", s(&d.socket)]);
    assert_eq!(
        refused.status.code(),
        Some(1),
        "a path outside the snapshot dir is still refused"
    );
    // The daemon's reason is printed as text, not as a JSON string in quotes.
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("the daemon refused the snapshot: snapshot path ")
            && err.contains("is outside the snapshot dir"),
        "{err}"
    );
}

/// The dirs in `parent` where `restore --force` put the old contents of a data dir whose
/// name starts with `name` (any, for ""): `<name>.before-restore-<stamp>`.
fn kept_aside(parent: &Path, name: &str) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(parent)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            let file = e.file_name().to_string_lossy().into_owned();
            file.starts_with(name) && file.contains(".before-restore")
        })
        .map(|e| e.path())
        .collect()
}

#[test]
fn restore_refuses_a_non_empty_dir_unless_forced() {
    let tmp = tempfile::tempdir().unwrap();
    let mut d = Daemon::start();
    d.capture(T, json!([{"event": "e", "distinct_id": "x"}]));
    d.terminate();
    let snap = tmp.path().join("s");
    succeeds(&["snapshot", "create", s(&snap), "--data-dir", s(&d.dir)]);
    let target = tmp.path().join("busy");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(target.join("keep.txt"), "old").unwrap();
    assert_eq!(
        idstitch(&["snapshot", "restore", s(&snap), "--data-dir", s(&target)])
            .status
            .code(),
        Some(1)
    );
    succeeds(&[
        "snapshot",
        "restore",
        s(&snap),
        "--data-dir",
        s(&target),
        "--force",
    ]);
    let aside = kept_aside(tmp.path(), "busy");
    assert_eq!(aside.len(), 1, "the old contents were kept aside");
    assert!(aside[0].join("keep.txt").exists());

    // The same, with the data dir written with a trailing slash (as shells complete it): the
    // old contents go beside it, not into a path inside it.
    let slashed = tmp.path().join("slashed");
    std::fs::create_dir_all(&slashed).unwrap();
    std::fs::write(slashed.join("keep.txt"), "old").unwrap();
    let with_slash = format!("{}/", s(&slashed));
    succeeds(&[
        "snapshot",
        "restore",
        s(&snap),
        "--data-dir",
        &with_slash,
        "--force",
    ]);
    let aside = kept_aside(tmp.path(), "slashed");
    assert_eq!(aside.len(), 1, "the old contents were kept beside the dir");
    assert!(aside[0].join("keep.txt").exists());
    assert!(
        slashed.join("CURRENT").exists(),
        "the snapshot was restored"
    );

    // A file where the data dir goes is refused as the user's mistake (exit 1; it was an I/O
    // failure, exit 2), even with --force, and no restore lock is left beside it.
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "mine").unwrap();
    for force in [&[][..], &["--force"]] {
        let mut args = vec!["snapshot", "restore", s(&snap), "--data-dir", s(&file)];
        args.extend_from_slice(force);
        let out = idstitch(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("is a file, not a directory"), "{stderr}");
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "mine");
    assert!(!tmp.path().join("a-file.restore-lock").exists());
}

/// `--force` moves a data dir aside; a running daemon's dir is refused instead, or the daemon
/// would go on writing into the moved dir (and by path into the restored one).
#[test]
fn restore_refuses_the_data_dir_of_a_running_daemon_even_when_forced() {
    let tmp = tempfile::tempdir().unwrap();
    let mut source = Daemon::start();
    source.capture(T, json!([{"event": "e", "distinct_id": "from-snapshot"}]));
    source.terminate();
    let snap = tmp.path().join("s");
    succeeds(&["snapshot", "create", s(&snap), "--data-dir", s(&source.dir)]);
    let live = Daemon::start();
    live.capture(T, json!([{"event": "e", "distinct_id": "live"}]));
    let out = idstitch(&[
        "snapshot",
        "restore",
        s(&snap),
        "--data-dir",
        s(&live.dir),
        "--force",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("in use"), "says why: {stderr}");
    // Unforced, it says the same: not that the dir is merely non-empty (`--force` would not
    // help).
    let out = idstitch(&["snapshot", "restore", s(&snap), "--data-dir", s(&live.dir)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("in use"), "says why: {stderr}");
    // Nothing moved: the daemon goes on, on its own data.
    live.capture(T, json!([{"event": "e", "distinct_id": "after"}]));
    assert!(live.person(T, "live").is_some() && live.person(T, "after").is_some());
    assert!(live.person(T, "from-snapshot").is_none());
    let siblings = std::fs::read_dir(live.dir.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("before-restore"))
        .count();
    assert_eq!(siblings, 0, "nothing moved aside");
}

/// Two persons (`anon`, `user`), then an `$identify` that merges them; the seq before the
/// merge.
fn two_persons_then_merged(d: &Daemon) -> u64 {
    d.capture(
        T,
        json!([{"event": "e", "distinct_id": "anon"}, {"event": "e", "distinct_id": "user"}]),
    );
    let before_merge = d
        .get(&format!("/api/projects/{T}/events/?distinct_id=user"))
        .json()["results"][0]["seq"]
        .as_u64()
        .unwrap();
    d.capture(T, json!([{"event": "$identify", "distinct_id": "user", "properties": {"$anon_distinct_id": "anon"}}]));
    before_merge
}

#[test]
fn restore_as_of_a_seq_before_a_merge_shows_the_persons_unmerged() {
    let tmp = tempfile::tempdir().unwrap();
    let mut d = Daemon::start();
    let before_merge = two_persons_then_merged(&d);
    assert_eq!(d.all_persons(T).len(), 1);
    d.terminate();
    let snap = tmp.path().join("s");
    succeeds(&["snapshot", "create", s(&snap), "--data-dir", s(&d.dir)]);
    let restored = tmp.path().join("r");
    succeeds(&[
        "snapshot",
        "restore",
        s(&snap),
        "--data-dir",
        s(&restored),
        "--as-of",
        &before_merge.to_string(),
    ]);
    let r = Daemon::on(&restored, &[]);
    assert_eq!(r.all_persons(T).len(), 2);
    assert_eq!(dids(&r.person(T, "anon").unwrap()), vec!["anon"]);
    drop(r);
    succeeds(&["verify", "--data-dir", s(&restored)]);
}

#[test]
fn snapshot_restore_ingest_snapshot_restore_stays_consistent() {
    let tmp = tempfile::tempdir().unwrap();
    let mut d = Daemon::start();
    d.capture(T, json!([{"event": "$identify", "distinct_id": "u", "properties": {"$anon_distinct_id": "a"}}]));
    d.terminate();
    let s1 = tmp.path().join("s1");
    succeeds(&["snapshot", "create", s(&s1), "--data-dir", s(&d.dir)]);
    let r1 = tmp.path().join("r1");
    succeeds(&["snapshot", "restore", s(&s1), "--data-dir", s(&r1)]);
    let mut d1 = Daemon::on(&r1, &[]);
    d1.capture(T, json!([{"event": "$identify", "distinct_id": "u", "properties": {"$anon_distinct_id": "b"}}]));
    let want = persons(&d1);
    d1.terminate();
    let s2 = tmp.path().join("s2");
    succeeds(&["snapshot", "create", s(&s2), "--data-dir", s(&r1)]);
    let r2 = tmp.path().join("r2");
    succeeds(&["snapshot", "restore", s(&s2), "--data-dir", s(&r2)]);
    succeeds(&["verify", "--data-dir", s(&r2)]);
    let d2 = Daemon::on(&r2, &[]);
    assert_eq!(persons(&d2), want);
}

#[test]
fn the_snapshot_endpoint_refuses_paths_outside_its_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start_with(&["--snapshot-dir", s(&tmp.path().join("snaps"))]);
    for path in ["../escape", "/etc/idstitch-snap", "a/../../b"] {
        let r = d.post("/api/snapshot", &json!({"path": path}));
        assert_eq!(r.status, 400, "{path}");
    }
    let r = d.post("/api/snapshot", &json!({"path": "ok-1"}));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(tmp.path().join("snaps/ok-1/manifest.json").exists());
    // Taken already: the request's fault, a 400. A path the disk cannot hold (under a file):
    // the daemon's side, a 500; both say why.
    let r = d.post("/api/snapshot", &json!({"path": "ok-1"}));
    assert_eq!(r.status, 400, "{}", r.json());
    assert!(
        r.detail().contains("exists and is not empty"),
        "{}",
        r.json()
    );
    std::fs::write(tmp.path().join("snaps/a-file"), b"x").unwrap();
    let r = d.post("/api/snapshot", &json!({"path": "a-file/s"}));
    assert_eq!(r.status, 500, "{}", r.json());
    assert!(r.detail().contains("cannot create"), "{}", r.json());
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to.join("db")).unwrap();
    std::fs::copy(from.join("manifest.json"), to.join("manifest.json")).unwrap();
    for e in std::fs::read_dir(from.join("db")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join("db").join(e.file_name())).unwrap();
    }
}

#[test]
fn restore_as_of_a_time_cuts_the_log_at_that_moment() {
    let tmp = tempfile::tempdir().unwrap();
    let mut d = Daemon::start();
    d.capture(T, json!([{"event": "e", "distinct_id": "early"}]));
    let cut = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    // Entries are stamped in milliseconds: make sure the next one is strictly later.
    let later = chrono::Utc::now().timestamp_millis() + 5;
    while chrono::Utc::now().timestamp_millis() < later {
        std::thread::yield_now();
    }
    d.capture(T, json!([{"event": "e", "distinct_id": "late"}]));
    d.terminate();
    let snap = tmp.path().join("s");
    succeeds(&["snapshot", "create", s(&snap), "--data-dir", s(&d.dir)]);
    let restored = tmp.path().join("r");
    succeeds(&[
        "snapshot",
        "restore",
        s(&snap),
        "--data-dir",
        s(&restored),
        "--as-of",
        &cut,
    ]);
    let r = Daemon::on(&restored, &[]);
    assert!(r.person(T, "early").is_some());
    assert!(r.person(T, "late").is_none());
}

/// A snapshot of a small store, and the manifest as JSON, for tampering with.
fn small_snapshot(tmp: &std::path::Path) -> (std::path::PathBuf, Value) {
    snapshot_of_persons(tmp, 1)
}

/// Add a manifest entry named `name` for a file that exists outside the snapshot's `db/`, with
/// its true size and checksum: only the name check stands between it and being read.
fn add_outside_entry(snap: &std::path::Path, manifest: &Value, name: &str, target: &[u8]) {
    use sha2::Digest;
    let mut m = manifest.clone();
    let sum: String = sha2::Sha256::digest(target)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    m["files"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": name, "size": target.len(), "sha256": sum}));
    std::fs::write(
        snap.join("manifest.json"),
        serde_json::to_vec_pretty(&m).unwrap(),
    )
    .unwrap();
}

fn assert_refused_naming(snap: &std::path::Path, name: &str) {
    let out = idstitch(&["snapshot", "verify", s(snap)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(3),
        "verify accepted {name:?}: {err}"
    );
    assert!(
        err.contains(name),
        "the error does not name {name:?}: {err}"
    );
    let restored = snap.with_file_name("restored");
    let out = idstitch(&["snapshot", "restore", s(snap), "--data-dir", s(&restored)]);
    assert_eq!(out.status.code(), Some(3), "restore accepted {name:?}");
    assert!(!restored.exists(), "restore wrote something");
}

#[test]
fn verify_refuses_a_manifest_entry_that_climbs_out_of_the_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let (snap, manifest) = small_snapshot(tmp.path());
    // `s/outside.txt` sits next to `s/db/`: `db/../outside.txt` would read it.
    let secret = b"not part of any snapshot";
    std::fs::write(snap.join("outside.txt"), secret).unwrap();
    add_outside_entry(&snap, &manifest, "../outside.txt", secret);
    assert_refused_naming(&snap, "../outside.txt");
}

#[test]
fn verify_refuses_a_manifest_entry_with_an_absolute_path() {
    let tmp = tempfile::tempdir().unwrap();
    let (snap, manifest) = small_snapshot(tmp.path());
    let secret = b"a file anywhere on the machine";
    let outside = tmp.path().join("elsewhere.txt");
    std::fs::write(&outside, secret).unwrap();
    add_outside_entry(&snap, &manifest, s(&outside), secret);
    assert_refused_naming(&snap, s(&outside));
}

/// `idstitch args` with `IDSTITCH_TEST_ABORT_RESTORE=point`: a restore that stops there as a
/// `kill -9` would (no clean-up), deterministically.
fn restore_aborted_at(point: &str, args: &[&str]) {
    let out = Command::new(bin())
        .args(args)
        .env(idstitch::store::snapshot::TEST_ABORT_RESTORE, point)
        .output()
        .expect("run idstitch");
    assert!(
        !out.status.success(),
        "the restore was not interrupted at {point}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `idstitch serve` on `dir` must exit by itself (within 30 s); its exit code and stderr.
/// A daemon that starts instead is stopped and reported: it served whatever it found there.
fn serve_exit(dir: &std::path::Path) -> (Option<i32>, String) {
    let socket = dir.with_extension("sock");
    let mut child = Command::new(bin())
        .args(["serve", "--data-dir", s(dir), "--socket", s(&socket)])
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start idstitch serve");
    let started = std::time::Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if started.elapsed() > std::time::Duration::from_secs(30) || socket.exists() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("idstitch serve started on {}", dir.display());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("wait");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `serve`, `verify` and `snapshot create --data-dir` all refuse `dir` with exit 1 and one
/// line that says so and what to do, containing `says`.
fn assert_refused_data_dir(dir: &std::path::Path, says: &str) {
    let (code, err) = serve_exit(dir);
    assert_eq!(code, Some(1), "serve: {err}");
    assert!(err.contains(says), "serve does not say {says:?}: {err}");
    assert!(
        err.contains("--force"),
        "serve does not say what to do: {err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "not one line: {err}");
    let out = idstitch(&["verify", "--data-dir", s(dir)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "verify: {err}");
    assert!(err.contains(says), "verify does not say {says:?}: {err}");
    let snap = dir.with_extension("snap-of-refused");
    let out = idstitch(&["snapshot", "create", s(&snap), "--data-dir", s(dir)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "snapshot create: {err}");
    assert!(
        err.contains(says),
        "snapshot create does not say {says:?}: {err}"
    );
}

/// A snapshot of persons `p0`..`p{n-1}`.
fn snapshot_of_persons(tmp: &std::path::Path, n: usize) -> (std::path::PathBuf, Value) {
    let mut d = Daemon::start();
    for i in 0..n {
        d.capture(T, json!([{"event": "e", "distinct_id": format!("p{i}")}]));
    }
    d.terminate();
    let snap = tmp.join("s");
    succeeds(&["snapshot", "create", s(&snap), "--data-dir", s(&d.dir)]);
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(snap.join("manifest.json")).unwrap()).unwrap();
    (snap, manifest)
}

/// Two restores into one data dir at once would clear and copy over each other: while one
/// runs (paused by the test hook, after its first file), a second, even forced, is refused at
/// once with exit 1 and one line naming the first; the first then completes.
/// A restore into an existing empty dir whose parent its user may not write (as under
/// /var/lib) cannot make its lock file beside the dir: it locks the parent dir instead and
/// restores, as it did before there was a lock.
#[test]
fn a_restore_whose_parent_is_not_writable_locks_the_parent_and_restores() {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: geteuid only reads the process's effective user id.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to run the restore as another user");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let open = |p: &Path| std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755));
    open(tmp.path()).unwrap();
    let (snap, _) = snapshot_of_persons(tmp.path(), 3);
    Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(&snap)
        .status()
        .unwrap();
    let parent = tmp.path().join("lib");
    let target = parent.join("data");
    std::fs::create_dir_all(&target).unwrap();
    open(&parent).unwrap();
    let chown = Command::new("chown").arg("nobody").arg(&target).status();
    assert!(chown.unwrap().success());
    let out = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", bin()])
        .args(["snapshot", "restore", s(&snap), "--data-dir", s(&target)])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!parent.join("data.restore-lock").exists());
    let r = Daemon::on(&target, &[]);
    assert_eq!(r.all_persons(T).len(), 3);
}

#[test]
fn a_second_restore_into_the_same_data_dir_is_refused_while_the_first_runs() {
    use std::io::{BufRead, BufReader};
    let tmp = tempfile::tempdir().unwrap();
    let (snap, _) = snapshot_of_persons(tmp.path(), 3);
    let target = tmp.path().join("r");
    let mut first = Command::new(bin())
        .args(["snapshot", "restore", s(&snap), "--data-dir", s(&target)])
        .env("IDSTITCH_TEST_PAUSE_RESTORE", "files:1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the first restore");
    let mut stderr = BufReader::new(first.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("paused") {
        line.clear();
        let n = stderr.read_line(&mut line).unwrap();
        assert!(
            n > 0,
            "the first restore ended without pausing: {:?}",
            first.wait()
        );
    }
    // The same dir spelled through a symlink locks the same file.
    let aliased = tmp.path().join("alias");
    std::os::unix::fs::symlink(&target, &aliased).unwrap();
    for (force, spelled) in [
        (false, &target),
        (true, &target),
        (false, &aliased),
        (true, &aliased),
    ] {
        let mut args = vec!["snapshot", "restore", s(&snap), "--data-dir", s(spelled)];
        if force {
            args.push("--force");
        }
        let out = idstitch(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "force {force}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "not one line: {err}");
        let pid = format!("pid {}", first.id());
        for says in ["another restore", s(&snap), pid.as_str()] {
            assert!(
                err.contains(says),
                "force {force}: does not say {says:?}: {err}"
            );
        }
    }
    drop(first.stdin.take());
    let status = first.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert!(status.success(), "the first restore failed: {rest}");
    let aside = kept_aside(tmp.path(), "");
    assert!(
        aside.is_empty(),
        "the refused restore moved {aside:?} aside"
    );
    let r = Daemon::on(&target, &[]);
    assert_eq!(r.all_persons(T).len(), 3);
}

/// A restore killed part-way through its copy leaves a data dir that every command refuses
/// (instead of `serve` creating an empty store over the copied files and accepting events);
/// running the restore again with `--force` replaces it and serves the snapshot's persons.
#[test]
fn a_restore_killed_while_copying_is_refused_until_it_is_run_again() {
    let tmp = tempfile::tempdir().unwrap();
    let (snap, manifest) = snapshot_of_persons(tmp.path(), 3);
    let files = manifest["files"].as_array().unwrap().len();
    assert!(files >= 3, "{files} files");
    let target = tmp.path().join("r");
    let restore = ["snapshot", "restore", s(&snap), "--data-dir", s(&target)];
    for k in [1, files - 1] {
        restore_aborted_at(&format!("files:{k}"), &restore);
        assert!(target.exists(), "killed at file {k}: no data dir");
        assert_refused_data_dir(&target, "unfinished restore");
        // Without --force, the rerun is refused and says to pass it.
        let out = idstitch(&restore);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("--force"), "{err}");
        assert_refused_data_dir(&target, "unfinished restore");
        // Killed again while rerunning with --force: still refused.
        let mut forced = restore.to_vec();
        forced.push("--force");
        restore_aborted_at(&format!("files:{k}"), &forced);
        assert_refused_data_dir(&target, "unfinished restore");
        succeeds(&forced);
        succeeds(&["verify", "--data-dir", s(&target)]);
        let r = Daemon::on(&target, &[]);
        for i in 0..3 {
            assert!(r.person(T, &format!("p{i}")).is_some(), "p{i} after rerun");
        }
        assert_eq!(r.all_persons(T).len(), 3);
        drop(r);
        // The partial copies are not kept as an old data dir.
        let aside = kept_aside(tmp.path(), "");
        assert!(
            aside.is_empty(),
            "a partial restore was moved aside: {aside:?}"
        );
        std::fs::remove_dir_all(&target).unwrap();
    }
}

/// `--as-of` killed after the copy, before or after the log is cut: refused (not served with
/// the entries past the cut, nor silently as if the restore had finished); the rerun cuts.
#[test]
fn a_restore_as_of_killed_around_the_cut_is_refused_until_it_is_run_again() {
    let tmp = tempfile::tempdir().unwrap();
    let mut d = Daemon::start();
    let before_merge = two_persons_then_merged(&d).to_string();
    d.terminate();
    let snap = tmp.path().join("s");
    succeeds(&["snapshot", "create", s(&snap), "--data-dir", s(&d.dir)]);
    for point in ["before-cut", "after-cut"] {
        let target = tmp.path().join(point);
        let restore = [
            "snapshot",
            "restore",
            s(&snap),
            "--data-dir",
            s(&target),
            "--as-of",
            &before_merge,
            "--force",
        ];
        restore_aborted_at(point, &restore);
        assert_refused_data_dir(&target, "unfinished restore");
        succeeds(&restore);
        succeeds(&["verify", "--data-dir", s(&target)]);
        let r = Daemon::on(&target, &[]);
        assert_eq!(r.all_persons(T).len(), 2, "{point}");
        assert_eq!(dids(&r.person(T, "anon").unwrap()), vec!["anon"], "{point}");
    }
}

/// `--force` over a store, killed while copying: the old store is aside, whole; the data dir
/// is refused; the rerun restores without moving the partial copy aside as another old store.
#[test]
fn a_forced_restore_killed_while_copying_keeps_the_old_store_aside() {
    let tmp = tempfile::tempdir().unwrap();
    let (snap, _) = snapshot_of_persons(tmp.path(), 2);
    let target = tmp.path().join("live");
    let mut old = Daemon::on(&target, &[]);
    old.capture(T, json!([{"event": "e", "distinct_id": "old-only"}]));
    old.terminate();
    drop(old);
    let restore = [
        "snapshot",
        "restore",
        s(&snap),
        "--data-dir",
        s(&target),
        "--force",
    ];
    restore_aborted_at("files:1", &restore);
    assert_refused_data_dir(&target, "unfinished restore");
    let aside = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("live.before-restore")
            })
            .collect()
    };
    let moved = aside();
    assert_eq!(moved.len(), 1, "{moved:?}");
    succeeds(&["verify", "--data-dir", s(&moved[0])]);
    succeeds(&restore);
    assert_eq!(aside(), moved, "only the old store is aside");
    let r = Daemon::on(&target, &[]);
    assert!(r.person(T, "p0").is_some() && r.person(T, "p1").is_some());
    assert!(r.person(T, "old-only").is_none());
    drop(r);
    let o = Daemon::on(&moved[0], &[]);
    assert!(o.person(T, "old-only").is_some(), "the old store is intact");
}

/// A data dir with files but no database (a restore by an older idstitch, killed while
/// copying; a wrong --data-dir) is refused, not turned into a new empty store; a missing or
/// empty dir still gets a new store.
#[test]
fn serve_refuses_a_non_empty_dir_without_a_database_but_starts_in_an_empty_one() {
    let tmp = tempfile::tempdir().unwrap();
    let (snap, manifest) = snapshot_of_persons(tmp.path(), 1);
    let partial = tmp.path().join("partial");
    std::fs::create_dir_all(&partial).unwrap();
    let first = manifest["files"][0]["name"].as_str().unwrap();
    assert_ne!(first, "CURRENT");
    std::fs::copy(snap.join("db").join(first), partial.join(first)).unwrap();
    assert_refused_data_dir(&partial, "no idstitch database");
    assert_eq!(std::fs::read_dir(&partial).unwrap().count(), 1, "untouched");
    succeeds(&[
        "snapshot",
        "restore",
        s(&snap),
        "--data-dir",
        s(&partial),
        "--force",
    ]);
    let r = Daemon::on(&partial, &[]);
    assert!(r.person(T, "p0").is_some());
    drop(r);

    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let d = Daemon::on(&empty, &[]);
    d.capture(T, json!([{"event": "e", "distinct_id": "x"}]));
    let d = Daemon::on(&tmp.path().join("missing"), &[]);
    d.capture(T, json!([{"event": "e", "distinct_id": "x"}]));
}

/// `snapshot create --data-dir` of a path that holds no store (a typo, an empty dir) refuses,
/// instead of creating an empty store there and writing an "ok" snapshot of nothing.
#[test]
fn snapshot_create_of_a_dir_without_a_store_refuses_and_creates_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("typo");
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    for (dir, name) in [(&missing, "a missing dir"), (&empty, "an empty dir")] {
        let snap = tmp.path().join(format!("snap-{}", name.len()));
        let out = idstitch(&["snapshot", "create", s(&snap), "--data-dir", s(dir)]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {err}");
        assert!(err.contains("is not an idstitch data dir"), "{name}: {err}");
        assert!(
            err.contains("--socket"),
            "{name}: does not say what to do: {err}"
        );
        assert!(!snap.exists(), "{name}: a snapshot was written");
    }
    assert!(!missing.exists(), "the missing dir was created");
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0, "untouched");
}

/// A snapshot given where a data dir goes is named as one, with what to run instead (not the
/// advice to restore a snapshot over it).
#[test]
fn a_snapshot_given_as_a_data_dir_is_named_as_one() {
    let tmp = tempfile::tempdir().unwrap();
    let (snap, _) = snapshot_of_persons(tmp.path(), 1);
    let says = |what: &str, code: Option<i32>, err: &str| {
        assert_eq!(code, Some(1), "{what}: {err}");
        assert!(
            err.contains("is a snapshot, not a data dir"),
            "{what}: {err}"
        );
        assert!(err.contains("snapshot restore"), "{what}: {err}");
        assert!(!err.contains("--force"), "{what}: {err}");
    };
    let (code, err) = serve_exit(&snap);
    says("serve", code, &err);
    for args in [
        vec!["verify", "--data-dir", s(&snap)],
        vec![
            "snapshot",
            "create",
            "/nonexistent-out",
            "--data-dir",
            s(&snap),
        ],
    ] {
        let out = idstitch(&args);
        says(
            args[0],
            out.status.code(),
            &String::from_utf8_lossy(&out.stderr),
        );
    }
    succeeds(&["snapshot", "verify", s(&snap)]);
}

/// A path that is not a snapshot (nothing there, a file, a data dir, any other dir) is the
/// user's mistake, exit 1 naming it, not exit 3 (corruption: monitoring alarms on it). A
/// snapshot that lost its manifest is still damaged (exit 3). The counts print as words.
#[test]
fn a_path_that_is_not_a_snapshot_exits_1_and_a_damaged_one_3() {
    let tmp = tempfile::tempdir().unwrap();
    let (snap, _) = snapshot_of_persons(tmp.path(), 1);
    let data = tmp.path().join("data");
    succeeds(&["snapshot", "restore", s(&snap), "--data-dir", s(&data)]);
    let file = tmp.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let other = tmp.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    for (path, says) in [
        (tmp.path().join("missing"), "there is no snapshot at"),
        (file, "is a file, not a snapshot"),
        (data, "is a data dir, not a snapshot"),
        (other, "is not a snapshot (it has no manifest.json)"),
    ] {
        let into = tmp.path().join("into");
        for args in [
            vec!["snapshot", "verify", s(&path)],
            vec!["snapshot", "restore", s(&path), "--data-dir", s(&into)],
        ] {
            let out = idstitch(&args);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
            assert!(err.contains(says), "{args:?} does not say {says:?}: {err}");
        }
        assert!(!into.exists(), "{path:?}: restore created the data dir");
    }
    let out = succeeds(&["snapshot", "verify", s(&snap)]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("1 projects, 1 persons"), "{said}");
    std::fs::remove_file(snap.join("manifest.json")).unwrap();
    let out = idstitch(&["snapshot", "verify", s(&snap)]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
