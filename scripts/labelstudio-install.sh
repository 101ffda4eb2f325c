#!/usr/bin/env bash
# Pre-install the Label Studio server (1.23.2) into its own venv ($KILN_LS_VENV or
# ~/.cache/kiln/label-studio-venv) and migrate the test template data dir, so the first
# `kiln labelstudio start` and the labeling tests start in seconds. Safe to re-run (no-op when done).
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
"$py" - <<'PY'
import time
from kiln.labeling import server
t = time.monotonic()
venv = server.install()
print(f"label-studio {server.LS_VERSION} in {venv} ({time.monotonic() - t:.0f} s)")
try:
    import sys
    sys.path.insert(0, ".")
    from tests.labeling.conftest import ensure_template
except ImportError:  # label-studio-sdk not installed in this venv: no tests to prepare for
    pass
else:
    t = time.monotonic()
    print(f"migrated template data dir {ensure_template()} ({time.monotonic() - t:.0f} s)")
PY
