"""Who may change what: workspace roles and access rules on every commit of a range (#26).

In GitOps the identity is the commit. ``check_range`` takes ``BASE..HEAD`` and judges each commit's
author (or the CI actor, ``--actor``) against the rules below; ``kiln plan --policy`` prints the
violations (exit 1) and ``kiln controller`` refuses a range that has any, staying on the last
allowed commit (``allowed_until``).

What is trusted comes from BASE, never from the change: kiln.yaml's ``policy`` section (platform
admins, ``requireSignedCommits``) and the Workspaces' members, so a commit that makes its author an
admin is judged as if it had not. A Workspace created in the range lends its members to the
objects of the later commits (its creation itself needs a platform admin).

What changed comes from git and the loader: each commit's changed spec files, loaded at the commit
and at its first parent; an object is created, updated (its document or its file changed: a moved
object counts) or deleted. Only objects that the whole range changes are judged (a change reverted
later in the range is no change), but every commit of the range that touched such an object must
be allowed.

The rules, one function per kind (``RULES``): platform admins may change anything; a Workspace is
changed only by its admins, a new one by platform admins; an object of a workspace by its
developers and admins, never annotators nor non-members (a workspace without members, ``default``
included, is the platform admins'); a read-only Dataset by its owner or a workspace admin; a
private Experiment or Deployment by its owner, its listed users and workspace admins. The owner,
access and users come from the object's version before the change (so nobody takes an object over
by renaming its owner), from the new version for a created one. kiln.yaml and CODEOWNERS are the
platform admins'; ``data/<ws>/`` and ``metrics/<ws>/`` that workspace's developers and admins';
any other file (code a training runs, templates) a developer's or admin's of some workspace
(``file_rule``). Deleting follows the same rules.

Visibility (``kiln.api.access.Viewer``) applies the same roles to what ``kiln get``, ``status``
and ``models list`` show a user (``--as``/``KILN_USER``), from the recorded (applied) Workspaces.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from kiln.api.access import lower as _lower
from kiln.api.access import members_of, private_to
from kiln.api.access import spec_of as _spec
from kiln.config import CONFIG_FILE, KilnConfig, PolicyConfig
from kiln.errors import ConfigError, KilnError

# files only platform admins change: the trusted configuration and the forge's review rules
PLATFORM_FILES = (CONFIG_FILE, "CODEOWNERS", ".github/CODEOWNERS", "docs/CODEOWNERS", ".gitlab/CODEOWNERS")
EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"  # git's well-known empty tree
UNSIGNED = "the commit has no trusted signature of its author (policy.requireSignedCommits)"


# -- git -------------------------------------------------------------------------------------------


def _git(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, env={**os.environ, "GIT_TERMINAL_PROMPT": "0"})
    if check and p.returncode != 0:
        last = (p.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise KilnError(f"git {' '.join(args[:2])} failed in {repo}: {last}")
    return p


def _show(repo: Path, rev: str, path: str) -> str | None:
    """The text of ``path`` at ``rev``; None when it is not there."""
    if rev == EMPTY_TREE:
        return None
    p = _git(repo, "show", f"{rev}:{path}", check=False)
    return p.stdout if p.returncode == 0 else None


@dataclass(frozen=True)
class Commit:
    sha: str
    parents: tuple[str, ...]
    email: str  # the identity the commit is judged as: its author's e-mail, or the actor
    verified: bool = True  # False: policy.requireSignedCommits and no trusted signature of the author

    @property
    def short(self) -> str:
        return self.sha[:12]


def commits(repo: Path, base: str, head: str, actor: str | None, signed: bool) -> list[Commit]:
    """The commits of ``base..head``, oldest first (parents before children)."""
    out = _git(repo, "log", "--reverse", "--topo-order", "--format=%H %P%x00%ae", f"{base}..{head}").stdout
    found = []
    for line in out.splitlines():
        shas, _, email = line.partition("\0")
        sha, *parents = shas.split()
        found.append(
            Commit(sha, tuple(parents), (actor or email).strip().lower(), _verified(repo, sha, email) if signed else True)
        )
    return found


def _verified(repo: Path, sha: str, author: str) -> bool:
    """``git verify-commit`` accepts the signature, and it is the author's (the signer's e-mail,
    as the SSH allowed-signers principal or the GPG user id, is the author's)."""
    if _git(repo, "verify-commit", sha, check=False).returncode != 0:
        return False
    signer = _git(repo, "log", "-1", "--format=%GS", sha, check=False).stdout.strip().lower()
    return author.strip().lower() in signer


# -- objects of a file version ---------------------------------------------------------------------


@dataclass(frozen=True)
class Version:
    """One object as a file at one commit holds it."""

    kind: str
    workspace: str
    name: str
    path: str  # repository-relative
    line: int
    doc: dict[str, Any]

    @property
    def key(self) -> tuple[str, str, str]:
        return self.kind, self.workspace, self.name


class Specs:
    """The spec files of a repository at any commit, loaded with kiln's loader (``load_specs``:
    the same templates, limits and models as validate), memoised per (commit, path)."""

    def __init__(self, repo: Path, config: KilnConfig) -> None:
        self.repo = repo
        self.specs = _rel(config.specs_dir(), repo)
        self.templates = config.templates_dir()
        self._templates_rel = _rel(self.templates, repo)
        self._cache: dict[tuple[str, str], list[Version]] = {}
        self._tmp = tempfile.TemporaryDirectory(prefix="kiln-policy-")

    def close(self) -> None:
        self._tmp.cleanup()

    def is_spec(self, path: str) -> bool:
        """Whether ``path`` is a file the loader reads (``kiln.loader.iter_spec_files``)."""
        from kiln.loader import SPEC_SUFFIXES

        p = PurePosixPath(path)
        if not path.endswith(SPEC_SUFFIXES) or not _under(p, self.specs) or _under(p, self._templates_rel):
            return False
        inner = p.relative_to(self.specs) if self.specs != PurePosixPath(".") else p
        return not any(part.startswith((".", "_")) for part in inner.parts[:-1])

    def at(self, rev: str, path: str) -> list[Version]:
        if (rev, path) not in self._cache:
            self._cache[(rev, path)] = self._load(_show(self.repo, rev, path), path)
        return self._cache[(rev, path)]

    def all_at(self, rev: str, word: str | None = None) -> list[Version]:
        """Every object at ``rev``; with ``word``, only of the files that contain it (one ``git
        grep`` instead of loading every file: the roles need only the Workspaces)."""
        if word is None:
            names = _git(self.repo, "ls-tree", "-r", "--name-only", rev).stdout.splitlines()
        else:
            found = _git(self.repo, "grep", "-l", "-F", word, rev, "--", ".", check=False).stdout
            names = [line.split(":", 1)[1] for line in found.splitlines() if ":" in line]
        return [v for n in names if self.is_spec(n) for v in self.at(rev, n)]

    def _load(self, text: str | None, path: str) -> list[Version]:
        from kiln._util.yamlpos import document_line
        from kiln.loader import load_specs

        if text is None:
            return []
        tmp = Path(self._tmp.name) / "f" / path
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8")
        try:
            loaded = load_specs(tmp, self.templates if self.templates.is_dir() else None)
        finally:
            tmp.unlink()
        out = [
            Version(s.kind, s.workspace, s.name, path, document_line(text, s.index), s.doc)
            for s in [*loaded.specs, *loaded.partial]
        ]
        seen = {v.key for v in out}
        # a document the models refuse is still an object someone changed: judged by its metadata
        for kind, ws, name, doc in loaded.invalid:
            if (kind, ws, name) not in seen:
                seen.add((kind, ws, name))
                out.append(Version(kind, ws, name, path, _doc_line(text, kind, name), doc))
        return out


def _doc_line(text: str, kind: str, name: str) -> int:
    from kiln._util.yamlpos import document_line

    try:
        for i, doc in enumerate(yaml.safe_load_all(text)):
            if isinstance(doc, dict) and doc.get("kind") == kind and (doc.get("metadata") or {}).get("name") == name:
                return document_line(text, i)
    except yaml.YAMLError:
        pass
    return 1


def _rel(path: Path, repo: Path) -> PurePosixPath:
    try:
        return PurePosixPath(path.resolve().relative_to(repo.resolve()).as_posix())
    except ValueError:
        return PurePosixPath(".")


def _under(p: PurePosixPath, folder: PurePosixPath) -> bool:
    return folder == PurePosixPath(".") or p.is_relative_to(folder)


# -- changes ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    action: str  # create | update | delete
    kind: str
    workspace: str
    name: str
    old: Version | None
    new: Version | None

    @property
    def ref(self) -> str:
        # a Workspace is in no workspace: Workspace/vision; the others with theirs, always
        return f"Workspace/{self.name}" if self.kind == "Workspace" else f"{self.kind}/{self.workspace}/{self.name}"

    @property
    def at(self) -> Version:
        v = self.new or self.old
        assert v is not None
        return v

    def fields(self) -> set[str]:
        """The field paths it changes (``spec.quotas.cpu``); ``*``: the whole object (created,
        deleted or moved to another file)."""
        from kiln.controller.diff import diff

        if self.old is None or self.new is None or self.old.path != self.new.path:
            return {"*"}
        return {f.path for f in diff(self.old.doc, self.new.doc)}

    @property
    def before(self) -> dict[str, Any]:
        """The version whose owner and access decide (module doc)."""
        return (self.old or self.new or self.at).doc


def diff_objects(old: Iterable[Version], new: Iterable[Version]) -> list[Change]:
    """Objects created, updated (document or file changed) or deleted between two sets."""
    before, after = {v.key: v for v in old}, {v.key: v for v in new}
    out = []
    for key in sorted(before.keys() | after.keys()):
        o, n = before.get(key), after.get(key)
        if o is not None and n is not None and o.doc == n.doc and o.path == n.path:
            continue
        action = "create" if o is None else "delete" if n is None else "update"
        out.append(Change(action, *key, old=o, new=n))
    return out


def _overlap(a: set[str], b: set[str]) -> bool:
    """Whether two sets of field paths touch the same field (one is the other or lies under it)."""
    if not a or not b:
        return False
    if "*" in a or "*" in b:
        return True
    return any(p == q or p.startswith((q + ".", q + "[")) or q.startswith((p + ".", p + "[")) for p in a for q in b)


def _changed_files(repo: Path, old: str, new: str, merge: bool = False) -> list[str]:
    if merge:  # only what the merge itself decided (conflict resolutions): the merged commits are judged on their own
        out = _git(repo, "diff-tree", "-r", "--cc", "--name-only", "--no-commit-id", new).stdout
    else:
        out = _git(repo, "diff", "--no-renames", "--name-only", old, new).stdout
    return [line for line in out.splitlines() if line]


def commit_changes(specs: Specs, c: Commit) -> tuple[list[Change], list[str]]:
    """The objects commit ``c`` changes against its first parent, and the other files it changes."""
    parent = c.parents[0] if c.parents else EMPTY_TREE
    files = _changed_files(specs.repo, parent, c.sha, merge=len(c.parents) > 1)
    spec_files = [f for f in files if specs.is_spec(f)]
    old = [v for f in spec_files for v in specs.at(parent, f)]
    new = [v for f in spec_files for v in specs.at(c.sha, f)]
    return diff_objects(old, new), [f for f in files if not specs.is_spec(f)]


# -- the rules -------------------------------------------------------------------------------------


@dataclass
class Roles:
    """Who is what, as BASE says (module doc)."""

    policy: PolicyConfig
    members: dict[str, dict[str, str]] = field(default_factory=dict)  # workspace -> user -> role
    existing: set[str] = field(default_factory=set)  # Workspaces at BASE

    def role(self, user: str, ws: str) -> str | None:
        return self.members.get(ws, {}).get(user)

    def describe(self, user: str, ws: str) -> str:
        if self.policy.is_admin(user):
            return "platform admin"
        role = self.role(user, ws)
        return f"{role} in {ws}" if role else f"not a member of {ws}"


Rule = Callable[[Change, str, Roles], "str | None"]


def workspace_rule(ch: Change, user: str, roles: Roles) -> str | None:
    if ch.name not in roles.existing:
        return "a new Workspace is created by platform admins (kiln.yaml policy.admins)"
    if roles.role(user, ch.name) != "admin":
        return "a Workspace is changed only by its admins (members with role admin at the base commit)"
    return None


def member_rule(ch: Change, user: str, roles: Roles) -> str | None:
    role = roles.role(user, ch.workspace)
    if role is None:
        return f"only developers and admins of workspace {ch.workspace} change its objects" + (
            "" if roles.members.get(ch.workspace) else f" (it has no members: add a Workspace {ch.workspace} with members)"
        )
    if role == "annotator":
        return "annotators label; only developers and admins change a workspace's objects"
    return None


def dataset_rule(ch: Change, user: str, roles: Roles) -> str | None:
    refused = member_rule(ch, user, roles)
    if refused:
        return refused
    spec = _spec(ch.before)
    sharing = spec.get("sharing") if isinstance(spec.get("sharing"), dict) else {}
    owner = _lower(spec.get("owner"))
    if (sharing or {}).get("access") == "read-only" and user != owner and roles.role(user, ch.workspace) != "admin":
        return f"the dataset is read-only: only its owner ({owner or 'none set'}) or an admin of {ch.workspace} changes it"
    return None


def private_rule(ch: Change, user: str, roles: Roles) -> str | None:
    refused = member_rule(ch, user, roles)
    if refused:
        return refused
    allowed = private_to(ch.before)
    if allowed is not None and user not in allowed and roles.role(user, ch.workspace) != "admin":
        return f"it is private: only its owner, its listed users and admins of {ch.workspace} change it"
    return None


# kind -> who may change an object of it (module doc); a kind not listed follows member_rule
RULES: dict[str, Rule] = {
    "Workspace": workspace_rule,
    "Dataset": dataset_rule,
    "Experiment": private_rule,
    "Deployment": private_rule,
    "LabelingJob": member_rule,
}


# folders whose second component is a workspace: data/<ws>/ (dataset pointers, versions logs) and
# metrics/<ws>/ (experiments' results); kiln writes them, a workspace's developers commit them
WORKSPACE_FOLDERS = ("data", "metrics")


def file_rule(path: str, user: str, roles: Roles) -> tuple[str, str] | None:
    """(the user's role, why not) for a changed file that is not a spec; None: allowed. Code and
    other files (a script that ``command.run`` runs, templates) belong to the workspaces'
    developers and admins, never annotators."""
    if roles.policy.is_admin(user):
        return None
    if path in PLATFORM_FILES:
        return "not a platform admin", "only platform admins (kiln.yaml policy.admins at the base commit) change it"
    parts = PurePosixPath(path).parts
    if len(parts) > 2 and parts[0] in WORKSPACE_FOLDERS:
        role = roles.role(user, parts[1])
        if role in ("developer", "admin"):
            return None
        return roles.describe(user, parts[1]), f"{parts[0]}/{parts[1]}/ is changed by developers and admins of {parts[1]}"
    mine = {ws: m[user] for ws, m in roles.members.items() if user in m}
    if any(r in ("developer", "admin") for r in mine.values()):
        return None
    role = ", ".join(f"{r} in {ws}" for ws, r in sorted(mine.items())) or "not a member of any workspace"
    return role, "files outside the specs (code, templates) are changed by a workspace's developers and admins"


def judge(ch: Change, user: str, roles: Roles) -> str | None:
    """Why ``user`` may not make change ``ch`` (None: allowed)."""
    if roles.policy.is_admin(user):
        return None
    return RULES.get(ch.kind, member_rule)(ch, user, roles)


# -- a range ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Violation:
    commit: str
    path: str
    line: int
    user: str
    role: str
    verb: str
    what: str
    rule: str

    def __str__(self) -> str:
        return (
            f"{self.path}:{self.line}: {self.user} ({self.role}) may not {self.verb} {self.what}: "
            f"{self.rule} (commit {self.commit[:12]})"
        )


@dataclass
class Report:
    base: str
    head: str
    commits: list[Commit]
    violations: list[Violation]

    @property
    def ok(self) -> bool:
        return not self.violations

    def allowed_until(self) -> str:
        """The newest commit before the first refused one (``base`` when the first is refused)."""
        refused = {v.commit for v in self.violations}
        order = [c.sha for c in self.commits]
        first = min((order.index(s) for s in refused if s in order), default=len(order))
        if first == len(order):
            return self.head
        parents = self.commits[first].parents
        return parents[0] if parents else self.base

    def text(self) -> str:
        if self.ok:
            return f"policy: {len(self.commits)} commit(s) of {self.base[:12]}..{self.head[:12]} allowed"
        return "\n".join(
            [str(v) for v in self.violations]
            + [f"policy: {len(self.violations)} change(s) not allowed in {self.base[:12]}..{self.head[:12]}"]
        )


def config_at(repo: Path, rev: str) -> PolicyConfig | None:
    """kiln.yaml's policy section at ``rev`` (None when there is none)."""
    text = _show(repo, rev, CONFIG_FILE)
    if text is None:
        return None
    try:
        data = yaml.safe_load(text) or {}
        cfg = KilnConfig.model_validate(data if isinstance(data, dict) else {})
        return cfg.policy if cfg.policy_enforced() else None
    except (yaml.YAMLError, ValueError) as exc:
        raise ConfigError(
            f"{CONFIG_FILE} at {rev[:12]}: cannot read its policy section: {str(exc).splitlines()[0]}",
            hint="the policy is read from the base commit: fix kiln.yaml there",
        ) from None


def roles_at(specs: Specs, rev: str, policy: PolicyConfig) -> Roles:
    roles = Roles(policy)
    for v in specs.all_at(rev, "Workspace") if rev != EMPTY_TREE else []:
        if v.kind == "Workspace":
            roles.existing.add(v.name)
            roles.members[v.name] = members_of(v.doc)
    return roles


def resolve(repo: Path, rev: str) -> str:
    p = _git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", check=False)
    if p.returncode != 0:
        raise KilnError(
            f"--policy: {rev!r} is not a commit of {repo}",
            hint="give BASE..HEAD, e.g. origin/main..HEAD (fetch the base branch first)",
        )
    return p.stdout.strip()


def check_range(config: KilnConfig, rev_range: str, *, actor: str | None = None, policy: PolicyConfig | None = None) -> Report:
    """Judge every commit of ``BASE..HEAD`` (module doc). ``policy``: instead of BASE's."""
    base_rev, sep, head_rev = rev_range.partition("..")
    if not sep or not base_rev or head_rev.startswith("."):
        raise KilnError(f"--policy {rev_range}: expected BASE..HEAD", hint="e.g. kiln plan --policy origin/main..HEAD")
    repo = config.repo
    base, head = resolve(repo, base_rev), resolve(repo, head_rev or "HEAD")
    policy = policy or config_at(repo, base) or PolicyConfig()
    specs = Specs(repo, config)
    try:
        return _check(specs, base, head, actor, policy)
    finally:
        specs.close()


def _check(specs: Specs, base: str, head: str, actor: str | None, policy: PolicyConfig) -> Report:
    repo = specs.repo
    mb = _git(repo, "merge-base", base, head, check=False).stdout.strip() or EMPTY_TREE
    roles = roles_at(specs, base, policy)
    found = commits(repo, base, head, actor, policy.requireSignedCommits)
    # what the whole range changes: only those objects and files are judged (module doc)
    files = _changed_files(repo, mb, head)
    spec_files = [f for f in files if specs.is_spec(f)]
    net = {
        (ch.kind, ch.workspace, ch.name): ch.fields()
        for ch in diff_objects(
            [v for f in spec_files for v in specs.at(mb, f)], [v for f in spec_files for v in specs.at(head, f)]
        )
    }
    other = {f for f in files if not specs.is_spec(f)}
    out: list[Violation] = []
    for c in found:
        changes, touched = commit_changes(specs, c)
        for ch in changes:
            if ch.kind == "Workspace" and ch.action == "create" and ch.name not in roles.members:
                roles.members[ch.name] = members_of(ch.at.doc)  # lends its members to later commits
            if not _overlap(ch.fields(), net.get((ch.kind, ch.workspace, ch.name), set())):
                continue  # undone later in the range: no change to judge
            rule = UNSIGNED if not c.verified else judge(ch, c.email, roles)
            if rule:
                ws = ch.name if ch.kind == "Workspace" else ch.workspace
                out.append(
                    Violation(
                        c.sha,
                        ch.at.path,
                        ch.at.line,
                        c.email,
                        "unsigned" if not c.verified else roles.describe(c.email, ws),
                        {"create": "create", "update": "change", "delete": "delete"}[ch.action],
                        ch.ref,
                        rule,
                    )
                )
        for f in touched:
            if f not in other:
                continue  # undone later in the range
            refused = ("unsigned", UNSIGNED) if not c.verified else file_rule(f, c.email, roles)
            if refused:
                out.append(Violation(c.sha, f, 1, c.email, refused[0], "change", f, refused[1]))
    unique = list(dict.fromkeys(out))
    return Report(base, head, found, unique)


# -- CODEOWNERS ------------------------------------------------------------------------------------


def codeowners(config: KilnConfig) -> str:
    """A CODEOWNERS file from the checkout's specs: each spec file is owned by who may change
    every object in it (the rules above, judged for an update), platform files by the platform
    admins. A forge asks one owner to review, so a file's owners are those allowed for all of
    its objects; a file nobody but the platform admins may change gets the platform admins."""
    repo = config.repo
    specs = Specs(repo, config)
    try:
        head = _git(repo, "rev-parse", "HEAD", check=False).stdout.strip()
        tracked = _git(repo, "ls-files").stdout.splitlines() if head else []
        files = sorted({*tracked, *[_rel(p, repo).as_posix() for p in _spec_files(config)]})
        versions = {
            f: specs._load((repo / f).read_text(encoding="utf-8") if (repo / f).is_file() else None, f)
            for f in files
            if specs.is_spec(f)
        }
    finally:
        specs.close()
    roles = Roles(config.policy)
    for vs in versions.values():
        for v in vs:
            if v.kind == "Workspace":
                roles.existing.add(v.name)
                roles.members[v.name] = members_of(v.doc)
    people = sorted({u for m in roles.members.values() for u in m})
    admins = sorted({a.strip().lower() for a in config.policy.admins})
    lines = [
        "# Written by `kiln policy codeowners` from the Workspaces' members, the objects' owners and",
        "# kiln.yaml's policy.admins: regenerate it after changing them. Last match wins.",
        "",
    ]
    if admins:
        lines.append(f"* {' '.join(admins)}")
    for f in files:
        if f not in versions or not versions[f]:
            continue
        owners = set(people)
        for v in versions[f]:
            ch = Change("update", v.kind, v.workspace, v.name, old=v, new=v)
            owners &= {u for u in people if judge(ch, u, roles) is None}
        owners_list = sorted(owners | set(admins))
        if owners_list:
            lines.append(f"/{_escape(f)} {' '.join(owners_list)}")
    if admins:  # after the spec files: last match wins
        lines += [f"/{f} {' '.join(admins)}" for f in (CONFIG_FILE, ".github/CODEOWNERS")]
    return "\n".join(lines) + "\n"


def _spec_files(config: KilnConfig) -> list[Path]:
    from kiln.loader import iter_spec_files

    root = config.specs_dir()
    return iter_spec_files(root, {config.templates_dir().resolve()}) if root.exists() else []


def _escape(path: str) -> str:
    return path.replace(" ", "\\ ")
