"""Check reporting and the comparison of a daemon's state with the spec model.

Every check prints exactly one line, `PASS <flow>: <what>` or `FAIL <flow>: <what> -- <detail>`;
tests/sdk/run.sh counts those lines.
"""
import json
import sys
import traceback
from datetime import timedelta

from spec_model import parse_ts, person_uuid

# created_at is the event's timestamp (§5); allow for the daemon storing milliseconds
TS_TOLERANCE = timedelta(milliseconds=1)


def short(v, n=600):
    s = json.dumps(v, sort_keys=True, default=str) if not isinstance(v, str) else v
    return s if len(s) <= n else s[:n] + "...(%d chars)" % len(s)


def dict_diff(exp, got):
    """A compact description of how two property dicts differ."""
    if not isinstance(got, dict):
        return "expected an object, got %s" % short(got)
    missing = {k: exp[k] for k in exp if k not in got}
    extra = {k: got[k] for k in got if k not in exp}
    changed = {k: {"expected": exp[k], "got": got[k]} for k in exp if k in got and got[k] != exp[k]}
    parts = []
    if missing:
        parts.append("missing " + short(missing, 400))
    if extra:
        parts.append("unexpected " + short(extra, 400))
    if changed:
        parts.append("different " + short(changed, 400))
    return "; ".join(parts)


class Report:
    def __init__(self, flow):
        self.flow = flow
        self.passed = 0
        self.failed = 0

    def check(self, what, ok, detail=""):
        if ok:
            self.passed += 1
            print("PASS %s: %s" % (self.flow, what), flush=True)
        else:
            self.failed += 1
            print("FAIL %s: %s -- %s" % (self.flow, what, detail), flush=True)
        return ok

    def eq(self, what, expected, got, context=""):
        ok = expected == got
        detail = "" if ok else "expected %s, got %s%s" % (short(expected), short(got),
                                                           (" [" + context + "]") if context else "")
        return self.check(what, ok, detail)

    def crash(self, what, exc):
        tb = traceback.format_exc(limit=4).strip().splitlines()
        self.check(what, False, "%s: %s | %s" % (type(exc).__name__, exc, " / ".join(tb[-3:])))

    def info(self, msg):
        print("INFO %s: %s" % (self.flow, msg), flush=True)


def _fmt_ids(ids):
    return "[" + ",".join(ids) + "]"


def check_structure(report, daemon, token, expected, label="spec"):
    """expected: list of (distinct_ids in order, is_identified). Checks the daemon directly
    against the hand-written statement of the spec: each of those persons exists as stated, and
    there are no other persons."""
    persons = daemon.persons(token)
    got = sorted((tuple(p.get("distinct_ids") or []), p.get("is_identified")) for p in persons)
    want = sorted((tuple(ids), ident) for ids, ident in expected)
    for ids, ident in expected:
        p = None
        try:
            p = daemon.person_by_distinct_id(token, ids[0])
        except Exception as e:  # noqa
            report.check("%s person %s identified=%s" % (label, _fmt_ids(ids), ident), False, str(e))
            continue
        got_desc = None if p is None else [p.get("distinct_ids"), p.get("is_identified")]
        report.eq("%s person %s identified=%s" % (label, _fmt_ids(ids), ident), [list(ids), ident], got_desc,
                  "GET persons/?distinct_id=%s" % ids[0])
    report.eq("%s: exactly %d persons in project %s" % (label, len(expected), token),
              [list(x) for x in want], [list(x) for x in got], "GET persons/?limit=1000")
    return persons


def model_self_check(report, model, expected):
    got = sorted((tuple(p.ids), p.identified) for p in model.persons.values())
    want = sorted((tuple(ids), ident) for ids, ident in expected)
    report.eq("model self-check: reference model agrees with the hand-written outcome",
              [list(x) for x in want], [list(x) for x in got])


def compare_with_model(report, daemon, token, model, dropped_ids=(), check_created_at=True):
    """Compare persons (uuid, distinct_ids, is_identified, properties, created_at), the events of
    each person, personless distinct IDs and warnings with the model."""
    proj = daemon.project(token)
    report.eq("project %s has numeric id" % token, True, isinstance(proj.get("id"), int),
              short(proj))
    persons = daemon.persons(token)
    by_first = {}
    for p in persons:
        for d in p.get("distinct_ids") or []:
            by_first.setdefault(d, p)
    for mp in sorted(model.persons.values(), key=lambda p: p.ids):
        tag = "person %s" % _fmt_ids(mp.ids)
        dp = by_first.get(mp.ids[0])
        if dp is None:
            report.check(tag + " exists", False, "no person holds %s" % mp.ids[0])
            continue
        report.eq(tag + " distinct_ids (in attach order)", mp.ids, dp.get("distinct_ids"))
        report.eq(tag + " uuid = UUIDv5(project id:%s) (spec §6)" % _ids_creator(model, mp),
                  mp.uuid, dp.get("uuid"))
        if dp.get("id") != dp.get("uuid"):
            report.check(tag + " id == uuid", False, "id=%s uuid=%s" % (dp.get("id"), dp.get("uuid")))
        report.eq(tag + " is_identified", mp.identified, dp.get("is_identified"))
        props_ok = mp.props == dp.get("properties")
        report.check(tag + " properties", props_ok,
                     "" if props_ok else dict_diff(mp.props, dp.get("properties")))
        if check_created_at and mp.created_at is not None:
            try:
                got_ts = parse_ts(dp.get("created_at"))
                ok = got_ts is not None and abs(got_ts - mp.created_at) <= TS_TOLERANCE
            except Exception:  # noqa
                got_ts, ok = dp.get("created_at"), False
            report.check(tag + " created_at = timestamp of its first event (spec §5, merge: min)", ok,
                         "" if ok else "expected %s, got %s" % (mp.created_at.isoformat(),
                                                                dp.get("created_at")))
        # events of the person (§7), each attributed to the current person
        try:
            evs = daemon.events_of_person(token, dp.get("uuid"))
            want = model.events_of_person(mp)
            got = [e.get("uuid") for e in evs]
            dup = sorted({u for u in got if got.count(u) > 1})
            ok = set(got) == want and not dup
            detail = ""
            if not ok:
                detail = "missing %s; unexpected %s; duplicated %s" % (
                    sorted(want - set(got)), sorted(set(got) - want), dup)
            report.check(tag + " events (all its distinct IDs, each once): %d" % len(want), ok, detail)
            wrong_pid = [e.get("uuid") for e in evs if e.get("person_id") != dp.get("uuid")]
            report.check(tag + " events carry person_id of the current person", not wrong_pid,
                         "events with another person_id: %s" % wrong_pid[:5])
            check_newest_first(report, tag, evs)
        except Exception as e:  # noqa
            report.crash(tag + " events", e)
    # §5 version: +1 per changing event. The first value is not fixed by the spec, so take it from
    # a person that never changed after its creation and compare every person relative to it.
    base = None
    for mp in model.persons.values():
        dp = by_first.get(mp.ids[0])
        if mp.version == 0 and dp is not None and isinstance(dp.get("version"), int):
            base = dp["version"]
            break
    if base is not None:
        for mp in sorted(model.persons.values(), key=lambda p: p.ids):
            dp = by_first.get(mp.ids[0])
            if dp is None:
                continue
            report.eq("person %s version = first version + %d changing events (spec §5)"
                      % (_fmt_ids(mp.ids), mp.version), base + mp.version, dp.get("version"))
    extra = [p.get("distinct_ids") for p in persons
             if not any(p.get("distinct_ids", [None])[:1] == mp.ids[:1] for mp in model.persons.values())]
    report.check("no persons beyond the spec's (%d)" % len(model.persons), not extra and
                 len(persons) == len(model.persons),
                 "got %d persons; unexpected: %s" % (len(persons), short(extra)))

    # personless distinct IDs: events stored under the ID, no person
    for did in sorted(model.seen_personless):
        if model.person_of(did) is not None:
            continue
        p = daemon.person_by_distinct_id(token, did)
        report.check("personless %s has no person" % did, p is None, "got person %s" % short(p))
        got = [e.get("uuid") for e in daemon.events_of_distinct_id(token, did)]
        want = model.events_of_distinct_id(did)
        report.check("personless %s events stored (%d)" % (did, len(want)),
                     set(got) == want and len(got) == len(want),
                     "expected %s got %s" % (sorted(want), got))
    # dropped events are not stored
    for (u, did, name) in model.dropped:
        got = [e.get("uuid") for e in daemon.events_of_distinct_id(token, did)]
        report.check("dropped personless %s (uuid %s) not stored" % (name, u), u not in got,
                     "events under %s: %s" % (did, got))
        if model.person_of(did) is None:
            p = daemon.person_by_distinct_id(token, did)
            report.check("dropped personless %s created no person for %s" % (name, did), p is None,
                         "got %s" % short(p))
    check_warnings(report, daemon.warnings(token), model.warnings)


def _ids_creator(model, mp):
    for d in mp.ids:
        if person_uuid(model.project_id, d) == mp.uuid:
            return d
    return "?"


def is_int(v):
    """Whether a decoded JSON value is an integer (bool is an int in Python, not in JSON)."""
    return isinstance(v, int) and not isinstance(v, bool)


def check_newest_first(report, tag, evs):
    """Events of a person come newest first: their `seq`s decrease. An event without an
    integer `seq` fails the check (the order cannot be told, so it is not taken as right)."""
    seq = [e.get("seq") for e in evs]
    bad = [(e.get("uuid"), e.get("seq", "<missing>")) for e in evs if not is_int(e.get("seq"))]
    if bad:
        return report.check(tag + " events newest first", False,
                            "%d of %d events have no integer seq: %s" % (len(bad), len(seq), short(bad[:5])))
    return report.check(tag + " events newest first", seq == sorted(seq, reverse=True),
                        "seq order %s" % seq[:20])


def check_warnings(report, got, want):
    remaining = list(got)
    for w in want:
        match = None
        for g in remaining:
            if g.get("type") != w["type"]:
                continue
            det = g.get("details") or {}
            if all(det.get(k) == v for k, v in w["details"].items()):
                match = g
                break
        report.check("warning %s %s" % (w["type"], short(w["details"], 300)), match is not None,
                     "" if match else "not found among %s" % short(remaining, 900))
        if match is not None:
            remaining.remove(match)
            if not match.get("timestamp"):
                report.check("warning %s has a timestamp" % w["type"], False, short(match))
    report.check("no other ingestion warnings", not remaining, "unexpected: %s" % short(remaining, 900))


def run_main(flow, body):
    """Run body(report); a crash becomes one FAIL line. Exit 0 (run.sh counts the lines)."""
    report = Report(flow)
    try:
        body(report)
    except Exception as e:  # noqa
        report.crash("flow ran to completion", e)
    sys.stdout.flush()
    return report
