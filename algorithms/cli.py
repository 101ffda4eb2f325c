"""``kiln algorithms list|describe``: the catalogue (``kiln.algorithms.catalogue``), for people and tools.

Reads only the catalogue, so it answers in milliseconds without scikit-learn, torch or TensorFlow.
``list -o markdown`` is what docs/algorithms.md holds (a test keeps the committed file current).
"""

from __future__ import annotations

import json
from typing import Any

import click

from kiln.algorithms.catalogue import ANY_TASK, TASKS, AlgorithmInfo, Param, algorithm_info, algorithms_for

DOC_HEADER = """# Algorithms

Generated from the catalogue (`algorithms/catalogue.py`) by
`kiln algorithms list -o markdown > docs/algorithms.md`; a test fails when it is stale.
Set `spec.algorithm.name` (or `automl.candidates[].name`) of an Experiment to a name below, its
`hyperparameters` and `searchSpace` to names of its table; `objective.metric` is one of the
metrics it reports while training. `kiln validate` checks all of these, and `kiln algorithms
describe NAME` prints one algorithm's table.

Ranges: `[a, b]` includes both ends, `(a, b]` excludes a; `null` where a parameter allows it
means what its line says. ONNX: `register.export: [onnx]` is possible, and with it a Deployment's
`runtime: onnx`.
"""


def _default(p: Param) -> str:
    if p.default is None or isinstance(p.default, bool):
        return json.dumps(p.default)  # YAML's spelling: null, true, false
    return str(p.default)


def _range(p: Param) -> str:
    text = p.range_text()
    return f"{text} | null" if p.nullable and text else ("null" if p.nullable else text)


def _aligned(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]


def _markdown(header: list[str], rows: list[list[str]]) -> list[str]:
    # controller/report.py has its own: the algorithms layer does not import the controller
    def esc(c: str) -> str:
        return c.replace("|", "\\|")

    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(esc(c) for c in r) + " |" for r in rows)]


def _trains_on(a: AlgorithmInfo) -> str:
    if ANY_TASK in a.data_tasks:
        return f"any {a.data_type} dataset, labelled or not"
    return f"{a.data_type} datasets of task {' or '.join(a.data_tasks)}"


def _overview_rows(algos: list[AlgorithmInfo]) -> list[list[str]]:
    return [[a.name, a.task, a.data_type, a.framework, "yes" if a.onnx else "no", ", ".join(a.runtimes)]
            for a in algos]


_OVERVIEW = ["NAME", "TASK", "DATA", "FRAMEWORK", "ONNX", "RUNTIMES"]
_PARAMS = ["HYPERPARAMETER", "TYPE", "DEFAULT", "RANGE", "MEANING"]


def _param_rows(a: AlgorithmInfo) -> list[list[str]]:
    return [[p.name, p.type, _default(p), _range(p), p.help] for p in a.hyperparameters]


def describe_text(a: AlgorithmInfo) -> str:
    lines = [f"{a.name}: {a.summary}",
             f"task {a.task}, trains on {_trains_on(a)}; "
             f"framework {a.framework}" + (f" (needs {a.package})" if a.package else ""),
             f"ONNX export: {'yes' if a.onnx else 'no'}; serving runtimes: {', '.join(a.runtimes)}",
             "", *_aligned(_PARAMS, _param_rows(a)), "",
             "metrics reported while training (objective.metric): " + ", ".join(a.metrics)]
    return "\n".join(lines)


def markdown(algos: list[AlgorithmInfo]) -> str:
    """docs/algorithms.md: an overview table, then each algorithm's hyperparameters and metrics."""
    out = [DOC_HEADER, *_markdown(["Name", "Task", "Data", "Framework", "ONNX", "Runtimes"],
                                  [[f"[`{r[0]}`](#{r[0]})", *r[1:]] for r in _overview_rows(algos)])]
    for a in algos:
        out += ["", f"## {a.name}", "", a.summary, "",
                f"Task **{a.task}**, trains on {_trains_on(a)}; "
                f"framework {a.framework}" + (f" (needs `{a.package}`)" if a.package else "") + "; "
                f"ONNX export {'yes' if a.onnx else 'no'}; runtimes {', '.join(a.runtimes)}.", "",
                *_markdown(["Hyperparameter", "Type", "Default", "Range", "Meaning"],
                           [[f"`{r[0]}`", *r[1:]] for r in _param_rows(a)]), "",
                "Metrics: " + ", ".join(f"`{m}`" for m in a.metrics)]
    return "\n".join(out) + "\n"


@click.group()
def algorithms() -> None:
    """The built-in algorithms: names, hyperparameters, metrics, export (no ML library imported)."""


@algorithms.command("list")
@click.option("--task", type=click.Choice(TASKS), default=None, help="Only the algorithms of this task.")
@click.option("-o", "--output", "output", type=click.Choice(["table", "json", "markdown"]), default="table",
              show_default=True)
def list_(task: str | None, output: str) -> int:
    """Every algorithm (or one task's): task, data, framework, ONNX export, serving runtimes."""
    algos = algorithms_for(task)
    if output == "json":
        click.echo(json.dumps([a.as_dict() for a in algos], indent=2))
    elif output == "markdown":
        click.echo(markdown(algos), nl=False)
    else:
        click.echo("\n".join(_aligned(_OVERVIEW, _overview_rows(algos))))
    return 0


@algorithms.command()
@click.argument("name")
@click.option("-o", "--output", "output", type=click.Choice(["table", "json"]), default="table", show_default=True)
def describe(name: str, output: str) -> int:
    """One algorithm: hyperparameters with defaults and ranges, metrics, export and runtimes."""
    a = algorithm_info(name)  # unknown: KilnError with a did-you-mean, exit 1
    payload: Any = a.as_dict() if output == "json" else None
    click.echo(json.dumps(payload, indent=2) if payload is not None else describe_text(a))
    return 0
