"""``python3 -m mvm plan app.py``: see mvm.static."""

import sys

from .static import main

if len(sys.argv) < 2 or sys.argv[1] != "plan":
    sys.stderr.write("usage: python3 -m mvm plan FILE [--out FILE] [--valid-for SECONDS] [--socket PATH]\n")
    raise SystemExit(2)
raise SystemExit(main(sys.argv[2:]))
