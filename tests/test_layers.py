"""Import layering, checked on the source (import-linter cannot follow the package-dir mapping
that installs controller/, runners/ … as kiln.controller, kiln.runners …).

Rules (STYLE.md): higher layers import lower ones, never back; the local and argo runners are
independent; the spec, state and controller layers never import ML or serving stacks at module
level (lazily inside a function is how heavy work is reached).
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import ROOT

FOLDERS = {"kiln": "kiln", "controller": "kiln.controller", "runners": "kiln.runners",
           "algorithms": "kiln.algorithms", "labeling": "kiln.labeling", "bento": "kiln.bento"}

# high -> low; a module may import its own layer and lower ones.
LAYERS = [
    {"kiln.cli"},
    {"kiln.controller"},
    {"kiln.runners", "kiln.algorithms", "kiln.labeling", "kiln.bento"},
    {"kiln.state", "kiln.validate", "kiln.validate_algorithms", "kiln.loader", "kiln.templates"},
    # data formats and preprocessing ops read specs, never the layers above: validate reads their
    # rules (op parameters, a CSV's header) so that the PR check refuses what apply would (#13)
    {"kiln.data"},
    # the algorithm catalogue is plain data about the algorithms (no training code), read by
    # validation and the schemas: it sits with the spec models
    {"kiln.api", "kiln.config", "kiln.algorithms.catalogue"},
    {"kiln._util", "kiln.errors", "kiln"},
]
HEAVY = ("torch", "torchvision", "sklearn", "bentoml", "label_studio_sdk", "tensorflow", "transformers",
         "sqlalchemy", "kubernetes", "dvc", "pandas", "hydra")
LIGHT = ("kiln.api", "kiln.loader", "kiln.validate", "kiln.config", "kiln.controller", "kiln.cli",
         "kiln.state.records", "kiln.state.lock", "kiln.state.snapshot")


def modules() -> dict[str, Path]:
    out = {}
    for folder, pkg in FOLDERS.items():
        for p in (ROOT / folder).rglob("*.py"):
            rel = p.relative_to(ROOT / folder).with_suffix("")
            parts = [x for x in rel.parts if x != "__init__"]
            out[".".join([pkg, *parts])] = p
    return out


def layer_of(mod: str) -> int | None:
    best = None
    for i, layer in enumerate(LAYERS):
        for prefix in layer:
            if mod == prefix or mod.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (i, len(prefix))
    return best[0] if best else None


def imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module level?) for every import in the file."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, id(node) in top))
    # imports under `if TYPE_CHECKING:` never run
    for n in tree.body:
        if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test):
            for sub in ast.walk(n):
                if isinstance(sub, (ast.Import, ast.ImportFrom)):
                    names = [a.name for a in sub.names] if isinstance(sub, ast.Import) else [sub.module]
                    found = [f for f in found if f[0] not in names]
    return found


def test_higher_layers_import_lower_ones_never_back() -> None:
    bad = []
    for mod, path in modules().items():
        mine = layer_of(mod)
        for target, _ in imports(path):
            if not target.startswith("kiln"):
                continue
            theirs = layer_of(target)
            if mine is not None and theirs is not None and theirs < mine:
                bad.append(f"{mod} imports {target}")
    assert not bad, "\n".join(bad)


def test_runners_are_independent() -> None:
    mods = modules()
    for a, b in (("kiln.runners.local", "kiln.runners.argo"), ("kiln.runners.argo", "kiln.runners.local")):
        assert not any(t.startswith(b) for t, _ in imports(mods[a])), f"{a} imports {b}"


def test_light_layers_do_not_import_heavy_stacks_at_module_level() -> None:
    bad = []
    for mod, path in modules().items():
        if not mod.startswith(LIGHT):
            continue
        for target, top in imports(path):
            if top and target.split(".")[0] in HEAVY:
                bad.append(f"{mod} imports {target} at module level")
    assert not bad, "\n".join(bad)
