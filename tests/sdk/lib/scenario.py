"""The server-SDK identity scenario (python_flow.py and node_flow.mjs run the same one) and the
outcome identity.md prescribes for it, written by hand.

Scenario, in order (each SDK uses its own calls for it):
   1 $pageview anon-1 with $current_url/$pathname, $set {plan: free}, $set_once {first_seen: landing}
   2 set anon-1 {plan: trial, color: red};  set_once anon-1 {first_seen: later, source: ads}
   3 $identify user-1, $anon_distinct_id anon-1, $set {email, name}, $set_once {signup_date}
   4 $unset [color] on user-1; purchase by user-1; set user-1 {plan: trial} (unchanged)
   5 group_identify company/acme by user-1 (props name/employees must not touch the person);
     group_identify company/globex for a fresh distinct ID (GROUP_ID)
   6 signed_up anon-2 {$set plan pro, shared from-anon-2, only_anon_2 1};
     logged_in user-2 {$set shared from-user-2, email}
     alias: event distinct_id user-2, alias anon-2 -> anon-2's person merges into user-2's
   7 alias: event distinct_id user-1, alias user-2 -> refused, user-2's person is identified
   8 $identify user-3 (anon-3) and user-4 (anon-4): two identified persons;
     $merge_dangerously user-3 alias user-4 {$set merged: true} -> merged anyway, user-3 survives
   9 $identify user-5 with an illegal $anon_distinct_id ("null") -> warning, ordinary event
  10 $identify user-6 without $anon_distinct_id; $identify user-7 with $anon_distinct_id user-7
  11 capture without distinct ID (SDK makes one up, $process_person_profile false): personless
     $identify without distinct ID: personless -> dropped with a warning
  12 $pageview anon-10 with $process_person_profile false; $identify user-10 anon-10
  13 clicked anon-11 with $process_person_profile "false" (a string)
"""
from checks import short

ABSENT = object()


def expected_full(group_id):
    """(distinct_ids in attach order, is_identified) of every person the project must hold."""
    return [
        (["anon-1", "user-1"], True),           # created for anon-1, user-1 attached (only one exists)
        ([group_id], False),                    # $groupidentify creates a person (only $creator_event_uuid)
        (["user-2", "anon-2"], True),           # user-2 survives the alias merge, anon-2's ids appended
        (["user-3", "anon-3", "user-4", "anon-4"], True),  # $merge_dangerously ignores "already identified"
        (["user-5"], False),                    # illegal other id: stop, ordinary event, not identified
        (["user-6"], False),                    # no $anon_distinct_id: ordinary event
        (["user-7"], False),                    # other == into: nothing happens
        (["user-10", "anon-10"], True),         # anon-10 only seen personless: neither exists -> [into, other]
        (["anon-11"], False),                   # non-boolean $process_person_profile counts as true
    ]


EXPECTED_FULL_WARNINGS = sorted([
    "cannot_merge_already_identified",       # step 7
    "cannot_merge_with_illegal_distinct_id",  # step 9
    "invalid_event_when_process_person_profile_is_false",  # step 11, personless $identify
    "invalid_process_person_profile",        # step 13
])


def spot_checks(report, daemon, token, group_id, illegal_other):
    """Outcomes spelled out by hand from identity.md §3-§5 (independent of the model)."""
    def prop(did, key):
        p = daemon.person_by_distinct_id(token, did)
        return ABSENT if p is None else p.get("properties", {}).get(key, ABSENT)

    def eq(what, did, key, want):
        got = prop(did, key)
        report.check("%s: %s.%s = %s" % (what, did, key, "absent" if want is ABSENT else short(want)),
                     got == want, "got %s" % ("absent" if got is ABSENT else short(got)))

    eq("$set_once keeps the first value", "user-1", "first_seen", "landing")
    eq("$set_once adds a new key", "user-1", "source", "ads")
    eq("$set overwrites", "user-1", "plan", "trial")
    eq("$identify's $set applies to the person (read via the anonymous id)", "anon-1", "email",
       "max@hedgehogmail.com")
    eq("$identify's $set_once applies", "user-1", "signup_date", "2024-01-01")
    eq("$unset removes", "user-1", "color", ABSENT)
    eq("$current_url is promoted to $set", "user-1", "$current_url", "https://shop.example/landing")
    eq("$current_url is promoted to $set_once as $initial_current_url", "user-1",
       "$initial_current_url", "https://shop.example/landing")
    eq("$lib is not a person property", "user-1", "$lib", ABSENT)
    eq("$groupidentify never changes person properties", "user-1", "name", "Max Hedgehog")
    eq("$groupidentify never changes person properties", "user-1", "employees", ABSENT)
    p = daemon.person_by_distinct_id(token, group_id)
    report.check("$groupidentify created %s with $creator_event_uuid as its only property" % group_id,
                 p is not None and sorted(p.get("properties", {})) == ["$creator_event_uuid"],
                 "got %s" % short(p))
    eq("alias merge: survivor (user-2) wins conflicts", "anon-2", "shared", "from-user-2")
    eq("alias merge: keys only the merged person had are kept", "user-2", "only_anon_2", 1)
    eq("alias merge: keys only the survivor had are kept", "anon-2", "email", "second@example.com")
    eq("$merge_dangerously: survivor (user-3) wins conflicts", "user-4", "team", "red")
    eq("$merge_dangerously: merged person's keys kept", "user-3", "e", 1)
    eq("$merge_dangerously: the event's $set applies", "anon-4", "merged", True)
    eq("illegal $anon_distinct_id %r: the event is still processed for user-5" % illegal_other,
       "user-5", "k", "v")
    eq("$identify of a personless anon id: properties from the event", "anon-10", "email",
       "ten@example.com")
    for did in ("anon-9",):
        report.check("personless $identify created no person for its $anon_distinct_id %s" % did,
                     daemon.person_by_distinct_id(token, did) is None, "a person exists")
