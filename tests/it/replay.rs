//! The striped replay behind `idstitch verify` and `snapshot verify`
//! (`store::verify::replay`): a log of several stripes replays to exactly the state applied
//! entry by entry, and a gap or an undecodable record anywhere is an error, not a hang.

use std::sync::Arc;

use idstitch::domain::{Entry, Seq};
use idstitch::store::log::GroupWriter;
use idstitch::store::verify::{replay, verify, STRIPE};
use idstitch::store::{log::write_group, Store};
use serde_json::json;

use crate::world::{World, P};

/// A world fed 40,000 events (pageviews, identifies that merge, `$set`s).
fn world() -> World {
    let mut w = World::default();
    for i in 0..40_000u64 {
        let anon = format!("anon-{}", i % 5_000);
        let event = match i % 13 {
            0 => json!({"event": "$identify", "distinct_id": format!("user-{}", i % 700),
                        "properties": {"$anon_distinct_id": anon}}),
            5 => json!({"event": "e", "distinct_id": anon,
                        "properties": {"$set": {"n": i, "plan": "p"}, "$set_once": {"first": i}}}),
            _ => json!({"event": "$pageview", "distinct_id": anon, "uuid": format!("ev-{i}"),
                        "properties": {"$browser": "Firefox", "i": i}}),
        };
        w.send(event);
    }
    assert!(w.seq > 2 * STRIPE, "the log spans more than two stripes");
    w
}

/// The world's log as the writer takes it.
fn log_of(w: &World) -> Vec<(Seq, Arc<Entry>)> {
    w.log
        .iter()
        .map(|(s, e)| (*s, Arc::new(e.clone())))
        .collect()
}

/// A world fed 40,000 events and a store holding its log, written as the daemon writes it.
fn world_and_store(dir: &std::path::Path) -> (World, Store) {
    let w = world();
    let store = Store::open(dir).expect("open");
    for group in log_of(&w).chunks(5_000) {
        write_group(&store, group, false).expect("write");
    }
    (w, store)
}

#[test]
fn a_log_of_several_stripes_replays_to_the_state_applied_entry_by_entry() {
    let dir = tempfile::tempdir().unwrap();
    let (w, store) = world_and_store(dir.path());
    let replayed = replay(&store, |_| {}).expect("replay");
    assert!(w.state.persons.len() > 1_000, "{}", w.state.persons.len());
    assert_eq!(replayed.into_state().expect("decodes").with_dids(), w.state);
}

/// The log writer keeps the persons it wrote decoded across groups (`GroupWriter`): written
/// that way, in small groups, so that persons change again groups later and the cache ages
/// generations, the live persons and IDs are still exactly those the log replays to.
#[test]
fn persons_cached_across_groups_are_written_as_the_log_says() {
    let w = world();
    // A bound well below the persons written, so that generations age many times.
    let bound = 64;
    assert!(w.state.persons.len() > 10 * bound);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).expect("open");
    let mut writer = GroupWriter::new(bound);
    for group in log_of(&w).chunks(97) {
        writer.write(&store, group, false).expect("write");
    }
    let (replayed, diffs) = verify(&store, |_| {}, 10, true).expect("verify");
    assert_eq!(diffs, Vec::<String>::new());
    assert_eq!(replayed.into_state().expect("decodes").with_dids(), w.state);
}

#[test]
fn a_gap_or_an_undecodable_record_in_any_stripe_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (_, store) = world_and_store(dir.path());
    let log = store.cf("log");
    // A record that does not decode, in the third stripe.
    let bad = Seq(2 * STRIPE + 17);
    let good = store
        .db()
        .get_cf(log, bad.0.to_be_bytes())
        .unwrap()
        .expect("there");
    store
        .db()
        .put_cf(log, bad.0.to_be_bytes(), [1, 2, 3])
        .unwrap();
    let err = replay(&store, |_| {})
        .expect_err("an undecodable record")
        .to_string();
    assert!(err.contains("does not decode"), "{err}");
    store.db().put_cf(log, bad.0.to_be_bytes(), good).unwrap();
    replay(&store, |_| {}).expect("whole again");
    // A missing seq: in the middle of the second stripe, and the last of the first.
    for missing in [Seq(STRIPE + 100), Seq(STRIPE)] {
        let was = store
            .db()
            .get_cf(log, missing.0.to_be_bytes())
            .unwrap()
            .expect("there");
        store.db().delete_cf(log, missing.0.to_be_bytes()).unwrap();
        let err = replay(&store, |_| {}).expect_err("a gap").to_string();
        assert!(err.contains(&format!("expected seq {missing}")), "{err}");
        store
            .db()
            .put_cf(log, missing.0.to_be_bytes(), was)
            .unwrap();
    }
}

/// A created person is replayed as the row its creation gives, its properties not built
/// until a later entry changes it: a change to them in the log is found all the same, as a
/// difference while they are JSON and as an undecodable log entry, named by its seq, when
/// they are not, whether the person stayed as created (version 0) or changed later.
#[test]
fn a_created_persons_properties_changed_in_the_log_are_found() {
    let dir = tempfile::tempdir().unwrap();
    let (w, store) = world_and_store(dir.path());
    let log = store.cf("log");
    // `"$creator_event_uuid":"ev-…"` in the creation's properties: set at creation, and
    // neither a `$set` nor a merge changes it later.
    let text = |p: &idstitch::domain::Person| {
        let v = p.properties.0.get("$creator_event_uuid")?;
        Some(format!("\"$creator_event_uuid\":{v}"))
    };
    let creation = |p: &idstitch::domain::Person| {
        let record = store
            .db()
            .get_cf(log, p.created_seq.0.to_be_bytes())
            .unwrap()?;
        let text = text(p)?;
        // Where the value's last digit is.
        let at = record
            .windows(text.len())
            .position(|w| w == text.as_bytes())?
            + text.len()
            - 2;
        Some((record, text, at))
    };
    let mut persons: Vec<_> = w.state.persons.values().collect();
    persons.sort_by_key(|p| p.created_seq);
    let first = |changed: bool| {
        persons
            .iter()
            .find(|p| (p.version > 0) == changed && creation(p).is_some())
            .expect("a person created by a pageview")
    };
    for person in [first(false), first(true)] {
        let (good, text, at) = creation(person).expect("found");
        let key = person.created_seq.0.to_be_bytes();
        let uuid = person.uuid.0.to_string();
        // Still JSON: another value.
        let mut bad = good.clone();
        bad[at] = if bad[at] == b'7' { b'8' } else { b'7' };
        store.db().put_cf(log, key, &bad).unwrap();
        let (_, diffs) = verify(&store, |_| {}, 10, true).expect("verify");
        let tampered = String::from_utf8_lossy(&bad[at + 2 - text.len()..at + 2]).into_owned();
        assert_ne!(tampered, text);
        assert!(
            diffs.len() == 1 && diffs[0].contains(&uuid) && diffs[0].contains(&tampered),
            "version {}: {diffs:?}",
            person.version
        );
        // Not JSON: the string ends one byte early.
        bad[at] = b'"';
        store.db().put_cf(log, key, &bad).unwrap();
        let err = verify(&store, |_| {}, 10, true)
            .expect_err("an undecodable creation")
            .to_string();
        let named = format!("at seq {}: record does not decode", person.created_seq);
        assert!(err.contains(&named), "version {}: {err}", person.version);
        store.db().put_cf(log, key, &good).unwrap();
    }
    let (_, diffs) = verify(&store, |_| {}, 10, true).expect("verify");
    assert_eq!(diffs, Vec::<String>::new());
}

/// A created person's properties are checked as JSON even when nothing decodes the person
/// afterwards: a log whose creation of a person merged away before any change to it does not
/// decode fails verify, as it would fail a rebuild from the log.
#[test]
fn a_merged_away_persons_creation_that_does_not_decode_fails_verify() {
    use idstitch::domain::{person_uuid, Change, MergeKind, ProjectId, Props};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).expect("open");
    let p = ProjectId(1);
    let (anon, user) = (person_uuid(p, "anon"), person_uuid(p, "user"));
    let created = |person, id: &str| Change::PersonCreated {
        person,
        distinct_ids: vec![id.into()],
        properties: Props(json!({ "from": id }).as_object().cloned().unwrap()),
        is_identified: false,
        created_at_ms: 1,
    };
    let merged = Change::PersonsMerged {
        survivor: user,
        absorbed: anon,
        moved_ids: vec!["anon".into()],
        brought: Props::new(),
        kept: vec!["from".into()],
        created_at_ms: 1,
        kind: MergeKind::Identify,
    };
    let log: Vec<(Seq, Arc<Entry>)> = [created(anon, "anon"), created(user, "user"), merged]
        .into_iter()
        .enumerate()
        .map(|(i, change)| {
            let entry = Entry {
                project: p,
                at_ms: 0,
                cause: None,
                changes: vec![change],
            };
            (Seq(i as u64 + 1), Arc::new(entry))
        })
        .collect();
    write_group(&store, &log, false).expect("write");
    let (_, diffs) = verify(&store, |_| {}, 10, true).expect("verify");
    assert_eq!(diffs, Vec::<String>::new());
    let key = 1u64.to_be_bytes();
    let logs = store.cf("log");
    let mut bad = store.db().get_cf(logs, key).unwrap().unwrap();
    // `{"from":"anon"}` becomes `{"from":#anon"}`: still UTF-8, no longer JSON.
    let at = bad
        .windows(8)
        .position(|w| w == b"\"from\":\"")
        .expect("the properties")
        + 7;
    bad[at] = b'#';
    store.db().put_cf(logs, key, &bad).unwrap();
    let err = verify(&store, |_| {}, 10, true)
        .expect_err("a creation that does not decode")
        .to_string();
    assert!(err.contains("at seq 1: record does not decode"), "{err}");
}

/// A log of creations alone never builds the index of its rows during the replay; a
/// difference found by the digests still names the one person that differs (the comparison
/// indexes the rows first).
#[test]
fn a_difference_after_a_log_of_creations_alone_names_the_person() {
    use idstitch::domain::{person_uuid, Person, ProjectId, Props};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).expect("open");
    let p = ProjectId(1);
    let log: Vec<(Seq, Arc<Entry>)> = (1..=50u64)
        .map(|i| {
            let props = Props(json!({ "n": i }).as_object().cloned().unwrap());
            crate::support::creation(p, i, format!("id-{i}"), props, i as i64)
        })
        .collect();
    write_group(&store, &log, false).expect("write");
    let (_, diffs) = verify(&store, |_| {}, 10, true).expect("verify");
    assert_eq!(diffs, Vec::<String>::new());
    // One live person changed behind the log's back.
    let uuid = person_uuid(p, "id-17");
    let persons = store.cf("persons");
    let key = idstitch::store::keys::person(p, uuid);
    let row = store.db().get_cf(persons, &key).unwrap().expect("live");
    let mut live: Person = idstitch::store::codec::decode(&row).unwrap();
    live.properties.0.insert("n".into(), json!(1700));
    store
        .db()
        .put_cf(persons, &key, idstitch::store::codec::encode(&live))
        .unwrap();
    let (_, diffs) = verify(&store, |_| {}, 10, true).expect("verify");
    assert!(
        diffs.len() == 1 && diffs[0].contains(&uuid.0.to_string()) && diffs[0].contains("1700"),
        "{diffs:?}"
    );
}

/// Rows are indexed by person only when something looks a person up (`Replayed`): a person
/// created again, with or without a lookup in between, is the later creation, once.
#[test]
fn a_person_created_again_is_the_later_creation_indexed_or_not() {
    use idstitch::domain::{person_uuid, Change, Person, ProjectId, Props};
    use idstitch::store::codec::{encode_entry, skim_for_replay};
    use idstitch::store::verify::Replayed;
    let p = ProjectId(1);
    let (a, b) = (person_uuid(p, "a"), person_uuid(p, "b"));
    let created = |person, n: u64| Change::PersonCreated {
        person,
        distinct_ids: vec![format!("id-{n}")],
        properties: Props(json!({ "n": n }).as_object().cloned().unwrap()),
        is_identified: false,
        created_at_ms: n as i64,
    };
    let entry = |changes| Entry {
        project: p,
        at_ms: 0,
        cause: None,
        changes,
    };
    let identified = |person| Change::PersonIdentified { person };
    for lookup_between in [false, true] {
        let mut log = vec![entry(vec![created(a, 1)]), entry(vec![created(b, 2)])];
        if lookup_between {
            log.push(entry(vec![identified(a)]));
        }
        // Each entry's rows in a buffer of their own, as a stripe's; then once more, with a
        // lookup of the other person in the same entry.
        log.push(entry(vec![created(a, 3)]));
        let mut state = Replayed::new();
        for (i, e) in log.iter().enumerate() {
            let (mut changes, mut rows) = (Vec::new(), Vec::new());
            let skimmed =
                skim_for_replay(&encode_entry(e), Seq(i as u64 + 1), &mut changes, &mut rows)
                    .expect("skims");
            state.add_rows(rows);
            state.apply(Seq(i as u64 + 1), skimmed, &mut changes.into_iter());
        }
        let mut again = log.len() as u64 + 1;
        let (mut changes, mut rows) = (Vec::new(), Vec::new());
        let e = entry(vec![created(a, 4), identified(b)]);
        let skimmed =
            skim_for_replay(&encode_entry(&e), Seq(again), &mut changes, &mut rows).expect("skims");
        state.add_rows(rows);
        state.apply(Seq(again), skimmed, &mut changes.into_iter());
        again += 1;
        state.index();
        assert_eq!(state.person_count(), 2, "lookup between: {lookup_between}");
        let persons = state.into_state().expect("decodes").persons;
        let person = |u| -> &Person { &persons[&(p, u)] };
        assert_eq!(persons.len(), 2, "lookup between: {lookup_between}");
        assert_eq!(person(a).properties.0["n"], 4);
        assert_eq!(person(a).distinct_ids, ["id-4"]);
        assert_eq!(
            (person(a).version, person(a).created_seq),
            (0, Seq(again - 1))
        );
        assert!(!person(a).is_identified);
        assert_eq!((person(b).version, person(b).is_identified), (1, true));
    }
}

/// Every record of every column family, in key order.
fn dump(store: &Store) -> Vec<(&'static str, Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    for cf in idstitch::store::keys::CFS {
        let mut it = store.full_scan(cf);
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            out.push((cf, k.to_vec(), v.to_vec()));
            it.next();
        }
        it.status().expect("scan");
    }
    out
}

/// A log with every kind of change in it: pageviews, identifies that merge, `$set`s and
/// `$unset`s, and every so often an operator splitting or deleting (with or without its
/// events) the person who just sent an event, so that the same or the group before changed
/// it.
fn world_with_operators() -> World {
    use idstitch::domain::admin::{decide_delete, decide_split};
    let mut w = World::default();
    for i in 0..6_000u64 {
        let anon = format!("anon-{}", i % 800);
        let user = format!("user-{}", i % 150);
        let event = match i % 11 {
            0 => json!({"event": "$identify", "distinct_id": user,
                        "properties": {"$anon_distinct_id": anon, "$set": {"plan": i % 3}}}),
            4 => json!({"event": "e", "distinct_id": anon,
                        "properties": {"$set": {"n": i}, "$set_once": {"first": i},
                                       "$unset": ["plan"]}}),
            _ => json!({"event": "$pageview", "distinct_id": anon, "uuid": format!("ev-{i}"),
                        "properties": {"$browser": "Firefox", "$current_url": format!("/p/{i}"),
                                       "i": i}}),
        };
        w.send(event);
        if i % 97 == 96 {
            let did = if i % 11 == 0 { user } else { anon };
            if let Some(p) = w.person(&did).cloned() {
                let changes = match i % 3 {
                    0 => decide_split(P, &p, None).expect("split"),
                    1 => decide_delete(&p, true),
                    _ => decide_delete(&p, false),
                };
                if !changes.is_empty() {
                    w.admin(changes);
                }
            }
        }
    }
    let kinds = |name: &str| {
        w.log
            .iter()
            .flat_map(|(_, e)| &e.changes)
            .filter(|c| format!("{c:?}").starts_with(name))
            .count()
    };
    for kind in [
        "PersonSplit",
        "PersonDeleted",
        "PersonsMerged",
        "EventStored",
    ] {
        assert!(kinds(kind) > 3, "{kind}: {}", kinds(kind));
    }
    w
}

/// The first record where two dumps differ, or where one ends before the other.
fn first_difference(
    a: &[(&'static str, Vec<u8>, Vec<u8>)],
    b: &[(&'static str, Vec<u8>, Vec<u8>)],
) -> Option<String> {
    a.iter()
        .zip(b)
        .find(|(a, b)| a != b)
        .map(|(a, b)| {
            format!(
                "{} {:?} = {:?} against {} {:?} = {:?}",
                a.0, a.1, a.2, b.0, b.1, b.2
            )
        })
        .or_else(|| {
            (a.len() != b.len()).then(|| format!("{} records against {}", a.len(), b.len()))
        })
}

/// The log written one entry per group: what every other way of writing it must leave.
fn written_one_by_one(log: &[(Seq, Arc<Entry>)]) -> Vec<(&'static str, Vec<u8>, Vec<u8>)> {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).expect("open");
    let mut writer = GroupWriter::new(64);
    for g in log.chunks(1) {
        writer.write(&store, g, false).expect("write");
    }
    dump(&store)
}

/// A group's derived rows do not go into its batch in entry order (persons are written once,
/// as the group leaves them; the puts of some column families are sorted by key), so a group
/// in which a row is put and then deleted, or a person changed and then merged away, split or
/// deleted, must still leave every column family exactly as one entry per group does.
#[test]
fn every_column_family_is_the_same_however_the_log_was_grouped() {
    let log = log_of(&world_with_operators());
    let one_by_one = written_one_by_one(&log);
    for group in [50, 1_000, 10_000] {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).expect("open");
        let mut writer = GroupWriter::new(64);
        for g in log.chunks(group) {
            writer.write(&store, g, false).expect("write");
        }
        assert_eq!(
            first_difference(&dump(&store), &one_by_one),
            None,
            "groups of {group}"
        );
    }
}

/// The writer thread itself, fed the whole log as fast as it takes it: whatever groups it
/// forms, it leaves every column family as one entry per group does.
#[test]
fn the_writer_thread_leaves_every_column_family_as_the_log_says() {
    use idstitch::actors::WriterHandle;
    use idstitch::metrics::Metrics;
    let log = log_of(&world_with_operators());
    let one_by_one = written_one_by_one(&log);
    // Round 0 pauses after every 1,500 entries, so that groups of about that many form; the
    // others pause more often, so that groups of many smaller sizes form too.
    for (round, pause_every) in [1_500, 97, 128].into_iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).expect("open");
        let metrics = Metrics::new();
        let (writer, join) = WriterHandle::spawn(store.clone(), Seq(0), metrics.clone(), |_| {});
        for (i, (seq, entry)) in log.iter().enumerate() {
            writer.append(*seq, entry.clone()).expect("append");
            if i % pause_every == pause_every - 1 {
                std::thread::sleep(std::time::Duration::from_micros(if round == 0 {
                    2_000
                } else {
                    300
                }));
            }
        }
        let last = log.last().expect("a log").0;
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(writer.wait_durable(last))
            .expect("durable");
        writer.stop();
        join.join().expect("writer thread");
        let groups = metrics.log_fsyncs.get();
        assert!(groups > 1, "round {round}: {groups} groups");
        assert_eq!(
            first_difference(&dump(&store), &one_by_one),
            None,
            "round {round}, {groups} groups"
        );
    }
}
