"""Read access to a running idstitch daemon over TCP (stdlib only).

Used by the checkers. Every call raises ApiError on a non-2xx answer or unparsable body,
with the request and the answer in the message so a failing check can print them.
"""
import json
import os
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request


class ApiError(Exception):
    pass


class Daemon:
    """One daemon described by a state dir made by lib/daemon.sh (port, admin.key, data/)."""

    def __init__(self, state):
        self.state = state
        with open(os.path.join(state, "port")) as f:
            self.port = int(f.read().strip())
        with open(os.path.join(state, "admin.key")) as f:
            self.admin_key = f.read().strip()
        self.url = "http://127.0.0.1:%d" % self.port
        self.ctl = os.environ.get("IDSTITCH_CTL") or os.path.join(
            os.path.dirname(os.path.abspath(__file__)), "daemon.sh")

    # --- process control (through lib/daemon.sh) ---
    def _ctl(self, cmd):
        subprocess.run([self.ctl, cmd, self.state], check=True)

    def start(self):
        self._ctl("start")

    def kill(self):
        self._ctl("kill")

    def stop(self):
        self._ctl("stop")

    # --- HTTP ---
    def request(self, method, path, body=None, headers=None, auth=True, timeout=10):
        h = dict(headers or {})
        if auth:
            h["Authorization"] = "Bearer " + self.admin_key
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            h.setdefault("Content-Type", "application/json")
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read(), dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, e.read(), dict(e.headers)

    def get_json(self, path):
        status, raw, _ = self.request("GET", path)
        if status != 200:
            raise ApiError("GET %s -> %s %s" % (path, status, raw[:300].decode("utf-8", "replace")))
        try:
            return json.loads(raw)
        except ValueError:
            raise ApiError("GET %s -> 200 but not JSON: %r" % (path, raw[:300]))

    def _paged(self, path):
        out, seen = [], set()
        while path:
            page = self.get_json(path)
            out.extend(page.get("results") or [])
            nxt = page.get("next")
            if not nxt:
                break
            # `next` is a URL; keep only path+query so it goes to this daemon
            u = urllib.parse.urlsplit(nxt)
            path = u.path + ("?" + u.query if u.query else "")
            if path in seen:
                raise ApiError("paging loop at %s" % path)
            seen.add(path)
        return out

    # --- read API (api.md) ---
    def project(self, token):
        return self.get_json("/api/projects/%s/" % urllib.parse.quote(token, safe=""))

    def persons(self, token):
        return self._paged("/api/projects/%s/persons/?limit=1000" % urllib.parse.quote(token, safe=""))

    def person_by_distinct_id(self, token, did):
        r = self.get_json("/api/projects/%s/persons/?distinct_id=%s" % (
            urllib.parse.quote(token, safe=""), urllib.parse.quote(did, safe="")))
        res = r.get("results") or []
        if len(res) > 1:
            raise ApiError("persons?distinct_id=%s returned %d persons" % (did, len(res)))
        return res[0] if res else None

    def events_of_person(self, token, person_uuid):
        return self._paged("/api/projects/%s/events/?person_id=%s&limit=10000" % (
            urllib.parse.quote(token, safe=""), urllib.parse.quote(person_uuid, safe="")))

    def events_of_distinct_id(self, token, did):
        return self._paged("/api/projects/%s/events/?distinct_id=%s&limit=10000" % (
            urllib.parse.quote(token, safe=""), urllib.parse.quote(did, safe="")))

    def warnings(self, token):
        return self._paged("/api/projects/%s/ingestion_warnings/" % urllib.parse.quote(token, safe=""))


def wait_until(pred, timeout, what, interval=0.05):
    """Poll pred() until truthy; raise TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise TimeoutError("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)
