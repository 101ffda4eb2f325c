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
