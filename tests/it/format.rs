//! The on-disk log format: committed fixtures of format v1 must keep decoding to the same
//! entries. Regenerate only for a new format, with `IDSTITCH_WRITE_FIXTURES=1`, and keep the old
//! file next to the new one.

use idstitch::domain::apply::created_person;
use idstitch::domain::change::{AttachRule, StoredEvent};
use idstitch::domain::warnings::{Warning, WarningKind};
use idstitch::domain::Seq;
use idstitch::domain::{
    person_uuid, Change, Entry, MergeKind, ProjectId, Props, RawProps, RefusalReason,
};
use idstitch::store::codec::{
    self, decode_entry, encode_entry, row_distinct_ids, skim_for_replay, ReplayChange,
};
use serde_json::json;

fn props(v: serde_json::Value) -> Props {
    Props(v.as_object().cloned().unwrap_or_default())
}

/// One entry per change kind, with every field set.
fn entries() -> Vec<Entry> {
    let p = ProjectId(1);
    let a = person_uuid(p, "anon");
    let u = person_uuid(p, "user");
    let changes = vec![
        Change::ProjectCreated {
            id: p,
            token: "phc_fixture".into(),
            name: "Fixture".into(),
        },
        Change::PersonCreated {
            person: a,
            distinct_ids: vec!["anon".into()],
            properties: props(json!({"a": 1, "n": null})),
            is_identified: false,
            created_at_ms: 1_700_000_000_000,
        },
        Change::DistinctIdAttached {
            person: u,
            distinct_id: "phone".into(),
            rule: AttachRule::MergeWithNewId,
        },
        Change::PropertiesChanged {
            person: u,
            set: props(json!({"plan": "premium", "nested": {"x": [1, 2.5, "y"]}})),
            unset: vec!["old".into()],
        },
        Change::PersonIdentified { person: u },
        Change::PersonsMerged {
            survivor: u,
            absorbed: a,
            moved_ids: vec!["anon".into()],
            brought: props(json!({"a": 1})),
            kept: vec!["plan".into()],
            created_at_ms: 1_600_000_000_000,
            kind: MergeKind::Identify,
        },
        Change::MergeRefused {
            person: Some(u),
            other_person: None,
            other: "null".into(),
            into: "user".into(),
            reason: RefusalReason::IllegalDistinctId {
                illegal: "null".into(),
            },
        },
        Change::MergeRefused {
            person: Some(u),
            other_person: Some(a),
            other: "anon".into(),
            into: "user".into(),
            reason: RefusalReason::AlreadyIdentified,
        },
        Change::MergeRefused {
            person: None,
            other_person: None,
            other: "x".into(),
            into: "y".into(),
            reason: RefusalReason::MergeLimitExceeded { limit: 3 },
        },
        Change::WarningRecorded {
            warning: Warning::new(
                WarningKind::DistinctIdTruncated,
                1_700_000_000_001,
                "user",
                vec![
                    ("distinctId", json!("user")),
                    ("originalLength", json!(250)),
                ],
            ),
        },
        Change::EventStored {
            event: StoredEvent {
                uuid: Some("0190a3b0-0000-7000-8000-000000000001".into()),
                event: "$pageview".into(),
                distinct_id: "anon".into(),
                properties: RawProps::from_map(&props(json!({"$browser": "Firefox"})).0),
                timestamp_ms: 1_700_000_000_002,
                personless: true,
            },
        },
        Change::PersonSplit {
            person: u,
            main: "user".into(),
            parts: vec![("user".into(), u), ("anon".into(), a)],
        },
        Change::PersonDeleted {
            person: u,
            distinct_ids: vec!["user".into()],
            delete_events: true,
        },
    ];
    changes
        .into_iter()
        .enumerate()
        .map(|(i, c)| Entry {
            project: p,
            at_ms: 1_700_000_000_000 + i as i64,
            cause: Some(format!("cause-{i}")),
            changes: vec![c],
        })
        .collect()
}

fn fixture_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/log-format-v1.bin")
}

/// Length-prefixed records: u32 LE length, then the encoded entry.
fn frame(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let b = encode_entry(e);
        out.extend_from_slice(&(b.len() as u32).to_le_bytes());
        out.extend_from_slice(&b);
    }
    out
}

#[test]
fn log_format_v1_fixture_still_decodes_to_the_same_entries() {
    let want = entries();
    if std::env::var_os("IDSTITCH_WRITE_FIXTURES").is_some() {
        std::fs::write(fixture_path(), frame(&want)).unwrap();
    }
    let bytes =
        std::fs::read(fixture_path()).expect("committed fixture tests/fixtures/log-format-v1.bin");
    let mut got = Vec::new();
    let mut rest = &bytes[..];
    while !rest.is_empty() {
        let (len, tail) = rest.split_at(4);
        let len = u32::from_le_bytes(len.try_into().unwrap()) as usize;
        got.push(decode_entry(&tail[..len]).expect("v1 entry decodes"));
        rest = &tail[len..];
    }
    assert_eq!(got, want);
    assert_eq!(frame(&want), bytes, "encoding is stable byte for byte");
}

#[test]
fn an_unknown_format_version_is_an_error_not_a_panic() {
    let mut b = encode_entry(&entries()[0]);
    b[0] = 99;
    assert!(decode_entry(&b).is_err());
    assert!(decode_entry(&[]).is_err());
    assert!(decode_entry(&[1, 200, 3]).is_err());
}

/// One entry per change kind appended after the first fixture: project settings and the
/// conversion buffer.
fn settings_entries() -> Vec<Entry> {
    use idstitch::domain::buffer::BufferedEvent;
    use idstitch::domain::filters::{FilterOperator, FilterType, JsonValue, PropertyFilter};
    use idstitch::domain::settings::{ConversionBuffer, ProjectSettings};
    use idstitch::domain::Seq;
    let p = ProjectId(1);
    let changes = vec![
        Change::ProjectSettingsChanged {
            settings: ProjectSettings {
                name: "Shop".into(),
                conversion_buffer: ConversionBuffer {
                    enabled: true,
                    window_secs: 60,
                },
                test_account_filters: vec![
                    PropertyFilter {
                        key: "email".into(),
                        value: JsonValue(json!("@ourcompany.com")),
                        operator: FilterOperator::NotIcontains,
                        kind: FilterType::Person,
                    },
                    PropertyFilter {
                        key: "plan".into(),
                        value: JsonValue(json!(["free", 2])),
                        operator: FilterOperator::IsNotSet,
                        kind: FilterType::Person,
                    },
                ],
                merge_limit: Some(7),
            },
        },
        Change::EventBuffered {
            event: BufferedEvent {
                uuid: Some("0190a3b0-0000-7000-8000-000000000002".into()),
                name: "signed_up".into(),
                distinct_id: "user".into(),
                properties: props(json!({"$lib": "posthog-python"})),
                set: props(json!({"email": "max@hedgehogmail.com"})),
                set_once: props(json!({"first": 1})),
                unset: vec!["old".into()],
                timestamp_ms: Some(1_700_000_000_003),
                received_at_ms: 1_700_000_000_004,
                personless: false,
                warnings: vec![Warning::new(
                    WarningKind::DistinctIdTruncated,
                    1_700_000_000_005,
                    "user",
                    vec![("distinctId", json!("user"))],
                )],
            },
            release_at_ms: 1_700_000_060_004,
        },
        Change::BufferReleased { buffered: Seq(2) },
    ];
    changes
        .into_iter()
        .enumerate()
        .map(|(i, c)| Entry {
            project: p,
            at_ms: 1_700_000_100_000 + i as i64,
            cause: None,
            changes: vec![c],
        })
        .collect()
}

#[test]
fn log_format_v1_settings_fixture_still_decodes_to_the_same_entries() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/log-format-v1-settings.bin");
    let want = settings_entries();
    if std::env::var_os("IDSTITCH_WRITE_SETTINGS_FIXTURE").is_some() {
        std::fs::write(&path, frame(&want)).unwrap();
    }
    let bytes = std::fs::read(&path).expect("committed fixture log-format-v1-settings.bin");
    let mut got = Vec::new();
    let mut rest = &bytes[..];
    while !rest.is_empty() {
        let (len, tail) = rest.split_at(4);
        let len = u32::from_le_bytes(len.try_into().unwrap()) as usize;
        got.push(decode_entry(&tail[..len]).expect("v1 entry decodes"));
        rest = &tail[len..];
    }
    assert_eq!(got, want);
    assert_eq!(frame(&want), bytes, "encoding is stable byte for byte");
}

/// What a skim of `entry` must keep: its changes but the stored events, and how many of
/// those there were.
fn skimmed(entry: &Entry) -> (Vec<Change>, u32) {
    let (events, rest): (Vec<_>, Vec<_>) = entry
        .changes
        .iter()
        .cloned()
        .partition(|c| matches!(c, Change::EventStored { .. }));
    (rest, events.len() as u32)
}

/// Whether a replay's skim of `bytes` fails.
fn skim_fails(bytes: &[u8]) -> bool {
    skim_for_replay(bytes, Seq(1), &mut Vec::new(), &mut Vec::new()).is_err()
}

/// The fixture's entry that stored an event.
fn stored_event_entry() -> Entry {
    entries()
        .into_iter()
        .find(|e| matches!(e.changes[..], [Change::EventStored { .. }]))
        .expect("the fixture stores an event")
}

/// Every change kind, one per entry and then all in one entry (events among the others),
/// with and without a cause.
fn every_kind() -> Vec<Entry> {
    let mut all = entries();
    all.extend(settings_entries());
    let event = stored_event_entry();
    let mut together = Entry {
        cause: None,
        ..all[0].clone()
    };
    for e in &all {
        together.changes.extend(e.changes.iter().cloned());
        together.changes.extend(event.changes.iter().cloned());
    }
    all.push(together);
    all
}

/// What a replay's skim of `entry` at `seq` must give: the skim's changes, each creation as
/// the row `encode` writes for the person it creates.
fn replay_skimmed(entry: &Entry, seq: Seq) -> Vec<Result<Change, Vec<u8>>> {
    skimmed(entry)
        .0
        .into_iter()
        .map(|c| match created_person(entry.project, seq, &c) {
            Some(p) => Err(codec::encode(&p)),
            None => Ok(c),
        })
        .collect()
}

#[test]
fn a_replay_skim_gives_each_created_person_its_row_byte_for_byte() {
    let mut created = 0;
    for (i, entry) in every_kind().iter().enumerate() {
        let seq = Seq(1_000 + i as u64);
        let bytes = encode_entry(entry);
        // Onto lists that already hold another entry's change and row.
        let mut changes = vec![ReplayChange::Created {
            person: person_uuid(ProjectId(9), "before"),
            row: 0..3,
        }];
        let mut rows = vec![7, 7, 7];
        let got = skim_for_replay(&bytes, seq, &mut changes, &mut rows).expect("skims");
        let want = replay_skimmed(entry, seq);
        assert_eq!(got.changes as usize, want.len());
        assert_eq!(got.events, skimmed(entry).1);
        assert_eq!((got.project, got.at_ms), (entry.project, entry.at_ms));
        let got: Vec<_> = changes[1..]
            .iter()
            .map(|c| match c {
                ReplayChange::Change(c) => Ok((**c).clone()),
                ReplayChange::Created { person, row } => {
                    let row = &rows[row.clone()];
                    assert_eq!(codec::row_key(row), (entry.project, *person));
                    Err(row.to_vec())
                }
            })
            .collect();
        assert_eq!(got, want, "{entry:?}");
        assert_eq!(rows[..3], [7, 7, 7]);
        for row in got.iter().filter_map(|c| c.as_ref().err()) {
            created += 1;
            let person: idstitch::domain::Person = codec::decode(row).expect("decodes");
            assert!(row_distinct_ids(row).eq(person.distinct_ids.iter().map(String::as_str)));
        }
    }
    assert!(created >= 2, "the fixture creates persons");
    // A created person's uuid of another length than 16 bytes does not decode, nor skim.
    let entry = entries()
        .into_iter()
        .find(|e| matches!(e.changes[..], [Change::PersonCreated { .. }]))
        .expect("a creation");
    let Change::PersonCreated { person, .. } = &entry.changes[0] else {
        unreachable!()
    };
    let bytes = encode_entry(&entry);
    let at = bytes
        .windows(16)
        .position(|w| w == person.0.as_bytes())
        .expect("the uuid");
    let mut bad = bytes.clone();
    assert_eq!(bad[at - 8..at], 16u64.to_le_bytes());
    bad[at - 8] = 15;
    assert!(decode_entry(&bad).is_err());
    assert!(skim_fails(&bad));
    // Several distinct IDs, and IDs that are not there.
    let p = idstitch::domain::Person {
        distinct_ids: vec!["a".into(), "bé".into(), String::new(), "d".repeat(300)],
        ..created_person(
            ProjectId(3),
            Seq(5),
            &entries()
                .into_iter()
                .flat_map(|e| e.changes)
                .find(|c| matches!(c, Change::PersonCreated { .. }))
                .unwrap(),
        )
        .unwrap()
    };
    let row = codec::encode(&p);
    assert!(row_distinct_ids(&row).eq(p.distinct_ids.iter().map(String::as_str)));
    assert_eq!(
        row_distinct_ids(&row[..40]).count(),
        0,
        "cut in the IDs' count or the first"
    );
    assert_eq!(row_distinct_ids(&[]).count(), 0);
}

/// Every byte of every kind of entry, set to a few values that break lengths, flags, tags,
/// UTF-8 or JSON: a replay's skim fails exactly where decoding fails.
#[test]
fn a_replay_skim_fails_where_decoding_fails_whatever_byte_is_changed() {
    let mut failed = 0;
    for entry in every_kind() {
        let bytes = encode_entry(&entry);
        for at in 0..bytes.len() {
            for value in [0x00, 0x02, b'"', b'{', b'#', 0xff] {
                let mut bad = bytes.clone();
                bad[at] = value;
                let decoded = decode_entry(&bad).is_err();
                failed += usize::from(decoded);
                assert_eq!(
                    skim_fails(&bad),
                    decoded,
                    "byte {at} set to {value:#x} in {entry:?}"
                );
            }
        }
    }
    assert!(
        failed > 1_000,
        "{failed} of the changed records do not decode"
    );
}

#[test]
fn skim_refuses_what_decode_refuses() {
    for entry in every_kind() {
        let bytes = encode_entry(&entry);
        // Every cut short record, and a bad version.
        for n in 0..bytes.len() {
            assert_eq!(
                skim_fails(&bytes[..n]),
                decode_entry(&bytes[..n]).is_err(),
                "{n} bytes of {entry:?}"
            );
        }
        let mut other = bytes.clone();
        other[0] = 99;
        assert!(skim_fails(&other));
    }
    // An event body that is not UTF-8, or a flag byte that is not a bool, does not decode,
    // skimmed or not.
    let bytes = encode_entry(&stored_event_entry());
    let at = bytes
        .windows(7)
        .position(|w| w == b"Firefox")
        .expect("body");
    let mut bad = bytes.clone();
    bad[at] = 0xff;
    assert!(decode_entry(&bad).is_err());
    assert!(skim_fails(&bad));
    let mut bad = bytes.clone();
    *bad.last_mut().unwrap() = 2;
    assert!(decode_entry(&bad).is_err());
    assert!(skim_fails(&bad));
    // The event's uuid is an `Option`: a tag byte other than 0 or 1 does not decode either.
    let uuid = bytes
        .windows(8)
        .position(|w| w == b"0190a3b0")
        .expect("the event's uuid");
    let mut bad = bytes.clone();
    assert_eq!(bad[uuid - 9], 1, "Some");
    bad[uuid - 9] = 2;
    assert!(decode_entry(&bad).is_err());
    assert!(skim_fails(&bad));
}
