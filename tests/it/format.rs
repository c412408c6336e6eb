//! The on-disk log format: committed fixtures of format v1 must keep decoding to the same
//! entries, and encoding those entries must give the committed bytes.
//!
//! A committed fixture file is never regenerated: `IDSTITCH_WRITE_FIXTURES=1` writes only the
//! fixture files that do not exist yet. For a new format, or for entries a fixture lacks (a new
//! variant of an enum the log stores: `every_variant_of_every_enum_the_log_stores_is_in_a_fixture`
//! fails until one holds it), add a new file with its own entries function and test, and keep
//! the old files next to it unchanged.

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
    if std::env::var_os("IDSTITCH_WRITE_FIXTURES").is_some() && !fixture_path().exists() {
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
    if std::env::var_os("IDSTITCH_WRITE_FIXTURES").is_some() && !path.exists() {
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

/// Every variant of every enum the log stores, with its fields set, and the `Option`s of
/// `Change` and what it holds both empty and full where the first two fixtures had only one
/// (bincode writes a variant as its position, so a reordered enum decodes old logs as other
/// variants: only a fixture that holds each variant notices). Appended as a third fixture: the
/// first two stay byte for byte.
fn variant_entries() -> Vec<Entry> {
    use idstitch::domain::buffer::BufferedEvent;
    use idstitch::domain::filters::{FilterOperator, FilterType, JsonValue, PropertyFilter};
    use idstitch::domain::settings::{ConversionBuffer, ProjectSettings};
    let p = ProjectId(2);
    let a = person_uuid(p, "anon-2");
    let u = person_uuid(p, "user-2");
    let w = person_uuid(p, "web-2");
    let warning = |kind: WarningKind, i: i64, details: Vec<(&str, serde_json::Value)>| {
        Warning::new(kind, 1_700_000_200_000 + i, "user-2", details)
    };
    let ev = json!("0190a3b0-0000-7000-8000-000000000003");
    // One of each kind, with the details the engine gives it.
    let warnings = vec![
        warning(
            WarningKind::CannotMergeWithIllegalDistinctId,
            0,
            vec![
                ("illegalDistinctId", json!("null")),
                ("otherDistinctId", json!("user-2")),
                ("eventUuid", ev.clone()),
            ],
        ),
        warning(
            WarningKind::CannotMergeAlreadyIdentified,
            1,
            vec![
                ("sourcePersonDistinctId", json!("web-2")),
                ("targetPersonDistinctId", json!("user-2")),
                ("eventUuid", ev.clone()),
            ],
        ),
        warning(
            WarningKind::MergeLimitExceeded,
            2,
            vec![
                ("sourcePersonDistinctId", json!("web-2")),
                ("targetPersonDistinctId", json!("user-2")),
                ("limit", json!(3)),
            ],
        ),
        warning(
            WarningKind::InvalidEventWhenProcessPersonProfileIsFalse,
            3,
            vec![
                ("eventUuid", ev.clone()),
                ("event", json!("$identify")),
                ("distinctId", json!("user-2")),
            ],
        ),
        warning(
            WarningKind::InvalidProcessPersonProfile,
            4,
            vec![
                ("eventUuid", serde_json::Value::Null),
                ("event", json!("e")),
                ("distinctId", json!("user-2")),
                ("$process_person_profile", json!("no")),
            ],
        ),
        warning(
            WarningKind::PersonPropertiesSizeViolation,
            5,
            vec![
                ("personId", json!(u.to_string())),
                ("distinctId", json!("user-2")),
                ("eventUuid", ev.clone()),
                ("message", json!("too big")),
            ],
        ),
        warning(
            WarningKind::DistinctIdTruncated,
            6,
            vec![
                ("distinctId", json!("user-2")),
                ("originalLength", json!(201)),
            ],
        ),
        warning(
            WarningKind::DistinctIdLimitExceeded,
            7,
            vec![
                ("sourcePersonDistinctId", json!("web-2")),
                ("targetPersonDistinctId", json!("user-2")),
                ("limit", json!(10_000)),
            ],
        ),
    ];
    let merged = |kind: MergeKind, i: i64| Change::PersonsMerged {
        survivor: u,
        absorbed: a,
        moved_ids: vec!["anon-2".into(), format!("device-{i}")],
        brought: props(json!({"kind": i, "f": 1.5})),
        kept: vec!["plan".into(), "email".into()],
        created_at_ms: 1_600_000_000_000 + i,
        kind,
    };
    let refused = |person, other_person, reason| Change::MergeRefused {
        person,
        other_person,
        other: "web-2".into(),
        into: "user-2".into(),
        reason,
    };
    let filter = |key: &str, operator, value| PropertyFilter {
        key: key.into(),
        value: JsonValue(value),
        operator,
        kind: FilterType::Person,
    };
    let mut singles = vec![
        Change::ProjectCreated {
            id: p,
            token: "phc_variants".into(),
            name: "Variantes é".into(),
        },
        Change::PersonCreated {
            person: u,
            distinct_ids: vec!["user-2".into(), "web-2".into()],
            properties: props(json!({})),
            is_identified: true,
            created_at_ms: 1_700_000_200_100,
        },
        Change::PersonDeleted {
            person: w,
            distinct_ids: vec!["web-2".into(), "tablet-2".into()],
            delete_events: false,
        },
        merged(MergeKind::Identify, 0),
        merged(MergeKind::Alias, 1),
        merged(MergeKind::MergeDangerously, 2),
        refused(
            None,
            Some(a),
            RefusalReason::IllegalDistinctId {
                illegal: "undefined".into(),
            },
        ),
        refused(Some(u), Some(w), RefusalReason::AlreadyIdentified),
        refused(
            Some(u),
            None,
            RefusalReason::MergeLimitExceeded { limit: u64::MAX },
        ),
        refused(
            Some(u),
            Some(w),
            RefusalReason::DistinctIdLimitExceeded { limit: 10_000 },
        ),
    ];
    singles.extend(
        warnings
            .iter()
            .cloned()
            .map(|warning| Change::WarningRecorded { warning }),
    );
    singles.extend([
        Change::EventStored {
            event: StoredEvent {
                uuid: None,
                event: "purchase".into(),
                distinct_id: "user-2".into(),
                properties: RawProps::from_map(&props(json!({"amount": 9.99, "items": []})).0),
                timestamp_ms: -1,
                personless: false,
            },
        },
        Change::PersonSplit {
            person: u,
            main: "web-2".into(),
            parts: vec![
                ("user-2".into(), u),
                ("web-2".into(), w),
                ("anon-2".into(), a),
            ],
        },
        Change::ProjectSettingsChanged {
            settings: ProjectSettings {
                name: "Variantes".into(),
                conversion_buffer: ConversionBuffer {
                    enabled: false,
                    window_secs: 86_400,
                },
                test_account_filters: vec![
                    filter(
                        "email",
                        FilterOperator::Exact,
                        json!(["a@x.com", "b@x.com"]),
                    ),
                    filter("email", FilterOperator::IsNot, json!("c@x.com")),
                    filter("email", FilterOperator::Icontains, json!("@ourcompany")),
                    filter("email", FilterOperator::NotIcontains, json!("@gmail")),
                    filter("email", FilterOperator::Regex, json!("^test-.*$")),
                    filter("email", FilterOperator::NotRegex, json!("bot\\d+")),
                    filter("plan", FilterOperator::IsSet, serde_json::Value::Null),
                    filter("plan", FilterOperator::IsNotSet, serde_json::Value::Null),
                ],
                merge_limit: None,
            },
        },
        Change::EventBuffered {
            event: BufferedEvent {
                uuid: None,
                name: "$identify".into(),
                distinct_id: "user-2".into(),
                properties: props(json!({"$anon_distinct_id": "anon-2"})),
                set: props(json!({})),
                set_once: props(json!({"first_seen": "2024"})),
                unset: vec![],
                timestamp_ms: None,
                received_at_ms: 1_700_000_200_200,
                personless: true,
                warnings: warnings.clone(),
            },
            release_at_ms: 1_700_000_260_200,
        },
        Change::BufferReleased {
            buffered: Seq(u64::MAX),
        },
    ]);
    let mut out: Vec<Entry> = singles
        .into_iter()
        .enumerate()
        .map(|(i, c)| Entry {
            project: p,
            at_ms: 1_700_000_300_000 + i as i64,
            cause: (i % 2 == 0).then(|| format!("variants-{i}")),
            changes: vec![c],
        })
        .collect();
    // What an `$identify` of a new ID writes: several changes in one entry.
    out.push(Entry {
        project: p,
        at_ms: 1_700_000_400_000,
        cause: None,
        changes: vec![
            Change::DistinctIdAttached {
                person: u,
                distinct_id: "phone-2".into(),
                rule: AttachRule::MergeWithNewId,
            },
            Change::PropertiesChanged {
                person: u,
                set: props(json!({})),
                unset: vec!["a".into(), "b".into()],
            },
            Change::PersonIdentified { person: u },
        ],
    });
    out
}

/// Decode the length-prefixed records of a fixture.
fn unframe(bytes: &[u8]) -> Vec<Entry> {
    let mut got = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let (len, tail) = rest.split_at(4);
        let len = u32::from_le_bytes(len.try_into().unwrap()) as usize;
        let entry = decode_entry(&tail[..len])
            .unwrap_or_else(|e| panic!("v1 entry {} does not decode: {e}", got.len()));
        got.push(entry);
        rest = &tail[len..];
    }
    got
}

#[test]
fn log_format_v1_variants_fixture_still_decodes_to_the_same_entries() {
    let name = "log-format-v1-variants.bin";
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let want = variant_entries();
    // Written only when missing: a committed fixture is never regenerated.
    if std::env::var_os("IDSTITCH_WRITE_FIXTURES").is_some() && !path.exists() {
        std::fs::write(&path, frame(&want)).unwrap();
    }
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("committed fixture {name}: {e}"));
    let got = unframe(&bytes);
    assert_eq!(got.len(), want.len(), "entries in {name}");
    // Every entry that differs, not only the first: each names the variants that moved.
    let wrong: Vec<_> = got
        .iter()
        .zip(&want)
        .enumerate()
        .filter(|(_, (got, want))| got != want)
        .map(|(i, (got, want))| format!("entry {i}:\n  decoded  {got:?}\n  expected {want:?}"))
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of the {} entries of {name} decode to other entries (an enum's variants or a \
         variant's fields moved?):\n{}",
        wrong.len(),
        want.len(),
        wrong.join("\n")
    );
    assert_eq!(frame(&want), bytes, "encoding is stable byte for byte");
}

/// The entries of every committed fixture.
fn every_fixture() -> Vec<Entry> {
    let mut all = entries();
    all.extend(settings_entries());
    all.extend(variant_entries());
    all
}

/// The name and the variants, in their stored order, of the enum `T` (what serde's derive
/// hands a deserializer).
fn enum_of<T: serde::de::DeserializeOwned>() -> (&'static str, &'static [&'static str]) {
    match T::deserialize(probe::Probe) {
        Err(probe::Found(Some(found))) => found,
        _ => panic!("{} is not an enum", std::any::type_name::<T>()),
    }
}

/// Every variant of every enum that a log entry holds (at any depth) is in a committed
/// fixture, so that reordering the variants of any of them, or changing a variant's fields,
/// fails the fixture tests above.
#[test]
fn every_variant_of_every_enum_the_log_stores_is_in_a_fixture() {
    use idstitch::domain::filters::{FilterOperator, FilterType};
    let stored = [
        enum_of::<Change>(),
        enum_of::<AttachRule>(),
        enum_of::<MergeKind>(),
        enum_of::<RefusalReason>(),
        enum_of::<WarningKind>(),
        enum_of::<FilterOperator>(),
        enum_of::<FilterType>(),
    ];
    let mut seen = std::collections::BTreeMap::new();
    for entry in every_fixture() {
        serde::Serialize::serialize(&entry, &mut probe::Recorder(&mut seen)).expect("records");
    }
    let names: Vec<_> = stored.iter().map(|(name, _)| *name).collect();
    for name in seen.keys() {
        assert!(
            names.contains(name),
            "the log stores the enum {name}: add it to `stored` here"
        );
    }
    for (name, variants) in stored {
        let missing: Vec<_> = variants
            .iter()
            .filter(|v| !seen.get(name).is_some_and(|s| s.contains(*v)))
            .collect();
        assert!(
            missing.is_empty(),
            "{name}::{missing:?} in no fixture: add them, with every field set, to a new \
             fixture file (the committed ones stay byte for byte)"
        );
    }
}

/// A deserializer that finds an enum's variants, and a serializer that records which variants a
/// value holds.
mod probe {
    use serde::ser::{self, Serialize};
    use std::collections::{BTreeMap, BTreeSet};

    /// The error of both: what [`Probe`] found, if anything.
    #[derive(Debug)]
    pub struct Found(pub Option<(&'static str, &'static [&'static str])>);

    impl std::fmt::Display for Found {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{:?}", self.0)
        }
    }

    impl std::error::Error for Found {}

    impl serde::de::Error for Found {
        fn custom<T: std::fmt::Display>(_: T) -> Self {
            Found(None)
        }
    }

    impl ser::Error for Found {
        fn custom<T: std::fmt::Display>(_: T) -> Self {
            Found(None)
        }
    }

    /// Fails every read, with the variants when the read is an enum's.
    pub struct Probe;

    impl<'de> serde::Deserializer<'de> for Probe {
        type Error = Found;

        fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Found> {
            Err(Found(None))
        }

        fn deserialize_enum<V: serde::de::Visitor<'de>>(
            self,
            name: &'static str,
            variants: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Found> {
            Err(Found(Some((name, variants))))
        }

        fn is_human_readable(&self) -> bool {
            false
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map struct identifier
            ignored_any
        }
    }

    /// Records each enum's name and variant as bincode's serializer would meet them.
    pub struct Recorder<'a>(pub &'a mut BTreeMap<&'static str, BTreeSet<&'static str>>);

    impl Recorder<'_> {
        fn record(&mut self, name: &'static str, variant: &'static str) {
            self.0.entry(name).or_default().insert(variant);
        }
    }

    type R = Result<(), Found>;

    impl<'a, 'b> ser::Serializer for &'a mut Recorder<'b> {
        type Ok = ();
        type Error = Found;
        type SerializeSeq = Self;
        type SerializeTuple = Self;
        type SerializeTupleStruct = Self;
        type SerializeTupleVariant = Self;
        type SerializeMap = Self;
        type SerializeStruct = Self;
        type SerializeStructVariant = Self;

        fn is_human_readable(&self) -> bool {
            false
        }
        fn serialize_bool(self, _: bool) -> R {
            Ok(())
        }
        fn serialize_i8(self, _: i8) -> R {
            Ok(())
        }
        fn serialize_i16(self, _: i16) -> R {
            Ok(())
        }
        fn serialize_i32(self, _: i32) -> R {
            Ok(())
        }
        fn serialize_i64(self, _: i64) -> R {
            Ok(())
        }
        fn serialize_u8(self, _: u8) -> R {
            Ok(())
        }
        fn serialize_u16(self, _: u16) -> R {
            Ok(())
        }
        fn serialize_u32(self, _: u32) -> R {
            Ok(())
        }
        fn serialize_u64(self, _: u64) -> R {
            Ok(())
        }
        fn serialize_f32(self, _: f32) -> R {
            Ok(())
        }
        fn serialize_f64(self, _: f64) -> R {
            Ok(())
        }
        fn serialize_char(self, _: char) -> R {
            Ok(())
        }
        fn serialize_str(self, _: &str) -> R {
            Ok(())
        }
        fn serialize_bytes(self, _: &[u8]) -> R {
            Ok(())
        }
        fn serialize_none(self) -> R {
            Ok(())
        }
        fn serialize_some<T: ?Sized + Serialize>(self, v: &T) -> R {
            v.serialize(self)
        }
        fn serialize_unit(self) -> R {
            Ok(())
        }
        fn serialize_unit_struct(self, _: &'static str) -> R {
            Ok(())
        }
        fn serialize_unit_variant(self, name: &'static str, _: u32, variant: &'static str) -> R {
            self.record(name, variant);
            Ok(())
        }
        fn serialize_newtype_struct<T: ?Sized + Serialize>(self, _: &'static str, v: &T) -> R {
            v.serialize(self)
        }
        fn serialize_newtype_variant<T: ?Sized + Serialize>(
            self,
            name: &'static str,
            _: u32,
            variant: &'static str,
            v: &T,
        ) -> R {
            self.record(name, variant);
            v.serialize(self)
        }
        fn serialize_seq(self, _: Option<usize>) -> Result<Self, Found> {
            Ok(self)
        }
        fn serialize_tuple(self, _: usize) -> Result<Self, Found> {
            Ok(self)
        }
        fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self, Found> {
            Ok(self)
        }
        fn serialize_tuple_variant(
            self,
            name: &'static str,
            _: u32,
            variant: &'static str,
            _: usize,
        ) -> Result<Self, Found> {
            self.record(name, variant);
            Ok(self)
        }
        fn serialize_map(self, _: Option<usize>) -> Result<Self, Found> {
            Ok(self)
        }
        fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self, Found> {
            Ok(self)
        }
        fn serialize_struct_variant(
            self,
            name: &'static str,
            _: u32,
            variant: &'static str,
            _: usize,
        ) -> Result<Self, Found> {
            self.record(name, variant);
            Ok(self)
        }
    }

    /// The compound serializers: each element, field or value is recorded like a value.
    macro_rules! forward {
        ($($trait:ident::$method:ident($($name:ty)?)),* $(,)?) => {$(
            impl ser::$trait for &mut Recorder<'_> {
                type Ok = ();
                type Error = Found;
                fn $method<T: ?Sized + Serialize>(&mut self, $(_: $name,)? v: &T) -> R {
                    v.serialize(&mut **self)
                }
                fn end(self) -> R {
                    Ok(())
                }
            }
        )*};
    }

    forward!(
        SerializeSeq::serialize_element(),
        SerializeTuple::serialize_element(),
        SerializeTupleStruct::serialize_field(),
        SerializeTupleVariant::serialize_field(),
        SerializeStruct::serialize_field(&'static str),
        SerializeStructVariant::serialize_field(&'static str),
    );

    impl ser::SerializeMap for &mut Recorder<'_> {
        type Ok = ();
        type Error = Found;
        fn serialize_key<T: ?Sized + Serialize>(&mut self, k: &T) -> R {
            k.serialize(&mut **self)
        }
        fn serialize_value<T: ?Sized + Serialize>(&mut self, v: &T) -> R {
            v.serialize(&mut **self)
        }
        fn end(self) -> R {
            Ok(())
        }
    }
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
    let mut all = every_fixture();
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
