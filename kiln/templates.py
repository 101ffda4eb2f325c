"""Templates: "save as template, reuse on another dataset" through hydra composition.

A template is a partial spec document in the templates folder (default ``specs/templates/``).
A spec starts from one or more templates with hydra's ``defaults`` list and may add hydra
override strings::

    apiVersion: kiln.dev/v1alpha1
    kind: Experiment
    defaults: [image-classification, _self_]   # specs/templates/image-classification.yaml
    overrides: ["spec.algorithm.hyperparameters.learning_rate=0.01"]
    metadata: {name: cats-v2}
    spec:
      dataset: {name: cats}

Values in the document itself win over the templates (``_self_`` last, hydra's rule); overrides
win over both. ``kiln render KIND/NAME`` prints the composed result.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

from kiln.errors import KilnError

_lock = threading.Lock()  # hydra's GlobalHydra and ConfigStore are process-wide singletons


class TemplateError(KilnError):
    pass


def template_file(templates_dir: Path | None, name: str) -> Path | None:
    """The file of template ``name`` (a ``defaults`` entry), or None when there is none."""
    if templates_dir is None or not name or ".." in Path(name).parts or Path(name).is_absolute():
        return None
    f = templates_dir / f"{name}.yaml"  # hydra's name: a path below the folder, without .yaml
    return f if f.is_file() else None


def compose(doc: dict[str, Any], templates_dir: Path | None) -> dict[str, Any]:
    """The document composed from its templates and overrides, as hydra composes it.

    Most specs use the plain part of hydra: template names, values, ``key=value``, ``+key=value``
    and ``~key``. Those are composed here directly (``compose_plain``), since importing hydra and
    OmegaConf alone takes about 0.2 s of CPU, more than the rest of ``kiln validate``; anything
    else (interpolations, config groups, nested defaults, values whose reading could differ, every
    error) goes to hydra itself (``compose_hydra``), so hydra stays the reference. A contract test
    composes the same documents both ways."""
    try:
        return compose_plain(doc, templates_dir)
    except _NotPlain:
        return compose_hydra(doc, templates_dir)


class _NotPlain(Exception):
    """Outside what ``compose_plain`` composes exactly as hydra does: let hydra do it."""


_INT = re.compile(r"[+-]?(0|[1-9]\d*)")
_FLOAT = re.compile(r"[+-]?(\d+\.\d*|\.\d+)")
_WORD = re.compile(r"[A-Za-z_][\w\-./]*")
_KEY = re.compile(r"([+~]?)([A-Za-z_][\w-]*(?:\.[A-Za-z_][\w-]*)*)(?:=(.*))?", re.S)
# strings that OmegaConf's YAML reading (or hydra's grammar) could take for something else
_AMBIGUOUS = re.compile(r"[-+.\d_:eE]*\d[-+.\d_:eE]*|[-+]?\.?(inf|nan)|\?\?\?", re.I)


def _override_value(text: str) -> Any:
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "null":
        return None
    if _WORD.fullmatch(text) and low not in ("nan", "inf"):
        return text
    raise _NotPlain


def _plain(value: Any, read: bool) -> None:
    """Raise _NotPlain unless OmegaConf takes ``value`` as it is: no interpolation, no missing
    value (``???``), plain types; ``read``: a template's value, which OmegaConf reads from its
    YAML itself, so no string that its reader could take for a number either."""
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise _NotPlain
            _plain(v, read)
    elif isinstance(value, list):
        for v in value:
            _plain(v, read)
    elif isinstance(value, str):
        if "${" in value or value == "???" or read and _AMBIGUOUS.fullmatch(value):
            raise _NotPlain
    elif value is not None and not isinstance(value, (bool, int, float)):
        raise _NotPlain  # dates, binary: OmegaConf reads them differently


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """OmegaConf's merge of untyped configs: mappings merge key by key, anything else replaces."""
    out = dict(base)
    for k, v in top.items():
        if isinstance(out.get(k), dict) and isinstance(v, dict):
            out[k] = _merge(out[k], v)
        elif k in out and out[k] is not None and v is not None and isinstance(out[k], dict) != isinstance(v, dict):
            raise _NotPlain  # a mapping against a value: OmegaConf's rules vary
        else:
            out[k] = v
    return out


def compose_plain(doc: dict[str, Any], templates_dir: Path | None) -> dict[str, Any]:
    """``compose`` for the plain part of hydra (see there); raises _NotPlain for the rest."""
    import copy

    import yaml

    from kiln._util.yamlpos import _Loader

    overrides = doc.get("overrides", []) or []
    defaults = doc.get("defaults", [])
    if not isinstance(overrides, list) or not isinstance(defaults, list) or templates_dir is None:
        raise _NotPlain
    own = {k: v for k, v in doc.items() if k not in ("defaults", "overrides")}
    _plain(own, read=False)
    order = [*defaults, "_self_"] if "_self_" not in defaults else defaults
    out: dict[str, Any] = {}
    for name in order:
        if name == "_self_":
            out = _merge(out, copy.deepcopy(own))
            continue
        if not isinstance(name, str) or "/" in name or order.count(name) > 1:
            raise _NotPlain  # config groups, options, repeats: hydra's rules
        f = template_file(templates_dir, name)
        if f is None:
            raise _NotPlain
        text = f.read_text(encoding="utf-8")
        try:
            data = yaml.load(text, Loader=_Loader)  # refuses duplicate keys, as OmegaConf does
        except yaml.YAMLError:
            raise _NotPlain from None
        data = {} if data is None else data
        if not isinstance(data, dict) or "defaults" in data:
            raise _NotPlain
        _plain(data, read=True)
        out = _merge(out, data)
    for o in overrides:
        m = _KEY.fullmatch(o) if isinstance(o, str) else None
        if m is None:
            raise _NotPlain
        sign, key, value = m.groups()
        *parents, leaf = key.split(".")
        node: Any = out
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            raise _NotPlain
        if sign == "~":
            if value is not None or leaf not in node:
                raise _NotPlain
            del node[leaf]
        elif value is None or (leaf in node) != (sign == ""):  # `key=` needs the key, `+key=` needs it absent
            raise _NotPlain
        else:
            node[leaf] = _override_value(value)
    return out


def compose_hydra(doc: dict[str, Any], templates_dir: Path | None) -> dict[str, Any]:
    import yaml
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    doc = dict(doc)
    overrides = doc.pop("overrides", []) or []
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise TemplateError("overrides must be a list of strings such as 'spec.hpo.maxTrials=20'")
    defaults = doc.get("defaults", [])
    if not isinstance(defaults, list):
        raise TemplateError("defaults must be a list of template names")
    if defaults and (templates_dir is None or not templates_dir.is_dir()):
        raise TemplateError(f"templates folder {templates_dir} does not exist",
                            hint="create it, or set `templates:` in kiln.yaml")
    if "_self_" not in defaults and defaults:
        doc["defaults"] = [*defaults, "_self_"]  # the document wins over its templates
    with _lock:
        GlobalHydra.instance().clear()
        ConfigStore.instance().store(name="__kiln_spec__", node=OmegaConf.create(doc))
        try:
            with initialize_config_dir(config_dir=str(Path(templates_dir or ".").resolve()),
                                       version_base=None):
                cfg = hydra_compose(config_name="__kiln_spec__", overrides=overrides)
        except (HydraException, OmegaConfBaseException, yaml.YAMLError) as exc:  # hydra lets a template's YAML error through
            first = str(exc).strip().splitlines()[0]
            names = sorted(p.stem for p in Path(templates_dir).glob("*.yaml")) if templates_dir else []
            raise TemplateError(f"cannot compose templates: {first}",
                                hint=f"templates available: {', '.join(names) or 'none'}") from None
        finally:
            GlobalHydra.instance().clear()
        out = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(out, dict)
    out.pop("defaults", None)
    return {str(k): v for k, v in out.items()}
