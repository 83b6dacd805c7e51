"""The sync API against a real daemon (namespace backend)."""

from __future__ import annotations

import pytest
from conftest import Daemon

import mvm
from mvm import CommandExitError, DaemonClient, InvalidArgumentError, NetworkPolicy, NotFoundError, Sandbox, SecretRef

IMAGE = "debian:bookworm+python3"


@pytest.fixture(scope="module")
def sb(daemon: Daemon) -> Sandbox:
    sandbox = Sandbox.create(image=IMAGE, ttl_seconds=600)
    yield sandbox  # type: ignore[misc]
    sandbox.kill()
    sandbox.close()


def test_run_output_exit_and_receipt(sb: Sandbox) -> None:
    r = sb.commands.run(["python3", "-c", "import sys; print('out'); print('err', file=sys.stderr)"])
    assert (r.exit_code, r.stdout, r.stderr, r.timed_out) == (0, "out\n", "err\n", False)
    assert r.receipt["sandboxId"] == sb.id and r.receipt["imageDigest"].startswith("sha256:")
    assert sb.commands.run("echo $((6*7))").stdout == "42\n"


def test_nonzero_exit_raises_command_exit_error_with_the_result(sb: Sandbox) -> None:
    with pytest.raises(CommandExitError) as e:
        sb.commands.run(["sh", "-c", "echo boom >&2; exit 3"])
    assert e.value.result.exit_code == 3 and e.value.code == "COMMAND_EXIT" and "boom" in e.value.message
    assert sb.commands.run(["sh", "-c", "exit 4"], check=False).exit_code == 4


def test_timeout_kills_the_process(sb: Sandbox) -> None:
    r = sb.commands.run(["sleep", "30"], timeout_seconds=0.5, check=False)
    assert r.timed_out and r.exit_code is None


def test_streaming_stdout_arrives_before_the_exit(sb: Sandbox) -> None:
    code = "import sys,time\nfor i in range(3):\n print(i, flush=True); time.sleep(0.2)\nprint('e', file=sys.stderr)"
    h = sb.commands.start(["python3", "-u", "-c", code])
    chunks = list(h.stdout)
    assert "".join(chunks) == "0\n1\n2\n" and len(chunks) >= 2
    r = h.wait()
    assert r.stderr == "e\n" and r.stdout == "0\n1\n2\n"


def test_stdin_inline_and_open(sb: Sandbox) -> None:
    assert sb.commands.run(["cat"], stdin=b"hello").stdout == "hello"
    h = sb.commands.start(["cat"], open_stdin=True)
    h.send_stdin("a")
    h.send_stdin(b"b")
    h.close_stdin()
    assert h.wait().stdout == "ab"


def test_background_process_is_listed_and_killed(sb: Sandbox) -> None:
    h = sb.commands.start(["sleep", "60"], background=True, check=False)
    assert any(p["proc"] == h.proc for p in sb.commands.list())
    assert h.kill()
    r = h.wait()
    assert r.signal == "SIGKILL"


def test_files(sb: Sandbox) -> None:
    sb.files.write("/work/a.txt", b"hi")
    assert sb.files.read("/work/a.txt") == b"hi"
    sb.files.write("/work/d/e/f.txt", "text", mode=0o600)
    assert sb.files.read_text("/work/d/e/f.txt") == "text"
    assert sb.files.stat("/work/d/e/f.txt")["mode"] & 0o777 == 0o600
    assert {e["name"] for e in sb.files.list("/work")} >= {"a.txt", "d"}
    sb.files.write("/work/big.bin", (bytes([i]) * 65536 for i in range(40)))
    assert b"".join(sb.files.read_stream("/work/big.bin")) == b"".join(bytes([i]) * 65536 for i in range(40))
    with pytest.raises(InvalidArgumentError):
        sb.files.read("/work/big.bin", max_bytes=1000)
    sb.files.mkdir("/work/m")
    sb.files.rename("/work/a.txt", "/work/m/b.txt")
    assert sb.files.exists("/work/m/b.txt") and not sb.files.exists("/work/a.txt")
    sb.files.remove("/work/m", recursive=True)
    assert not sb.files.exists("/work/m")
    with pytest.raises(NotFoundError):
        sb.files.read("/work/nope")


def test_network_policy_and_events(sb: Sandbox) -> None:
    info = sb.network.set_policy(NetworkPolicy.deny_by_default().allow_https("example.com"))
    assert info["network"]["policy"]["rules"] == [{"kind": "https", "host": "example.com"}]
    assert sb.network.policy == NetworkPolicy.deny_by_default().allow_https("example.com")
    page = sb.network.events()
    assert page["next"] >= 0 and any(e["event"]["type"] == "policy-changed" for e in page["events"])


def test_connect_list_pause_resume(sb: Sandbox, daemon: Daemon) -> None:
    again = Sandbox.connect(sb.id)
    assert again.id == sb.id and again.info["state"] == "running"
    again.close()
    assert sb.id in {s["id"] for s in Sandbox.list()}
    assert sb.pause()["state"] == "paused"
    with pytest.raises(mvm.SandboxPausedError):
        sb.commands.run(["true"])
    assert sb.resume()["state"] == "running"
    with pytest.raises(NotFoundError):
        Sandbox.connect("sbx_aaaaaaaaaaaaaaaaaaaa")


def test_secrets_store_and_mediated_secret(daemon: Daemon) -> None:
    with DaemonClient() as client:
        meta = client.set_secret("py-test-key", "s3cret-value", hosts=["api.example.com"])
        assert meta["name"] == "py-test-key" and "s3cret-value" not in repr(meta)
        try:
            with Sandbox.create(image=IMAGE, ttl_seconds=120, secrets={"API_KEY": SecretRef("py-test-key")}) as sb:
                value = sb.commands.run(["sh", "-c", "printf %s \"$API_KEY\""]).stdout
                assert value and value != "s3cret-value"
                assert sb.info["secrets"][0]["env"] == "API_KEY"
        finally:
            client.remove_secret("py-test-key")


def test_plan_then_create_from_it(daemon: Daemon) -> None:
    plan = Sandbox.plan(image=IMAGE, ttl_seconds=60)
    assert plan["plan"]["planId"].startswith("sha256:") and plan["signature"]["alg"] == "ed25519"
    with Sandbox.create(plan=plan) as sb:
        assert sb.receipt is not None and sb.receipt["planId"] == plan["plan"]["planId"]


def test_snapshot_and_fork(sb: Sandbox) -> None:
    sb.files.write("/work/state.txt", b"kept")
    snap = sb.snapshot(ttl_seconds=600)
    try:
        assert snap.info["source"] == sb.id
        with snap.start(ttl_seconds=120) as copy:
            assert copy.files.read("/work/state.txt") == b"kept"
        kids = sb.fork(count=1)
        try:
            assert kids[0].files.read("/work/state.txt") == b"kept"
        finally:
            for k in kids:
                k.kill()
                k.close()
    finally:
        snap.delete()


def test_bad_options_are_typed_errors(daemon: Daemon) -> None:
    with pytest.raises(InvalidArgumentError):
        Sandbox.create(image="NOT A REF", ttl_seconds=60)
    with pytest.raises(InvalidArgumentError):
        Sandbox.create(ttl_seconds=0)


def test_images_and_warm_pools(daemon: Daemon) -> None:
    from mvm.sandbox import create_request

    with DaemonClient() as client:
        images = client.list_images()
        assert any(IMAGE in i["refs"] for i in images)
        request = create_request(image=IMAGE, backend="namespace", ttl_seconds=600, acknowledge_container_tier=True)
        pool = client.set_warm_pool(request, 1)
        assert pool["size"] == 1 and pool["id"].startswith("pool_")
        assert [p["id"] for p in client.list_warm_pools()] == [pool["id"]]
        assert client.set_warm_pool(request, 0)["size"] == 0
        assert client.list_warm_pools() == []
        with pytest.raises(NotFoundError):
            client.remove_image("debian:no-such-suite")
