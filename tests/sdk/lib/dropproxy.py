"""An HTTP proxy in front of the daemon that loses the answer to the first N capture requests.

It forwards each request to the daemon, waits for the daemon's answer (so the events are already
acknowledged and durable), and then, for the first --drop capture requests, closes the SDK's
connection without sending that answer. The SDK sees a network error and retries the same batch,
which the daemon must store only once (identity.md §1.7). Stdlib only.

Usage: dropproxy.py --upstream PORT --drop N --log FILE --port-file FILE
Each request is logged to FILE as one JSON line: {path, uuids, upstream_status, action}.
"""
import argparse
import gzip
import http.client
import json
import os
import socket
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CAPTURE = ("/batch", "/capture", "/e", "/i/v0/e", "/track", "/engage", "/i/v1/analytics/events")


def uuids_of(body):
    try:
        if body[:2] == b"\x1f\x8b":
            body = gzip.decompress(body)
        j = json.loads(body)
    except Exception:  # noqa
        return None
    evs = j if isinstance(j, list) else (j.get("batch") if isinstance(j, dict) and "batch" in j else [j])
    return [e.get("uuid") for e in evs if isinstance(e, dict)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--upstream", type=int, required=True)
    ap.add_argument("--drop", type=int, default=1)
    ap.add_argument("--log", required=True)
    ap.add_argument("--port-file", required=True)
    a = ap.parse_args()
    lock = threading.Lock()
    state = {"drop": a.drop}
    logf = open(a.log, "a", buffering=1)

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def _forward(self):
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n) if n else b""
            headers = {k: v for k, v in self.headers.items()
                       if k.lower() not in ("host", "connection", "content-length")}
            conn = http.client.HTTPConnection("127.0.0.1", a.upstream, timeout=30)
            rec = {"method": self.command, "path": self.path, "uuids": uuids_of(body) if body else None}
            try:
                conn.request(self.command, self.path, body=body, headers=headers)
                res = conn.getresponse()
                data = res.read()
                rec["upstream_status"] = res.status
            except Exception as e:  # noqa
                rec["upstream_status"] = None
                rec["upstream_error"] = repr(e)
                rec["action"] = "upstream down: connection closed"
                logf.write(json.dumps(rec) + "\n")
                self._abort()
                return
            finally:
                conn.close()
            is_capture = self.command == "POST" and self.path.split("?")[0].rstrip("/") in CAPTURE
            with lock:
                drop = is_capture and state["drop"] > 0
                if drop:
                    state["drop"] -= 1
            if drop:
                rec["action"] = "answer dropped"
                logf.write(json.dumps(rec) + "\n")
                self._abort()
                return
            rec["action"] = "answer forwarded"
            logf.write(json.dumps(rec) + "\n")
            self.send_response(res.status)
            for k, v in res.getheaders():
                if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _abort(self):
            self.close_connection = True
            try:
                # RST instead of FIN: the client sees a reset connection, no answer at all
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
            except OSError:
                pass

        do_POST = _forward
        do_GET = _forward

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    srv.daemon_threads = True
    tmp = a.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(srv.server_address[1]))
    os.replace(tmp, a.port_file)
    srv.serve_forever()


if __name__ == "__main__":
    main()
