"""Label Studio labeling configs, one per kiln task, built from a list of classes.

Label Studio describes the annotation UI as XML. kiln generates it (never hand-written) so the control
tag, its ``name`` and the data field are fixed per task, which is what the exporter relies on::

    classification          <Image name="image" value="$image"/>  <Choices name="label" toName="image">
    detection               <Image …/>  <RectangleLabels name="label" toName="image">
    instance-segmentation   <Image …/>  <PolygonLabels name="label" toName="image">
    semantic-segmentation   <Image …/>  <BrushLabels name="label" toName="image">
    tabular-classification  <Table name="row" value="$row"/> (or <Text …/>)  <Choices name="label" toName="row">
    tabular-regression      <Table …/>  <Number name="label" toName="row">

``classes_of(xml)`` reads the classes back from a config the server holds, so drift (a class renamed in
the Label Studio UI by hand) can be detected by comparing lists.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass

from kiln.errors import ConfigError

CONTROL_NAME = "label"  # the from_name every kiln config uses
IMAGE_FIELD = "image"  # task data key of the image URL
ROW_FIELD = "row"  # task data key of a tabular row (dict column -> value, or text)


@dataclass(frozen=True)
class TaskKind:
    control: str  # Label Studio control tag
    item: str  # label tag inside the control ("" when the control has no classes)
    object_tag: str  # the object the control labels
    field: str  # task data key


# One entry per task; "tabular" (the dataset model's name) means tabular classification.
TASK_KINDS: dict[str, TaskKind] = {
    "classification": TaskKind("Choices", "Choice", "Image", IMAGE_FIELD),
    "detection": TaskKind("RectangleLabels", "Label", "Image", IMAGE_FIELD),
    "instance-segmentation": TaskKind("PolygonLabels", "Label", "Image", IMAGE_FIELD),
    "semantic-segmentation": TaskKind("BrushLabels", "Label", "Image", IMAGE_FIELD),
    "tabular-classification": TaskKind("Choices", "Choice", "Table", ROW_FIELD),
    "tabular-regression": TaskKind("Number", "", "Table", ROW_FIELD),
}
_ALIASES = {"tabular": "tabular-classification", "image-classification": "classification",
            "object-detection": "detection", "segmentation": "semantic-segmentation"}

_TABULAR_VIEWS = {"table": "Table", "text": "Text"}


def task_kind(task: str) -> tuple[str, TaskKind]:
    """Canonical task name and its kind; unknown names -> ConfigError listing the valid ones."""
    name = _ALIASES.get(task, task)
    try:
        return name, TASK_KINDS[name]
    except KeyError:
        raise ConfigError(f"unknown labeling task {task!r}; valid: {', '.join(TASK_KINDS)}") from None


def label_config(task: str, classes: Sequence[str], *, colors: dict[str, str] | None = None,
                 instructions: str | None = None, view: str = "table") -> str:
    """The XML config for ``task`` with ``classes`` in the given order.

    ``view`` picks how a tabular row is shown: ``table`` (a key/value table, row is a dict) or ``text``.
    """
    name, kind = task_kind(task)
    if kind.item and not classes:
        raise ConfigError(f"labeling task {name} needs at least one class")
    if len(set(classes)) != len(classes):
        raise ConfigError(f"labeling classes have duplicates: {sorted({c for c in classes if list(classes).count(c) > 1})}")
    root = ET.Element("View")
    if instructions:
        ET.SubElement(root, "Header", value=instructions)
    obj_tag = kind.object_tag
    if kind.field == ROW_FIELD:
        try:
            obj_tag = _TABULAR_VIEWS[view]
        except KeyError:
            raise ConfigError(f"unknown tabular view {view!r}; valid: {', '.join(_TABULAR_VIEWS)}") from None
    obj_attrs = {"name": kind.field, "value": f"${kind.field}"}
    if obj_tag == "Image":
        obj_attrs["zoom"] = "true"
    ET.SubElement(root, obj_tag, obj_attrs)
    ctl_attrs = {"name": CONTROL_NAME, "toName": kind.field}
    if kind.control == "Choices":
        ctl_attrs.update(choice="single", showInline="true")
    if kind.control == "Number":
        ctl_attrs.update(required="true")
    ctl = ET.SubElement(root, kind.control, ctl_attrs)
    for c in classes if kind.item else ():
        attrs = {"value": c}
        if colors and c in colors:
            attrs["background"] = colors[c]
        ET.SubElement(ctl, kind.item, attrs)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode")


def classes_of(xml: str, task: str) -> list[str]:
    """Classes in the control tag of a config (server side); [] for a config without one."""
    _, kind = task_kind(task)
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise ConfigError(f"label config is not valid XML: {e}") from None
    for ctl in root.iter(kind.control):
        if ctl.get("name") == CONTROL_NAME:
            return [el.get("value", "") for el in ctl.iter(kind.item)] if kind.item else []
    return []
