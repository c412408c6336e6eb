"""A small reference model of shared/spec/identity.md, written from the spec alone.

The checkers feed it exactly the events an SDK put on the wire (in the order the daemon
received them) and compare the daemon's read API with the model's persons, events and
warnings. The flows also state the expected person structure by hand (which distinct IDs end up
together, who is identified) and check the model against that too, so a model bug shows up as a
failed self-check instead of hiding a daemon bug.

Not modelled (the flows never trigger them): the 512 KiB property limit, --merge-limit, the
conversion buffer, \\u0000 replacement inside nested property values.
"""
import copy
import math
import uuid as uuidlib
from datetime import datetime, timezone

PERSON_NAMESPACE = uuidlib.UUID("932979b4-65c3-4424-8467-0b66ec27bc22")

# §1.6
PROMOTED = (
    "$app_build $app_name $app_namespace $app_version $browser $browser_version $device_type "
    "$current_url $pathname $os $os_name $os_version $referring_domain $referrer $screen_height "
    "$screen_width $viewport_height $viewport_width $raw_user_agent utm_source utm_medium "
    "utm_campaign utm_content utm_name utm_term gclid gad_source gclsrc dclid gbraid wbraid fbclid "
    "msclkid twclid li_fat_id mc_cid igshid ttclid rdt_cid irclid _kx epik qclid sccid"
).split()

MERGE_EVENTS = ("$identify", "$create_alias", "$merge_dangerously")
PERSONLESS_FORBIDDEN = ("$identify", "$create_alias", "$merge_dangerously", "$groupidentify")
NO_PROPERTY_CHANGE = ("$exception", "$$heatmap", "$groupidentify")

# §4 illegal distinct IDs
JS_WHITESPACE = (
    "\t\u000b\u000c \u00a0\ufeff\u1680" + "".join(chr(c) for c in range(0x2000, 0x200B))
    + "\u202f\u205f\u3000\n\r\u2028\u2029"
)
ILLEGAL_CI = {"anonymous", "guest", "distinctid", "distinct_id", "id", "not_authenticated",
              "email", "undefined", "true", "false"}
ILLEGAL_CS = {"[object Object]", "NaN", "None", "none", "null", "0", "undefined"}


def _unwrap_variants(s):
    out = [s]
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "'\"":
        out.append(s[1:-1])
    return out


def is_illegal_id(s):
    if s.strip(JS_WHITESPACE) == "":
        return True
    if any(v in ILLEGAL_CI for v in _unwrap_variants(s.lower())):
        return True
    if any(v in ILLEGAL_CS for v in _unwrap_variants(s)):
        return True
    return len(s) > 400


def js_string(v):
    """JavaScript String(v) for JSON values."""
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, str):
        return v
    if isinstance(v, int):
        return str(v) if abs(v) < 10**21 else js_string(float(v))
    if isinstance(v, float):
        if math.isnan(v):
            return "NaN"
        if math.isinf(v):
            return "Infinity" if v > 0 else "-Infinity"
        if v == int(v) and abs(v) < 1e21:
            return str(int(v))
        r = repr(v)  # shortest round-trip, like JS; fix the exponent form
        if "e" in r:
            m, e = r.split("e")
            e = int(e)
            return "%se%s%d" % (m.rstrip("0").rstrip(".") if "." in m else m, "+" if e > 0 else "-", abs(e))
        return r
    if isinstance(v, list):
        return ",".join("" if x is None else js_string(x) for x in v)
    return "[object Object]"


def js_truthy(v):
    if v is None or v is False or v == "" :
        return False
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return not (v == 0 or (isinstance(v, float) and math.isnan(v)))
    return True


def person_uuid(project_id, distinct_id):
    return str(uuidlib.uuid5(PERSON_NAMESPACE, "%s:%s" % (project_id, distinct_id)))


def parse_ts(s):
    if s is None:
        return None
    if isinstance(s, (int, float)):
        return datetime.fromtimestamp(s / 1000.0, tz=timezone.utc)
    d = datetime.fromisoformat(s.replace("Z", "+00:00"))
    if d.tzinfo is None:
        d = d.replace(tzinfo=timezone.utc)
    return d


def normalize(ev):
    """§1: returns (distinct_id or None, name, props, set, set_once, unset_keys)."""
    props = ev.get("properties") or {}
    if not isinstance(props, dict):
        props = {}
    raw = ev["distinct_id"] if "distinct_id" in ev else props.get("distinct_id")
    if isinstance(raw, bool):
        did = "true" if raw else "false"
    elif isinstance(raw, (int, float)):
        did = js_string(raw)
    elif isinstance(raw, str) and raw != "":
        did = raw
    else:
        did = None
    if did is not None:
        did = did.replace("\u0000", "\ufffd")
    name = (ev.get("event") or "")[:200]
    s = dict(props.get("$set") or {}) if isinstance(props.get("$set"), dict) else {}
    so = dict(props.get("$set_once") or {}) if isinstance(props.get("$set_once"), dict) else {}
    if isinstance(ev.get("$set"), dict):
        s.update(ev["$set"])
    if isinstance(ev.get("$set_once"), dict):
        so.update(ev["$set_once"])
    u = props.get("$unset")
    if isinstance(u, list):
        unset = [k for k in u if isinstance(k, str)]
    elif isinstance(u, dict):
        unset = [k for k in u.keys() if isinstance(k, str)]
    else:
        unset = []
    if name not in ("$snapshot", "$performance_event"):
        for k in PROMOTED:
            if k in props:
                if k not in s:
                    s[k] = props[k]
                ik = "$initial_" + (k[1:] if k.startswith("$") else k)
                if ik not in so:
                    so[ik] = props[k]
    return did, name, props, s, so, unset


class Person:
    def __init__(self, uuid, ids, props, identified, created_at):
        self.uuid, self.ids, self.props = uuid, list(ids), props
        self.identified, self.created_at = identified, created_at
        # §5: +1 for every event that changes the person; counted from its creation (the spec
        # does not fix the first value, so the checks compare differences)
        self.version = 0

    def __repr__(self):
        return "Person(%s, ids=%s, identified=%s)" % (self.uuid, self.ids, self.identified)


class Model:
    def __init__(self, project_id):
        self.project_id = project_id
        self.persons = {}            # uuid -> Person
        self.by_id = {}              # distinct id -> person uuid
        self.accepted = set()        # event uuids accepted (§1.7)
        self.events = []             # (uuid, distinct_id, event name, personless)
        self.dropped = []            # (uuid, distinct_id, event name)
        self.rejected = []           # (index-less) raw events rejected at §1
        self.warnings = []           # {"type", "details"}
        self.seen_personless = set()
        self._rate_limited = set()

    # --- helpers ---
    def _warn(self, type_, details, limited_key=None):
        if limited_key is not None:
            k = (type_, limited_key)
            if k in self._rate_limited:
                return
            self._rate_limited.add(k)
        self.warnings.append({"type": type_, "details": details})

    def person_of(self, did):
        u = self.by_id.get(did)
        return self.persons.get(u) if u else None

    def _create(self, did, extra_ids, name, s, so, uuid, ts, identified):
        props = {} if name in NO_PROPERTY_CHANGE else {**so, **s}
        if uuid:
            props["$creator_event_uuid"] = uuid
        p = Person(person_uuid(self.project_id, did), [did] + list(extra_ids), props, identified, ts)
        self.persons[p.uuid] = p
        for i in p.ids:
            self.by_id[i] = p.uuid
        return p

    @staticmethod
    def _update(p, name, s, so, unset):
        """Apply §5 to p; True when the properties changed."""
        if name in NO_PROPERTY_CHANGE:
            return False
        before = dict(p.props)
        to_set = {k: v for k, v in so.items() if k not in before}
        for k, v in s.items():
            if k not in before or before[k] != v or type(before[k]) is not type(v):
                to_set[k] = v
        to_unset = [k for k in unset if k in before]
        p.props.update(to_set)
        for k in to_unset:
            p.props.pop(k, None)
        return bool(to_set or to_unset)

    @staticmethod
    def _identify(p):
        changed = not p.identified
        p.identified = True
        return changed

    def _ordinary(self, did, name, s, so, unset, uuid, ts):
        p = self.person_of(did)
        if p is None:
            self._create(did, [], name, s, so, uuid, ts, False)
        elif self._update(p, name, s, so, unset):
            p.version += 1

    # --- §1-§5 for one event ---
    def process(self, ev, ingest_ts=None):
        did, name, props, s, so, unset = normalize(ev)
        uuid = ev.get("uuid")
        ts = parse_ts(ev.get("timestamp")) or ingest_ts
        if did is None:
            self.rejected.append(ev)
            return "rejected"
        if len(did) > 200:
            orig = len(did)
            did = did[:200]
            self._warn("distinct_id_truncated", {"distinctId": did, "originalLength": orig}, did)
        if uuid and uuid in self.accepted:
            return "duplicate"
        ppp_present = "$process_person_profile" in props
        ppp = props.get("$process_person_profile")
        if ppp is False:
            if name in PERSONLESS_FORBIDDEN:
                self.dropped.append((uuid, did, name))
                self._warn("invalid_event_when_process_person_profile_is_false",
                           {"eventUuid": uuid, "event": name, "distinctId": did})
                return "dropped"
            if uuid:
                self.accepted.add(uuid)
            self.events.append((uuid, did, name, True))
            self.seen_personless.add(did)
            return "personless"
        if ppp_present and not isinstance(ppp, bool):
            self._warn("invalid_process_person_profile",
                       {"eventUuid": uuid, "event": name, "distinctId": did,
                        "$process_person_profile": ppp}, did)
        if uuid:
            self.accepted.add(uuid)
        self.events.append((uuid, did, name, False))

        other = None
        if name == "$identify" and "$anon_distinct_id" in props:
            other = js_string(props["$anon_distinct_id"])
        elif name in ("$create_alias", "$merge_dangerously") and js_truthy(props.get("alias")):
            other = js_string(props["alias"])
        if other is None:
            self._ordinary(did, name, s, so, unset, uuid, ts)
            return "ordinary"
        return self._merge(other, did, name, s, so, unset, uuid, ts)

    def _merge(self, other, into, name, s, so, unset, uuid, ts):
        if other == into:
            self._ordinary(into, name, s, so, unset, uuid, ts)
            return "same-id"
        if is_illegal_id(into) or is_illegal_id(other):
            bad, good = (into, other) if is_illegal_id(into) else (other, into)
            self._warn("cannot_merge_with_illegal_distinct_id",
                       {"illegalDistinctId": bad, "otherDistinctId": good, "eventUuid": uuid})
            self._ordinary(into, name, s, so, unset, uuid, ts)
            return "illegal"
        po, pi = self.person_of(other), self.person_of(into)
        if po is None and pi is None:
            self._create(into, [other], name, s, so, uuid, ts, True)
            return "created-both"
        if po is None or pi is None:
            p = po or pi
            missing = into if pi is None else other
            p.ids.append(missing)
            self.by_id[missing] = p.uuid
            self._update(p, name, s, so, unset)
            self._identify(p)
            p.version += 1
            return "attached"
        if po is pi:
            if self._update(pi, name, s, so, unset) | self._identify(pi):
                pi.version += 1
            return "same-person"
        if name != "$merge_dangerously" and po.identified:
            self._warn("cannot_merge_already_identified",
                       {"sourcePersonDistinctId": other, "targetPersonDistinctId": into,
                        "eventUuid": uuid})
            if self._update(pi, name, s, so, unset) | self._identify(pi):
                pi.version += 1
            return "refused"
        pi.props = {**po.props, **pi.props}
        self._update(pi, name, s, so, unset)
        if po.created_at and pi.created_at:
            pi.created_at = min(po.created_at, pi.created_at)
        else:
            pi.created_at = po.created_at or pi.created_at
        pi.identified = True
        pi.version += 1
        for i in po.ids:
            pi.ids.append(i)
            self.by_id[i] = pi.uuid
        del self.persons[po.uuid]
        return "merged"

    # --- views ---
    def events_of_person(self, p):
        ids = set(p.ids)
        return {u for (u, d, _n, _pl) in self.events if d in ids}

    def events_of_distinct_id(self, did):
        return {u for (u, d, _n, _pl) in self.events if d == did}

    def snapshot(self):
        return copy.deepcopy(self.persons)
