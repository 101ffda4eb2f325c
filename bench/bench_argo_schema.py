"""Cost of Argo schema validation: first build (load + validator) vs per-manifest validate.

Baseline measured in the same run: rebuilding the validator for every call (what a naive caller
would do), and the one-time ``check_schema`` that we deliberately skip at run time.
Run: ``python bench/bench_argo_schema.py [examples-dir]``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import jsonschema
import yaml


def main() -> None:
    default = Path(__file__).resolve().parents[2] / "shared" / "argo" / "examples"
    if not default.is_dir():
        default = Path(__file__).resolve().parents[3] / "shared" / "argo" / "examples"
    examples = Path(sys.argv[1]) if len(sys.argv) > 1 else default
    docs = [d for p in sorted(examples.rglob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]

    t0 = time.perf_counter()
    from kiln.runners import schema  # noqa: PLC0415 - import time is part of the first-use cost

    schema.validator_for("Workflow")
    first_build = time.perf_counter() - t0

    t0 = time.perf_counter()
    assert all(schema.validate_workflow(d) == [] for d in docs)
    first_pass = time.perf_counter() - t0

    rounds = 20
    t0 = time.perf_counter()
    for _ in range(rounds):
        for d in docs:
            schema.validate_workflow(d)
    per_validate = (time.perf_counter() - t0) / (rounds * len(docs))

    # baseline: a fresh validator (fresh reference resolution) for every manifest
    t0 = time.perf_counter()
    for d in docs:
        schema.validator_for.cache_clear()
        schema._schema.cache_clear()
        schema.validate_workflow(d)
    per_validate_uncached = (time.perf_counter() - t0) / len(docs)

    t0 = time.perf_counter()
    jsonschema.Draft202012Validator.check_schema(schema.validator_for("Workflow").schema)
    check_schema = time.perf_counter() - t0

    print(f"manifests: {len(docs)} from {examples}")
    print(f"first build (import + load JSON + validator): {first_build * 1e3:8.1f} ms")
    print(f"first validation pass over all manifests:     {first_pass * 1e3:8.1f} ms")
    print(f"per validate (cached validator):              {per_validate * 1e3:8.3f} ms")
    print(f"per validate (rebuilt each time, baseline):   {per_validate_uncached * 1e3:8.3f} ms"
          f"  -> cached is {per_validate_uncached / per_validate:.1f}x faster")
    print(f"check_schema (skipped at run time):           {check_schema * 1e3:8.1f} ms"
          f"  = {check_schema / per_validate:.0f} validations")


if __name__ == "__main__":
    main()
