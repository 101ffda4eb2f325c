"""`kiln step` processes end without the interpreter's teardown (kiln.cli._exit_now): what a
normal exit guarantees must still hold."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT

SNIPPET = r"""
import atexit, sys, threading, time
from pathlib import Path
from kiln.cli import _exit_now
out = Path(sys.argv[1])
atexit.register(lambda: (out / "atexit").write_text("ran"))
def late():
    time.sleep(0.3)
    (out / "thread").write_text("joined")
threading.Thread(target=late).start()  # non-daemon: an exit waits for it
from concurrent.futures import ThreadPoolExecutor
pool = ThreadPoolExecutor(2)  # never shut down: its idle workers must not hold the exit
pool.submit(lambda: None).result()
sys.stdout.write("buffered, no newline")
sys.stderr.write("err too")
_exit_now(3)
"""


def test_exit_now_joins_threads_runs_atexit_and_flushes(tmp_path: Path) -> None:
    p = subprocess.run([sys.executable, "-c", SNIPPET, str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 3
    assert p.stdout == "buffered, no newline"
    assert p.stderr == "err too"
    assert (tmp_path / "atexit").read_text() == "ran"
    assert (tmp_path / "thread").read_text() == "joined"


def test_step_process_exit_code_and_message(tmp_path: Path) -> None:
    """A step that cannot run: its error message and exit code still come out of the fast exit."""
    spec = json.dumps({"apiVersion": "kiln.dev/v1alpha1", "kind": "Dataset", "metadata": {"name": "d"}, "spec": {}})
    p = subprocess.run([sys.executable, "-m", "kiln.cli", "--repo", str(tmp_path), "step", "dataset.no-such-step",
                        "--object", "Dataset/default/d", "--spec", spec, "--spec-hash", "x"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode != 0
    assert "step 'dataset.no-such-step' is not available" in p.stderr
    assert "Traceback" not in p.stderr
