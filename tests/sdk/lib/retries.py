"""Checks for the retry flows (retries_flow.py for posthog-python, node_retries_flow.mjs for
posthog-node). Both run the same three phases against one daemon:

  baseline  $pageview retry-anon {$set phase: before}, delivered normally
  outage    the daemon is SIGKILLed; the SDK flushes $identify retry-user ($anon_distinct_id
            retry-anon, $set phase: outage) + 2 clicks and fails; the daemon is restarted on the
            same port and data dir; the SDK's retry (same uuids) succeeds
  lost      through lib/dropproxy.py: the daemon acknowledges 2 purchases ($set phase: lost,
            $set_once first_lost) but the answer never reaches the SDK, which resends them

identity.md §1.7: every event is stored exactly once, and the acknowledged baseline survived the
SIGKILL. The person ends as [retry-anon, retry-user], identified, phase "lost".
"""
import json

from checks import check_structure, compare_with_model, short
from spec_model import Model

EXPECTED = [(["retry-anon", "retry-user"], True)]


def read_jsonl(path):
    out = []
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    out.append(json.loads(line))
    except FileNotFoundError:
        pass
    return out


def check_retries(report, daemon, token, sent, phases, attempts, proxy_log_path, sdk):
    """sent: events in the order the SDK produced them; phases: name -> list of uuids;
    attempts: SDK-side capture attempts [{uuids, status, error}]."""
    outage = phases["outage"]
    lost = phases["lost"]
    fails = [a for a in attempts if a.get("uuids") == outage and a.get("error")]
    oks = [a for a in attempts if a.get("uuids") == outage and a.get("status") == 200]
    report.check("%s: while the daemon was down the flush failed (%d failed attempts)" % (sdk, len(fails)),
                 len(fails) >= 1, "attempts: %s" % short(attempts, 800))
    report.check("%s: after the restart the SDK resent the same uuids and got 200" % sdk, len(oks) == 1,
                 "attempts with those uuids: %s" % short([a for a in attempts if a.get("uuids") == outage]))
    plog = read_jsonl(proxy_log_path)
    caps = [r for r in plog if r.get("method") == "POST" and r.get("uuids") == lost]
    dropped = [r for r in caps if r.get("action") == "answer dropped" and r.get("upstream_status") == 200]
    forwarded = [r for r in caps if r.get("action") == "answer forwarded" and r.get("upstream_status") == 200]
    report.check("%s: the daemon acknowledged the batch with 200 but the answer was lost" % sdk,
                 len(dropped) == 1, "proxy log: %s" % short(plog, 800))
    report.check("%s: the SDK resent the identical batch (same uuids) and got its 200" % sdk,
                 len(forwarded) >= 1, "proxy log: %s" % short(plog, 800))

    # every uuid exactly once, the baseline survived the SIGKILL
    for did in ("retry-anon", "retry-user"):
        got = [e.get("uuid") for e in daemon.events_of_distinct_id(token, did)]
        want = [ev["uuid"] for ev in sent if ev.get("distinct_id") == did]
        dup = sorted({u for u in got if got.count(u) > 1})
        report.check("%s: events of %s stored exactly once each (%d)" % (sdk, did, len(want)),
                     sorted(got) == sorted(want) and not dup,
                     "stored more than once: %s; missing: %s; unexpected: %s" % (
                         dup, sorted(set(want) - set(got)), sorted(set(got) - set(want))))
    base = phases["baseline"]
    got_all = [e.get("uuid") for e in daemon.events_of_distinct_id(token, "retry-anon")]
    report.check("%s: the event acknowledged before the SIGKILL is still there" % sdk,
                 all(u in got_all for u in base), "baseline %s, stored %s" % (base, got_all))

    model = Model(daemon.project(token)["id"])
    for ev in sent:
        model.process(ev)
    check_structure(report, daemon, token, EXPECTED, label=sdk)
    compare_with_model(report, daemon, token, model)
    p = daemon.person_by_distinct_id(token, "retry-user") or {}
    report.eq("%s: the last $set (phase lost) wins" % sdk, "lost", p.get("properties", {}).get("phase"))
