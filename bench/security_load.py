"""Hostile load on a deployment (issue #20's acceptance), loopback only: 8 paced clients, 10 % of
whose requests are attacks (kiln.bento.hostile: pixel bombs, slow, huge and deep bodies, bad JSON,
wrong content types, bad tokens), against the same clients without the attacks. The same load as
``tests/bento/test_security_load.py``, runnable alone and repeatable.

Model: a small torch MLP over 8 x 8 grey images (untrained: only the serving path is measured),
served by a real kiln deployment (BentoML + fast path) with a token, 256 KiB body limit and 2 s
timeout. Each round is 10 s without attacks and 20 s with them, in four interleaved pairs of
blocks (kiln.bento.hostile.interleaved), so both phases meet the same neighbours on a shared
machine.

    .venv/bin/python bench/security_load.py [--rounds 3] [--baseline 10] [--attack 20]
                                            [--rate 20] [--only pixel-bomb,slow-body]
                                            [--max-image-pixels 200000000]

Prints per round: valid p50/p99 and peak RSS of the server's processes in both phases, the
ratios (targets: p99 <= 3x, RSS <= 1.5x), and the answers each attack got.
"""

from __future__ import annotations

import argparse
import base64
import io
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--baseline", type=float, default=10)
    ap.add_argument("--attack", type=float, default=20)
    ap.add_argument("--pairs", type=int, default=4, help="interleaved (baseline, attack) blocks")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--rate", type=float, default=20, help="requests a second per client")
    ap.add_argument("--every", type=int, default=10, help="every Nth request is an attack")
    ap.add_argument("--only", default="", help="comma-separated attack kinds (default: all)")
    ap.add_argument("--max-image-pixels", type=int, default=None,
                    help="limits.maxImagePixels (e.g. 200000000 lets the pixel bombs decode: the check should fail)")
    args = ap.parse_args()

    import torch
    from PIL import Image

    from kiln.bento import hostile
    from kiln.bento.auth import TokenStore
    from kiln.bento.fastpath import ServeConfig
    from kiln.bento.registry import Registry, default_home
    from kiln.bento.server import ManagedServer, server_processes

    if args.only:
        kinds = tuple(args.only.split(","))
        unknown = set(kinds) - set(hostile.ATTACKS)
        if unknown:
            ap.error(f"unknown attack kinds {sorted(unknown)}; known: {', '.join(hostile.ATTACKS)}")
        hostile.ATTACKS = kinds  # type: ignore[misc]  # run_phase cycles through these

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(),
                                torch.nn.Linear(32, 10), torch.nn.Softmax(dim=1)).eval()
    repo = Path(tempfile.mkdtemp(prefix="kiln-bench-security-"))
    reg = Registry(default_home(repo))
    v = reg.register("digits", model, "torch", serving={
        "task": "classification", "input": "image", "labels": [str(i) for i in range(10)],
        "image": {"size": [8, 8], "mode": "L"}, "top_k": 3})
    buf = io.BytesIO()
    Image.fromarray((np.arange(64).reshape(8, 8) * 4).astype(np.uint8)).save(buf, format="PNG")
    inst = {"data": base64.b64encode(buf.getvalue()).decode()}
    cfg = ServeConfig(deployment="sec-bench", model="digits", version=v,
                      limits={"maxPayloadBytes": 256 * 1024, "timeoutSeconds": 2,
                              "maxImagePixels": args.max_image_pixels})
    token = TokenStore(repo / ".kiln/serving/tokens.json").create("sec-bench")
    print(f"security load: {args.clients} clients x {args.rate:g} req/s, every {args.every}th request an attack "
          f"({', '.join(hostile.ATTACKS)}); baseline {args.baseline:g}s and attack {args.attack:g}s "
          f"in {args.pairs} interleaved pairs, {args.rounds} round(s)")
    p99s, rss = [], []
    with ManagedServer(cfg, repo) as srv:
        t = hostile.Target(f"{srv.url}/predict", token, inst, max_payload=cfg.limits.maxPayloadBytes,
                           max_instances=cfg.limits.maxInstances)
        for i in range(args.rounds):
            ph = hostile.run(t, hostile.interleaved(args.baseline, args.attack, pairs=args.pairs),
                             clients=args.clients, rate=args.rate, attack_every=args.every,
                             pids=lambda: server_processes(srv.server_id))
            base, bad = ph["baseline"], ph["attack"]
            p99s.append(bad.p(.99) / base.p(.99))
            rss.append(bad.peak_rss / base.peak_rss)
            wrong = {k: dict(c) for k, c in bad.bad.items() if set(c) != {hostile.EXPECTED[k]}}
            print(f"round {i + 1}: load average {hostile.loadavg()}\n  baseline {base.summary()}\n"
                  f"  attack   {bad.summary()}\n  p99 x{p99s[-1]:.2f}, peak RSS x{rss[-1]:.3f}; valid codes "
                  f"{dict(bad.valid_codes)}; attacks {'all answered as expected' if not wrong else wrong}: "
                  f"{ {k: dict(c) for k, c in sorted(bad.bad.items())} }")
    print(f"p99 ratio {min(p99s):.2f}-{max(p99s):.2f} (target <= 3), peak RSS ratio {min(rss):.3f}-{max(rss):.3f} "
          f"(target <= 1.5) over {args.rounds} round(s)")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
