"""Issue #20's load test: a real deployment under 8 paced clients, 10 % of whose requests are
attacks (pixel bombs, slow, huge and deep bodies, bad JSON, wrong types, bad tokens; see
kiln.bento.hostile), against the same clients without the attacks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kiln.bento.auth import TokenStore
from kiln.bento.fastpath import ServeConfig
from kiln.bento.hostile import ATTACKS, EXPECTED, Phase, Target, interleaved, loadavg, run
from kiln.bento.server import ManagedServer, server_processes
from tests.bento.conftest import png_b64

ROW_IRIS = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
# a 2 s timeout lets slow bodies come and go within an attack block
LIMITS = {"maxPayloadBytes": 256 * 1024, "timeoutSeconds": 2}


def _hostile(repo: Path, model: str, instance: dict, blocks: list[tuple[str, float]]) -> dict[str, Phase]:
    cfg = ServeConfig(deployment=f"sec-load-{model}", model=model, version=1, limits=LIMITS)
    token = TokenStore(repo / ".kiln/serving/tokens.json").create(cfg.deployment)
    with ManagedServer(cfg, repo) as srv:
        t = Target(f"{srv.url}/predict", token, instance, max_payload=cfg.limits.maxPayloadBytes,
                   max_instances=cfg.limits.maxInstances)
        phases = run(t, blocks, clients=8, rate=20, attack_every=10, pids=lambda: server_processes(srv.server_id))
    base, hostile = phases["baseline"], phases["attack"]
    print(f"\n{model} baseline: {base.summary()}\n{model} hostile:  {hostile.summary()}\nload average {loadavg()}")
    print("attacks:", {k: dict(v) for k, v in sorted(hostile.bad.items())})
    # no 5xx and no refusal of a valid request; every attack gets its one right answer
    assert base.valid_codes == {200: len(base.valid_s)}, base.valid_codes
    assert hostile.valid_codes == {200: len(hostile.valid_s)}, hostile.valid_codes
    assert set(hostile.bad) == set(ATTACKS), sorted(hostile.bad)
    wrong = {k: dict(c) for k, c in hostile.bad.items() if set(c) != {EXPECTED[k]}}
    assert not wrong, f"attacks answered other than {EXPECTED}: {wrong}"
    n_bad = sum(sum(c.values()) for c in hostile.bad.values())
    assert 0.08 <= n_bad / hostile.sent <= 0.12, (n_bad, hostile.sent)
    return phases


@pytest.mark.slow
def test_hostile_load_no_5xx_valid_p99_within_3x_memory_within_1_5x(serving_repo: Path) -> None:
    """The acceptance run: the digits image model (torch, 8 x 8), so pixel bombs reach the
    decoder; 10 s without attacks and 20 s with, in four interleaved pairs of blocks."""
    inst = {"data": png_b64(np.arange(64).reshape(8, 8) * 4)}
    phases = _hostile(serving_repo, "digits", inst, interleaved(10, 20, pairs=4))
    base, hostile = phases["baseline"], phases["attack"]
    assert hostile.p(0.99) <= 3 * base.p(0.99), (hostile.p(0.99), base.p(0.99))
    assert hostile.peak_rss <= 1.5 * base.peak_rss, (hostile.peak_rss, base.peak_rss)


@pytest.mark.slow
def test_hostile_load_on_a_tabular_model_gets_only_4xx(serving_repo: Path) -> None:
    """The same attacks on the iris model (ONNX behind a preprocessing pipeline), shorter and
    for the answers only: its fields are read as numbers, where a field nested 1,000 deep was a
    500 (RecursionError in the error message)."""
    _hostile(serving_repo, "iris", ROW_IRIS, interleaved(2, 6, pairs=1))
