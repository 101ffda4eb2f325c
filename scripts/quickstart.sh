#!/usr/bin/env bash
# Install kiln into .venv and run the main job on the embedded defaults (local runner, SQLite,
# local DVC remote, local BentoML servers, a local Label Studio): the example GitOps repo (specs/)
# in a fresh git repository is validated, planned and applied — datasets are versioned, the
# experiments train and register their models, the deployments serve them (tabular wine, digits
# classification, shapes detection) — then one request asks the shapes detector for boxes, requests
# to the digits deployment are captured, and a second apply versions the captured inputs and opens the
# relabelling job in Label Studio, pre-annotated by the trained model. Re-running it is safe.
set -euo pipefail
cd "$(dirname "$0")/.."
here=$(pwd)

if [ ! -x .venv/bin/kiln ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
fi
.venv/bin/pip install -q -e '.[all]'
kiln="$here/.venv/bin/kiln"
py="$here/.venv/bin/python"

demo=${KILN_DEMO_DIR:-$here/.kiln-demo}
mkdir -p "$demo"
rm -rf "$demo/specs" && cp -r specs "$demo/specs"
if [ ! -d "$demo/.git" ]; then
  git -C "$demo" init -q
  git -C "$demo" config user.email "demo@kiln.local"
  git -C "$demo" config user.name "kiln demo"
  git -C "$demo" commit -q --allow-empty -m "kiln demo repository"
fi

# The digits deployment takes a token from $DIGITS_API_TOKEN (specs never hold secrets). The demo
# keeps one in a private file so that re-runs call the server with the token it was started with.
token_file="$demo/.kiln-demo-token"
if [ ! -s "$token_file" ]; then
  (umask 077; "$py" -c 'import secrets; print(secrets.token_urlsafe(32))' > "$token_file")
  grep -qx '.kiln-demo-token' "$demo/.gitignore" 2>/dev/null || echo '.kiln-demo-token' >> "$demo/.gitignore"
fi
export DIGITS_API_TOKEN=${DIGITS_API_TOKEN:-$(cat "$token_file")}

echo "== Label Studio (own virtual environment; first start installs it, about 2-3 minutes)"
"$kiln" -C "$demo" labelstudio status >/dev/null 2>&1 || "$kiln" -C "$demo" labelstudio start

apply() {
  set +e; "$kiln" -C "$demo" apply; rc=$?; set -e
  # 0: everything applied; 2: applied all it can now (e.g. a dataset whose capture is still empty).
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 2 ]; then echo "apply failed (exit $rc)"; exit "$rc"; fi
}

echo "== kiln validate";  "$kiln" -C "$demo" validate
echo "== kiln plan";      "$kiln" -C "$demo" plan
echo "== kiln apply (datasets, training, registration, serving: a few minutes on 2 cores)"
apply

echo "== 100 requests to the digits deployment (5 % of the inputs are captured for relabelling)"
url=$("$kiln" -C "$demo" get deployment digits-classifier -o json | "$py" -c 'import json,sys; print(json.load(sys.stdin)["extra"]["url"])')
"$py" - "$url" "$demo" <<'PY'
import base64, json, pathlib, sys, urllib.request
url, demo = sys.argv[1], pathlib.Path(sys.argv[2])
images = sorted((demo / "data/vision/digits").rglob("*.png"))[:100]
token = __import__("os").environ["DIGITS_API_TOKEN"]
ok = 0
for img in images:
    body = json.dumps({"instances": [{"data": base64.b64encode(img.read_bytes()).decode()}]}).encode()
    req = urllib.request.Request(f"{url}/predict", body, {"Content-Type": "application/json",
                                                           "Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        ok += r.status == 200
print(f"{ok}/{len(images)} answered; e.g. {json.loads(urllib.request.urlopen(urllib.request.Request(f'{url}/predict', body, {'Content-Type': 'application/json', 'Authorization': f'Bearer {token}'})).read())}")
PY
echo "== a detection request to the shapes deployment (EasyMaker format: a list of boxes per image)"
"$kiln" -C "$demo" predict shapes-detector -w vision --file "$demo/data/vision/shapes/validation/$(ls "$demo/data/vision/shapes/validation" | grep -m1 '\.png$')"

echo "== kiln apply (captured inputs -> new dataset version -> relabelling project)"
apply
echo "== kiln status";    "$kiln" -C "$demo" status
echo
echo "The demo repository is $demo. Try:"
echo "  $kiln -C $demo describe LabelingJob/vision/digits-relabel     # the Label Studio project and its split"
echo "  $kiln -C $demo logs Experiment/vision/digits-resnet"
echo "  $kiln -C $demo predict shapes-detector -w vision --file $demo/data/vision/shapes/validation/<file>.png"
echo "  $kiln -C $demo predict digits-classifier -w vision --file $demo/data/vision/digits/<class>/<file>.png --token \$DIGITS_API_TOKEN"
