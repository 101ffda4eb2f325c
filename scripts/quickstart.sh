#!/usr/bin/env bash
# Install kiln into .venv and run the main job on the embedded defaults (local runner, SQLite,
# local DVC remote, local BentoML servers, a local Label Studio): the example GitOps repo (specs/)
# in a fresh git repository is validated, planned and applied — datasets are versioned, the
# experiments train and register their models, the deployments serve them (tabular wine, digits
# classification, shapes detection) — then one request asks the shapes detector for boxes, requests
# to the digits deployment are captured, and a second apply versions the captured inputs and opens the
# relabelling job in Label Studio, pre-annotated by the trained model. Re-running it is safe.
#
# It prints kiln's own lines; what the tools print (pip, Label Studio's install, libraries' warnings)
# goes to the log file it names at the start. -v shows that too.
#
# Environment: KILN_DEMO_DIR (default .kiln-demo), KILN_QUICKSTART_NO_INSTALL=1 (use .venv as it is:
# no pip at all, for a checkout whose .venv was made by .ci/run), KILN_QUICKSTART_PIP=1 (install with
# pip even where uv can be had).
set -euo pipefail
usage() { echo "usage: scripts/quickstart.sh [-v]   (-v: every tool's output too, not only in the log file)"; }
verbose=0
for arg in "$@"; do
  case "$arg" in
    -v|--verbose) verbose=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "scripts/quickstart.sh: unknown option $arg" >&2; usage >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
here=$(pwd)
started=$SECONDS

demo=${KILN_DEMO_DIR:-$here/.kiln-demo}
mkdir -p "$demo"
log="$demo/quickstart.log"
: > "$log"
echo "kiln quickstart: the tools' output goes to $log$([ "$verbose" = 1 ] && echo ' (and here: -v)')"

# A tool's output goes to the log (and the terminal with -v); when it fails, the log's last lines
# say why.
quiet() {
  local rc=0
  if [ "$verbose" = 1 ]; then
    "$@" 2>&1 | tee -a "$log" || rc=$?
  else
    "$@" >>"$log" 2>&1 || rc=$?
  fi
  if [ "$rc" -ne 0 ]; then
    echo "failed (exit $rc): $*"
    [ "$verbose" = 1 ] || tail -n 25 "$log" | sed 's/^/  | /'
    echo "the whole output is in $log"
    exit "$rc"
  fi
}

# kiln's own lines (stdout) are shown; what libraries write to stderr goes to the log, and so does
# kiln's own error line: shown from the log when the command fails. Returns kiln's exit code.
k() {
  local rc=0
  if [ "$verbose" = 1 ]; then
    "$kiln" -C "$demo" "$@" || rc=$?
  else
    "$kiln" -C "$demo" "$@" 2>>"$log" || rc=$?
  fi
  return "$rc"
}
explain() {  # after a failed kiln command: its error, from the log
  [ "$verbose" = 1 ] || tail -n 8 "$log" | sed 's/^/  | /'
  echo "the whole output is in $log"
}

# The example repo uses no Keras algorithm: TensorFlow (the tf extra, about 2 GB) stays out.
# An algorithm whose extra is missing is named by `kiln validate` with the extra to install.
extras=data,ml,labeling,serve
# Label Studio's own environment installs in the background from the start (only the relabelling
# job, at the end, needs it), into its log file: uv when it can be had, pip otherwise.
ls_log="$demo/labelstudio-install.log"
ls_pid=""
background_ls_install() {
  KILN_LS_INSTALL_ONLY=1 PYTHON="$here/.venv/bin/python" scripts/labelstudio-install.sh >"$ls_log" 2>&1 &
  ls_pid=$!
}
if [ "${KILN_QUICKSTART_NO_INSTALL:-}" != 1 ]; then
  echo "== installing kiln[$extras] into .venv (a few minutes the first time; Label Studio meanwhile, in the background)"
  [ -x .venv/bin/python ] || quiet python3 -m venv .venv
  # uv (on PATH, or bootstrapped into .venv: kiln's serve extra needs it anyway) downloads and
  # installs in parallel; KILN_QUICKSTART_PIP=1 or no uv to be had: pip
  uv=""
  if [ "${KILN_QUICKSTART_PIP:-}" != 1 ]; then
    uv=$(command -v uv || true)
    if [ -z "$uv" ] && { [ -x .venv/bin/uv ] || .venv/bin/pip install -q uv >>"$log" 2>&1; }; then
      uv=.venv/bin/uv
    fi
  fi
  background_ls_install
  if [ -n "$uv" ]; then
    quiet "$uv" pip install --python .venv/bin/python -e ".[$extras]"
  else
    quiet .venv/bin/pip install --upgrade pip
    quiet .venv/bin/pip install -e ".[$extras]"
  fi
else
  background_ls_install
fi
kiln="$here/.venv/bin/kiln"
py="$here/.venv/bin/python"

rm -rf "$demo/specs" && cp -r specs "$demo/specs"
if [ ! -d "$demo/.git" ]; then
  git -C "$demo" init -q
  git -C "$demo" config user.email "demo@kiln.local"
  git -C "$demo" config user.name "kiln demo"
  git -C "$demo" commit -q --allow-empty -m "kiln demo repository"
fi
for private in .kiln-demo-token quickstart.log labelstudio-install.log; do
  grep -qx "$private" "$demo/.gitignore" 2>/dev/null || echo "$private" >> "$demo/.gitignore"
done

# The digits deployment takes a token from $DIGITS_API_TOKEN (specs never hold secrets). The demo
# keeps one in a private file so that re-runs call the server with the token it was started with.
token_file="$demo/.kiln-demo-token"
if [ ! -s "$token_file" ]; then
  (umask 077; "$py" -c 'import secrets; print(secrets.token_urlsafe(32))' > "$token_file")
fi
export DIGITS_API_TOKEN=${DIGITS_API_TOKEN:-$(cat "$token_file")}

echo "== kiln validate"
k validate || { explain; exit 1; }
echo "== kiln plan (its last line; \`kiln plan\` in $demo shows each object)"
plan_out=$(k plan) || { explain; exit 1; }
echo "$plan_out" >> "$log"
echo "$plan_out" | tail -n 1

apply() {
  local rc=0
  k apply "$@" || rc=$?
  # 0: everything applied; 2: applied all it can now (e.g. a dataset whose capture is still empty).
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 2 ]; then echo "apply failed (exit $rc)"; explain; exit "$rc"; fi
}
echo "== kiln apply (datasets, training, registration, serving: a few minutes on 2 cores)"
apply --no-summary

echo "== 100 requests to the digits deployment (5 % of the inputs are captured for relabelling)"
url=$(k get deployment digits-classifier -o json | "$py" -c 'import json,sys; print(json.load(sys.stdin)["extra"]["url"])')
"$py" - "$url" "$demo" <<'PY'
import base64, json, os, pathlib, sys, urllib.request

from kiln.controller.deployment_cli import summarize_answer

url, demo = sys.argv[1], pathlib.Path(sys.argv[2])
images = sorted((demo / "data/vision/digits").rglob("*.png"))[:100]
headers = {"Content-Type": "application/json", "Authorization": f"Bearer {os.environ['DIGITS_API_TOKEN']}"}
ok, answer = 0, None
for img in images:
    body = json.dumps({"instances": [{"data": base64.b64encode(img.read_bytes()).decode()}]}).encode()
    with urllib.request.urlopen(urllib.request.Request(f"{url}/predict", body, headers), timeout=30) as r:
        ok += r.status == 200
        answer = json.loads(r.read())
print(f"{ok}/{len(images)} answered; the last, {images[-1].relative_to(demo)}: {summarize_answer(answer)[0]}")
PY
echo "== a detection request to the shapes deployment (EasyMaker format: a list of boxes per image)"
shape=$(ls "$demo/data/vision/shapes/validation" | grep -m1 '\.png$')
k predict shapes-detector -w vision -o summary --file "$demo/data/vision/shapes/validation/$shape" || { explain; exit 1; }

echo "== Label Studio (its own virtual environment, installed in the background: $ls_log)"
if [ -n "$ls_pid" ] && ! wait "$ls_pid"; then
  echo "the background install failed (its output: $ls_log); \`kiln labelstudio start\` installs it now"
fi
if ! "$kiln" -C "$demo" labelstudio status >/dev/null 2>&1; then
  quiet "$kiln" -C "$demo" labelstudio start
fi
k labelstudio status || { explain; exit 1; }

echo "== kiln apply (captured inputs -> new dataset version -> relabelling project)"
# only the relabelling job and what it needs: the rest was applied above (a dozen "unchanged" lines)
apply --target LabelingJob/vision/digits-relabel

elapsed=$((SECONDS - started))
echo
echo "Done in $((elapsed / 60))m$(printf %02d $((elapsed % 60)))s. To use kiln in the demo repository:"
echo "  source $here/.venv/bin/activate && cd $demo && export DIGITS_API_TOKEN=\$(cat .kiln-demo-token)"
echo "  an image to send (IMAGE.png below): $(cd "$demo" && find data/vision/digits -name '*.png' | sort | head -n 1); what the tools printed: quickstart.log"
