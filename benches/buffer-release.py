#!/usr/bin/env python3
"""How fast the conversion buffer releases a backlog, and what a capture of another project waits
meanwhile (session 19). Usage: benches/buffer-release.py BINARY N

Starts BINARY serve --test-clock on a temp dir, turns the buffer on (60 s window) for one
project, buffers N backend events of ~1 KB for new IDs, moves the test clock past the window,
and times until nothing waits, sending one capture to another project at a time meanwhile."""
import json, subprocess, sys, time, os, shutil, http.client, socket
binary = sys.argv[1]; n = int(sys.argv[2])
d = f"/tmp/relspeed-{os.getpid()}"
shutil.rmtree(d, ignore_errors=True); os.makedirs(d)
sock = f"{d}/s.sock"
p = subprocess.Popen([binary, "serve", "--data-dir", f"{d}/data", "--socket", sock, "--test-clock"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
class UConn(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX); self.sock.connect(sock)
def req(method, path, body=None):
    c = UConn("x"); c.request(method, path, body=json.dumps(body) if body is not None else None, headers={"content-type": "application/json"})
    r = c.getresponse(); data = r.read(); c.close(); return r.status, data
for _ in range(200):
    if os.path.exists(sock): break
    time.sleep(0.05)
time.sleep(0.2)
T = "phc_rel"
req("POST", "/batch/", {"api_key": T, "batch": [{"event": "x", "distinct_id": "setup", "properties": {"$device_id": "setup"}}]})
print(req("PATCH", f"/api/projects/{T}/", {"conversion_buffer": {"enabled": True, "window_secs": 60}})[0])
for b in range(0, n, 500):
    batch = [{"event": "signed_up", "distinct_id": f"u{i}", "properties": {"$lib": "posthog-python", "$set": {"plan": "free"}, "pad": "x"*800}} for i in range(b, min(n, b+500))]
    s, _ = req("POST", "/batch/", {"api_key": T, "batch": batch}); assert s == 200
st, body = req("GET", f"/api/projects/{T}/buffer/?limit=1")
print("waiting", json.loads(body)["waiting"])
req("POST", "/api/_test/clock", {"advance_secs": 61})
t0 = time.time()
lat = []
while True:
    a = time.time(); st, _ = req("POST", "/batch/", {"api_key": "phc_other", "batch": [{"event": "e", "distinct_id": "o"}]}); lat.append(time.time()-a)
    st, body = req("GET", f"/api/projects/{T}/buffer/?limit=1")
    w = json.loads(body)["waiting"]
    if w == 0: break
    time.sleep(0.05)
print(f"released {n} in {time.time()-t0:.2f}s; captures during it: {len(lat)}, slowest {max(lat)*1000:.0f} ms")
p.terminate(); p.wait(); shutil.rmtree(d)
