"""The one error a bad dataset raises: a single line naming the file and what is wrong.

Dataset errors end up in workflow step logs and in a Dataset's status condition message, where a
multi-line message would be cut; so the hint is kept on the same line, after ``--``.
"""

from __future__ import annotations

import os

from kiln.errors import KilnError


class DatasetFormatError(KilnError):
    """A dataset (or archive) on disk is malformed. ``file`` is the offending path."""

    def __init__(self, file: str | os.PathLike[str], problem: str, *, hint: str | None = None) -> None:
        self.file = str(file)
        self.problem = problem
        super().__init__(f"{self.file}: {problem}", hint=hint)

    def __str__(self) -> str:
        text = self.message.replace("\n", " ")
        return f"{text} -- {self.hint}" if self.hint else text
