#!/usr/bin/env python3
"""Onboarding-flow events for the insights benchmark: NDJSON on stdout, TARGET events in all."""
import json, random, sys
random.seed(8)
TARGET = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
out = sys.stdout
n = 0
def emit(name, did, ms, props=None, **top):
    global n
    e = {"event": name, "distinct_id": did, "api_key": "phc_bench",
         "timestamp": f"{ms//1000}", "properties": props or {}}
    # RFC 3339 timestamp
    import datetime
    e["timestamp"] = datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).isoformat()
    e.update(top)
    out.write(json.dumps(e, separators=(",", ":")) + "\n")
    n += 1
v = 0
while n < TARGET:
    v += 1
    anon = f"anon-{v}"
    t = T0 + random.randrange(30 * 86_400_000)
    for _ in range(random.randint(1, 8)):
        t += random.randrange(5_000, 120_000)
        emit("$pageview", anon, t, {"$device_id": anon, "$current_url": "https://shop.example/"})
    if random.random() < 0.4:
        user = f"user-{v}"
        email = f"u{v}@ourcompany.com" if random.random() < 0.05 else f"u{v}@hedgehogmail.com"
        t += 10_000
        emit("$identify", user, t, {"$anon_distinct_id": anon}, **{"$set": {"email": email}})
        t += 5_000
        emit("signed_up", user, t, {"$lib": "posthog-python"})
        if random.random() < 0.15:
            phone = f"anon-{v}-phone"
            t += 3_600_000
            emit("$pageview", phone, t, {"$device_id": phone})
            emit("$identify", user, t + 1000, {"$anon_distinct_id": phone})
        if random.random() < 0.5:
            t += random.randrange(60_000, 3 * 86_400_000)
            emit("created_project", user, t)
sys.stderr.write(f"{n} events, {v} visitors\n")
