"""posthog-python retries against idstitch: the daemon is killed while the SDK flushes, restarted
on the same port and data dir, and an acknowledged batch whose answer is lost is resent.
See lib/retries.py for the phases and what is checked.

Usage: retries_flow.py STATE_DIR   (a daemon already started by run.sh via lib/daemon.sh)
"""
import copy
import os
import subprocess
import sys
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "lib"))

import posthog.request as ph_request  # noqa: E402
from posthog import Posthog  # noqa: E402

from checks import Report  # noqa: E402
from idstitch_api import Daemon, wait_until  # noqa: E402
from retries import check_retries  # noqa: E402

TOKEN = "phc_sdk_retry_py"

# Record every upload attempt on the wire. posthog.request.batch_post looks `post` up in its
# module at call time, so wrapping it sees each attempt of the consumer's retry loop.
attempts = []
_orig_post = ph_request.post


def _recording_post(*args, **kwargs):
    uuids = [e.get("uuid") for e in kwargs.get("batch") or []]
    rec = {"uuids": uuids, "status": None, "error": None}
    attempts.append(rec)
    try:
        res = _orig_post(*args, **kwargs)
        rec["status"] = res.status_code
        return res
    except Exception as e:
        rec["error"] = type(e).__name__
        raise


ph_request.post = _recording_post


def main():
    state = sys.argv[1]
    daemon = Daemon(state)
    report = Report("retries/python")
    sent = []
    phases = {}

    def before_send(msg):
        sent.append(copy.deepcopy(msg))
        return msg

    def client(host):
        # background consumer (sync_mode does not retry); backoff 1 s, 2 s, 4 s, ...
        return Posthog(TOKEN, host=host, gzip=True, flush_at=1000, flush_interval=60,
                       max_retries=6, before_send=before_send)

    proxy = None
    try:
        ph = client(daemon.url)
        u = ph.capture("$pageview", distinct_id="retry-anon", properties={"$set": {"phase": "before"}})
        phases["baseline"] = [u]
        ph.flush()
        report.check("baseline batch delivered", any(a["uuids"] == [u] and a["status"] == 200 for a in attempts),
                     str(attempts))

        # --- outage: kill the daemon, flush, restart it on the same port and data dir ---
        daemon.kill()
        outage = [
            ph.capture("$identify", distinct_id="retry-user", properties={
                "$anon_distinct_id": "retry-anon", "$set": {"phase": "outage", "email": "retry@example.com"}}),
            ph.capture("clicked", distinct_id="retry-user", properties={"n": 1}),
            ph.capture("clicked", distinct_id="retry-user", properties={"n": 2}),
        ]
        phases["outage"] = outage
        flusher = threading.Thread(target=ph.flush, kwargs={"timeout_seconds": 90}, daemon=True)
        flusher.start()
        wait_until(lambda: any(a["uuids"] == outage and a["error"] for a in attempts), 15,
                   "a failed upload attempt while the daemon is down")
        daemon.start()
        flusher.join(90)
        report.check("the SDK's flush finished after the restart", not flusher.is_alive(), "still flushing after 90 s")
        ph.shutdown()

        # --- lost answer: the daemon stores the batch, the SDK never hears back ---
        plog = os.path.join(state, "retries_py_proxy.jsonl")
        pport = os.path.join(state, "retries_py_proxy.port")
        proxy = subprocess.Popen([sys.executable, os.path.join(HERE, "lib", "dropproxy.py"),
                                  "--upstream", str(daemon.port), "--drop", "1",
                                  "--log", plog, "--port-file", pport])
        wait_until(lambda: os.path.exists(pport), 10, "the proxy to listen")
        with open(pport) as f:
            proxy_url = "http://127.0.0.1:%s" % f.read().strip()
        ph2 = client(proxy_url)
        lost = [
            ph2.capture("purchase", distinct_id="retry-user", properties={
                "amount": 5, "$set": {"phase": "lost"}, "$set_once": {"first_lost": "a"}}),
            ph2.capture("purchase", distinct_id="retry-user", properties={
                "amount": 6, "$set_once": {"first_lost": "b"}}),
        ]
        phases["lost"] = lost
        ph2.flush()
        ph2.shutdown()
        check_retries(report, daemon, TOKEN, sent, phases, attempts, plog, "python")
    except Exception as e:  # noqa
        report.crash("retries flow ran to completion", e)
    finally:
        if proxy is not None:
            proxy.terminate()
            try:
                proxy.wait(5)
            except subprocess.TimeoutExpired:
                proxy.kill()


if __name__ == "__main__":
    main()
