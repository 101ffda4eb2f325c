"""Benchmark: versioning an image dataset through DatasetRepo vs bare `dvc add` + `dvc push`.

Both sides get the same files (tiny PNGs in 10 class folders) in separate fresh git repos, each with
a local remote, in the same run. Then 10 files are replaced and both re-version. Targets:
DatasetRepo <= 1.2x bare DVC; re-version <= 15% of the first version.

    .venv/bin/python bench/dataset_version.py [--files 10000]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_pngs(root: Path, n: int, salt: int = 0) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(salt)
    for i in range(n):
        d = root / f"class{i % 10}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(d / f"{i:06d}.png")


def change(root: Path, k: int) -> None:
    import numpy as np
    from PIL import Image

    for i, p in enumerate(sorted(root.rglob("*.png"))[:k]):
        p.unlink()  # hardlinked/protected by DVC: replace, do not edit in place
        Image.fromarray(np.full((8, 8, 3), i, dtype=np.uint8)).save(p)


def git_init(root: Path) -> None:
    subprocess.run(["git", "init", "-q", str(root)], check=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--changed", type=int, default=10)
    args = ap.parse_args()
    from kiln.data.versioning import DatasetRepo

    dvc = str(Path(sys.executable).with_name("dvc"))
    work = Path(tempfile.mkdtemp(prefix="kiln-bench-"))
    try:
        src = work / "src"
        make_pngs(src, args.files)
        bare, kiln = work / "bare", work / "kiln"
        for r in (bare, kiln):
            git_init(r)
            shutil.copytree(src, r / "data" / "ds")

        def run(*a: str) -> None:
            subprocess.run([dvc, *a], cwd=bare, check=True, capture_output=True)

        run("init", "-q")
        run("remote", "add", "-d", "local", str(work / "bare-remote"))

        t0 = time.perf_counter()
        run("add", "-q", "data/ds")
        run("push", "-q")
        t_bare = time.perf_counter() - t0

        dr = DatasetRepo(kiln, remote_url=str(work / "kiln-remote"))
        t0 = time.perf_counter()
        v1 = dr.add_version("data/ds")  # includes dvc init + config on a fresh repo
        t_kiln = time.perf_counter() - t0

        change(bare / "data" / "ds", args.changed)
        change(kiln / "data" / "ds", args.changed)
        t0 = time.perf_counter()
        run("add", "-q", "data/ds")
        run("push", "-q")
        t_bare2 = time.perf_counter() - t0
        t0 = time.perf_counter()
        v2 = dr.add_version("data/ds")
        t_kiln2 = time.perf_counter() - t0
        assert v2.id != v1.id and v2.files == args.files

        print(f"files={args.files} changed={args.changed}")
        print(f"first version:  bare dvc add+push {t_bare:7.2f}s   DatasetRepo {t_kiln:7.2f}s   ratio {t_kiln / t_bare:.2f}x (target <= 1.2x)")
        print(f"re-version:     bare dvc add+push {t_bare2:7.2f}s   DatasetRepo {t_kiln2:7.2f}s   ratio {t_kiln2 / t_bare2:.2f}x")
        print(f"re-version / first (DatasetRepo): {t_kiln2 / t_kiln:.1%} (target <= 15%)   bare dvc: {t_bare2 / t_bare:.1%}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
