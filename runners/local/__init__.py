"""kiln's embedded Argo Workflows runner: executes a ``Workflow`` manifest on this machine.

Each container/script step runs as a host subprocess (the image is not run: busybox/alpine/bash/
python/ubuntu/debian map to the host's tools, ``python`` to ``sys.executable``, and
``argoproj/argosay:v2`` without a command to a built-in shim). Steps, DAGs, parameters,
artifacts, retries, timeouts, exit handlers and memoization follow Argo's semantics.

Persisted layout, one folder per run (``<workdir>/<workflow-name>/``)::

    workflow.json     manifest + Argo-shaped ``status``; rewritten atomically (temp + os.replace)
                      at most every ``flush_interval`` seconds while nodes change, and at the end.
                      metadata.annotations carry kiln.dev/runner-pid and kiln.dev/run-hash.
    nodes.jsonl       journal of node records since that snapshot, one JSON object (a full
                      status node, as in ``status.nodes``) per line, appended with one write(2)
                      on an O_APPEND fd whenever a node reaches a final phase, before anything
                      that depends on it starts; removed once the final workflow.json is written
    pods.jsonl        pids of the pods started (journal.py); removed once the run is over
    logs/<node>.log   stdout+stderr of one pod node
    artifacts/<node>/<artifact-name>   output artifacts (file or folder, stored as is)
    tmp/<node>/       a pod's sandbox: cwd, script file, and the host paths its container
                      paths (/tmp/out.txt ...) are rewritten to, so parallel pods never collide
    stop              a stop request (written by ``stop()`` from any process)

Memoization cache: ``<workdir>/../cache/<configmap>/<sha256 of key>.json`` =
``{"key", "cacheName", "nodeID", "outputs", "createdAt"}``.

Why a snapshot plus a journal, and how readers replay one over the other: see ``journal.py``.

The package, along its seams (only the names in ``__all__`` are public)::

    common.py       phases, template kinds, Argo's name hash and durations
    validation.py   manifest checks at submit
    journal.py      nodes.jsonl / pods.jsonl: the crash journal, its replay, orphan reaping
    state.py        one run's nodes, workflow.json snapshots, stop and deadlines (RunState)
    interpreter.py  the template interpreter: steps, retries, loops, hooks, memoization (_Run)
    dag.py          a DAG template's run (DagRun)
    pod.py          a pod's run as a host process (Pod)
    admission.py    the pod gate, spec.parallelism tokens, the worker pool
    runner.py       the facade, LocalRunner

Stop requests go through the ``stop`` file, polled every 0.1 s by the run's housekeeper, not a
signal: the runner is often embedded in a bigger process (the controller) that a stray signal
would kill.
"""

from __future__ import annotations

from kiln.runners.local.common import DONE, FAILED, HOST_IMAGES, TEMPLATE_KINDS, fnv32a, parse_duration
from kiln.runners.local.journal import JOURNAL, PODS, reap_orphans, replay_journal
from kiln.runners.local.runner import LocalRunner
from kiln.runners.local.validation import parse_depends, validate

__all__ = ["LocalRunner", "validate", "parse_duration", "HOST_IMAGES", "DONE", "FAILED", "TEMPLATE_KINDS",
           "JOURNAL", "PODS", "fnv32a", "parse_depends", "reap_orphans", "replay_journal"]
