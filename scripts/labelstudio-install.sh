#!/usr/bin/env bash
# Pre-install the Label Studio server (the version kiln pins: LS_VERSION in labeling/server.py) into
# its own venv ($KILN_LS_VENV or ~/.cache/kiln/label-studio-venv), with uv when it can be had (on
# PATH, or beside $PYTHON: kiln's serve extra brings it), pip otherwise; then, when kiln and its
# tests are importable, migrate the test template data dir, so the first `kiln labelstudio start`
# and the labeling tests start in seconds. Safe to re-run (no-op when done).
#
# Why shell for the install: it needs neither kiln nor its venv, so scripts/quickstart.sh runs it in
# the background from the start, while kiln itself installs and the first trainings run.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
version=$(sed -n 's/^LS_VERSION = "\(.*\)"$/\1/p' labeling/server.py)
venv=${KILN_LS_VENV:-$HOME/.cache/kiln/label-studio-venv}
started=$SECONDS
# what kiln.labeling.server.is_installed checks: the dist-info is written last, so it means done
installed() { [ -x "$venv/bin/label-studio" ] && compgen -G "$venv/lib/python3*/site-packages/label_studio-$version.dist-info" >/dev/null; }
if installed; then
  echo "label-studio $version already in $venv"
else
  uv=$(command -v uv || true)
  [ -n "$uv" ] || { [ -x "$(dirname "$py")/uv" ] && uv=$(dirname "$py")/uv; } || true
  mkdir -p "$(dirname "$venv")"
  if [ -n "$uv" ]; then
    [ -x "$venv/bin/python" ] || python3 -m venv --without-pip "$venv"
    "$uv" pip install --quiet --python "$venv/bin/python" "label-studio==$version"
  else
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q "label-studio==$version"
  fi
  installed || { echo "label-studio $version is not in $venv after the install; remove $venv and re-run" >&2; exit 1; }
  echo "label-studio $version in $venv ($((SECONDS - started)) s, with ${uv:-pip})"
fi
# KILN_LS_INSTALL_ONLY=1 (the quickstart): no tests to prepare for; no kiln venv yet: nothing to prepare with
[ "${KILN_LS_INSTALL_ONLY:-}" != 1 ] && [ -x "$py" ] || exit 0
"$py" - <<'PY'
import time
try:
    import sys
    sys.path.insert(0, ".")
    from tests.labeling.conftest import ensure_template
except ImportError:  # kiln, label-studio-sdk or the tests not installed in this venv: nothing to prepare
    pass
else:
    t = time.monotonic()
    print(f"migrated template data dir {ensure_template()} ({time.monotonic() - t:.0f} s)")
PY
