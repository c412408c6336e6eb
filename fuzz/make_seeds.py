#!/usr/bin/env python3
"""Write the seed corpus of every fuzz target under fuzz/corpus/<target>/ (stdlib only).

The seeds are what the official SDKs put on the wire (posthog-python, posthog-node, posthog-js;
see tests/sdk/ and tests/fixtures/capture/), the events of the SDK scenario, the log records of
tests/fixtures/log-format-v1.bin and a manifest written by `idstitch snapshot create`.
The fuzzer adds what it finds on top (`cargo fuzz cmin` keeps the corpus small). Seeds are
named `seed-*`, so rerunning this script rewrites them and leaves the fuzzer's files alone.

Input format of capture_decode (fuzz/src/lib.rs): the body, optionally after a first line
`>CONTENT-ENCODING|CONTENT-TYPE|QUERY|BEARER`.
"""
import base64
import gzip
import json
import os
import struct
import urllib.parse
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
T = "phc_fixture"
TS = "2026-01-01T00:00:00.000Z"


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def js(v):
    return json.dumps(v, separators=(",", ":"), ensure_ascii=False).encode()


def gz(b):
    return gzip.compress(b, compresslevel=6, mtime=0)


def uuid(n):
    return "0195f3a0-0000-7000-8000-%012d" % n


def fixture(name):
    with open(os.path.join(ROOT, "tests", "fixtures", "capture", name), "rb") as f:
        return f.read()


# Events as each SDK shapes them.
def python_event(event, did, props, n, **top):
    props = dict(props, **{"$lib": "posthog-python", "$lib_version": "7.91.1"})
    return dict(event=event, distinct_id=did, properties=props, timestamp=TS, uuid=uuid(n),
                type="capture", **top)


def node_event(event, did, props, n, **top):
    props = dict(props, **{"$lib": "posthog-node", "$lib_version": "5.70.0"})
    return dict(distinct_id=did, event=event, properties=props, type="capture",
                library="posthog-node", library_version="5.70.0", timestamp=TS, uuid=uuid(n), **top)


def js_event(event, did, props, n, **top):
    base = {"token": T, "distinct_id": did, "$device_id": "019b7a3c-device", "$lib": "web",
            "$lib_version": "1.449.2", "$current_url": "https://shop.example/landing?q=a+b&x=\u00fc",
            "$pathname": "/landing", "$browser": "Chrome", "$os": "Linux",
            "$session_id": "019b7a3c-session", "$window_id": "019b7a3c-window"}
    return dict(uuid=uuid(n), event=event, properties=dict(base, **props), timestamp=TS, **top)


SCENARIO = [
    ("$pageview", "anon-1", {"$current_url": "https://shop.example/landing", "$pathname": "/landing",
                             "$set": {"plan": "free"}, "$set_once": {"first_seen": "landing"}}, {}),
    ("$set", "anon-1", {"$set": {"plan": "trial", "color": "red"}}, {}),
    ("$identify", "user-1", {"$anon_distinct_id": "anon-1"},
     {"$set": {"email": "max@hedgehogmail.com", "name": "Max Hedgehog"},
      "$set_once": {"signup_date": "2024-01-01"}}),
    ("$set", "user-1", {"$unset": ["color"]}, {}),
    ("purchase", "user-1", {"amount": 12.5, "items": [1, 2, {"sku": "x"}]}, {}),
    ("$groupidentify", "user-1", {"$group_type": "company", "$group_key": "acme",
                                  "$group_set": {"name": "Acme", "employees": 12}}, {}),
    ("$create_alias", "user-2", {"alias": "anon-2"}, {}),
    ("$merge_dangerously", "user-3", {"alias": "user-4", "$set": {"merged": True}}, {}),
    ("$identify", "user-5", {"$anon_distinct_id": "null"}, {}),
    ("captured", "019b7a3c-personless", {"$process_person_profile": False}, {}),
    ("clicked", "anon-11", {"$process_person_profile": "false"}, {}),
]


def capture_seeds():
    python = fixture("posthog_python_batch.json")
    write("capture_decode", "python-batch", python)
    write("capture_decode", "python-batch-gzip", b">gzip|application/json||\n" + gz(python))
    events = [python_event(e, d, p, i, **top) for i, (e, d, p, top) in enumerate(SCENARIO)]
    batch = js({"api_key": T, "batch": events, "historical_migration": False, "sent_at": TS})
    write("capture_decode", "python-scenario", batch)
    v1 = [dict(python_event(e, d, p, 100 + i), options={"process_person_profile": i % 2 == 0})
          for i, (e, d, p, _) in enumerate(SCENARIO[:4])]
    v1 = js({"created_at": TS, "batch": v1})
    write("capture_decode", "python-v1", b">|application/json||" + T.encode() + b"\n" + v1)
    write("capture_decode", "python-v1-gzip", b">gzip|application/json||" + T.encode() + b"\n" + gz(v1))
    node = [node_event(e, d, p, 200 + i, **top) for i, (e, d, p, top) in enumerate(SCENARIO)]
    node = js({"api_key": "phc_node", "batch": node, "sent_at": TS})
    write("capture_decode", "node-batch-gzip", b">gzip|application/json||\n" + gz(node))
    write("capture_decode", "node-batch-plain", b">|application/json||\n" + node)
    web = [js_event(e, d, p, 300 + i, **top) for i, (e, d, p, top) in enumerate(SCENARIO[:6])]
    query = "ip=0&_=1767225600000&ver=1.449.2"
    write("capture_decode", "js-gzip-magic", (">|text/plain|%s|\n" % query).encode() + gz(js(web)))
    write("capture_decode", "js-gzip-js-query",
          (">|text/plain|compression=gzip-js&%s|\n" % query).encode() + gz(js(web)))
    write("capture_decode", "js-base64-form",
          b">|application/x-www-form-urlencoded|compression=base64|\n"
          + fixture("posthog_js_base64_form.txt"))
    form = "data=" + urllib.parse.quote(base64.b64encode(js(web[:2])).decode(), safe="")
    write("capture_decode", "js-base64-form-by-query", (">||compression=base64&%s|\n" % query) + form)
    form = "data=" + urllib.parse.quote(base64.b64encode(gz(js(web[:2]))).decode(), safe="")
    write("capture_decode", "js-base64-form-gzip", ">|application/x-www-form-urlencoded||\n" + form)
    write("capture_decode", "js-single-event", b">|application/json||\n" + js(web[0]))
    write("capture_decode", "js-array", js(web[:3]))
    raw = js({"api_key": T, "batch": events[:2]})
    write("capture_decode", "deflate-zlib", b">deflate|||\n" + zlib.compress(raw))
    co = zlib.compressobj(wbits=-15)
    write("capture_decode", "deflate-raw", b">deflate|||\n" + co.compress(raw) + co.flush())
    write("capture_decode", "identity-gzip", b">identity, x-gzip|||\n" + gz(raw))
    write("capture_decode", "empty-batch", js({"api_key": T, "batch": []}))
    write("capture_decode", "too-many-events", js([{"event": "e", "distinct_id": "x"}] * 101))
    nested = "[" * 20 + "1" + "]" * 20
    write("capture_decode", "too-deep", '[{"event":"e","distinct_id":"x","properties":{"p":%s}}]' % nested)
    write("capture_decode", "bom-envelope", b"\xef\xbb\xbf" + raw)


def normalize_seeds():
    for i, (e, d, p, top) in enumerate(SCENARIO):
        write("normalize_decide", "scenario-%02d" % i, js(python_event(e, d, p, i, **top)))
    for i, (e, d, p, top) in enumerate(SCENARIO[:3]):
        write("normalize_decide", "js-%02d" % i, js(js_event(e, d, p, 50 + i, **top)))
    odd = {
        "numeric-distinct-id": {"event": "e", "distinct_id": 12345.5, "properties": {}},
        "bool-distinct-id": {"event": "e", "distinct_id": True},
        "nested-distinct-id": {"event": "e", "properties": {"distinct_id": "nested-id", "token": T}},
        "illegal-distinct-id": {"event": "$identify", "distinct_id": "anonymous",
                                "properties": {"$anon_distinct_id": "0"}},
        "long-distinct-id": {"event": "e" * 250, "distinct_id": "\u00e9" * 250},
        "nul-chars": {"event": "e\u0000", "distinct_id": "a\u0000b",
                      "properties": {"k": ["x\u0000", {"y": "\u0000"}]}},
        "naive-timestamp": {"event": "e", "distinct_id": "t", "timestamp": "2026-01-01T00:00:00.5"},
        "bad-timestamp": {"event": "e", "distinct_id": "t", "timestamp": "yesterday"},
        "unset-object": {"event": "$set", "distinct_id": "u",
                         "properties": {"$unset": {"a": 1}, "$set_once": {"b": 2}}, "$set": {"c": 3}},
        "exception": {"event": "$exception", "distinct_id": "u", "$set": {"x": 1}},
        "snapshot": {"event": "$snapshot", "distinct_id": "u", "properties": {"$browser": "Firefox"}},
        "personless-identify": {"event": "$identify", "distinct_id": "u",
                                "properties": {"$process_person_profile": False,
                                               "$anon_distinct_id": "a"}},
        "alias-to-self": {"event": "$create_alias", "distinct_id": "u", "properties": {"alias": "u"}},
        "merge-number-alias": {"event": "$merge_dangerously", "distinct_id": "u",
                               "properties": {"alias": 7}},
        "big-numbers": {"event": "e", "distinct_id": "n",
                        "$set": {"a": 18446744073709551615, "b": -9223372036854775808,
                                 "c": 1.7976931348623157e308, "d": 5e-324, "e": -0.0}},
    }
    for name, ev in odd.items():
        write("normalize_decide", name, js(ev))


def log_entry_seeds():
    with open(os.path.join(ROOT, "tests", "fixtures", "log-format-v1.bin"), "rb") as f:
        data = f.read()
    i = n = 0
    while i < len(data):
        (size,) = struct.unpack_from("<I", data, i)
        write("log_entry", "v1-%02d" % n, data[i + 4:i + 4 + size])
        i, n = i + 4 + size, n + 1


MANIFEST = {
    "format": 1, "log_format": 1, "idstitch_version": "0.1.0", "last_seq": 6,
    "created_at": "2026-01-01T00:00:00.000Z",
    "counts": {"projects": 1, "persons": 1, "distinct_ids": 2, "events": 5, "log_entries": 6},
    "files": [
        {"name": "000008.sst", "size": 2124,
         "sha256": "766f3f04e1b5b468d206a698fee8f5f2794eabef40947fa8b1c46cc76bf91f3b"},
        {"name": "000019.log", "size": 0,
         "sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
        {"name": "CURRENT", "size": 16,
         "sha256": "01bd196d6a114691ec642082ebf6591765c0168d4098a0cd834869bd11c8b87d"},
        {"name": "MANIFEST-000020", "size": 2348,
         "sha256": "3b5d678b2293a98249bf1d3a1de1866a4ab38003428b5200d9998610296f0969"},
        {"name": "OPTIONS-000022", "size": 77565,
         "sha256": "c7a5d657a3c01f87d31209ff60dc6b1607dee5216c672ae820a7782fc820db2c"},
    ],
}


def manifest_seeds():
    write("snapshot_manifest", "pretty", json.dumps(MANIFEST, indent=2))
    write("snapshot_manifest", "compact", js(dict(MANIFEST, files=[])))


if __name__ == "__main__":
    capture_seeds()
    normalize_seeds()
    log_entry_seeds()
    manifest_seeds()
