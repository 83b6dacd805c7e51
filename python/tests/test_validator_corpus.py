"""The cross-language corpus (packages/protocol/testdata/validator-corpus.json): the inputs the
TypeScript suite (packages/protocol/src/validator-corpus.test.ts) also runs, each accepted or
refused, with the same fault, by the Python validators."""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import ROOT

from mvm import InvalidArgumentError, SecretRef
from mvm import _fn_wrapper as codec
from mvm.functions import looks_secret_name

CORPUS: dict[str, Any] = json.loads((ROOT / "packages" / "protocol" / "testdata" / "validator-corpus.json").read_text(encoding="utf-8"))


def expected(entry: dict[str, Any]) -> bool:
    accept = entry["accept"]
    return bool(accept["python"]) if isinstance(accept, dict) else bool(accept)


@pytest.mark.parametrize("entry", CORPUS["fnPayload"], ids=lambda e: f'{e["format"]}: {e["name"]}')
def test_payload_decoder(entry: dict[str, Any]) -> None:
    if entry["format"] == "msgpack":
        pytest.importorskip("msgpack", reason="python3-msgpack is not installed (scripts/setup.sh installs it)")
    data = entry["text"].encode("utf-8") if "text" in entry else bytes.fromhex(entry["hex"])
    try:
        codec.decode_value(data, entry["format"], entry["maxBytes"], entry["maxDepth"])
    except codec.CodecError as e:
        assert not expected(entry), f"refused ({e.kind}): {e}"
        if "fault" in entry:
            assert e.kind == entry["fault"], str(e)
    else:
        assert expected(entry), "accepted"


def test_the_corpus_covers_every_fault_and_both_formats() -> None:
    faults = {e.get("fault") for e in CORPUS["fnPayload"]}
    assert {"too-large", "depth", "duplicate-key", "proto-key", "non-finite", "type", "syntax"} <= faults
    assert {e["format"] for e in CORPUS["fnPayload"]} == {"json", "msgpack"}


@pytest.mark.parametrize("entry", CORPUS["functionId"], ids=lambda e: repr(e["value"]))
def test_function_id(entry: dict[str, Any]) -> None:
    assert (codec.FUNCTION_ID.fullmatch(entry["value"]) is not None) == entry["accept"]


@pytest.mark.parametrize("entry", CORPUS["secretStoreName"], ids=lambda e: repr(e["value"]))
def test_secret_store_name(entry: dict[str, Any]) -> None:
    try:
        SecretRef(entry["value"])
    except InvalidArgumentError:
        assert not entry["accept"]
    else:
        assert entry["accept"]


@pytest.mark.parametrize("entry", CORPUS["envName"], ids=lambda e: repr(e["value"]))
def test_env_secret_name(entry: dict[str, Any]) -> None:
    try:
        SecretRef.from_env(entry["value"])
    except InvalidArgumentError:
        assert not entry["accept"]
    else:
        assert entry["accept"]


@pytest.mark.parametrize("entry", CORPUS["looksSecretName"], ids=lambda e: repr(e["value"]))
def test_looks_secret_name(entry: dict[str, Any]) -> None:
    assert looks_secret_name(entry["value"]) == entry["secret"]


@pytest.mark.parametrize("entry", CORPUS["secretFilePath"], ids=lambda e: repr(e["value"][:32]))
def test_secret_file_path(entry: dict[str, Any]) -> None:
    try:
        SecretRef.from_file(entry["value"])
    except InvalidArgumentError:
        assert not entry["accept"]
    else:
        assert entry["accept"]
