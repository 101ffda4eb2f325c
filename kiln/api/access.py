"""Who sees what: a user's workspaces and roles read from Workspace documents, and the objects
those let them see (#26). Pure data, no I/O: the commit policy (``kiln.controller.policy``) and
the read-only verbs (``kiln get``, ``status``, ``models list`` with ``--as``) share it.

Documents are read as dicts (a recorded spec, or a file version that may not validate), so that
one reading serves both."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kiln.config import KilnConfig


def spec_of(doc: dict[str, Any]) -> dict[str, Any]:
    spec = doc.get("spec")
    return spec if isinstance(spec, dict) else {}


def lower(value: Any) -> str:
    """An e-mail as compared: stripped, lower case ("" for anything but a string)."""
    return value.strip().lower() if isinstance(value, str) else ""


def members_of(doc: dict[str, Any]) -> dict[str, str]:
    """user (lower case) -> role of a Workspace document."""
    out: dict[str, str] = {}
    for m in spec_of(doc).get("members") or []:
        if isinstance(m, dict) and isinstance(m.get("user"), str):
            out[lower(m["user"])] = str(m.get("role") or "developer")
    return out


def private_to(doc: dict[str, Any]) -> set[str] | None:
    """Who besides workspace admins an ``access: private`` Experiment or Deployment is for (its
    owner and ``users``); None when it is not private."""
    spec = spec_of(doc)
    if spec.get("access") != "private":
        return None
    return {lower(spec.get("owner"))} | {lower(u) for u in spec.get("users") or []}


@dataclass
class Viewer:
    """What one user may see of the recorded objects: the user's workspaces; private experiments
    and deployments there only as their owner, a listed user or a workspace admin; datasets of
    other workspaces shared with one of theirs. Platform admins see everything."""

    user: str
    admin: bool
    roles: dict[str, str]  # workspace -> role

    @classmethod
    def of(cls, config: KilnConfig, user: str, records: Iterable[Any]) -> Viewer:
        """From the recorded Workspaces among ``records`` (what is applied, not what a branch says)."""
        user = lower(user)
        roles = {}
        for r in records:
            role = members_of(r.spec or {}).get(user) if r.kind == "Workspace" else None
            if role:
                roles[r.name] = role
        return cls(user, config.policy.is_admin(user), roles)

    def sees(self, kind: str, workspace: str, name: str, doc: dict[str, Any]) -> bool:
        if self.admin:
            return True
        if kind == "Workspace":
            return name in self.roles
        if workspace in self.roles:
            allowed = private_to(doc) if kind in ("Experiment", "Deployment") else None
            return allowed is None or self.user in allowed or self.roles[workspace] == "admin"
        if kind == "Dataset":  # shared with one of the user's workspaces (an empty list: with all)
            sharing = spec_of(doc).get("sharing")
            sharing = sharing if isinstance(sharing, dict) else {}
            targets = sharing.get("workspaces") or []
            return (
                sharing.get("visibility") == "shared"
                and bool(self.roles)
                and (not targets or bool(set(targets) & set(self.roles)))
            )
        return False

    def filter(self, records: Iterable[Any]) -> list[Any]:
        return [r for r in records if self.sees(r.kind, r.workspace, r.name, r.spec or {})]
