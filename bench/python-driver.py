"""The Python half of bench/python.mjs: reads one command per stdin line, answers one JSON line.

  create          Sandbox.create → first stdout byte of `echo hi` (ms), then kill
  exec            commands.run(["true"]) on a live sandbox (ms)
"""

import json
import sys
import time

from mvm import DaemonClient, Sandbox

IMAGE = sys.argv[1]
live = Sandbox.create(image=IMAGE, ttl_seconds=3600, acknowledge_container_tier=True, backend="namespace")
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    cmd = line.strip()
    if cmd == "create":
        t0 = time.perf_counter()
        sb = Sandbox.create(image=IMAGE, ttl_seconds=600, acknowledge_container_tier=True, backend="namespace")
        created = time.perf_counter()
        h = sb.commands.start(["echo", "hi"])
        next(iter(h.stdout))
        first = time.perf_counter()
        h.wait()
        sb.kill()
        sb.close()
        print(json.dumps({"createMs": (created - t0) * 1000, "firstOutputMs": (first - t0) * 1000}), flush=True)
    elif cmd == "exec":
        t0 = time.perf_counter()
        live.commands.run(["true"])
        print(json.dumps({"execMs": (time.perf_counter() - t0) * 1000}), flush=True)
    elif cmd == "quit":
        break
live.kill()
live.close()
