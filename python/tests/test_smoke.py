from conftest import Daemon

from mvm import Sandbox


def test_run(daemon: Daemon) -> None:
    with Sandbox.create(image="debian:bookworm+python3", ttl_seconds=120) as sb:
        r = sb.commands.run(["python3", "-c", "print(2+2)"], timeout_seconds=30)
        assert r.stdout == "4\n"
