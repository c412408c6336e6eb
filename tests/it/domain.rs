//! The identity rules of `shared/spec/identity.md`, one test per rule and example.

use idstitch::domain::normalize::{normalize, normalize_wire, Rejection};
use idstitch::domain::WireEvent;
use idstitch::domain::{is_illegal_distinct_id, person_uuid, Change, ProjectId};
use serde_json::{json, Value};

use crate::world::{World, NOW, P};

fn props(w: &World, did: &str) -> Value {
    Value::Object(w.person(did).expect("person exists").properties.0.clone())
}

fn ids(w: &World, did: &str) -> Vec<String> {
    w.person(did).expect("person exists").distinct_ids.clone()
}

fn pageview(did: &str) -> Value {
    json!({"event": "$pageview", "distinct_id": did, "properties": {}})
}

fn identify(did: &str, anon: Value) -> Value {
    json!({"event": "$identify", "distinct_id": did, "properties": {"$anon_distinct_id": anon}})
}

fn alias(did: &str, alias: Value) -> Value {
    json!({"event": "$create_alias", "distinct_id": did, "properties": {"alias": alias}})
}

// §1 normalisation

#[test]
fn distinct_id_comes_from_top_level_else_properties() {
    let top = normalize(
        &json!({"event": "e", "distinct_id": "a", "properties": {"distinct_id": "b"}}),
        NOW,
    )
    .unwrap();
    assert_eq!(top.distinct_id, "a");
    let nested = normalize(
        &json!({"event": "e", "properties": {"distinct_id": "b"}}),
        NOW,
    )
    .unwrap();
    assert_eq!(nested.distinct_id, "b");
}

#[test]
fn numeric_and_boolean_distinct_ids_become_javascript_strings() {
    for (v, want) in [
        (json!(42), "42"),
        (json!(4.5), "4.5"),
        (json!(1e21), "1e+21"),
        (json!(true), "true"),
        (json!(false), "false"),
    ] {
        let ev = normalize(&json!({"event": "e", "distinct_id": v}), NOW).unwrap();
        assert_eq!(ev.distinct_id, want);
    }
}

#[test]
fn missing_null_empty_object_and_array_distinct_ids_are_rejected() {
    for v in [json!(null), json!(""), json!({}), json!([1])] {
        let r = normalize(&json!({"event": "e", "distinct_id": v}), NOW);
        assert!(
            matches!(r, Err(Rejection::BadDistinctId(_))),
            "{v} should be rejected"
        );
    }
    assert!(matches!(
        normalize(&json!({"event": "e"}), NOW),
        Err(Rejection::BadDistinctId(_))
    ));
}

#[test]
fn a_uuid_is_a_non_empty_string_none_when_missing_null_or_empty_and_refused_otherwise() {
    let uuid = |v: Option<serde_json::Value>| {
        let mut ev = json!({"event": "e", "distinct_id": "a"});
        if let Some(v) = v {
            ev["uuid"] = v;
        }
        normalize(&ev, NOW).map(|n| n.uuid)
    };
    assert_eq!(uuid(Some(json!("u-1"))), Ok(Some("u-1".to_string())));
    for none in [None, Some(json!(null)), Some(json!(""))] {
        assert_eq!(uuid(none.clone()), Ok(None), "{none:?}");
    }
    for (v, ty) in [
        (json!(5), "a number"),
        (json!(true), "a boolean"),
        (json!(["u-1"]), "an array"),
        (json!({"u": 1}), "an object"),
    ] {
        assert_eq!(uuid(Some(v.clone())), Err(Rejection::BadUuid(ty)), "{v}");
    }
}

#[test]
fn nul_characters_become_replacement_characters() {
    let ev = normalize(
        &json!({"event": "e", "distinct_id": "a\u{0}b", "properties": {"x": "c\u{0}"}}),
        NOW,
    )
    .unwrap();
    assert_eq!(ev.distinct_id, "a\u{FFFD}b");
    assert_eq!(ev.properties.get("x"), Some(json!("c\u{FFFD}")));
    // A NUL after other escapes is found too; escapes without a NUL keep the text as sent.
    let text =
        r#"{"event": "e", "distinct_id": "a", "properties": {"q": "say \"hi\"", "x": "c\u0000"}}"#;
    let ev = normalize_wire(WireEvent::from_json(text).unwrap(), NOW).unwrap();
    assert_eq!(ev.properties.get("x"), Some(json!("c\u{FFFD}")));
    assert_eq!(ev.properties.get("q"), Some(json!("say \"hi\"")));
    let text = r#"{"event": "e", "distinct_id": "a", "properties": {"q": "a\n", "p": "\/"}}"#;
    let ev = normalize_wire(WireEvent::from_json(text).unwrap(), NOW).unwrap();
    assert_eq!(ev.properties.raw().as_str(), r#"{"q": "a\n", "p": "\/"}"#);
}

#[test]
fn top_level_set_wins_over_properties_set_on_the_same_key() {
    let ev = normalize(
        &json!({"event": "e", "distinct_id": "a", "$set": {"k": "top", "t": 1}, "$set_once": {"o": 1},
                "properties": {"$set": {"k": "nested", "n": 2}}}),
        NOW,
    )
    .unwrap();
    assert_eq!(ev.updates.set["k"], json!("top"));
    assert_eq!(ev.updates.set["n"], json!(2));
    assert_eq!(ev.updates.set["t"], json!(1));
    assert_eq!(ev.updates.set_once["o"], json!(1));
}

#[test]
fn unset_takes_an_array_or_the_keys_of_an_object_ignoring_non_strings() {
    let a = normalize(
        &json!({"event": "e", "distinct_id": "a", "properties": {"$unset": ["x", 3, "y"]}}),
        NOW,
    )
    .unwrap();
    assert_eq!(a.updates.unset, vec!["x", "y"]);
    let o = normalize(
        &json!({"event": "e", "distinct_id": "a", "properties": {"$unset": {"z": null}}}),
        NOW,
    )
    .unwrap();
    assert_eq!(o.updates.unset, vec!["z"]);
    let top = normalize(
        &json!({"event": "e", "distinct_id": "a", "$unset": ["x"]}),
        NOW,
    )
    .unwrap();
    assert!(
        top.updates.unset.is_empty(),
        "$unset is read only from properties"
    );
}

#[test]
fn long_names_are_cut_and_a_long_distinct_id_records_a_warning() {
    let long_name = "n".repeat(250);
    let long_id = "é".repeat(230);
    let mut w = World::default();
    w.send(json!({"event": long_name, "distinct_id": long_id}));
    let (kind, details) = &w.warnings()[0];
    assert_eq!(kind, "distinct_id_truncated");
    assert_eq!(details["originalLength"], json!(230));
    assert_eq!(details["distinctId"].as_str().unwrap().chars().count(), 200);
    let ev = normalize(&json!({"event": long_name, "distinct_id": "a"}), NOW).unwrap();
    assert_eq!(ev.name.chars().count(), 200);
}

#[test]
fn truncation_warnings_are_recorded_once_an_hour_per_distinct_id() {
    let mut w = World::default();
    let long_id = "x".repeat(300);
    w.send(json!({"event": "e", "distinct_id": long_id}));
    w.send(json!({"event": "e", "distinct_id": long_id}));
    assert_eq!(w.warnings().len(), 1);
}

#[test]
fn browser_properties_are_promoted_to_set_and_initial_set_once() {
    let mut w = World::default();
    w.send(json!({"event": "$pageview", "distinct_id": "a", "properties": {"$browser": "Firefox", "utm_source": "news"}}));
    let p = props(&w, "a");
    assert_eq!(p["$browser"], json!("Firefox"));
    assert_eq!(p["$initial_browser"], json!("Firefox"));
    assert_eq!(p["utm_source"], json!("news"));
    assert_eq!(p["$initial_utm_source"], json!("news"));
    w.send(json!({"event": "$pageview", "distinct_id": "a", "properties": {"$browser": "Chrome"}}));
    let p = props(&w, "a");
    assert_eq!(p["$browser"], json!("Chrome"));
    assert_eq!(p["$initial_browser"], json!("Firefox"));
}

/// A promoted key sent twice in one event's properties (JSON text allows it) is promoted
/// once, with the last value, as a parse into a map would read it.
#[test]
fn a_promoted_key_sent_twice_is_promoted_once_with_its_last_value() {
    let text = r#"{"event": "$pageview", "distinct_id": "a", "properties": {"$browser": "Firefox", "$os": "Linux", "$browser": "Chrome"}}"#;
    let ev = normalize_wire(WireEvent::from_json(text).unwrap(), NOW).unwrap();
    let updates = ev.person_updates();
    assert_eq!(updates.set["$browser"], json!("Chrome"));
    assert_eq!(updates.set_once["$initial_browser"], json!("Chrome"));
    assert_eq!(updates.set["$os"], json!("Linux"));
    assert_eq!(ev.promoted.len(), 2, "{:?}", ev.promoted);
}

#[test]
fn explicit_set_beats_a_promoted_property() {
    let ev = normalize(&json!({"event": "e", "distinct_id": "a", "properties": {"$os": "Linux", "$set": {"$os": "Mine"}}}), NOW).unwrap();
    assert_eq!(ev.person_updates().set["$os"], json!("Mine"));
}

#[test]
fn snapshot_events_promote_nothing() {
    let ev = normalize(
        &json!({"event": "$snapshot", "distinct_id": "a", "properties": {"$browser": "Firefox"}}),
        NOW,
    )
    .unwrap();
    let updates = ev.person_updates();
    assert!(updates.set.is_empty() && updates.set_once.is_empty());
}

// §2 personless

#[test]
fn personless_events_are_stored_but_create_no_person() {
    let mut w = World::default();
    let d = w.send(json!({"event": "$pageview", "distinct_id": "anon", "properties": {"$process_person_profile": false, "$set": {"a": 1}}}));
    assert!(d.dropped.is_none());
    assert!(d
        .changes
        .iter()
        .any(|c| matches!(c, Change::EventStored { event } if event.personless)));
    assert_eq!(w.persons(), 0);
}

#[test]
fn personless_merge_events_are_dropped_with_a_warning() {
    for name in [
        "$identify",
        "$create_alias",
        "$merge_dangerously",
        "$groupidentify",
    ] {
        let mut w = World::default();
        let d = w.send(json!({"event": name, "distinct_id": "u", "properties": {"$process_person_profile": false, "$anon_distinct_id": "a", "alias": "a"}}));
        assert!(d.dropped.is_some(), "{name} must be dropped");
        assert!(!d
            .changes
            .iter()
            .any(|c| matches!(c, Change::EventStored { .. })));
        assert_eq!(
            w.warnings()[0].0,
            "invalid_event_when_process_person_profile_is_false"
        );
        assert_eq!(w.persons(), 0);
    }
}

#[test]
fn a_non_boolean_process_person_profile_is_true_with_a_warning() {
    let mut w = World::default();
    w.send(json!({"event": "e", "distinct_id": "u", "properties": {"$process_person_profile": "false", "$set": {"a": 1}}}));
    assert_eq!(props(&w, "u")["a"], json!(1));
    let (kind, details) = &w.warnings()[0];
    assert_eq!(kind, "invalid_process_person_profile");
    assert_eq!(details["$process_person_profile"], json!("false"));
}

/// A warning found while normalising takes the time its event is decided, as the event's other
/// warnings do: the warnings list is newest first in log order, and a warning stamped when its
/// request arrived read as older than one decided before it (helper-41).
#[test]
fn a_normalisation_warning_takes_the_time_of_the_decision() {
    let ev = normalize(
        &json!({"event": "e", "distinct_id": "u", "properties": {"$process_person_profile": "false"}}),
        1_000,
    )
    .expect("normalises");
    assert_eq!(ev.warnings.len(), 1);
    let mut limiter = idstitch::domain::WarningLimiter::default();
    let ctx = idstitch::domain::Ctx {
        project: P,
        now_ms: 5_000,
        merge_limit: None,
        max_ids: None,
        into: None,
        other: None,
        limiter: &mut limiter,
    };
    let stamps: Vec<i64> = idstitch::domain::decide(&ev, ctx)
        .changes
        .iter()
        .filter_map(|c| match c {
            Change::WarningRecorded { warning } => Some(warning.at_ms),
            _ => None,
        })
        .collect();
    assert_eq!(stamps, [5_000]);
}

#[test]
fn exception_and_heatmap_events_create_a_person_with_only_the_creator_uuid() {
    for name in ["$exception", "$$heatmap", "$groupidentify"] {
        let mut w = World::default();
        w.send(json!({"event": name, "distinct_id": "u", "uuid": "ev-1", "$set": {"a": 1}}));
        assert_eq!(props(&w, "u"), json!({"$creator_event_uuid": "ev-1"}));
        w.send(json!({"event": name, "distinct_id": "u", "$set": {"b": 1}}));
        assert_eq!(props(&w, "u"), json!({"$creator_event_uuid": "ev-1"}));
    }
}

// §3 triggers and §4 merge

#[test]
fn identify_merges_the_anonymous_person_into_the_identified_id() {
    let mut w = World::default();
    w.send(pageview("anon-1"));
    w.send(json!({"event": "$identify", "distinct_id": "user-1", "properties": {"$anon_distinct_id": "anon-1"}, "$set": {"email": "max@hedgehogmail.com"}}));
    let p = w.person("user-1").unwrap();
    assert_eq!(p.distinct_ids, vec!["anon-1", "user-1"]);
    assert!(p.is_identified);
    assert_eq!(
        p.uuid,
        person_uuid(P, "anon-1"),
        "the existing person keeps its uuid"
    );
    assert_eq!(props(&w, "anon-1")["email"], json!("max@hedgehogmail.com"));
    assert_eq!(w.persons(), 1);
}

#[test]
fn identify_when_neither_exists_creates_one_identified_person_for_into() {
    let mut w = World::default();
    w.send(identify("user-1", json!("anon-1")));
    let p = w.person("anon-1").unwrap();
    assert_eq!(p.distinct_ids, vec!["user-1", "anon-1"]);
    assert_eq!(p.uuid, person_uuid(P, "user-1"));
    assert!(p.is_identified);
}

#[test]
fn identifying_an_identified_user_with_a_new_id_attaches_it() {
    let mut w = World::default();
    w.send(identify("user-1", json!("anon-1")));
    w.send(identify("user-1", json!("anon-2")));
    assert_eq!(ids(&w, "user-1"), vec!["user-1", "anon-1", "anon-2"]);
}

#[test]
fn identify_without_anon_distinct_id_identifies_nobody() {
    let mut w = World::default();
    w.send(json!({"event": "$identify", "distinct_id": "user-1", "$set": {"a": 1}}));
    let p = w.person("user-1").unwrap();
    assert!(!p.is_identified);
    assert_eq!(props(&w, "user-1")["a"], json!(1));
}

#[test]
fn a_null_anon_distinct_id_is_the_illegal_string_null() {
    let mut w = World::default();
    w.send(identify("user-1", json!(null)));
    let (kind, details) = &w.warnings()[0];
    assert_eq!(kind, "cannot_merge_with_illegal_distinct_id");
    assert_eq!(details["illegalDistinctId"], json!("null"));
    assert_eq!(details["otherDistinctId"], json!("user-1"));
    assert!(!w.person("user-1").unwrap().is_identified);
}

#[test]
fn an_empty_alias_is_ignored_silently_while_an_empty_anon_id_warns() {
    let mut w = World::default();
    w.send(alias("user-1", json!("")));
    assert!(w.warnings().is_empty());
    assert_eq!(ids(&w, "user-1"), vec!["user-1"]);
    w.send(identify("user-2", json!("")));
    assert_eq!(w.warnings()[0].0, "cannot_merge_with_illegal_distinct_id");
}

#[test]
fn alias_merges_with_truthy_values_only() {
    let mut w = World::default();
    w.send(alias("u", json!(0)));
    w.send(alias("u", json!(false)));
    assert_eq!(ids(&w, "u"), vec!["u"]);
    w.send(alias("u", json!(7)));
    assert_eq!(ids(&w, "u"), vec!["u", "7"]);
}

#[test]
fn merging_an_id_with_itself_does_nothing_and_identifies_nobody() {
    let mut w = World::default();
    w.send(identify("u", json!("u")));
    assert!(!w.person("u").unwrap().is_identified);
    assert!(w.warnings().is_empty());
}

#[test]
fn illegal_into_warns_with_into_as_the_illegal_id() {
    let mut w = World::default();
    w.send(identify("undefined", json!("anon")));
    let (_, d) = &w.warnings()[0];
    assert_eq!(d["illegalDistinctId"], json!("undefined"));
    assert_eq!(d["otherDistinctId"], json!("anon"));
    assert_eq!(
        w.warnings().len(),
        1,
        "one warning even if both are illegal"
    );
    assert!(w.person("anon").is_none());
}

#[test]
fn both_illegal_records_one_warning() {
    let mut w = World::default();
    w.send(identify("null", json!("guest")));
    assert_eq!(w.warnings().len(), 1);
}

#[test]
fn merging_two_anonymous_persons_keeps_the_survivor_and_its_values() {
    let mut w = World::default();
    w.send(json!({"event": "e", "distinct_id": "anon", "timestamp": "2020-01-01T00:00:00Z", "$set": {"a": "anon", "only_anon": 1}}));
    w.send(json!({"event": "e", "distinct_id": "user", "$set": {"a": "user"}}));
    w.send(json!({"event": "$identify", "distinct_id": "user", "properties": {"$anon_distinct_id": "anon"}, "$set": {"b": 2}}));
    let p = w.person("anon").unwrap().clone();
    assert_eq!(p.uuid, person_uuid(P, "user"), "the into person survives");
    assert_eq!(p.distinct_ids, vec!["user", "anon"]);
    assert_eq!(props(&w, "user")["a"], json!("user"));
    assert_eq!(props(&w, "user")["only_anon"], json!(1));
    assert_eq!(props(&w, "user")["b"], json!(2));
    assert_eq!(
        p.created_at_ms, 1_577_836_800_000,
        "created_at is the minimum of both"
    );
    assert!(p.is_identified);
    assert_eq!(w.persons(), 1);
}

#[test]
fn an_identified_source_person_is_not_merged_but_the_target_is_identified_and_updated() {
    let mut w = World::default();
    w.send(identify("user-a", json!("anon-a")));
    w.send(pageview("user-b"));
    w.send(json!({"event": "$create_alias", "distinct_id": "user-b", "properties": {"alias": "user-a"}, "$set": {"x": 1}}));
    assert_eq!(w.persons(), 2);
    let b = w.person("user-b").unwrap();
    assert!(
        b.is_identified,
        "a refused merge still marks the target identified"
    );
    assert_eq!(props(&w, "user-b")["x"], json!(1));
    let (kind, d) = &w.warnings()[0];
    assert_eq!(kind, "cannot_merge_already_identified");
    assert_eq!(d["sourcePersonDistinctId"], json!("user-a"));
    assert_eq!(d["targetPersonDistinctId"], json!("user-b"));
}

#[test]
fn merge_dangerously_merges_identified_persons() {
    let mut w = World::default();
    w.send(identify("user-a", json!("anon-a")));
    w.send(identify("user-b", json!("anon-b")));
    w.send(json!({"event": "$merge_dangerously", "distinct_id": "user-b", "properties": {"alias": "user-a"}}));
    assert_eq!(w.persons(), 1);
    assert_eq!(
        ids(&w, "user-a"),
        vec!["user-b", "anon-b", "user-a", "anon-a"]
    );
}

#[test]
fn the_distinct_id_limit_refuses_attachments_and_merges_past_it() {
    let mut w = World {
        max_ids: Some(2),
        ..World::default()
    };
    w.send(identify("user", json!("anon")));
    assert_eq!(w.person("user").unwrap().distinct_ids.len(), 2);
    // A second device would be a third ID: refused, the person keeps its two.
    w.send(json!({"event": "$identify", "distinct_id": "user", "properties": {"$anon_distinct_id": "phone"}, "$set": {"plan": "pro"}}));
    let p = w.person("user").unwrap();
    assert_eq!(p.distinct_ids, vec!["user", "anon"]);
    assert_eq!(
        p.properties.0["plan"],
        json!("pro"),
        "the event still acts on `into`"
    );
    assert!(w.person("phone").is_none());
    let (kind, d) = &w.warnings()[0];
    assert_eq!(kind, "distinct_id_limit_exceeded");
    assert_eq!(
        (d["limit"].clone(), d["distinctIds"].clone()),
        (json!(2), json!(3))
    );
    // The other way round: a new ID aliasing the full person gets a person of its own,
    // identified as after any refused merge past spec §4 step 4 (the same side with a person
    // is, above).
    w.send(alias("other-device", json!("user")));
    let own = w.person("other-device").unwrap();
    assert_eq!(own.distinct_ids, vec!["other-device"]);
    assert!(own.is_identified, "{own:?}");
    assert_eq!(w.person("user").unwrap().distinct_ids.len(), 2);
    // Two persons whose IDs together are over the limit stay apart.
    w.send(json!({"event": "$merge_dangerously", "distinct_id": "other-device", "properties": {"alias": "user"}}));
    assert_ne!(
        w.person("user").unwrap().uuid,
        w.person("other-device").unwrap().uuid
    );
    assert_eq!(w.warnings().len(), 3);
    assert_eq!(w.persons(), 2);
}

#[test]
fn the_merge_limit_refuses_large_source_persons() {
    let mut w = World {
        merge_limit: Some(1),
        ..World::default()
    };
    w.send(alias("big", json!("big-2")));
    w.send(pageview("small"));
    w.send(json!({"event": "$merge_dangerously", "distinct_id": "small", "properties": {"alias": "big"}}));
    assert_eq!(w.persons(), 2);
    let (kind, d) = &w.warnings()[0];
    assert_eq!(kind, "merge_limit_exceeded");
    assert_eq!(d["limit"], json!(1));
    assert!(w.person("small").unwrap().is_identified);
}

#[test]
fn both_ids_on_one_person_means_no_merge_but_identified() {
    let mut w = World::default();
    w.send(alias("u", json!("a")));
    let before = w.persons();
    w.send(identify("a", json!("u")));
    assert_eq!(w.persons(), before);
}

// Illegal IDs

#[test]
fn illegal_ids_follow_the_lists_and_their_case_rules() {
    for id in [
        "anonymous",
        "GUEST",
        "DistinctId",
        "distinct_id",
        "id",
        "not_authenticated",
        "'email'",
        "\"Email\"",
        "undefined",
        "TRUE",
        "false",
        "[object Object]",
        "NaN",
        "None",
        "none",
        "null",
        "0",
        "'null'",
        "\"0\"",
        "",
        " ",
        "\t\n",
        "\u{00A0}",
        "\u{FEFF}",
        "\u{3000}",
    ] {
        assert!(is_illegal_distinct_id(id), "{id:?} must be illegal");
    }
    for id in [
        " guest", "Null", "NULL", "nan", "00", "none ", "\u{0085}", "user-1", "'guest", "guest'",
    ] {
        assert!(!is_illegal_distinct_id(id), "{id:?} must be legal");
    }
    assert!(is_illegal_distinct_id(&"x".repeat(401)));
    assert!(!is_illegal_distinct_id(&"x".repeat(400)));
}

#[test]
fn a_long_alias_cannot_be_merged() {
    let mut w = World::default();
    w.send(alias("u", json!("a".repeat(401))));
    assert_eq!(w.warnings()[0].0, "cannot_merge_with_illegal_distinct_id");
    assert_eq!(ids(&w, "u"), vec!["u"]);
}

// §5 properties

#[test]
fn set_overrides_and_set_once_keeps_the_first_value() {
    let mut w = World::default();
    for (plan, loc) in [("free_trial", "London"), ("premium", "Rome")] {
        w.send(json!({"event": "e", "distinct_id": "u", "$set": {"plan": plan}, "$set_once": {"initial_location": loc}}));
    }
    assert_eq!(
        props(&w, "u"),
        json!({"plan": "premium", "initial_location": "London"})
    );
}

#[test]
fn set_beats_set_once_for_the_same_key_in_one_event() {
    let mut w = World::default();
    w.send(pageview("u"));
    w.send(
        json!({"event": "e", "distinct_id": "u", "$set": {"k": "set"}, "$set_once": {"k": "once"}}),
    );
    assert_eq!(props(&w, "u")["k"], json!("set"));
}

#[test]
fn set_once_does_not_overwrite_a_present_null() {
    let mut w = World::default();
    w.send(json!({"event": "e", "distinct_id": "u", "$set": {"k": null}}));
    w.send(json!({"event": "e", "distinct_id": "u", "$set_once": {"k": 1}}));
    assert_eq!(props(&w, "u")["k"], json!(null));
}

#[test]
fn unset_looks_at_the_state_before_the_event() {
    let mut w = World::default();
    w.send(json!({"event": "e", "distinct_id": "u", "$set": {"old": 1}}));
    w.send(json!({"event": "e", "distinct_id": "u", "$set": {"old": 2, "new": 3}, "properties": {"$unset": ["old", "new"]}}));
    let p = props(&w, "u");
    assert!(
        p.get("old").is_none(),
        "an existing key set and unset disappears"
    );
    assert_eq!(
        p["new"],
        json!(3),
        "a new key set and unset takes the new value"
    );
}

#[test]
fn creation_ignores_unset_and_records_the_creator_event() {
    let mut w = World::default();
    w.send(json!({"event": "e", "distinct_id": "u", "uuid": "ev-9", "$set": {"a": 1}, "$set_once": {"a": 0, "b": 2}, "properties": {"$unset": ["a"]}}));
    assert_eq!(
        props(&w, "u"),
        json!({"a": 1, "b": 2, "$creator_event_uuid": "ev-9"})
    );
}

/// Values compare as JavaScript's JSON does: `1`, `1.0` and `1e0` are one number, so a
/// `$set` of the same number written another way changes nothing (spec §5.3: "when its value
/// differs"), at any depth.
#[test]
fn a_set_of_the_same_number_written_differently_changes_nothing() {
    let mut w = World::default();
    w.send(json!({"event": "e", "distinct_id": "u", "$set": {"n": 1, "deep": {"xs": [2, 3]}}}));
    let before = w.person("u").unwrap().version;
    let same: Value = serde_json::from_str(
        r#"{"event": "e", "distinct_id": "u", "$set": {"n": 1.0, "deep": {"xs": [2e0, 3.0]}}}"#,
    )
    .unwrap();
    w.send(same);
    assert_eq!(w.person("u").unwrap().version, before, "nothing changed");
    assert_eq!(
        props(&w, "u")["n"].to_string(),
        "1",
        "the stored value stays as it was"
    );
    w.send(json!({"event": "e", "distinct_id": "u", "$set": {"n": 1.5}}));
    assert_eq!(w.person("u").unwrap().version, before + 1);
}

#[test]
fn version_goes_up_once_per_changing_event() {
    let mut w = World::default();
    w.send(pageview("u"));
    assert_eq!(w.person("u").unwrap().version, 0);
    w.send(json!({"event": "e", "distinct_id": "u", "$set": {"a": 1, "b": 2}}));
    assert_eq!(w.person("u").unwrap().version, 1);
    w.send(json!({"event": "e", "distinct_id": "u", "$set": {"a": 1}}));
    assert_eq!(
        w.person("u").unwrap().version,
        1,
        "an event that changes nothing keeps the version"
    );
    w.send(json!({"event": "$identify", "distinct_id": "u", "properties": {"$anon_distinct_id": "x"}, "$set": {"c": 3}}));
    assert_eq!(
        w.person("u").unwrap().version,
        2,
        "attach + identify + set in one event is one version"
    );
}

#[test]
fn event_timestamps_are_never_compared() {
    let mut w = World::default();
    w.send(json!({"event": "e", "distinct_id": "u", "timestamp": "2030-01-01T00:00:00Z", "$set": {"k": "late"}}));
    w.send(json!({"event": "e", "distinct_id": "u", "timestamp": "2001-01-01T00:00:00Z", "$set": {"k": "early"}}));
    assert_eq!(props(&w, "u")["k"], json!("early"));
}

// §9 limits

#[test]
fn an_oversized_property_change_is_not_applied_but_the_event_is_stored() {
    let mut w = World::default();
    w.send(json!({"event": "e", "distinct_id": "u", "uuid": "a", "$set": {"small": 1}}));
    let d = w.send(json!({"event": "e", "distinct_id": "u", "$set": {"big": "x".repeat(600_000)}}));
    assert!(d
        .changes
        .iter()
        .any(|c| matches!(c, Change::EventStored { .. })));
    assert!(props(&w, "u").get("big").is_none());
    assert_eq!(w.warnings()[0].0, "person_properties_size_violation");
}

#[test]
fn a_person_created_with_oversized_properties_gets_only_the_creator_uuid() {
    let mut w = World::default();
    w.send(json!({"event": "e", "distinct_id": "u", "uuid": "a", "$set": {"big": "x".repeat(600_000)}}));
    assert_eq!(props(&w, "u"), json!({"$creator_event_uuid": "a"}));
}

/// The limit holds for the person as created, `$creator_event_uuid` included: `{"big":"…"}`
/// 5 bytes under 512 KiB fits alone, not with the creator's uuid.
#[test]
fn the_creator_uuid_counts_toward_the_size_limit_at_creation() {
    let mut w = World::default();
    let big = "x".repeat(524_288 - 10 - 5);
    w.send(json!({"event": "e", "distinct_id": "u", "uuid": "a", "$set": {"big": big}}));
    let keys: Vec<String> = props(&w, "u")
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(keys, ["$creator_event_uuid"]);
    assert_eq!(w.warnings()[0].0, "person_properties_size_violation");
    let mut w = World::default();
    w.send(json!({"event": "e", "distinct_id": "u", "$set": {"big": big}}));
    assert_eq!(
        props(&w, "u")["big"].as_str().map(str::len),
        Some(big.len()),
        "fits alone"
    );
}

// §6 uuids

#[test]
fn person_uuids_are_uuidv5_of_project_and_distinct_id() {
    let ns = uuid::Uuid::parse_str("932979b4-65c3-4424-8467-0b66ec27bc22").unwrap();
    assert_eq!(
        person_uuid(ProjectId(7), "anon").0,
        uuid::Uuid::new_v5(&ns, b"7:anon")
    );
    assert_ne!(
        person_uuid(ProjectId(1), "anon"),
        person_uuid(ProjectId(2), "anon")
    );
}
