"""``python3 -m mvm plan app.py`` and ``python3 -m mvm analyze app.py``: see mvm.static."""

import sys

from .static import analyze_main, main

if len(sys.argv) >= 2 and sys.argv[1] == "plan":
    raise SystemExit(main(sys.argv[2:]))
if len(sys.argv) >= 2 and sys.argv[1] == "analyze":
    raise SystemExit(analyze_main(sys.argv[2:]))
sys.stderr.write("usage: python3 -m mvm plan FILE [--out FILE] [--valid-for SECONDS] [--socket PATH]\n"
                 "       python3 -m mvm analyze FILE   (declarations as JSON, for mvmctl plan)\n")
raise SystemExit(2)
