//! Restarts, SIGKILL at random moments, SIGTERM, and `idstitch verify`.

use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{bin, dids, Daemon};
use crate::world::World;

const T: &str = "phc_durable";

/// A deterministic stream of identity events over a small pool of IDs.
fn stream(n: usize, seed: u64) -> Vec<Value> {
    let mut s = seed | 1;
    let mut next = move |m: u64| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s % m
    };
    (0..n)
        .map(|i| {
            let anon = format!("anon-{}", next(40));
            let user = format!("user-{}", next(15));
            let uuid = format!("ev-{seed}-{i}");
            match next(6) {
                0 => json!({"event": "$identify", "distinct_id": user, "uuid": uuid, "properties": {"$anon_distinct_id": anon}, "$set": {"k": i}}),
                1 => json!({"event": "$create_alias", "distinct_id": user, "uuid": uuid, "properties": {"alias": anon}}),
                2 => json!({"event": "e", "distinct_id": anon, "uuid": uuid, "properties": {"$process_person_profile": false}}),
                3 => json!({"event": "e", "distinct_id": user, "uuid": uuid, "$set_once": {"first": i}, "properties": {"$unset": ["k"]}}),
                _ => json!({"event": "$pageview", "distinct_id": anon, "uuid": uuid, "properties": {"$browser": format!("b{}", next(3))}}),
            }
        })
        .collect()
}

/// Persons as comparable tuples: (sorted ids, ids in order, properties, identified, version).
fn daemon_persons(d: &Daemon) -> Vec<(Vec<String>, Value, bool, u64)> {
    let mut out: Vec<_> = d
        .all_persons(T)
        .iter()
        .map(|p| {
            (
                dids(p),
                p["properties"].clone(),
                p["is_identified"].as_bool().unwrap(),
                p["version"].as_u64().unwrap(),
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn model_persons(w: &World) -> Vec<(Vec<String>, Value, bool, u64)> {
    let mut out: Vec<_> = w
        .state
        .persons
        .values()
        .map(|p| {
            (
                p.distinct_ids.clone(),
                Value::Object(p.properties.0.clone()),
                p.is_identified,
                p.version,
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Strip ingestion-time-dependent parts so the model compares exactly.
fn without_creator(
    mut v: Vec<(Vec<String>, Value, bool, u64)>,
) -> Vec<(Vec<String>, Value, bool, u64)> {
    for p in &mut v {
        if let Value::Object(m) = &mut p.1 {
            m.remove("$creator_event_uuid");
        }
    }
    v
}

#[test]
fn a_restart_with_a_populated_store_serves_identical_persons() {
    let mut d = Daemon::start();
    d.capture(T, Value::Array(stream(300, 7)));
    let before = daemon_persons(&d);
    assert!(!before.is_empty());
    assert!(d.terminate().success(), "SIGTERM exits 0");
    d.start_again();
    assert_eq!(daemon_persons(&d), before);
}

#[test]
fn acknowledged_batches_survive_sigkill_at_random_moments() {
    let mut d = Daemon::start();
    let events = stream(2000, 11);
    let batches: Vec<Vec<Value>> = events.chunks(20).map(|c| c.to_vec()).collect();
    let mut acked = 0usize;
    let mut rounds = 0;
    let mut seed = 0x9E3779B97F4A7C15u64;
    while acked < batches.len() {
        // A writer thread sends batches in order while this thread kills the daemon after a
        // pseudo-random delay; the batch in flight at the kill may or may not have landed.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = Duration::from_micros(seed % 40_000);
        let socket = d.socket.clone();
        let todo: Vec<Vec<Value>> = batches[acked..].to_vec();
        let sender = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let mut ok = 0usize;
            for b in todo {
                let body = serde_json::to_vec(&json!({"api_key": T, "batch": b})).unwrap();
                let r = rt.block_on(async {
                    let mut c = idstitch::cli::client::Conn::unix(&socket).await?;
                    c.request(
                        "POST",
                        "/batch/",
                        &[("content-type", "application/json")],
                        body,
                    )
                    .await
                });
                match r {
                    Ok(resp) if resp.status == 200 => ok += 1,
                    _ => break,
                }
            }
            ok
        });
        std::thread::sleep(delay);
        d.kill();
        acked += sender.join().unwrap();
        rounds += 1;
        d.start_again();
        // Every acknowledged event is there after the restart.
        if acked > 0 {
            let last = batches[acked - 1].last().unwrap();
            let did = last["distinct_id"].as_str().unwrap();
            let r = d.get(&format!(
                "/api/projects/{T}/events/?distinct_id={did}&limit=10000"
            ));
            let uuids: Vec<Value> = r.json()["results"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|e| e["uuid"].clone())
                .collect();
            assert!(
                uuids.contains(&last["uuid"]),
                "round {rounds}: acknowledged event {} lost",
                last["uuid"]
            );
        }
        if rounds > 200 {
            break;
        }
    }
    assert!(
        rounds >= 20 || acked == batches.len(),
        "only {rounds} kill rounds"
    );
    // The client resent the unanswered batch each round (same uuids): the end state equals a
    // sequential model fed every event exactly once.
    let mut w = World::default();
    for e in &events {
        w.send(e.clone());
    }
    assert_eq!(
        without_creator(daemon_persons(&d)),
        without_creator(model_persons(&w))
    );
    let mut total = 0;
    for p in d.all_persons(T) {
        total += d.events_of_person(T, p["uuid"].as_str().unwrap()).len();
    }
    let personful = events
        .iter()
        .filter(|e| e["properties"]["$process_person_profile"] != json!(false))
        .count();
    assert!(
        total >= personful,
        "events stored under persons: {total} < {personful}"
    );
    d.terminate();
    d.assert_verifies();
}

#[test]
fn verify_reports_ok_on_a_healthy_store() {
    let mut d = Daemon::start();
    d.capture(T, Value::Array(stream(200, 3)));
    d.terminate();
    let out = Command::new(bin())
        .args(["verify", "--data-dir"])
        .arg(&d.dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok: "));
}

#[test]
fn a_second_daemon_on_a_live_socket_is_refused_with_exit_1() {
    let d = Daemon::start();
    let out = Command::new(bin())
        .args(["serve", "--data-dir"])
        .arg(d.dir.join("other"))
        .arg("--socket")
        .arg(&d.socket)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("another idstitch is serving"));
}

#[test]
fn a_stale_socket_file_is_replaced() {
    let mut d = Daemon::start();
    d.kill();
    assert!(d.socket.exists(), "SIGKILL leaves the socket file behind");
    d.start_again();
    assert_eq!(d.get("/_health").status, 200);
}

/// A second daemon on a data dir in use (another socket) is refused with exit 1, asking
/// whether another idstitch uses it; the first one goes on. A data dir that cannot be opened
/// for another reason (its MANIFEST gone) gets no such guess.
#[test]
fn a_second_daemon_on_a_data_dir_in_use_is_refused_with_exit_1() {
    let mut d = Daemon::start();
    let serve_on = |dir: &std::path::Path| {
        Command::new(bin())
            .args(["serve", "--data-dir"])
            .arg(dir)
            .arg("--socket")
            .arg(dir.with_extension("second.sock"))
            .output()
            .unwrap()
    };
    let out = serve_on(&d.dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("is another idstitch using it?"), "{stderr}");
    assert_eq!(d.get("/_health").status, 200);
    d.terminate();
    for f in std::fs::read_dir(&d.dir).unwrap() {
        let path = f.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("MANIFEST-")
        {
            std::fs::remove_file(path).unwrap();
        }
    }
    let out = serve_on(&d.dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("another idstitch"), "{stderr}");
}

/// A `--socket` that names a file which is not a socket (here a data dir's `CURRENT`, a typo
/// away) is refused with exit 1, and the file stays.
#[test]
fn a_socket_path_holding_another_file_is_refused_and_left_alone() {
    let mut d = Daemon::start();
    d.terminate();
    let current = d.dir.join("CURRENT");
    let before = std::fs::read(&current).expect("CURRENT");
    let out = Command::new(bin())
        .args(["serve", "--data-dir"])
        .arg(d.dir.join("other"))
        .arg("--socket")
        .arg(&current)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("is not a socket"), "{stderr}");
    assert_eq!(
        std::fs::read(&current).expect("CURRENT is still there"),
        before
    );
    d.start_again();
    assert_eq!(d.get("/_health").status, 200);
}

#[test]
fn the_socket_is_created_with_mode_0600() {
    use std::os::unix::fs::PermissionsExt;
    let d = Daemon::start();
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

/// Tamper with the derived state of a stopped store, then run `idstitch verify` on it.
fn verify_after(d: &Daemon, tamper: impl FnOnce(&idstitch::store::Store)) -> (i32, String) {
    {
        let store = idstitch::store::Store::open(&d.dir).expect("open");
        tamper(&store);
        // Into SST files, so that a read-only open sees it whatever it does with the WAL.
        store.flush_all().expect("flush");
    }
    let out = Command::new(bin())
        .args(["verify", "--derived", "--data-dir"])
        .arg(&d.dir)
        .output()
        .expect("run verify");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// A verify killed by a signal leaves its scratch store; the next `verify --derived` removes
/// those of processes that are gone, and only those, and says so.
#[test]
fn verify_derived_removes_the_scratch_stores_of_dead_verifies_only() {
    let mut d = Daemon::start();
    d.capture(T, json!([{"event": "e", "distinct_id": "alice"}]));
    d.terminate();
    let tmp = tempfile::tempdir().unwrap();
    // A pid that was running and is no longer: a child, waited for.
    let mut child = Command::new("true").spawn().expect("run true");
    let dead = child.id();
    child.wait().unwrap();
    let leftover = |pid: &str| {
        let dir = tmp.path().join(format!("idstitch-verify-{pid}-0-0badf00d"));
        std::fs::create_dir_all(dir.join("db")).unwrap();
        std::fs::write(dir.join("db").join("000001.sst"), b"scratch").unwrap();
        dir
    };
    let dead_dir = leftover(&dead.to_string());
    let live_dir = leftover(&std::process::id().to_string());
    let not_a_pid = leftover("x");
    let out = Command::new(bin())
        .args(["verify", "--derived", "--data-dir"])
        .arg(&d.dir)
        .env("TMPDIR", tmp.path())
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .output()
        .expect("run verify");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!dead_dir.exists(), "the dead verify's scratch store stayed");
    assert!(
        live_dir.exists(),
        "a running process's scratch store was removed"
    );
    assert!(not_a_pid.exists(), "a dir without a pid was removed");
    assert!(
        stderr.contains(dead_dir.to_str().unwrap()) && stderr.contains("Removed"),
        "the removal is not logged: {stderr}"
    );
    assert!(!stderr.contains(live_dir.to_str().unwrap()), "{stderr}");
    // This verify's own scratch store is gone too, as it ended.
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
}

/// A data dir whose derived state another idstitch wrote, in another derived format (an
/// upgrade whose first start is still to come): `verify` and `snapshot verify` replay its log
/// and say that the rest was not compared and why, rather than call a rule that changed damage
/// (exit 1, or 3 for a snapshot). The next start rebuilds it and says so; verify then compares
/// again, and agrees.
#[test]
fn a_derived_state_of_another_format_is_not_called_damaged_and_is_rebuilt() {
    use idstitch::domain::{person_uuid, ProjectId};
    use idstitch::store::{codec, keys};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let log = tmp.path().join("serve.log");
    let mut d = Daemon::on_logged(&dir, &[], Some(&log));
    d.capture(
        T,
        json!([{"event": "e", "distinct_id": "alice", "properties": {"$set": {"plan": "free"}}}]),
    );
    d.terminate();
    let alice = person_uuid(ProjectId(1), "alice");
    // As an older build would have left it: its own format, and a person as its rules made it.
    let (code, out) = verify_after(&d, |s| {
        let mut person = s.person(ProjectId(1), alice).unwrap().unwrap();
        person.version += 7;
        let meta = s.cf("meta");
        let older = (codec::DERIVED_FORMAT - 1).to_be_bytes();
        s.db()
            .put_cf(meta, keys::DERIVED_FORMAT_KEY, older)
            .unwrap();
        let row = keys::person(ProjectId(1), alice);
        let persons = s.cf("persons");
        s.db().put_cf(persons, row, codec::encode(&person)).unwrap();
    });
    let older = codec::DERIVED_FORMAT - 1;
    assert_eq!(code, 0, "{out}");
    for says in [
        "ok: 2 log entries replayed",
        &format!("format {older}; this one's is {}", codec::DERIVED_FORMAT),
        "not compared",
        "rebuilds it from the log",
    ] {
        assert!(out.contains(says), "does not say {says:?}: {out}");
    }
    let snap = tmp.path().join("snap");
    let create = Command::new(bin())
        .args(["snapshot", "create"])
        .arg(&snap)
        .arg("--data-dir")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(create.status.success(), "{create:?}");
    let verify_snapshot = || {
        let args = ["snapshot", "verify"];
        Command::new(bin()).args(args).arg(&snap).output().unwrap()
    };
    let check = verify_snapshot();
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{check:?}");
    assert!(out.contains(&format!("format {older}")), "{out}");
    let restore = Command::new(bin())
        .args(["snapshot", "restore", "--full-verify"])
        .arg(&snap)
        .arg("--data-dir")
        .arg(tmp.path().join("restored"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&restore.stdout);
    assert!(restore.status.success(), "{restore:?}");
    assert!(out.contains("only its log was replayed"), "{out}");
    // Its counts are still checked, against its rows as they are.
    let manifest = snap.join("manifest.json");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let mut m: Value = serde_json::from_str(&text).unwrap();
    m["counts"]["persons"] = json!(999);
    std::fs::write(&manifest, m.to_string()).unwrap();
    let check = verify_snapshot();
    let err = String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.code(), Some(3), "{check:?}");
    assert!(err.contains("999"), "{err}");

    d.start_again();
    let p = d.person(T, "alice").unwrap();
    assert_eq!(p["version"], json!(0), "rebuilt from the log: {p}");
    d.terminate();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("rebuilding it from the log"), "{text}");
    let (code, out) = verify_after(&d, |_| {});
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("every derived column family"), "{out}");
}

#[test]
fn verify_names_each_kind_of_difference_and_exits_1() {
    use idstitch::domain::{person_uuid, ProjectId};
    use idstitch::store::keys;
    let mut d = Daemon::start();
    d.capture(
        T,
        json!([
            {"event": "e", "distinct_id": "alice", "properties": {"$set": {"plan": "free"}}},
            {"event": "e", "distinct_id": "bob"},
        ]),
    );
    d.terminate();
    let p = ProjectId(1);
    let alice = person_uuid(p, "alice");
    let bob = person_uuid(p, "bob");

    // Alice's stored person with another plan, written behind the log's back.
    let set_plan = |s: &idstitch::store::Store, plan: &str| {
        let mut person = s.person(p, alice).expect("read").expect("alice");
        person.properties.0.insert("plan".into(), json!(plan));
        s.db()
            .put_cf(
                s.cf("persons"),
                keys::person(p, alice),
                idstitch::store::codec::encode(&person),
            )
            .expect("put");
    };

    // A person's properties changed behind the log's back.
    let (code, out) = verify_after(&d, |s| set_plan(s, "paid"));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("person {alice}")) && out.contains("differs"),
        "{out}"
    );

    // Put it back: verify agrees again (the check above was about that one change).
    let (code, out) = verify_after(&d, |s| set_plan(s, "free"));
    assert_eq!(code, 0, "{out}");

    // The same person in other bytes (a space in its properties' JSON text): verify compares
    // persons by their bytes first, and must not call an encoding difference a difference.
    let (code, out) = verify_after(&d, |s| {
        let person = s.person(p, alice).expect("read").expect("alice");
        let bytes = idstitch::store::codec::encode(&person);
        let (text, spaced) = (br#"{"plan":"free"}"#, br#"{"plan": "free"}"#);
        let at = bytes
            .windows(text.len())
            .position(|w| w == text)
            .expect("the properties' text");
        // bincode: a string is its length (u64, little-endian), then its bytes.
        let mut other = bytes[..at - 8].to_vec();
        other.extend_from_slice(&(spaced.len() as u64).to_le_bytes());
        other.extend_from_slice(spaced);
        other.extend_from_slice(&bytes[at + text.len()..]);
        assert_ne!(other, bytes);
        let decoded: idstitch::domain::Person =
            idstitch::store::codec::decode(&other).expect("decodes");
        assert_eq!(decoded, person);
        s.db()
            .put_cf(s.cf("persons"), keys::person(p, alice), other)
            .expect("put");
    });
    assert_eq!(code, 0, "{out}");

    // A distinct ID re-pointed at another person.
    let (code, out) = verify_after(&d, |s| {
        s.db()
            .put_cf(s.cf("dids"), keys::did(p, "alice"), bob.0.as_bytes())
            .expect("put");
    });
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("distinct id \"alice\""), "{out}");

    // A distinct ID missing from the live state.
    let (code, out) = verify_after(&d, |s| {
        s.db()
            .put_cf(s.cf("dids"), keys::did(p, "alice"), alice.0.as_bytes())
            .expect("put");
        s.db()
            .delete_cf(s.cf("dids"), keys::did(p, "bob"))
            .expect("delete");
    });
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("distinct id \"bob\"") && out.contains("live none"),
        "{out}"
    );

    // An extra live distinct ID that the log never attached.
    let (code, out) = verify_after(&d, |s| {
        s.db()
            .put_cf(s.cf("dids"), keys::did(p, "bob"), bob.0.as_bytes())
            .expect("put");
        s.db()
            .put_cf(s.cf("dids"), keys::did(p, "mallory"), bob.0.as_bytes())
            .expect("put");
    });
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("distinct id \"mallory\"") && out.contains("replayed none"),
        "{out}"
    );
}

/// The first record of a live column family (key, value).
fn first_record(s: &idstitch::store::Store, cf: &str) -> (Vec<u8>, Vec<u8>) {
    let it = s.full_scan(cf);
    let key = it.key().unwrap_or_else(|| panic!("{cf} has no record"));
    (key.to_vec(), it.value().unwrap().to_vec())
}

/// Every derived column family, not only persons and distinct IDs, is compared with the one
/// the log rebuilds: a deleted, changed or extra record of any of them is named, and so is an
/// applied seq that is not the log's last. Each tampering is undone before the next, and the
/// untampered store passes.
#[test]
fn verify_names_a_derived_column_family_that_differs_and_exits_1() {
    let mut d = Daemon::start();
    d.capture(
        T,
        json!([
            {"event": "signup", "distinct_id": "alice", "uuid": "0189f6a2-7c3d-4e5f-8a9b-0c1d2e3f4a5b",
             "properties": {"$set": {"plan": "free"}}},
            {"event": "$pageview", "distinct_id": "bob", "uuid": "u-2"},
            {"event": "$identify", "distinct_id": "bob", "properties": {"$anon_distinct_id": "anon-9"}},
        ]),
    );
    d.terminate();
    let (code, out) = verify_after(&d, |_| {});
    assert_eq!(code, 0, "{out}");

    // Each family: a record deleted, then changed, then an extra one; put back each time.
    for cf in [
        "evname", "evdid", "uuids", "hist", "didhist", "order", "projects",
    ] {
        let mut record = None;
        let (code, out) = verify_after(&d, |s| {
            let (k, v) = first_record(s, cf);
            s.db().delete_cf(s.cf(cf), &k).expect("delete");
            record = Some((k, v));
        });
        let (k, v) = record.expect("the family has a record");
        assert_eq!(code, 1, "{cf} deleted: {out}");
        assert!(out.contains(&format!("{cf}: ")), "{cf} deleted: {out}");

        let (code, out) = verify_after(&d, |s| {
            let mut other = v.clone();
            other.push(7);
            s.db().put_cf(s.cf(cf), &k, other).expect("put");
        });
        assert_eq!(code, 1, "{cf} changed: {out}");
        assert!(out.contains(&format!("{cf}: ")), "{cf} changed: {out}");

        let (code, out) = verify_after(&d, |s| {
            s.db().put_cf(s.cf(cf), &k, &v).expect("put back");
            let mut extra = k.clone();
            extra.push(0);
            s.db().put_cf(s.cf(cf), extra, &v).expect("put extra");
        });
        assert_eq!(code, 1, "{cf} extra: {out}");
        assert!(out.contains(&format!("{cf}: ")), "{cf} extra: {out}");

        let (code, out) = verify_after(&d, |s| {
            let mut extra = k.clone();
            extra.push(0);
            s.db().delete_cf(s.cf(cf), extra).expect("delete extra");
        });
        assert_eq!(code, 0, "{cf} restored: {out}");
    }

    // Families that the capture above leaves empty: a record that the log never wrote.
    for cf in ["warnings", "limits", "buffer", "settings"] {
        let (code, out) = verify_after(&d, |s| {
            s.db()
                .put_cf(s.cf(cf), b"\0\0\0\x01stray", b"x")
                .expect("put");
        });
        assert_eq!(code, 1, "{cf} stray: {out}");
        assert!(out.contains(&format!("{cf}: ")), "{cf} stray: {out}");
        let (code, out) = verify_after(&d, |s| {
            s.db()
                .delete_cf(s.cf(cf), b"\0\0\0\x01stray")
                .expect("delete");
        });
        assert_eq!(code, 0, "{cf} restored: {out}");
    }

    // Derived state that claims to be behind (or ahead of) the log.
    let mut applied = None;
    let (code, out) = verify_after(&d, |s| {
        let seq = s.applied_seq().expect("applied seq");
        s.db()
            .put_cf(s.cf("meta"), b"applied_seq", (seq.0 - 1).to_be_bytes())
            .expect("put");
        applied = Some(seq);
    });
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("applied_seq"), "{out}");
    let (code, out) = verify_after(&d, |s| {
        s.db()
            .put_cf(
                s.cf("meta"),
                b"applied_seq",
                applied.unwrap().0.to_be_bytes(),
            )
            .expect("put");
    });
    assert_eq!(code, 0, "{out}");
}

/// Flushes make write-ahead log files obsolete (each deletion with its events flushes); the
/// store archives them and its reaper removes them. A SIGKILL in the middle loses nothing
/// acknowledged, and no obsolete log file is left behind.
#[test]
fn after_flushes_and_a_sigkill_nothing_is_lost_and_no_obsolete_log_stays() {
    let mut d = Daemon::start();
    let delete = |d: &Daemon, did: &str| {
        let uuid = d.person(T, did).unwrap()["uuid"]
            .as_str()
            .unwrap()
            .to_string();
        let path = format!("/api/projects/{T}/persons/{uuid}/?delete_events=true");
        assert_eq!(d.request("DELETE", &path, &[], Vec::new()).status, 204);
    };
    let big = "x".repeat(2000);
    let batch = |round: usize| -> Value {
        (0..50)
            .map(|i| json!({"event": "e", "distinct_id": format!("u{round}-{}", i % 10), "uuid": format!("r{round}-{i}"), "properties": {"pad": big, "$set": {"round": round}}}))
            .collect()
    };
    d.capture(T, batch(0));
    delete(&d, "u0-0");
    d.capture(T, batch(1));
    delete(&d, "u1-0");
    d.capture(T, batch(2));
    d.kill();
    d.start_again();
    for round in 0..3 {
        for i in 1..10 {
            let p = d
                .person(T, &format!("u{round}-{i}"))
                .expect("acknowledged person");
            assert_eq!(p["properties"]["round"], json!(round));
            let uuid = p["uuid"].as_str().unwrap();
            assert_eq!(
                d.events_of_person(T, uuid).len(),
                5,
                "round {round} user {i}"
            );
        }
    }
    assert!(
        d.person(T, "u2-0").is_some(),
        "the last round's first user was not deleted"
    );
    assert_eq!(d.terminate().code(), Some(0));
    let archived: Vec<_> = std::fs::read_dir(d.dir.join("archive"))
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(archived.is_empty(), "obsolete log files left: {archived:?}");
    d.assert_verifies();
}
