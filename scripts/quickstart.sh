#!/usr/bin/env bash
# Install kiln into .venv and run the main job on the embedded defaults: the example GitOps repo
# (specs/) in a fresh git repository, validated, planned and applied with the local runner and
# the SQLite state store, then `kiln status`. Re-running it is safe.
set -euo pipefail
cd "$(dirname "$0")/.."
here=$(pwd)

if [ ! -x .venv/bin/kiln ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
fi
.venv/bin/pip install -q -e '.[all]'
kiln="$here/.venv/bin/kiln"

demo=${KILN_DEMO_DIR:-$here/.kiln-demo}
mkdir -p "$demo"
rm -rf "$demo/specs" && cp -r specs "$demo/specs"
if [ ! -d "$demo/.git" ]; then
  git -C "$demo" init -q
  git -C "$demo" -c user.name=kiln -c user.email=kiln@localhost commit -q --allow-empty -m "kiln demo repository"
fi

echo "== kiln validate";  "$kiln" -C "$demo" validate
echo "== kiln plan";      "$kiln" -C "$demo" plan
echo "== kiln apply"
set +e; "$kiln" -C "$demo" apply; rc=$?; set -e
# 0: everything applied; 2: applied all that this version can (kinds without a handler are listed).
if [ "$rc" -ne 0 ] && [ "$rc" -ne 2 ]; then echo "apply failed (exit $rc)"; exit "$rc"; fi
echo "== kiln apply (again: nothing to do)"; set +e; "$kiln" -C "$demo" apply | tail -n 1; set -e
echo "== kiln status";    "$kiln" -C "$demo" status
echo
echo "The demo repository is $demo. Try: $kiln -C $demo describe Workspace/vision"
