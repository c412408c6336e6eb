"""posthog-python (7.x) against idstitch: the identity flows of identify-users.txt / identity.md.

Usage: python_flow.py STATE_DIR   (a daemon already started by run.sh via lib/daemon.sh)

Runs the scenario of lib/scenario.py in three projects (same distinct IDs, so the projects must
stay unrelated):
  py_plain  sync_mode=True: one POST /batch/ per call, uncompressed JSON
  py_gzip   gzip=True, background consumer: one gzip batch (Content-Encoding: gzip) with every
            event in call order
  py_v1     capture_mode="v1": POST /i/v1/analytics/events (a shorter scenario)
Every event the SDK sends is recorded with before_send (exactly what goes on the wire for v0) and
fed to lib/spec_model.py; the daemon's persons, events and warnings are compared with that model
and with the outcome written by hand in lib/scenario.py.
"""
import copy
import json
import logging
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "lib"))

from posthog import Posthog  # noqa: E402

from checks import Report, check_structure, compare_with_model, model_self_check  # noqa: E402
from idstitch_api import Daemon  # noqa: E402
from scenario import EXPECTED_FULL_WARNINGS, expected_full, spot_checks  # noqa: E402
from spec_model import Model  # noqa: E402

EXPECTED_V1 = [
    (["anon-1", "user-1"], True),
    (["user-2", "anon-2"], True),
]


class _ErrorCollector(logging.Handler):
    """posthog-python logs (and swallows) upload errors; in sync_mode on_error is not called."""

    def __init__(self, sink):
        super().__init__(level=logging.ERROR)
        self.sink = sink

    def emit(self, record):
        self.sink.append(record.getMessage()[:300])


def full_scenario(ph):
    """lib/scenario.py's steps with posthog-python's calls."""
    ph.capture("$pageview", distinct_id="anon-1", properties={
        "$current_url": "https://shop.example/landing", "$pathname": "/landing",
        "$set": {"plan": "free"}, "$set_once": {"first_seen": "landing"}})
    ph.set(distinct_id="anon-1", properties={"plan": "trial", "color": "red"})
    ph.set_once(distinct_id="anon-1", properties={"first_seen": "later", "source": "ads"})
    # 7.x has no identify(): $identify is a capture with $anon_distinct_id
    ph.capture("$identify", distinct_id="user-1", properties={
        "$anon_distinct_id": "anon-1",
        "$set": {"email": "max@hedgehogmail.com", "name": "Max Hedgehog"},
        "$set_once": {"signup_date": "2024-01-01"}})
    ph.capture("purchase", distinct_id="user-1", properties={"$unset": ["color"], "amount": 10})
    ph.set(distinct_id="user-1", properties={"plan": "trial"})   # same value: no change
    ph.group_identify("company", "acme", {"name": "Acme Inc", "employees": 11}, distinct_id="user-1")
    ph.group_identify("company", "globex", {"name": "Globex"}, distinct_id="grp-admin")
    # alias: a real merge of two unidentified persons
    ph.capture("signed_up", distinct_id="anon-2", properties={
        "$set": {"plan": "pro", "shared": "from-anon-2", "only_anon_2": 1}})
    ph.capture("logged_in", distinct_id="user-2", properties={
        "$set": {"shared": "from-user-2", "email": "second@example.com"}})
    ph.alias(previous_id="user-2", distinct_id="anon-2")
    # alias onto an identified person is refused (cannot_merge_already_identified)
    ph.alias(previous_id="user-1", distinct_id="user-2")
    # $merge_dangerously merges even identified persons
    ph.capture("$identify", distinct_id="user-3", properties={
        "$anon_distinct_id": "anon-3", "$set": {"team": "red", "d": 1}})
    ph.capture("$identify", distinct_id="user-4", properties={
        "$anon_distinct_id": "anon-4", "$set": {"team": "blue", "e": 1}})
    ph.capture("$merge_dangerously", distinct_id="user-3", properties={
        "alias": "user-4", "$set": {"merged": True}})
    # illegal other id: None is sent as JSON null, which counts as "null"
    ph.capture("$identify", distinct_id="user-5", properties={
        "$anon_distinct_id": None, "$set": {"k": "v"}})
    ph.capture("$identify", distinct_id="user-6", properties={"$set": {"x": 1}})
    ph.capture("$identify", distinct_id="user-7", properties={"$anon_distinct_id": "user-7"})
    # personless: no distinct_id -> the SDK makes one up and sets $process_person_profile false
    ph.capture("viewed_docs", properties={"page": "/docs"})
    ph.capture("$identify", properties={"$anon_distinct_id": "anon-9"})   # personless $identify: dropped
    ph.capture("$pageview", distinct_id="anon-10", properties={"$process_person_profile": False,
                                                               "$current_url": "https://shop.example/"})
    ph.capture("$identify", distinct_id="user-10", properties={
        "$anon_distinct_id": "anon-10", "$set": {"email": "ten@example.com"}})
    ph.capture("clicked", distinct_id="anon-11", properties={"$process_person_profile": "false"})


def v1_scenario(ph):
    ph.capture("$pageview", distinct_id="anon-1", properties={
        "$current_url": "https://shop.example/landing", "$set": {"plan": "free"},
        "$set_once": {"first_seen": "landing"}})
    ph.set(distinct_id="anon-1", properties={"plan": "trial", "color": "red"})
    ph.capture("$identify", distinct_id="user-1", properties={
        "$anon_distinct_id": "anon-1", "$set": {"email": "max@hedgehogmail.com"}})
    ph.capture("purchase", distinct_id="user-1", properties={"$unset": ["color"]})
    ph.capture("viewed_docs", properties={"page": "/docs"})       # personless
    ph.capture("signed_up", distinct_id="anon-2", properties={"$set": {"shared": "a"}})
    ph.capture("logged_in", distinct_id="user-2", properties={"$set": {"shared": "b"}})
    ph.alias(previous_id="user-2", distinct_id="anon-2")


def run_variant(report, daemon, name, token, client_kwargs, scenario, expected, expected_warning_types):
    sent = []

    def before_send(msg):
        sent.append(copy.deepcopy(msg))
        return msg

    failures = []
    log_handler = _ErrorCollector(failures)
    logging.getLogger("posthog").addHandler(log_handler)
    ph = Posthog(token, host=daemon.url, before_send=before_send,
                 on_error=lambda e, batch: failures.append(repr(e)), **client_kwargs)
    scenario(ph)
    ph.flush()
    ph.shutdown()
    logging.getLogger("posthog").removeHandler(log_handler)
    report.check("%s: SDK delivered every request without error (status 200)" % name, not failures,
                 "; ".join(failures)[:600])
    report.info("%s: sent %d events" % (name, len(sent)))

    proj = daemon.project(token)
    model = Model(proj["id"])
    for ev in sent:
        model.process(ev)
    model_self_check(report, model, expected)
    report.eq("%s model self-check: warning types" % name, sorted(expected_warning_types),
              sorted(w["type"] for w in model.warnings))
    check_structure(report, daemon, token, expected, label=name)
    compare_with_model(report, daemon, token, model)
    if scenario is full_scenario:
        spot_checks(report, daemon, token, "grp-admin", None)
    else:
        report.eq("v1: alias merge: survivor wins conflicts", "b",
                  (daemon.person_by_distinct_id(token, "anon-2") or {}).get("properties", {}).get("shared"))


def read_api_guard(report, daemon, token):
    """api.md: on TCP everything under /api/ needs the admin key; unknown projects are 404."""
    path = "/api/projects/%s/persons/?distinct_id=user-1" % token
    st, _, _ = daemon.request("GET", path, auth=False)
    report.check("read API without Authorization is refused (401/403)", st in (401, 403), "got %s" % st)
    st, _, _ = daemon.request("GET", path, auth=False, headers={"Authorization": "Bearer wrong-key"})
    report.check("read API with a wrong admin key is refused (401/403)", st in (401, 403), "got %s" % st)
    st, raw, _ = daemon.request("GET", "/api/projects/phc_sdk_never_used/persons/")
    report.check('unknown project answers 404 {"detail": "project not found"}',
                 st == 404 and raw.strip() and json.loads(raw) == {"detail": "project not found"},
                 "got %s %r" % (st, raw[:200]))


def main():
    daemon = Daemon(sys.argv[1])
    report = Report("python")
    variants = [
        ("py_plain", "phc_sdk_py_plain", dict(sync_mode=True), full_scenario, expected_full("grp-admin"),
         EXPECTED_FULL_WARNINGS),
        ("py_gzip", "phc_sdk_py_gzip", dict(gzip=True, flush_at=1000, flush_interval=30, max_retries=2),
         full_scenario, expected_full("grp-admin"), EXPECTED_FULL_WARNINGS),
        ("py_v1", "phc_sdk_py_v1", dict(sync_mode=True, capture_mode="v1"), v1_scenario, EXPECTED_V1, []),
    ]
    only = os.environ.get("SDK_FLOW_ONLY")
    for v in variants:
        if only and v[0] not in only.split(","):
            continue
        report.flow = "python/" + v[0]
        try:
            run_variant(report, daemon, *v)
        except Exception as e:  # noqa
            report.crash("%s ran to completion" % v[0], e)
    report.flow = "python/api"
    try:
        read_api_guard(report, daemon, "phc_sdk_py_plain")
    except Exception as e:  # noqa
        report.crash("read API guard checks ran", e)


if __name__ == "__main__":
    main()
