"""What runs where after an apply, and what to try next: the lines ``kiln apply`` (when it did
something) and the quickstart end with. Each deployment's URL with a ``curl`` that can be pasted
as it is (image deployments: any PNG or JPEG in place of ``IMAGE.png``), Label Studio's URL and
where its login is kept, three commands to try. Reads the state store, the deployments'
``server.json`` and the registered models' ``kiln-serving.json``; never a token or password,
only where they are."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kiln.config import KilnConfig
    from kiln.state import ObjectRecord


def next_steps(config: KilnConfig, records: list[ObjectRecord] | None = None) -> list[str]:
    """The summary's lines (empty when nothing serves and nothing is worth trying)."""
    from kiln.api.refs import short

    if records is None:
        from kiln.controller.project import open_state

        store = open_state(config, read_only=True)
        try:
            records = store.all_objects()
        finally:
            store.close()
    lines: list[str] = []
    for rec in sorted((r for r in records if r.kind == "Deployment"), key=lambda r: r.key):
        url = rec.extra.get("url")
        if not url or rec.health != "Healthy":
            continue
        env = _token_env(rec.spec)
        lines.append(f"  {short(rec.key)}  {url}" + (f"  (token: ${env})" if env else "")
                     + f"  test page {url}/ui")
        lines.append("    " + curl(url, _instance(config, rec), env))
    studio = _label_studio(config)
    if studio:
        lines.append(studio)
    if lines:
        lines.insert(0, "What runs where:")
    tries = _tries(config, records)
    if tries:
        lines += ["Try next:", *(f"  {t}" for t in tries)]
    return lines


def curl(url: str, instance: str, token_env: str | None) -> str:
    """A ``curl`` of ``url``'s predict route with one instance (JSON text, shell-quoted here)."""
    auth = f' -H "Authorization: Bearer ${token_env}"' if token_env else ""
    return f"curl -s {url}/predict -H 'Content-Type: application/json'{auth} -d {instance}"


def _token_env(spec: dict[str, Any]) -> str | None:
    auth = (spec.get("spec") or {}).get("auth") or {}
    envs = [t.get("env") for t in auth.get("tokens") or [] if isinstance(t, dict) and t.get("env")]
    return str(envs[0]) if envs and not auth.get("public") else None


def _instance(config: KilnConfig, rec: ObjectRecord) -> str:
    """One request body, shell-quoted: an image read by ``base64``, or a row of the model's
    features (zeros: any numbers do), or a placeholder when the model does not say."""
    serving = _serving(config, rec)
    if serving.get("input") == "image" or serving.get("task") in ("detection", "segmentation"):
        return '"{\\"instances\\": [{\\"data\\": \\"$(base64 -w0 IMAGE.png)\\"}]}"'
    return shlex.quote(json.dumps({"instances": [_row(config, rec)]}))


def _row(config: KilnConfig, rec: ObjectRecord) -> dict[str, Any]:
    features = _serving(config, rec).get("features")
    return {str(f): 0 for f in features} if isinstance(features, list) and features else {"feature": 0}


def _serving(config: KilnConfig, rec: ObjectRecord) -> dict[str, Any]:
    model, version = rec.extra.get("model"), rec.extra.get("version")
    path = config.kiln_dir() / "bentoml" / "models" / str(model) / f"v{version}" / "kiln-serving.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _label_studio(config: KilnConfig) -> str | None:
    from kiln.labeling import server

    try:
        st = server.status(config.kiln_dir())
    except Exception:  # noqa: BLE001 - a courtesy line: an unreadable state file only leaves it out
        return None
    if not st.get("running"):
        return None
    where = Path(config.kiln_dir()) / server.PASSWORD_FILE
    return (f"  Label Studio  {st['url']}  (login {st.get('admin', server.ADMIN_EMAIL)}, password in "
            f"{_rel(config, where)}; API token: kiln labelstudio token)")


def _rel(config: KilnConfig, path: Path) -> str:
    try:
        return str(path.relative_to(config.repo))
    except ValueError:
        return str(path)


def _tries(config: KilnConfig, records: list[ObjectRecord]) -> list[str]:
    from kiln.api.refs import short

    ordered = sorted(records, key=lambda r: r.key)
    out = ["kiln status"]
    exp = next((r for r in ordered if r.kind == "Experiment" and r.health == "Healthy"), None)
    if exp is not None:
        out.append(f"kiln describe {short(exp.key)}      # its trials, leaderboard and registered model")
    serving = [r for r in ordered if r.kind == "Deployment" and r.extra.get("url") and r.health == "Healthy"]
    if serving:
        # an image deployment's command is short; a table's lists every feature
        dep = min(serving, key=lambda r: ("IMAGE.png" not in _instance(config, r), r.key))
        env = _token_env(dep.spec)
        body = _instance(config, dep)
        what = "--file IMAGE.png" if "IMAGE.png" in body else f"--json {shlex.quote(json.dumps(_row(config, dep)))}"
        out.append(f"kiln predict {short(dep.key)} -o summary {what}" + (f" --token ${env}" if env else ""))
    return out
