"""What apply reports, as typed events, and (``history``) what it recorded of them: ``kiln events``.

Live: the CLI renders the typed events as text, ``kiln controller`` logs and counts them from
their fields. No consumer parses the text, so its format is free to change.

Recorded: every create, update, delete and observed poll of an object is an attempt in the state
store (``kiln.state.records.Attempt``), with its result, the changed fields, and the git commit
and author the specs were applied from. ``history`` reads them across objects, the deleted ones
included, for the workspace activity log (Flightbase's) that ``kiln events`` prints.

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
      Dataset/iris: created in 4.2s                     ObjectFinished (also after a failure)
        > 12.0s trial 2/4 epoch 3/8 ..., about 40s left Progress (while it runs; see Console)
    - Dataset/iris: delete                              DeleteStarted
        - delete workflow kiln-data-iris                DeleteAction
"""

from __future__ import annotations

import datetime as dt
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from kiln._util.clock import duration, parse_utc
from kiln.errors import KilnError, NotFound

if TYPE_CHECKING:
    from kiln.config import KilnConfig


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
class ObjectFinished(ApplyEvent):
    """The end of an object's reconcile (after its ObjectFailed, if it failed), with how long it took."""

    outcome: str         # created | updated | failed | retrying
    seconds: float
    news = True


class Shown(NamedTuple):
    """What a handler reports of its running work (``Context.progress``): ``text`` says what
    happened last (the running tasks; the trial, epoch and metric), ``fraction`` the share done
    where known, ``stage`` the kind of work, ``left`` the estimated seconds to go."""

    text: str
    fraction: float | None = None
    stage: str = ""
    left: float | None = None


@dataclass(frozen=True)
class Progress(ApplyEvent):
    """How far an object's work has got, while it runs: sent at most every couple of seconds
    (``handlers.workflow``), shown by ``Console`` as a bar on a terminal, as plain lines elsewhere.
    ``text`` says what runs (the epoch or trial, the current metric, the time left); ``fraction``
    is the share done where it is known; ``seconds`` how long the object has been running;
    ``stage``: what kind of work it is (plain output shows a new stage at once: the first
    metrics of a training are not held back behind the data preparation's line); ``left``: the
    estimated seconds to go."""

    text: str
    fraction: float | None = None
    seconds: float = 0.0
    stage: str = ""
    left: float | None = None


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
    if isinstance(ev, ObjectFinished):
        word = "in" if ev.outcome in ("created", "updated") else "after"
        return f"  {ev.ref}: {ev.outcome} {word} {duration(ev.seconds)}"
    if isinstance(ev, Progress):
        return f"    > {duration(ev.seconds)} {ev.text}{_left(ev)}"
    if isinstance(ev, DeleteStarted):
        return f"- {ev.ref}: delete"
    if isinstance(ev, DeleteAction):
        return f"    - {ev.action}"
    if isinstance(ev, (Traceback, Log)):
        return ev.text
    raise TypeError(f"no rendering for {type(ev).__name__}")


def _left(ev: Progress) -> str:
    return f", about {duration(ev.left)} left" if ev.left is not None else ""


def printing(echo: Callable[[str], None], *, terminal: bool = False,
             write: Callable[[str], None] | None = None) -> Listener:
    """A listener that prints every event's line with ``echo`` (progress as ``Console`` says)."""
    return Console(echo, terminal=terminal, write=write)


# plain (non-terminal) output shows an object's progress at most this often, and after the first
# minute at most every sixth of the time it has run (PLAIN_SHARE): a ten-minute training (or a
# one-minute one on a machine ten times busier) gets about twenty lines, not sixty or three hundred;
# progress that is only the running tasks (no share done) three times less often, and only when it
# says something new
PLAIN_EVERY = 10.0
PLAIN_SHARE = 1 / 6


class Console:
    """What ``kiln apply`` prints. Every event but ``Progress`` is one line (``render``). Progress,
    on a terminal (``terminal`` and a ``write`` that prints without a newline), is one line
    rewritten in place with a bar where the share done is known, cleared before the next line;
    elsewhere it is a plain line: the first of each object's and of each new stage, otherwise at
    most every ``every`` seconds or ``PLAIN_SHARE`` of the object's time so far, whichever is longer
    (three times that without a share done), and only when its text
    changed (a new epoch, trial or task; the estimate alone is no news), so that CI logs stay
    short."""

    def __init__(self, echo: Callable[[str], None], *, terminal: bool = False,
                 write: Callable[[str], None] | None = None, every: float = PLAIN_EVERY,
                 clock: Callable[[], float] = time.monotonic, width: int | None = None) -> None:
        self.echo, self.write, self.every, self.clock = echo, write, every, clock
        self.width = width or shutil.get_terminal_size().columns
        self.live = terminal and write is not None
        self.shown = False          # a progress line is on the terminal now
        self.last: dict[str, tuple[float, str, str]] = {}  # key -> when, at which stage, what was shown

    def __call__(self, ev: ApplyEvent) -> None:
        if isinstance(ev, Progress):
            if self.live:
                assert self.write is not None
                self.write("\r\033[K" + self.bar(ev)[: self.width - 1])
                self.shown = True
                return
            now = self.clock()
            shown = self.last.get(ev.key)
            if shown is not None and shown[1] == ev.stage:
                wait = max(self.every, PLAIN_SHARE * ev.seconds) * (1 if ev.fraction is not None else 3)
                if now - shown[0] < wait or ev.text == shown[2]:
                    return
            self.last[ev.key] = (now, ev.stage, ev.text)
        elif self.shown:
            assert self.write is not None
            self.write("\r\033[K")
            self.shown = False
        self.echo(render(ev))

    @staticmethod
    def bar(ev: Progress, cells: int = 20) -> str:
        # the time left first: a narrow terminal cuts the end of the line
        left = f" ({duration(ev.left)} left)" if ev.left is not None else ""
        if ev.fraction is None:
            return f"  {ev.ref} {duration(ev.seconds)}{left} {ev.text}"
        done = round(max(0.0, min(1.0, ev.fraction)) * cells)
        return f"  {ev.ref} [{'#' * done}{'.' * (cells - done)}] {duration(ev.seconds)}{left} {ev.text}"


# -- the recorded history (`kiln events`) --------------------------------------------------------

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str, now: dt.datetime | None = None) -> str:
    """``--since``: a duration back from now (``30m``, ``2h``, ``3d``, ``1w``) or an ISO date or
    time (``2026-12-01``, ``2026-12-01T10:00``, UTC unless it names a zone) -> the store's UTC
    timestamp text (``2026-12-01T10:00:00.000000Z``), which compares as time."""
    raw = text.strip()
    m = re.fullmatch(r"(\d+)\s*([smhdw])", raw)
    if m:
        when = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])
    else:
        try:
            when = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            raise KilnError(f"--since {text!r} is neither a duration nor a date",
                            hint="write a duration back from now (30m, 2h, 3d, 1w) or an ISO date or time "
                                 "(2026-12-01, 2026-12-01T10:00, UTC unless it names a zone)") from None
        when = when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond:06d}Z"


def _seconds(started: str, finished: str) -> float | None:
    t0, t1 = parse_utc(started), parse_utc(finished)
    return None if t0 is None or t1 is None else round(t1 - t0, 3)


def history(config: KilnConfig, workspace: str | None = None, since: str | None = None) -> list[dict[str, Any]]:
    """What changed, newest first: one dict per recorded attempt (``kiln events -o json``).
    ``workspace``: only its objects and the Workspace itself; ``since``: ``parse_since``'s text."""
    from kiln._util.suggest import did_you_mean
    from kiln.api.refs import short
    from kiln.controller.project import open_state
    from kiln.state.records import split_key

    store = open_state(config, read_only=True)  # looking never creates a state database
    try:
        attempts = store.history(since=since)
        if workspace is not None:
            known = {r.name if r.kind == "Workspace" else r.workspace for r in store.all_objects()}
            known |= {k if kind == "Workspace" else ws
                      for kind, ws, k in (split_key(a.key) for a in store.history())}
            if workspace not in known:
                hint = did_you_mean(workspace, known)
                raise NotFound(f"--workspace {workspace!r}: no workspace of that name was ever applied"
                               + (f"; {hint}" if hint else ""), hint=f"known: {', '.join(sorted(known)) or 'none'}")
    finally:
        store.close()
    out = []
    for a in attempts:
        kind, ws, name = split_key(a.key)
        if workspace is not None and (name if kind == "Workspace" else ws) != workspace:
            continue
        out.append({"time": a.started_at, "finishedAt": a.finished_at or None,
                    "seconds": _seconds(a.started_at, a.finished_at) if a.finished_at else None,
                    "object": short(a.key), "kind": kind, "workspace": ws, "name": name,
                    "action": a.action or "-", "changes": a.changes, "generation": a.generation,
                    "result": a.result, "message": a.message, "actions": a.actions,
                    "commit": a.commit or None, "author": a.author or None})
    return out


def history_table(events: list[dict[str, Any]]) -> str:
    """The ``kiln events`` table: when, what, which change, the result, the commit and author."""
    if not events:
        return "No events recorded (in this window)."
    header = ["TIME", "OBJECT", "ACTION", "RESULT", "TOOK", "COMMIT", "AUTHOR", "WHAT"]
    rows = []
    for e in events:
        took = "-" if e["seconds"] is None else f"{e['seconds']:.1f}s"
        what = e["message"] if e["result"] != "succeeded" and e["message"] else ", ".join(e["changes"])
        rows.append([e["time"][:19].replace("T", " ") + "Z", e["object"], e["action"], e["result"], took,
                     (e["commit"] or "-")[:12] + ("-dirty" if (e["commit"] or "").endswith("-dirty") else ""),
                     e["author"] or "-", (what or "-").splitlines()[0][:80]])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    return "\n".join("  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip() for line in [header, *rows])
