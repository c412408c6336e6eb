"""Check a daemon against identity.md after a node or browser flow recorded what its SDK sent.

Usage: check_recorded.py node|browser|node_retries STATE_DIR RECORDED.json

RECORDED.json (written by node_flow.mjs / browser_flow.mjs):
  {"flow", "token", "requests": [{"path", "method", "content_type", "content_encoding",
   "body_encoding", "status", "error", "events": [...]}], ...flow-specific keys}
The events of the requests the daemon answered 200, in wire order, are fed to the spec model.
Stdlib only.
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "lib"))

from checks import (Report, check_structure, compare_with_model, model_self_check,  # noqa: E402
                    short)
from idstitch_api import Daemon  # noqa: E402
from retries import check_retries  # noqa: E402
from scenario import EXPECTED_FULL_WARNINGS, expected_full, spot_checks  # noqa: E402
from spec_model import Model  # noqa: E402

CAPTURE_PATHS = ("/batch", "/capture", "/e", "/i/v0/e", "/track", "/engage", "/i/v1/analytics/events")


def is_capture(req):
    p = req["path"].split("?")[0].rstrip("/")
    return req["method"] == "POST" and p in CAPTURE_PATHS


def delivered_events(report, requests, what):
    caps = [r for r in requests if is_capture(r)]
    bad = [(r["path"], r["status"], r["error"]) for r in caps if r["status"] != 200]
    report.check("%s: every capture request answered exactly 200 (%d requests)" % (what, len(caps)),
                 caps and not bad, "not 200: %s" % short(bad))
    encodings = sorted({"%s / Content-Type %s" % (r["body_encoding"], r["content_type"]) for r in caps})
    report.info("%s: request encodings seen: %s" % (what, "; ".join(encodings)))
    events = []
    for r in caps:
        if r["status"] == 200:
            events.extend(r["events"])
    return events


def check_node(report, daemon, data):
    token = data["token"]
    report.check("posthog-node reported no errors", not data.get("sdk_errors"), short(data.get("sdk_errors")))
    events = delivered_events(report, data["requests"], "node")
    caps = [r for r in data["requests"] if is_capture(r)]
    report.check("posthog-node gzips every batch (Content-Encoding: gzip)",
                 all(r["content_encoding"] == "gzip" for r in caps),
                 short([r["content_encoding"] for r in caps]))
    model = Model(daemon.project(token)["id"])
    for ev in events:
        model.process(ev)
    expected = expected_full("$company_globex")
    model_self_check(report, model, expected)
    report.eq("model self-check: warning types", EXPECTED_FULL_WARNINGS,
              sorted(w["type"] for w in model.warnings))
    check_structure(report, daemon, token, expected, label="node")
    compare_with_model(report, daemon, token, model)
    spot_checks(report, daemon, token, "$company_globex", "null")


def check_browser(report, daemon, data):
    for ctx in data["contexts"]:
        name, token, ids = ctx["name"], ctx["token"], ctx["ids"]
        report.flow = "browser/" + name
        events = delivered_events(report, ctx["requests"], name)
        if ctx.get("expect_gzip_magic"):
            caps = [r for r in ctx["requests"] if is_capture(r)]
            report.check("posthog-js sent gzip bodies with no Content-Encoding, Content-Type text/plain",
                         caps and all(r["body_encoding"] == "gzip (magic bytes, no Content-Encoding)"
                                      and (r["content_type"] or "").startswith("text/plain") for r in caps),
                         short([(r["body_encoding"], r["content_type"]) for r in caps]))
        model = Model(daemon.project(token)["id"])
        for ev in events:
            model.process(ev)
        # identify-users.txt: each browser user ends up as one identified person holding its
        # anonymous ID; personless anonymous events create no person (identity.md §2), so the
        # person is created by $identify with [identified id, anonymous id] (§4 "neither exists").
        expected = [([u, a], True) for (u, a) in ids]
        model_self_check(report, model, expected)
        check_structure(report, daemon, token, expected, label=name)
        compare_with_model(report, daemon, token, model)
        report.eq("no ingestion warnings expected", [], [w["type"] for w in model.warnings])
        for (u, a) in ids:
            anon_events = [e["uuid"] for e in events
                           if (e.get("properties") or {}).get("distinct_id") == a]
            report.check("%s: the %d anonymous events were sent personless ($process_person_profile false)"
                         % (u, len(anon_events)),
                         anon_events and all((e.get("properties") or {}).get("$process_person_profile") is False
                                             for e in events if (e.get("properties") or {}).get("distinct_id") == a),
                         "anonymous events: %s" % anon_events)
            p = daemon.person_by_distinct_id(token, u)
            if p is None:
                report.check("%s: person exists" % u, False, "no person")
                continue
            got = {e.get("uuid") for e in daemon.events_of_person(token, p["uuid"])}
            missing = [x for x in anon_events if x not in got]
            report.check("%s: its anonymous (pre-identify) events belong to the identified person" % u,
                         not missing, "missing %s" % missing)
            for key, want in ctx.get("props", {}).get(u, {}).items():
                report.eq("%s: property %s" % (u, key), want, p.get("properties", {}).get(key))
        # the users of one browser stay apart
        if len(ids) == 2:
            p1 = daemon.person_by_distinct_id(token, ids[0][0])
            p2 = daemon.person_by_distinct_id(token, ids[1][0])
            report.check("after reset() the second user is a different person",
                         p1 is not None and p2 is not None and p1["uuid"] != p2["uuid"],
                         "%s / %s" % (p1 and p1["uuid"], p2 and p2["uuid"]))


def main():
    flow, state, path = sys.argv[1:4]
    with open(path) as f:
        data = json.load(f)
    report = Report(flow)
    daemon = Daemon(state)
    try:
        if flow == "node":
            check_node(report, daemon, data)
        elif flow == "browser":
            check_browser(report, daemon, data)
        elif flow == "node_retries":
            report.flow = "retries/node"
            check_retries(report, daemon, data["token"], data["sent"], data["phases"], data["attempts"],
                          data["proxy_log"], "node")
        else:
            raise SystemExit("unknown flow %s" % flow)
    except Exception as e:  # noqa
        report.crash("checks ran to completion", e)


if __name__ == "__main__":
    main()
