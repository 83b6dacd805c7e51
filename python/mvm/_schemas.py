"""Validators of the daemon's answers, written from packages/protocol's schemas (docs/openapi.json)."""

from __future__ import annotations

from typing import Any

from ._check import (
    Validator,
    any_of,
    array,
    boolean,
    integer,
    nullable,
    number,
    obj,
    one_of,
    record,
    string,
    tagged,
)

ERROR_CODES = (
    "POLICY_DENIED",
    "ADMISSION_FAILED",
    "COMMAND_EXIT",
    "TIMEOUT",
    "TRANSPORT",
    "CLEANUP_FAILED",
    "SNAPSHOT_MISMATCH",
    "SANDBOX_CRASHED",
    "SANDBOX_PAUSED",
    "UNSUPPORTED_CAPABILITY",
    "NOT_FOUND",
    "INVALID_ARGUMENT",
    "PERMISSION_DENIED",
    "ALREADY_EXISTS",
    "ABORTED",
    "INTERNAL",
    "FUNCTION_FAILED",
)

SANDBOX_ID = r"sbx_[a-z2-7]{20}"
SNAPSHOT_ID = r"snap_[a-z2-7]{20}"
SHA256 = r"sha256:[0-9a-f]{64}"
AUDIT_ENTRY = r"aud_[1-9][0-9]{0,15}_[0-9a-f]{16}"
MAX_SAFE = 2**53 - 1

time = string(64)
digest = string(71, pattern=SHA256)
backend = one_of("namespace", "vm")
tier = one_of("container", "vm-hardware", "vm-emulated")
port = integer(1, 65535)
count = integer(0, MAX_SAFE)
labels = record(string(64), string(256))

error_body: Validator[dict[str, Any]] = obj(
    {"code": string(64), "message": string(8192)},
    {"hint": string(4096), "details": lambda v, _: v},
)
api_error = obj({"error": error_body})
stream_error: Validator[dict[str, Any]] = obj({"error": obj({"code": string(64), "message": string(8192)}, {"hint": string(4096)})})

receipt_ref = obj({"planId": digest, "auditEntryId": string(64, pattern=AUDIT_ENTRY)})

host_pattern = string(253)
network_rule = tagged(
    "kind",
    {
        "https": obj({"host": host_pattern}),
        "http": obj({"host": host_pattern}),
        "tcp": obj({"host": host_pattern, "port": port}),
        "cidr": obj({"cidr": string(64), "ports": any_of(array(port, 64, min_items=1), one_of("any"))}),
    },
)
network_policy = obj({"version": integer(1, 1), "default": one_of("deny"), "rules": array(network_rule, 256)})

resources = obj({}, {"memoryMiB": integer(128, 1024 * 1024), "pids": integer(8, 1_000_000), "cpus": number(0.01, 1024)})

sandbox_info = obj(
    {
        "id": string(24, pattern=SANDBOX_ID),
        "state": one_of("starting", "running", "paused", "stopped"),
        "backend": backend,
        "tier": tier,
        "image": obj({"ref": string(512), "digest": digest}),
        "createdAt": time,
        "expiresAt": time,
        "resources": resources,
        "workMiB": integer(),
        "labels": labels,
    },
    {
        "endReason": one_of("killed", "expired", "crashed", "engine-exit"),
        "onTtl": one_of("pause"),
        "pause": obj(
            {"since": time, "by": one_of("caller", "ttl"), "ttl": one_of("running", "frozen", "spent"), "killAt": time},
            {"remainingSeconds": integer(0, 7 * 24 * 3600)},
        ),
        "network": obj({"policy": network_policy, "revision": integer(0)}, {"changedAt": time}),
        "secrets": array(
            obj(
                {
                    "env": string(128),
                    "source": one_of("store", "env", "file"),
                    "name": string(4096),
                    "posture": one_of("mediated", "env"),
                    "hosts": array(string(253), 32),
                }
            ),
            64,
        ),
        "ports": array(obj({"guest": port, "host": port}), 64),
        "warnings": array(string(512), 32),
        "receipt": receipt_ref,
    },
)
sandbox_list = obj({"sandboxes": array(sandbox_info, 100_000)})

receipt = obj(
    {
        "sandboxId": string(24, pattern=SANDBOX_ID),
        "proc": integer(0),
        "imageDigest": digest,
        "backend": backend,
        "startedAt": time,
        "finishedAt": time,
    },
    {"planId": digest, "auditEntryId": string(64, pattern=AUDIT_ENTRY)},
)
exit_info = obj(
    {
        "exitCode": nullable(integer()),
        "signal": nullable(string(16)),
        "timedOut": boolean,
        "oomKilled": boolean,
        "durationMs": number(0),
        "stdoutBytes": integer(0),
        "stderrBytes": integer(0),
        "stdoutTruncated": boolean,
        "stderrTruncated": boolean,
        "receipt": receipt,
    },
    {"warnings": array(string(512), 32)},
)
exec_event = tagged(
    "type",
    {
        "started": obj({"proc": integer(0), "pid": integer(1)}),
        "stdout": obj({"data": string(512 * 1024)}),
        "stderr": obj({"data": string(512 * 1024)}),
        "exit": obj({"exit": exit_info}),
        "error": stream_error,
    },
)

progress_event = obj({"phase": string(64), "message": string(4096)}, {"fraction": number(0, 1)})


def progress_line(key: str, result: Validator[Any]) -> Validator[dict[str, Any]]:
    """A line of an NDJSON progress stream whose result carries ``key``."""
    return tagged("type", {"progress": obj({"event": progress_event}), "result": obj({key: result}), "error": stream_error})


file_info = obj(
    {
        "name": string(4096),
        "type": one_of("file", "dir", "symlink", "other"),
        "size": integer(0),
        "mode": integer(0, 0o7777),
        "mtimeMs": number(),
    }
)
dir_listing = obj({"entries": array(file_info, 10_000), "truncated": boolean})
process_info = obj({"proc": integer(0, 0xFFFFFFFF), "pid": integer(1), "argv": array(string(4096), 64), "startedAtMs": number()})
process_list = obj({"processes": array(process_info, 4096)})
write_result = obj({"bytes": integer(0)}, {"receipt": receipt_ref})
ping = obj({"version": string(64)})
health = obj(
    {
        "version": string(64),
        "defaultBackend": nullable(backend),
        "backends": array(
            obj(
                {
                    "backend": backend,
                    "tier": tier,
                    "usable": boolean,
                    "checks": array(obj({"name": string(64), "ok": boolean, "detail": string(4096)}, {"hint": string(4096)}), 256),
                }
            ),
            16,
        ),
    },
    {"defaultReason": string(4096)},
)
image_info = obj({"digest": digest, "refs": array(string(512), 4096), "sizeBytes": integer(0), "createdAt": time})
image_list = obj({"images": array(image_info, 100_000)})

network_event = tagged(
    "type",
    {
        "connection": obj(
            {
                "time": string(40),
                "decision": one_of("allowed", "denied"),
                "protocol": one_of("https", "http", "tcp"),
                "via": one_of("http-proxy", "connect", "socks5"),
                "port": integer(0, 65535),
                "bytesOut": count,
                "bytesIn": count,
                "durationMs": count,
            },
            {
                "host": string(253),
                "ip": string(64),
                "rule": integer(0),
                "reason": string(512),
                "intercepted": boolean,
                "secrets": array(string(128), 64),
            },
        ),
        "policy-changed": obj(
            {"time": string(40), "rulesBefore": count, "rulesAfter": count, "policy": network_policy, "closedConnections": count}
        ),
    },
)
network_events_page = obj(
    {"events": array(obj({"seq": integer(1), "event": network_event}), 1000), "next": integer(0), "dropped": integer(0)}
)

secret_meta = obj({"name": string(128), "hosts": array(string(253), 32), "bytes": integer(0), "createdAt": time, "updatedAt": time})
secret_list = obj({"secrets": array(secret_meta, 100_000)})

part_size = obj({"bytes": integer(0), "storedBytes": integer(0), "chunks": integer(0), "zeroChunks": integer(0)})
retention = any_of(obj({"ttlSeconds": integer(60, 90 * 24 * 3600)}), obj({"manual": boolean}))
snapshot_info = obj(
    {
        "id": string(25, pattern=SNAPSHOT_ID),
        "digest": digest,
        "createdAt": time,
        "retention": retention,
        "tier": tier,
        "memory": boolean,
        "source": string(64),
        "image": obj({"digest": digest}),
        "sizes": obj({}, {"ram": part_size, "device": part_size, "work": part_size, "tmp": part_size}),
        "labels": labels,
    },
    {"expiresAt": time},
)
snapshot_list = obj({"snapshots": array(snapshot_info, 100_000)})


_signed_plan_envelope = obj(
    {
        "plan": obj({"planId": digest}),
        "signature": obj({"alg": one_of("ed25519"), "keyId": digest, "value": string(128, pattern=r"[0-9a-f]{128}")}),
    }
)


def signed_plan(v: Any, where: str) -> dict[str, Any]:
    """A signed plan: its envelope and identity are checked and it is kept whole, since it goes back
    to the daemon, which verifies the signature over the canonical plan when it is admitted."""
    _signed_plan_envelope(v, where)
    assert isinstance(v, dict)
    return v

warm_pool_info = obj(
    {
        "id": string(21, pattern=r"pool_[0-9a-f]{16}"),
        "size": integer(0, 16),
        "ready": integer(0, 16),
        "starting": integer(0, 16),
        "claimed": integer(0),
        "backend": backend,
        "tier": tier,
        "image": obj({"ref": string(512), "digest": digest}),
        "resources": resources,
        "workMiB": integer(),
    },
    {"lastError": string(1024)},
)
warm_pool_list = obj({"pools": array(warm_pool_info, 16)})
