"""The first run, timed: ``scripts/quickstart.sh`` in a clean clone with ``HOME`` pointed at an empty
folder (so pip's, uv's and Label Studio's caches are empty), as a newcomer runs it (#23).

    python3 bench/quickstart.py [--work DIR] [--source REPO] [--warm] [--no-download] [--keep]

- Clones ``--source`` (default: this checkout's committed HEAD; uncommitted changes are not in the
  clone) into ``DIR/kiln`` and runs the quickstart there with ``HOME=DIR/home``; prints each stage's
  time (the quickstart's ``==`` lines), the whole time and its output's line count (target < 100).
- ``--warm``: a fresh clone again, but ``DIR/home`` kept from an earlier run: uv's cache and Label
  Studio's environment are warm, kiln's ``.venv`` and the demo repository are new (target <= 90 s).
- Then, in the same run (unless ``--no-download``), a bare ``pip download`` of the same packages
  (kiln's extras and Label Studio) with no cache: how fast the network is today, to read the
  install stage's time against.
- Checks: every example object Healthy (the relabelling job Progressing: it waits for people),
  the digits model's test accuracy >= 0.95, the shapes detector's validation mAP@0.5 >= 0.5, the
  whole run <= 4 minutes (cold) or 90 s (warm). Prints the disk space of ``.venv``, the caches and
  Label Studio's environment.
- Stops what the quickstart started (Label Studio, the deployments' servers) unless ``--keep``.

Exit status: 0 when every check passes, 1 otherwise. Standard library only (it runs before kiln is
installed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
EXTRAS = "data,ml,labeling,serve"  # scripts/quickstart.sh's
HOME_MARKER = "KILN_DEPLOYMENT_HOME"  # kiln.controller.deployment_steps: set in each deployment server's environment
TARGETS = {"cold_s": 240.0, "warm_s": 90.0, "lines": 100, "digits_accuracy": 0.95, "shapes_ap50": 0.5}


# the machine's network settings (proxies, TLS roots, package index): a newcomer's shell has them too
NETWORK_WORDS = ("PROXY", "CERT", "CA_BUNDLE", "SSL")
NETWORK_VARS = {
    "PIP_INDEX_URL",
    "PIP_EXTRA_INDEX_URL",
    "PIP_DEFAULT_TIMEOUT",
    "UV_INDEX_URL",
    "UV_DEFAULT_INDEX",
    "UV_EXTRA_INDEX_URL",
    "UV_INDEX",
}


def clean_env(home: Path) -> dict[str, str]:
    """The environment of a newcomer's shell: this one without any virtual environment, cache or
    local wheel folder (``PIP_FIND_LINKS``), with the machine's network settings, and ``HOME``
    (every tool's cache) in ``home``."""
    keep = {"PATH", "LANG", "LC_ALL", "TERM", "TMPDIR"}
    env = {k: v for k, v in os.environ.items() if k in keep or k in NETWORK_VARS or any(w in k.upper() for w in NETWORK_WORDS)}
    venv = os.environ.get("VIRTUAL_ENV")
    if venv:  # the caller's venv off PATH: the quickstart must find its own
        env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(venv))
    env["HOME"] = str(home)
    return env


def run_quickstart(clone: Path, env: dict[str, str]) -> tuple[int, float, list[tuple[str, float]], list[str]]:
    """(exit code, seconds, [(stage, seconds)], output lines), echoing the output as it comes."""
    t0 = time.monotonic()
    stages: list[tuple[str, float]] = []
    current, since = "start", t0
    lines: list[str] = []
    proc = subprocess.Popen(
        [str(clone / "scripts" / "quickstart.sh")],
        cwd=clone,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        bufsize=1,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        now = time.monotonic()
        lines.append(line.rstrip("\n"))
        print(f"  {now - t0:6.1f}s | {line}", end="", flush=True)
        if line.startswith("== "):
            stages.append((current, now - since))
            current, since = line[3:].strip(), now
    rc = proc.wait()
    end = time.monotonic()
    stages.append((current, end - since))
    return rc, end - t0, stages, lines


def kiln_json(clone: Path, env: dict[str, str], *args: str) -> object:
    out = subprocess.run(
        [str(clone / ".venv" / "bin" / "kiln"), "-C", str(clone / ".kiln-demo"), *args, "-o", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if out.returncode != 0:
        raise RuntimeError(f"kiln {' '.join(args)}: {out.stderr.strip()[-500:]}")
    return json.loads(out.stdout)


def best_metric(record: object, name: str) -> float | None:
    """A metric of an Experiment's selected (registered) trial, from ``kiln get -o json``: the
    trial's metrics at its kept checkpoint, with the test split's where the dataset has one."""
    extra = (record or {}).get("extra") or {}  # type: ignore[union-attr]
    best = extra.get("best") or {}
    trial = next((t for t in extra.get("trials") or [] if t.get("id") == best.get("trial")), {})
    v = (trial.get("metrics") or {}).get(name, best.get("value") if best.get("metric") == name else None)
    return float(v) if isinstance(v, (int, float)) else None


def checks(clone: Path, env: dict[str, str]) -> list[tuple[str, bool, str]]:
    out: list[tuple[str, bool, str]] = []
    rows = kiln_json(clone, env, "status")
    assert isinstance(rows, list)
    for r in rows:
        want = "Progressing" if r["kind"] == "LabelingJob" else "Healthy"
        out.append((f"{r['kind']}/{r['name']} {want}", r.get("health") == want, str(r.get("health"))))
    digits = kiln_json(clone, env, "get", "experiment", "digits-resnet", "-w", "vision")
    acc = best_metric(digits, "test_accuracy")
    out.append(
        (f"digits test accuracy >= {TARGETS['digits_accuracy']}", acc is not None and acc >= TARGETS["digits_accuracy"], f"{acc}")
    )
    shapes = kiln_json(clone, env, "get", "experiment", "shapes-centernet", "-w", "vision")
    ap50 = best_metric(shapes, "validation_ap50")
    out.append(
        (f"shapes validation mAP@0.5 >= {TARGETS['shapes_ap50']}", ap50 is not None and ap50 >= TARGETS["shapes_ap50"], f"{ap50}")
    )
    return out


def du(path: Path) -> str:
    if not path.exists():
        return "-"
    out = subprocess.run(["du", "-sh", str(path)], capture_output=True, text=True).stdout.split()
    return out[0] if out else "?"


def pip_download(clone: Path, work: Path, env: dict[str, str]) -> tuple[float, str, int]:
    """Seconds, size and exit code of a bare ``pip download`` of what the quickstart installs."""
    ls_version = next(
        line.split('"')[1]
        for line in (clone / "labeling" / "server.py").read_text().splitlines()
        if line.startswith("LS_VERSION =")
    )
    dest = work / "pip-download"
    shutil.rmtree(dest, ignore_errors=True)
    t0 = time.monotonic()
    proc = subprocess.run(
        [
            str(clone / ".venv" / "bin" / "python"),
            "-m",
            "pip",
            "download",
            "-q",
            "--no-cache-dir",
            "-d",
            str(dest),
            f"{clone}[{EXTRAS}]",
            f"label-studio=={ls_version}",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    took = time.monotonic() - t0
    if proc.returncode:
        print(proc.stderr[-1500:], file=sys.stderr)
    return took, du(dest), proc.returncode


def stop_everything(clone: Path, env: dict[str, str]) -> None:
    """Label Studio, then every deployment server of the demo repository (by its environment marker)."""
    kiln = clone / ".venv" / "bin" / "kiln"
    if not kiln.is_file():  # the install failed: nothing was started
        return
    subprocess.run(
        [str(clone / ".venv" / "bin" / "kiln"), "-C", str(clone / ".kiln-demo"), "labelstudio", "stop"],
        env=env,
        capture_output=True,
        timeout=120,
    )
    marker = f"{HOME_MARKER}={(clone / '.kiln-demo').resolve()}".encode()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if any(e.startswith(marker) for e in (d / "environ").read_bytes().split(b"\0")):
                    os.killpg(int(d.name), signal.SIGTERM)
            except (OSError, ProcessLookupError):
                pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/kiln-bench-quickstart"))
    ap.add_argument("--source", default=str(HERE), help="the repository to clone (default: this checkout)")
    ap.add_argument("--warm", action="store_true", help="keep DIR/home (warm caches) from an earlier run")
    ap.add_argument("--no-download", action="store_true", help="skip the bare pip download comparison")
    ap.add_argument("--keep", action="store_true", help="leave Label Studio and the deployments running")
    a = ap.parse_args()
    work, home = a.work.resolve(), a.work.resolve() / "home"
    clone = work / "kiln"
    if a.warm and not home.is_dir():
        ap.error(f"--warm needs {home} from an earlier run (run without --warm first)")
    if clone.exists():
        stop_everything(clone, clean_env(home))
    if not a.warm:
        shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(clone, ignore_errors=True)
    home.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "clone", "-q", a.source, str(clone)], check=True)
    env = clean_env(home)
    print(
        f"quickstart in {clone} (HOME={home}, {'warm' if a.warm else 'empty'} caches, "
        f"load {os.getloadavg()[0]:.1f}, {os.cpu_count()} cores)"
    )
    try:
        rc, took, stages, lines = run_quickstart(clone, env)
        results = [("quickstart exit 0", rc == 0, str(rc))]
        limit = TARGETS["warm_s" if a.warm else "cold_s"]
        results.append((f"whole run <= {limit:.0f} s", took <= limit, f"{took:.0f} s"))
        results.append((f"output < {TARGETS['lines']} lines", len(lines) < TARGETS["lines"], str(len(lines))))
        noisy = [ln for ln in lines if "warning" in ln.lower()]
        results.append(("no tools' warnings in the output", not noisy, noisy[0][:80] if noisy else "0"))
        if rc == 0:
            results += checks(clone, env)
        print(f"\nstages (load {os.getloadavg()[0]:.1f} at the end):")
        for name, s in stages:
            print(f"  {s:7.1f} s  {name}")
        print(f"  {took:7.1f} s  in all; {len(lines)} output lines")
        print(
            f"disk: .venv {du(clone / '.venv')}, Label Studio's venv {du(home / '.cache/kiln/label-studio-venv')}, "
            f"uv cache {du(home / '.cache/uv')}, pip cache {du(home / '.cache/pip')}"
        )
        if not a.no_download:
            dl, size, dl_rc = pip_download(clone, work, env)
            print(
                f"bare pip download of kiln[{EXTRAS}] and Label Studio, no cache: {dl:.0f} s, {size}"
                + (f" (exit {dl_rc})" if dl_rc else "")
            )
    finally:
        if not a.keep:
            stop_everything(clone, env)
    print()
    for what, ok, got in results:
        print(f"  {'PASS' if ok else 'FAIL'}  {what}: {got}")
    return 0 if all(ok for _, ok, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
