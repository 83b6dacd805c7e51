"""Property tests (hypothesis) of the Python validators, mirroring the TypeScript fast-check
properties (packages/protocol/src/*.fuzz.test.ts): the function payload codec, the sealed result
file, the wrapper's request header, the daemon answer decoder and schema checks, ids, names and
the paths the client builds."""

from __future__ import annotations

import atexit
import hashlib
import hmac
import json
import math
import os
import re
import shutil
import tempfile
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import pytest

hypothesis = pytest.importorskip("hypothesis", reason="python3-hypothesis is not installed (scripts/setup.sh and .ci/run install it)")
from hypothesis import HealthCheck, assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.configuration import set_hypothesis_home_dir  # noqa: E402

from mvm import InvalidArgumentError, SecretRef, TransportError  # noqa: E402
from mvm import _check, _schemas  # noqa: E402
from mvm import _fn_wrapper as codec  # noqa: E402
from mvm._http import parse_json, sandbox_path, validate  # noqa: E402
from mvm.client import _files, _ref  # noqa: E402
from mvm.functions import _read_result, looks_secret_name  # noqa: E402
from mvm.policy import _port  # noqa: E402

# No example database, and hypothesis's own cache (its Unicode tables) in a temporary directory
# removed at exit: the tests leave nothing in the tree. A failure prints its example.
_HOME = tempfile.mkdtemp(prefix="mvm-hypothesis-")
atexit.register(shutil.rmtree, _HOME, True)
set_hypothesis_home_dir(_HOME)
settings.register_profile("mvm", database=None, deadline=None, max_examples=100, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("mvm")

FAULTS = {"too-large", "depth", "duplicate-key", "proto-key", "non-finite", "type", "syntax"}
MAX_SAFE = 2**53 - 1
LIMIT = 1 << 20

key = st.text(max_size=8).filter(lambda k: k != "__proto__")
safe_int = st.integers(-MAX_SAFE, MAX_SAFE)
leaf = st.none() | st.booleans() | safe_int | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12)
data = st.recursive(leaf, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(key, inner, max_size=4), max_leaves=20)
with_bytes = st.recursive(leaf | st.binary(max_size=16), lambda inner: st.lists(inner, max_size=4) | st.dictionaries(key, inner, max_size=4), max_leaves=20)
call = st.tuples(st.lists(data, max_size=4), st.dictionaries(key, data, max_size=3)).map(lambda t: [t[0], t[1]])


def depth_of(v: Any) -> int:
    if isinstance(v, list):
        return 1 + max((depth_of(x) for x in v), default=0)
    if isinstance(v, dict):
        return 1 + max((depth_of(x) for x in v.values()), default=0)
    return 0


def nest(n: int, kinds: list[bool]) -> Any:
    """A value nested ``n`` containers deep, lists or maps as ``kinds`` says."""
    v: Any = 1
    for i in range(n):
        v = {"k": v} if kinds[i % len(kinds)] else [v]
    return v


# --- the payload codec (fn-codec.fuzz.test.ts) ---------------------------------------------------
@given(call)
def test_json_round_trips_plain_data(v: Any) -> None:
    assert codec.decode_value(codec.encode_value(v, "json", LIMIT, 64), "json", LIMIT, 64) == v


@given(st.tuples(st.lists(with_bytes, max_size=4), st.dictionaries(key, with_bytes, max_size=3)).map(list))
def test_msgpack_round_trips_plain_data_and_bytes(v: Any) -> None:
    pytest.importorskip("msgpack", reason="python3-msgpack is not installed (scripts/setup.sh installs it)")
    assert codec.decode_value(codec.encode_value(v, "msgpack", LIMIT, 64), "msgpack", LIMIT, 64) == v


@settings(max_examples=1000)
@given(st.binary(max_size=64), st.sampled_from(["json", "msgpack"]))
def test_arbitrary_bytes_are_decoded_or_refused_with_a_codec_error(b: bytes, fmt: str) -> None:
    if fmt == "msgpack":
        pytest.importorskip("msgpack", reason="python3-msgpack is not installed")
    try:
        codec.decode_value(b, fmt, LIMIT, 64)
    except codec.CodecError as e:
        assert e.kind in FAULTS


@given(st.integers(1, 40), st.integers(2, 32), st.lists(st.booleans(), min_size=1, max_size=4))
def test_nesting_is_accepted_exactly_up_to_the_depth_limit(n: int, max_depth: int, kinds: list[bool]) -> None:
    v = nest(n, kinds)
    text = json.dumps(v).encode()
    if n <= max_depth:
        assert codec.decode_value(text, "json", LIMIT, max_depth) == v
        assert codec.encode_value(v, "json", LIMIT, max_depth) == json.dumps(v, separators=(",", ":")).encode()
    else:
        for attempt in (lambda: codec.decode_value(text, "json", LIMIT, max_depth), lambda: codec.encode_value(v, "json", LIMIT, max_depth)):
            with pytest.raises(codec.CodecError) as e:
                attempt()
            assert e.value.kind == "depth"


@given(data, st.sampled_from([math.nan, math.inf, -math.inf]), st.data())
def test_non_finite_numbers_anywhere_are_refused(v: Any, bad: float, draw: st.DataObject) -> None:
    # Put the bad number into a random container of v (or make it the value).
    containers = [c for c in walk(v) if isinstance(c, (list, dict))]
    if containers:
        c = draw.draw(st.sampled_from(containers))
        if isinstance(c, list):
            c.append(bad)
        else:
            c["bad"] = bad
    else:
        v = bad
    with pytest.raises(codec.CodecError) as e:
        codec.encode_value(v, "json", LIMIT, 64)
    assert e.value.kind == "non-finite"


@given(st.sampled_from(["1e400", "-1e400", "1E999", "-9.9e999"]), st.integers(0, 5))
def test_json_literals_that_overflow_to_infinity_are_refused(literal: str, depth: int) -> None:
    with pytest.raises(codec.CodecError) as e:
        codec.decode_value(("[" * depth + literal + "]" * depth).encode(), "json", LIMIT, 64)
    assert e.value.kind == "non-finite"


@given(st.integers(-(2**70), 2**70))
def test_integers_are_accepted_exactly_within_2_to_the_53_minus_1(n: int) -> None:
    ok = abs(n) <= MAX_SAFE
    for attempt in (lambda: codec.encode_value([n], "json", LIMIT, 64), lambda: codec.decode_value(f"[{n}]".encode(), "json", LIMIT, 64)):
        if ok:
            attempt()
        else:
            with pytest.raises(codec.CodecError):
                attempt()


def escaped(k: str, draw: st.DataObject) -> str:
    """``k`` as a JSON string, some characters written as \\u escapes."""
    out = []
    for ch in k:
        out.append(f"\\u{ord(ch):04x}" if ord(ch) < 0x10000 and draw.draw(st.booleans()) else json.dumps(ch)[1:-1])
    return '"' + "".join(out) + '"'


@given(key, data, data, st.integers(0, 5), st.data())
def test_a_key_twice_in_one_map_is_refused_at_any_depth_however_spelled(k: str, a: Any, b: Any, depth: int, draw: st.DataObject) -> None:
    doc = "{" + escaped(k, draw) + ":" + json.dumps(a) + "," + escaped(k, draw) + ":" + json.dumps(b) + "}"
    text = "[" * depth + doc + "]" * depth
    with pytest.raises(codec.CodecError) as e:
        codec.decode_value(text.encode(), "json", LIMIT, 64)
    assert e.value.kind == "duplicate-key"


@given(data, st.integers(0, 5), st.data())
def test_a_proto_key_is_refused_at_any_depth_however_spelled(v: Any, depth: int, draw: st.DataObject) -> None:
    text = "[" * depth + "{" + escaped("__proto__", draw) + ":" + json.dumps(v) + "}" + "]" * depth
    with pytest.raises(codec.CodecError) as e:
        codec.decode_value(text.encode(), "json", LIMIT, 64)
    assert e.value.kind == "proto-key"


@given(call, st.integers(1, 400))
def test_size_limits_hold_on_both_sides(v: Any, cap: int) -> None:
    size = len(json.dumps(v, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode())
    if size <= cap:
        data = codec.encode_value(v, "json", cap, 64)
        assert len(data) == size and codec.decode_value(data, "json", cap, 64) == v
    else:
        with pytest.raises(codec.CodecError) as e:
            codec.encode_value(v, "json", cap, 64)
        assert e.value.kind == "too-large"
        with pytest.raises(codec.CodecError) as e:
            codec.decode_value(b" " * (cap + 1), "json", cap, 64)
        assert e.value.kind == "too-large"


def walk(v: Any) -> list[Any]:
    out = [v]
    if isinstance(v, list):
        for x in v:
            out += walk(x)
    elif isinstance(v, dict):
        for x in v.values():
            out += walk(x)
    return out


# --- the sealed result file (fn.test.ts decodeFnResultFile) -------------------------------------
def sealed(key: str, header: dict[str, Any], body: bytes) -> bytes:
    line = json.dumps(header, separators=(",", ":")).encode()
    seal = hmac.new(bytes.fromhex(key), line + b"\n" + body, hashlib.sha256).hexdigest().encode()
    return codec.MAGIC + b"\n" + seal + b"\n" + line + b"\n" + body


@given(call, st.binary(min_size=32, max_size=32).map(bytes.hex), st.data())
def test_a_sealed_result_reads_back_and_any_changed_byte_is_refused(v: Any, key: str, draw: st.DataObject) -> None:
    body = codec.encode_value(v, "json", LIMIT, 64)
    file = sealed(key, {"v": 1, "status": "ok", "id": "f", "format": "json", "resultBytes": len(body)}, body)
    h, got = _read_result("f", key, file)
    assert h["status"] == "ok" and got == body
    i = draw.draw(st.integers(0, len(file) - 1))
    flip = draw.draw(st.integers(1, 255))
    changed = file[:i] + bytes([file[i] ^ flip]) + file[i + 1 :]
    with pytest.raises(TransportError):
        _read_result("f", key, changed)
    with pytest.raises(TransportError):
        _read_result("f", "ab" * 32 if key != "ab" * 32 else "cd" * 32, file)


@settings(max_examples=1000)
@given(st.binary(max_size=256), st.binary(min_size=32, max_size=32).map(bytes.hex))
def test_arbitrary_result_files_are_refused_with_a_transport_error(b: bytes, key: str) -> None:
    with pytest.raises(TransportError):
        _read_result("f", key, codec.MAGIC + b"\n" + b)


# --- the wrapper's request header ----------------------------------------------------------------
json_value = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                          lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=10)


def valid_header() -> dict[str, Any]:
    return {"v": 1, "id": "f", "format": "json", "mode": "production", "key": "a" * 64, "resultPath": "/tmp/r",
            "codeBytes": 1, "codeSha256": "b" * 64, "exportName": "f",
            "limits": {"maxInputBytes": 1024, "maxOutputBytes": 1024, "maxDepth": 8, "invokeTimeoutMs": 1000,
                       "sessionStartTimeoutMs": 1000, "sessionStopTimeoutMs": 1000}}


@given(st.binary(max_size=200) | json_value.map(lambda v: json.dumps(v).encode()))
def test_the_request_header_is_parsed_or_refused(line: bytes) -> None:
    try:
        codec.parse_header(line)
    except codec.Refused as e:
        assert e.kind == "bad-request"


knob_text = st.text(alphabet="0123456789\u00b2\u0663\uff11 -+x", max_size=6) | st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=6)


@given(st.sampled_from(sorted(valid_header())), json_value)
def test_a_header_with_any_field_replaced_is_parsed_or_refused(field: str, value: Any) -> None:
    h = valid_header()
    h[field] = value
    try:
        out = codec.parse_header(json.dumps(h).encode())
    except codec.Refused:
        return
    assert all(codec.MINIMA.get(k, 1) <= v <= codec.CEILINGS[k] for k, v in out["limits"].items())


@given(st.sampled_from(sorted(codec.LIMIT_ENV)), knob_text)
def test_a_limit_knob_only_lowers_a_limit_and_a_malformed_one_refuses_the_call(knob: str, env: str) -> None:
    name, factor = codec.LIMIT_ENV[knob]
    old = os.environ.get(name)
    os.environ[name] = env
    given_limits = valid_header()["limits"]
    try:
        out = codec.parse_header(json.dumps(valid_header()).encode())["limits"]
    except codec.Refused as e:
        assert e.kind == "bad-request"
        out = None
    finally:
        if old is None:
            del os.environ[name]
        else:
            os.environ[name] = old
    well_formed = re.fullmatch(r"[1-9][0-9]{0,11}", env) is not None and codec.MINIMA.get(knob, 1) <= int(env) * factor <= codec.CEILINGS[knob]
    if env == "":
        assert out is not None and out == given_limits
    elif well_formed:
        assert out is not None and out[knob] == min(given_limits[knob], int(env) * factor)
    else:
        assert out is None, f"{name}={env!r} was accepted"


# --- the daemon's answers (sdk hostile-daemon tests) ---------------------------------------------
SCHEMAS = {name: v for name, v in vars(_schemas).items() if callable(v) and not name.startswith("_") and name[0].islower()
           and name not in ("obj", "string", "integer", "number", "boolean", "one_of", "nullable", "array", "record", "tagged", "any_of", "progress_line")}


@settings(max_examples=1000)
@given(st.binary(max_size=128))
def test_answer_bodies_are_decoded_or_refused_with_a_transport_error(b: bytes) -> None:
    try:
        parse_json(b, "test")
    except TransportError:
        pass


@given(st.sampled_from(sorted(SCHEMAS)), json_value)
def test_every_answer_schema_accepts_or_refuses_any_value_with_a_transport_error(name: str, value: Any) -> None:
    try:
        validate(SCHEMAS[name], value, "test")
    except TransportError:
        pass


@given(st.dictionaries(st.text(max_size=8), json_value, max_size=4))
def test_objects_keep_the_fields_they_know_and_drop_the_rest(extra: dict[str, Any]) -> None:
    schema = _check.obj({"a": _check.integer(0, 10)}, {"b": _check.string(4)})
    value = {**extra, "a": 3}
    out = schema(value, "")
    assert set(out) <= {"a", "b"} and out["a"] == 3


@given(json_value, st.integers(0, 8), st.integers(0, 8))
def test_string_bounds(v: Any, lo: int, hi: int) -> None:
    ok = isinstance(v, str) and lo <= len(v) <= hi
    try:
        assert _check.string(hi, min_len=lo)(v, "") == v and ok
    except _check.Invalid:
        assert not ok


@given(json_value, st.integers(-5, 5), st.integers(-5, 5))
def test_integer_bounds(v: Any, lo: int, hi: int) -> None:
    is_int = (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer() and abs(v) <= 2**53)
    ok = is_int and lo <= v <= hi
    try:
        assert _check.integer(lo, hi)(v, "") == v and ok
    except _check.Invalid:
        assert not ok


@given(st.lists(st.integers(), max_size=6), st.integers(0, 4))
def test_array_bounds(v: list[int], most: int) -> None:
    try:
        _check.array(_check.integer(), most)(v, "")
        assert len(v) <= most
    except _check.Invalid:
        assert len(v) > most


# --- ids, names and paths ------------------------------------------------------------------------
alphabet = st.sampled_from(list("abcz019-_.AZ /?#%\n\u00e4\u0131"))
name_text = st.lists(alphabet, max_size=140).map("".join) | st.text(max_size=8)


@given(name_text)
def test_function_ids(s: str) -> None:
    oracle = 1 <= len(s) <= 63 and "a" <= s[0] <= "z" and all("a" <= c <= "z" or "0" <= c <= "9" or c == "-" for c in s)
    assert (codec.FUNCTION_ID.fullmatch(s) is not None) == oracle


@given(name_text)
def test_secret_store_names(s: str) -> None:
    def low(c: str) -> bool:
        return "a" <= c <= "z" or "0" <= c <= "9"

    oracle = 1 <= len(s) <= 128 and low(s[0]) and all(low(c) or c in "._-" for c in s)
    try:
        SecretRef(s)
        assert oracle
    except InvalidArgumentError:
        assert not oracle


@given(st.text(max_size=40))
def test_looks_secret_name_is_total(s: str) -> None:
    assert looks_secret_name(s) in (True, False)


@given(st.integers(-10, 70000) | st.booleans())
def test_ports(p: int) -> None:
    ok = not isinstance(p, bool) and 1 <= p <= 65535
    try:
        assert _port(p) == p and ok
    except InvalidArgumentError:
        assert not ok


@given(st.text(max_size=40), st.sampled_from(["read", "write", "list", "stat"]), st.dictionaries(st.sampled_from(["path", "to", "mode"]), st.text(max_size=40), max_size=3))
def test_request_paths_keep_every_value_in_its_own_segment_or_query_field(sandbox_id: str, leaf: str, query: dict[str, str]) -> None:
    assume("\0" not in sandbox_id)
    url = _files(sandbox_id, leaf, query)
    parts = urlsplit(url)
    assert not parts.scheme and not parts.netloc and not parts.fragment
    segments = parts.path.split("/")
    assert segments[:3] == ["", "v1", "sandboxes"] and segments[4:] == ["files", leaf] and unquote(segments[3]) == sandbox_id
    assert dict(parse_qsl(parts.query, keep_blank_values=True)) == query
    assert re.fullmatch(r"[\x21-\x7e]*", url), "no space, control or non-ASCII byte reaches the request line"
    assert sandbox_path(sandbox_id).count("/") == 3


@given(st.text(max_size=300))
def test_references_are_one_segment_or_refused(value: str) -> None:
    try:
        out = _ref(value)
    except InvalidArgumentError:
        assert not value or len(value) > 256
        return
    assert "/" not in out and "?" not in out and "#" not in out and unquote(out) == value
