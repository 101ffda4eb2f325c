"""What apply reports, as typed events: the CLI renders them as text, ``kiln controller`` logs
and counts them from their fields. No consumer parses the text, so its format is free to change.

``render(event)`` is the one place the lines ``kiln apply`` prints are written (tests compare
them)::

      Dataset/iris: unchanged, skipping                 Unchanged
      LabelingJob/shapes: labelling in progress ...     Noted
    ! Deployment/api: not applied: ...                  NotApplied
    ! Experiment/a: busy: kiln apply (pid 7 ...) ...    Busy (another process applies it)
    ~ Dataset/iris: create (specs/d.yaml:1)             ObjectStarted
        = workflow: done before, skipping               StepSkipped
        + workflow: run workflow kiln-data-iris ...     StepDone
    x Dataset/iris: fetch: no such file                 ObjectFailed (+ Traceback with KILN_DEBUG)
    - Dataset/iris: delete                              DeleteStarted
        - delete workflow kiln-data-iris                DeleteAction
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ApplyEvent:
    """One thing apply did or decided about the object ``key`` (shown as ``ref``)."""

    key: str
    ref: str

    # what apply *does* is news (logged at info); skipping, notes and polling are not
    news = False


@dataclass(frozen=True)
class Unchanged(ApplyEvent):
    pass


@dataclass(frozen=True)
class Noted(ApplyEvent):
    """An unchanged object with something to say (polling, a new input, a kept spec-less object)."""

    note: str


@dataclass(frozen=True)
class NotApplied(ApplyEvent):
    message: str
    news = True


@dataclass(frozen=True)
class Busy(ApplyEvent):
    """Another kiln process applies this object (or one it depends on): left to that process."""

    message: str
    news = True


@dataclass(frozen=True)
class ObjectStarted(ApplyEvent):
    action: str          # create | update
    source: str          # file:line of the spec
    work: str = ""       # an update's class and fields: what apply does (``plan.Change.work``)
    news = True


@dataclass(frozen=True)
class StepSkipped(ApplyEvent):
    step: str


@dataclass(frozen=True)
class StepDone(ApplyEvent):
    step: str
    describe: str
    news = True


@dataclass(frozen=True)
class ObjectFailed(ApplyEvent):
    message: str
    news = True


@dataclass(frozen=True)
class Traceback(ApplyEvent):
    """The traceback of an unexpected error (only with ``KILN_DEBUG``)."""

    text: str


@dataclass(frozen=True)
class DeleteStarted(ApplyEvent):
    news = True


@dataclass(frozen=True)
class DeleteAction(ApplyEvent):
    action: str
    news = True


@dataclass(frozen=True)
class Log(ApplyEvent):
    """A line a handler step logs through ``Context.log``, printed as is."""

    text: str


Listener = Callable[[ApplyEvent], None]


def render(ev: ApplyEvent) -> str:
    """The line ``kiln apply`` prints for ``ev``."""
    if isinstance(ev, Unchanged):
        return f"  {ev.ref}: unchanged, skipping"
    if isinstance(ev, Noted):
        return f"  {ev.ref}: {ev.note}"
    if isinstance(ev, NotApplied):
        return f"! {ev.ref}: not applied: {ev.message}"
    if isinstance(ev, Busy):
        return f"! {ev.ref}: busy: {ev.message}"
    if isinstance(ev, ObjectStarted):
        return f"~ {ev.ref}: {ev.action}{', ' + ev.work if ev.work else ''} ({ev.source})"
    if isinstance(ev, StepSkipped):
        return f"    = {ev.step}: done before, skipping"
    if isinstance(ev, StepDone):
        return f"    + {ev.step}: {ev.describe}"
    if isinstance(ev, ObjectFailed):
        return f"x {ev.ref}: {ev.message}"
    if isinstance(ev, DeleteStarted):
        return f"- {ev.ref}: delete"
    if isinstance(ev, DeleteAction):
        return f"    - {ev.action}"
    if isinstance(ev, (Traceback, Log)):
        return ev.text
    raise TypeError(f"no rendering for {type(ev).__name__}")


def printing(echo: Callable[[str], None]) -> Listener:
    """A listener that prints every event's line with ``echo``."""
    return lambda ev: echo(render(ev))
