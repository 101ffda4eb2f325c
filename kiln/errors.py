"""One exception hierarchy for everything a user can get wrong.

Every error names the object it is about and, where there is one, the fix. The CLI maps the
classes to exit codes in one place (``kiln.cli.main``) and prints tracebacks only with ``--debug``.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class KilnError(Exception):
    """Base class: a problem the user can act on. ``exit_code`` is what the CLI exits with."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(self.__str__())

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


@dataclass(frozen=True)
class SpecIssue:
    """One problem in one spec file, located as precisely as the YAML allows."""

    file: str
    line: int
    column: int
    path: str
    message: str
    hint: str | None = None

    def format(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        text = f"{where}  {self.path or '<document>'}  {self.message}"
        return f"{text}  ({self.hint})" if self.hint else text

    def sort_key(self) -> tuple:
        return (self.file, self.line, self.column, self.path, self.message)


@dataclass
class SpecErrors(KilnError):
    """All the problems found in a set of specs, reported together."""

    issues: list[SpecIssue] = field(default_factory=list)
    exit_code = 1

    def __post_init__(self) -> None:
        self.issues = sorted(self.issues, key=SpecIssue.sort_key)
        KilnError.__init__(self, self._summary())

    def _summary(self) -> str:
        n = len(self.issues)
        lines = [i.format() for i in self.issues]
        lines.append(f"{n} error{'s' if n != 1 else ''} in specs")
        return "\n".join(lines)

    def __str__(self) -> str:  # dataclass would otherwise replace it
        return self._summary()


class ConfigError(KilnError):
    """kiln.yaml or the environment is wrong (state URL, runner name …)."""


class StateError(KilnError):
    """The state store cannot be opened or is inconsistent."""


class LockHeld(KilnError):
    """Another kiln process holds the repository lock."""

    exit_code = 3


class TemporaryError(KilnError):
    """Retry later: the object stays Reconciling (a step's ``kiln step`` exits 1, which the
    workflow's retryStrategy retries). Defined here, below the controller, so that ``kiln step``
    can tell it apart without importing the handlers."""


class NotFound(KilnError):
    """A named object does not exist (in specs or in the state store)."""


class WorkflowError(KilnError):
    """A workflow manifest is invalid or its run failed."""


class NeedsCluster(WorkflowError):
    """A workflow needs what only a Kubernetes cluster provides (a resource template, a PVC, a
    Secret, a ServiceAccount...): the local runner refuses it before it starts. Its own exit code,
    so that a script tells "cannot run here" from "ran and failed" (1)."""

    exit_code = 4
