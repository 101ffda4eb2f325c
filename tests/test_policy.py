"""Who may change what (#26), with real git: a repository with two workspaces and a member of each
role, a matrix of commits (author role x kind x change) judged by `check_range` as `kiln plan
--policy` and the controller do; signed commits with a throwaway SSH key; `kiln get --as`; the
CODEOWNERS file `kiln policy codeowners` writes."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.daemon_util import Remote, git, state
from tests.helpers import kiln

OPS, ADM, DEV, DEV2, DEV3, ANN = "ops@x.com", "adm@x.com", "dev@x.com", "dev2@x.com", "dev3@x.com", "ann@x.com"
NADM, NDEV = "nadm@x.com", "ndev@x.com"

H = "apiVersion: kiln.dev/v1alpha1\n"


def ws(name: str, members: dict[str, str], extra: str = "") -> str:
    body = "".join(f"    - {{user: {u}, role: {r}}}\n" for u, r in members.items())
    return f"{H}kind: Workspace\nmetadata: {{name: {name}}}\nspec:\n  members:\n{body}{extra}"


def dataset(name: str, workspace: str = "vision", extra: str = "") -> str:
    return (
        f"{H}kind: Dataset\nmetadata: {{name: {name}, workspace: {workspace}}}\nspec:\n  type: tabular\n"
        f"  task: classification\n  format: csv\n  source: {{sample: wine}}\n  label: target\n  owner: {DEV}\n{extra}"
    )


def experiment(name: str, extra: str = "", c: float = 1.0) -> str:
    return (
        f"{H}kind: Experiment\nmetadata: {{name: {name}, workspace: vision}}\nspec:\n  dataset: {{name: digits}}\n"
        f"  algorithm: {{name: logistic_regression, hyperparameters: {{C: {c}}}}}\n  owner: {DEV}\n{extra}"
    )


VISION = {ADM: "admin", DEV: "developer", DEV2: "developer", DEV3: "developer", ANN: "annotator"}
SECRET = "  access: private\n  users: [dev2@x.com]\n"
# the experiments file: `open` first, then the private `secret` (its line is checked)
EXPS = experiment("open") + "---\n" + experiment("secret", SECRET)
BASE = {
    "kiln.yaml": f"policy: {{admins: [{OPS}]}}\n",
    "specs/vision.yaml": ws("vision", VISION),
    "specs/nlp.yaml": ws("nlp", {NADM: "admin", NDEV: "developer"}),
    "specs/data/digits.yaml": dataset("digits"),
    "specs/data/gold.yaml": dataset("gold", extra="  sharing: {access: read-only}\n"),
    "specs/exps.yaml": EXPS,
    "specs/serve.yaml": (
        f"{H}kind: Deployment\nmetadata: {{name: serve, workspace: vision}}\nspec:\n"
        f"  model: {{experiment: open}}\n  owner: {DEV}\n  access: private\n"
    ),
}


class Repo:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir()
        git(root, "init", "-q", "-b", "main")
        git(root, "config", "user.name", "someone")
        self.base = self.commit(OPS, BASE, "base")

    def commit(self, author: str, files: dict[str, str | None], message: str = "change") -> str:
        for rel, text in files.items():
            p = self.root / rel
            if text is None:
                p.unlink()
            else:
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_text(text)
        git(self.root, "add", "-A")
        git(self.root, "-c", f"user.email={author}", "commit", "-q", "--allow-empty", "-m", message)
        return git(self.root, "rev-parse", "HEAD")

    def reset(self) -> None:
        git(self.root, "reset", "-q", "--hard", self.base)

    def check(self, rng: str | None = None, actor: str | None = None):  # type: ignore[no-untyped-def]
        from kiln.config import load_config
        from kiln.controller.policy import check_range

        return check_range(load_config(self.root), rng or f"{self.base}..HEAD", actor=actor)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Repo]:
    yield Repo(tmp_path_factory.mktemp("policy") / "repo")


def edit(path: str, old: str, new: str) -> Callable[[Path], dict[str, str | None]]:
    def change(root: Path) -> dict[str, str | None]:
        text = (root / path).read_text()
        assert old in text, (path, old)
        return {path: text.replace(old, new, 1)}

    return change


def put(path: str, text: str | None) -> Callable[[Path], dict[str, str | None]]:
    return lambda root: {path: text}


def move(src: str, dst: str) -> Callable[[Path], dict[str, str | None]]:
    return lambda root: {src: None, dst: (root / src).read_text()}


WS_QUOTA = edit("specs/vision.yaml", "spec:\n", "spec:\n  quotas: {maxExperiments: 9}\n")
SELF_PROMOTE = edit("specs/vision.yaml", "dev@x.com, role: developer", "dev@x.com, role: admin")
NEW_WS = put("specs/audio.yaml", ws("audio", {DEV: "admin"}))
DEL_NLP = put("specs/nlp.yaml", None)
DIGITS = edit("specs/data/digits.yaml", "label: target", "label: target\n  missingLabels: error")
NEW_DATA = put("specs/data/more.yaml", dataset("more"))
DEL_DIGITS = put("specs/data/digits.yaml", None)
DIGITS_TO_NLP = edit("specs/data/digits.yaml", "workspace: vision", "workspace: nlp")
GOLD = edit("specs/data/gold.yaml", "label: target", "label: target\n  missingLabels: error")
GOLD_TAKEOVER = edit("specs/data/gold.yaml", "owner: dev@x.com", "owner: dev2@x.com")
DEL_GOLD = put("specs/data/gold.yaml", None)
SECRET_C = put("specs/exps.yaml", experiment("open") + "---\n" + experiment("secret", SECRET, c=0.5))
DEL_SECRET = put("specs/exps.yaml", experiment("open"))
OPEN_C = put("specs/exps.yaml", experiment("open", c=0.5) + "---\n" + experiment("secret", SECRET))
NEW_PRIVATE = put(
    "specs/mine.yaml", experiment("mine", SECRET.replace("dev2", "dev3")).replace(f"owner: {DEV}", f"owner: {DEV3}")
)
MOVE_EXPS = move("specs/exps.yaml", "specs/experiments/all.yaml")
SERVE = edit("specs/serve.yaml", "access: private", "access: private\n  replicas: 2")
KILN_YAML = put("kiln.yaml", f"policy: {{admins: [{OPS}, {ADM}]}}\n")
CODEOWNERS = put(".github/CODEOWNERS", f"* {DEV}\n")
SCRIPT = put("train.py", "print('trained')\n")
METRICS = put("metrics/vision/open.json", "{}\n")

# (author, change, refused: the ref and words of the rule, or None when allowed)
MATRIX = [
    # Workspaces: their admins; a new one: platform admins; nobody promotes themselves
    (ADM, WS_QUOTA, None),
    (DEV, WS_QUOTA, ("Workspace/vision", "developer in vision", "only by its admins")),
    (ANN, WS_QUOTA, ("Workspace/vision", "annotator in vision", "only by its admins")),
    (DEV, SELF_PROMOTE, ("Workspace/vision", "developer in vision", "only by its admins")),
    (OPS, NEW_WS, None),
    (ADM, NEW_WS, ("Workspace/audio", "not a member of audio", "created by platform admins")),
    (NADM, DEL_NLP, None),
    (ADM, DEL_NLP, ("Workspace/nlp", "not a member of nlp", "only by its admins")),
    # a workspace's objects: developers and admins, never annotators or other workspaces' members
    (DEV2, DIGITS, None),
    (ADM, DIGITS, None),
    (ANN, DIGITS, ("Dataset/vision/digits", "annotator in vision", "annotators label")),
    (NDEV, DIGITS, ("Dataset/vision/digits", "not a member of vision", "only developers and admins")),
    (DEV2, NEW_DATA, None),
    (ANN, NEW_DATA, ("Dataset/vision/more", "annotator in vision", "annotators label")),
    (DEV2, DEL_DIGITS, None),
    (ANN, DEL_DIGITS, ("Dataset/vision/digits", "annotator in vision", "annotators label")),
    (DEV, DIGITS_TO_NLP, ("Dataset/nlp/digits", "not a member of nlp", "only developers and admins")),
    (DEV3, OPEN_C, None),
    (ANN, OPEN_C, ("Experiment/vision/open", "annotator in vision", "annotators label")),
    (DEV, MOVE_EXPS, None),  # a moved object counts: the owner may
    (ANN, MOVE_EXPS, ("Experiment/vision/secret", "annotator in vision", "annotators label")),
    # read-only dataset: its owner or a workspace admin (the owner as it was: no takeover)
    (DEV, GOLD, None),
    (ADM, GOLD, None),
    (DEV2, GOLD, ("Dataset/vision/gold", "developer in vision", "read-only")),
    (DEV2, GOLD_TAKEOVER, ("Dataset/vision/gold", "developer in vision", "read-only")),
    (DEV3, DEL_GOLD, ("Dataset/vision/gold", "developer in vision", "read-only")),
    # private experiment / deployment: owner, listed users, admins
    (DEV, SECRET_C, None),
    (DEV2, SECRET_C, None),
    (ADM, SECRET_C, None),
    (DEV3, SECRET_C, ("Experiment/vision/secret", "developer in vision", "private")),
    (ANN, SECRET_C, ("Experiment/vision/secret", "annotator in vision", "annotators label")),
    (DEV3, DEL_SECRET, ("Experiment/vision/secret", "developer in vision", "private")),
    (DEV3, NEW_PRIVATE, None),
    (DEV2, NEW_PRIVATE, ("Experiment/vision/mine", "developer in vision", "private")),
    (DEV, SERVE, None),
    (DEV2, SERVE, ("Deployment/vision/serve", "developer in vision", "private")),
    # platform files and platform admins
    (ADM, KILN_YAML, ("kiln.yaml", "not a platform admin", "only platform admins")),
    (OPS, KILN_YAML, None),
    (DEV, CODEOWNERS, (".github/CODEOWNERS", "not a platform admin", "only platform admins")),
    (OPS, SECRET_C, None),
    # other files: code for developers and admins; data/<ws>/ and metrics/<ws>/ for that workspace's
    (DEV, SCRIPT, None),
    (ANN, SCRIPT, ("train.py", "annotator in vision", "files outside the specs")),
    (NDEV, METRICS, ("metrics/vision/open.json", "not a member of vision", "developers and admins of vision")),
    (DEV3, METRICS, None),
]


def _line(text: str, name: str) -> int:
    """The line where the document naming ``name`` starts (after its `---`)."""
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if f"{{name: {name}" in line)
    while at > 0 and lines[at - 1] != "---":
        at -= 1
    return at + 1


@pytest.mark.parametrize(
    ("author", "change", "refused"), MATRIX, ids=[f"{i}-{a.split('@')[0]}" for i, (a, _, _) in enumerate(MATRIX)]
)
def test_policy_matrix(repo: Repo, author: str, change: Callable, refused: tuple[str, str, str] | None) -> None:
    repo.reset()
    head = repo.commit(author, change(repo.root))
    report = repo.check()
    assert [c.sha for c in report.commits] == [head]
    if refused is None:
        assert report.ok, report.text()
        return
    ref, role, rule = refused
    # one line per object changed against the rules (a moved file moves both its experiments)
    assert len(report.violations) == (2 if change is MOVE_EXPS else 1), report.text()
    assert {(v.commit, v.user) for v in report.violations} == {(head, author)}
    v = next(v for v in report.violations if v.what == ref)
    line = str(v)
    assert v.role == role and rule in v.rule, line
    assert line.startswith(f"{v.path}:{v.line}: {author} ({role}) may not ")
    assert f" {ref}: {v.rule} (commit {head[:12]})" in line
    if ref.startswith(("Workspace/", "Dataset/", "Experiment/", "Deployment/")):
        # its file and the line of its document: the new version's, or the old one's when deleted
        name = ref.rsplit("/", 1)[1]
        now = (repo.root / v.path).read_text() if (repo.root / v.path).is_file() else ""
        text = now if f"{{name: {name}" in now else git(repo.root, "show", f"{repo.base}:{v.path}")
        assert v.line == _line(text, name), line
    else:
        assert v.path == ref and v.line == 1


def test_a_change_undone_in_the_range_is_not_judged_and_the_actor_replaces_the_author(repo: Repo) -> None:
    repo.reset()
    bad = repo.commit(ANN, SECRET_C(repo.root), "annotator edits")
    assert not repo.check().ok
    repo.commit(
        DEV,
        {"specs/exps.yaml": experiment("open", c=0.5) + "---\n" + experiment("secret", SECRET, c=0.5)},
        "owner: another experiment",
    )
    both = repo.check()
    assert [v.commit for v in both.violations] == [bad]
    assert both.allowed_until() == repo.base
    repo.commit(DEV, {"specs/exps.yaml": experiment("open", c=0.5) + "---\n" + experiment("secret", SECRET)}, "revert")
    assert repo.check().ok  # secret is as it was at the base: the annotator's edit is gone
    # the CI actor instead of each commit's author
    repo.reset()
    repo.commit(DEV, DIGITS(repo.root))
    assert repo.check().ok
    refused = repo.check(actor=ANN)
    assert [v.user for v in refused.violations] == [ANN] and refused.violations[0].role == "annotator in vision"


def test_kiln_plan_policy_prints_one_line_per_violation_and_exits_1(repo: Repo) -> None:
    repo.reset()
    repo.commit(ANN, OPEN_C(repo.root))
    p = kiln("plan", "--policy", f"{repo.base}..HEAD", cwd=repo.root)
    assert p.returncode == 1, p.stdout + p.stderr
    line = _line((repo.root / "specs/exps.yaml").read_text(), "open")
    expect = f"specs/exps.yaml:{line}: {ANN} (annotator in vision) may not change Experiment/vision/open: annotators label"
    assert expect in p.stdout and "Traceback" not in p.stderr
    ok = kiln("plan", "--policy", f"{repo.base}..HEAD", "--actor", DEV, cwd=repo.root)
    assert ok.returncode == 0 and "policy: 1 commit(s)" in ok.stdout
    bad = kiln("plan", "--policy", "nope..HEAD", cwd=repo.root)
    assert bad.returncode == 1 and "'nope' is not a commit" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs ssh-keygen")
def test_signed_commits_are_verified_when_required(tmp_path: Path) -> None:
    r = Repo(tmp_path / "repo")
    key = tmp_path / "dev_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", DEV, "-f", str(key)], check=True)
    (tmp_path / "allowed").write_text(f"{DEV} {(tmp_path / 'dev_key.pub').read_text()}")
    for k, v in {"gpg.format": "ssh", "gpg.ssh.allowedSignersFile": str(tmp_path / "allowed")}.items():
        git(r.root, "config", k, v)
    r.base = r.commit(OPS, {"kiln.yaml": f"policy: {{admins: [{OPS}], requireSignedCommits: true}}\n"})
    unsigned = r.commit(DEV, DIGITS(r.root))
    report = r.check()
    assert [(v.commit, v.role) for v in report.violations] == [(unsigned, "unsigned")]
    assert "no trusted signature" in report.violations[0].rule
    r.reset()
    git(r.root, "config", "user.signingkey", str(key))
    git(r.root, "add", "-A")
    (r.root / "specs/data/digits.yaml").write_text(dataset("digits", extra="  missingLabels: error\n"))
    git(r.root, "add", "-A")
    git(r.root, "-c", f"user.email={DEV}", "commit", "-q", "-S", "-m", "signed")
    assert r.check().ok
    # signed with dev's key but claiming another author: not the author's signature
    (r.root / "specs/data/digits.yaml").write_text(dataset("digits", extra="  missingLabels: skip\n"))
    git(r.root, "add", "-A")
    git(r.root, "-c", f"user.email={DEV2}", "commit", "-q", "-S", "-m", "as someone else")
    assert [v.role for v in r.check().violations] == ["unsigned"]


def test_codeowners_matches_the_specs(repo: Repo) -> None:
    repo.reset()
    p = kiln("policy", "codeowners", "-o", "-", cwd=repo.root, check=True)
    rules = {line.split()[0]: set(line.split()[1:]) for line in p.stdout.splitlines() if line and not line.startswith("#")}
    assert rules["*"] == {OPS}
    assert rules["/specs/vision.yaml"] == {ADM, OPS}
    assert rules["/specs/nlp.yaml"] == {NADM, OPS}
    assert rules["/specs/data/digits.yaml"] == {ADM, DEV, DEV2, DEV3, OPS}
    assert rules["/specs/data/gold.yaml"] == {ADM, DEV, OPS}  # read-only: owner, admin
    assert rules["/specs/exps.yaml"] == {ADM, DEV, DEV2, OPS}  # holds the private one
    assert rules["/specs/serve.yaml"] == {ADM, DEV, OPS}
    assert rules["/kiln.yaml"] == {OPS} and rules["/.github/CODEOWNERS"] == {OPS}
    # what CODEOWNERS grants is what the policy check allows, for each spec file and member
    from kiln.config import load_config
    from kiln.controller.policy import Change as ObjChange
    from kiln.controller.policy import Roles, Specs, judge, members_of

    cfg = load_config(repo.root)
    specs = Specs(repo.root, cfg)
    try:
        roles = Roles(cfg.policy)
        for v in specs.all_at("HEAD"):
            if v.kind == "Workspace":
                roles.existing.add(v.name)
                roles.members[v.name] = members_of(v.doc)
        for path, owners in rules.items():
            objs = specs.at("HEAD", path[1:]) if path.startswith("/specs/") else []
            for user in (ADM, DEV, DEV2, DEV3, ANN, NADM, NDEV):
                allowed = all(judge(ObjChange("update", o.kind, o.workspace, o.name, o, o), user, roles) is None for o in objs)
                if objs:
                    assert (user in owners) == allowed, (path, user)
    finally:
        specs.close()
    out = kiln("policy", "codeowners", cwd=repo.root, check=True)
    assert "wrote .github/CODEOWNERS" in out.stdout and (repo.root / ".github/CODEOWNERS").read_text() == p.stdout
    (repo.root / ".github/CODEOWNERS").unlink()


def test_kiln_get_as_shows_only_the_users_workspaces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Recorded objects of two workspaces (written to the state store as apply does), seen by
    each role: members see their workspace and the datasets shared with it, not a private
    experiment they are not listed on; platform admins and no identity see everything."""
    import json

    from kiln.config import load_config
    from kiln.loader import load_specs
    from kiln.state import ObjectRecord, open_store

    root = tmp_path / "r"
    files = {
        **BASE,
        "specs/nlp-data.yaml": dataset("texts", "nlp", "  sharing: {visibility: shared, workspaces: [vision]}\n"),
        "specs/nlp-private.yaml": dataset("notes", "nlp"),
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    cfg = load_config(root)
    store = open_store(cfg.state_url(), root)
    try:
        for s in load_specs(root / "specs").specs:
            store.put(
                ObjectRecord(
                    key=s.key, kind=s.kind, workspace=s.workspace, name=s.name, spec=s.doc, spec_hash=s.spec_hash, generation=1
                )
            )
    finally:
        store.close()

    from kiln.cli import main

    monkeypatch.chdir(root)
    monkeypatch.delenv("KILN_USER", raising=False)

    def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
        """The kiln CLI in-process (eleven subprocesses took 20 s on a loaded machine)."""
        capsys.readouterr()
        with monkeypatch.context() as m:
            for k, v in (env or {}).items():
                m.setenv(k, v)
            code = main(list(args))
        out = capsys.readouterr()
        return code, out.out + out.err

    def names(*args: str, env: dict[str, str] | None = None) -> set[str]:
        code, out = run(*args, "-o", "json", env=env)
        assert code == 0, out
        return {f"{o['kind']}/{o['workspace']}/{o['name']}" for o in json.loads(out)}

    ws_all = names("get", "workspaces")
    assert ws_all == {"Workspace/default/vision", "Workspace/default/nlp"}
    assert names("get", "workspaces", "--as", DEV3) == {"Workspace/default/vision"}
    assert names("get", "workspaces", "--as", OPS) == ws_all
    assert names("get", "workspaces", env={"KILN_USER": NDEV}) == {"Workspace/default/nlp"}
    assert names("get", "workspaces", "--as", "stranger@x.com") == set()
    # datasets: their own and those shared with their workspace
    assert names("get", "datasets", "--as", DEV3) == {"Dataset/vision/digits", "Dataset/vision/gold", "Dataset/nlp/texts"}
    assert names("get", "datasets", "--as", NDEV) == {"Dataset/nlp/texts", "Dataset/nlp/notes"}
    # a private experiment: its owner, listed users and admins
    assert names("get", "experiments", "--as", DEV3) == {"Experiment/vision/open"}
    assert names("get", "experiments", "--as", DEV2) == {"Experiment/vision/open", "Experiment/vision/secret"}
    assert names("get", "experiments", "--as", ADM) == {"Experiment/vision/open", "Experiment/vision/secret"}
    code, out = run("get", "experiment", "vision/secret", "--as", DEV3)
    assert code == 1 and "has not been applied" in out
    # models list: the versions registered by experiments the user sees (hand-registered: admins)
    import click

    from kiln.bento.cli import _visible_models, models

    rows = [
        {"name": n, "labels": {"experiment": e} if e else {}}
        for n, e in (("o", "vision.open"), ("s", "vision.secret"), ("t", "nlp.texts"), ("h", ""))
    ]
    mctx = click.Context(models, obj={"repo": str(root)})
    assert [r["name"] for r in _visible_models(mctx, rows, DEV3)] == ["o"]
    assert [r["name"] for r in _visible_models(mctx, rows, DEV2)] == ["o", "s"]
    assert [r["name"] for r in _visible_models(mctx, rows, OPS)] == ["o", "s", "t", "h"]
    code, out = run("status", "-o", "json", "--as", NDEV)
    assert code == 0, out
    rows = json.loads(out)
    assert {(r["kind"], r["name"]) for r in rows} == {("Workspace", "nlp"), ("Dataset", "texts"), ("Dataset", "notes")}


# -- the controller --------------------------------------------------------------------------------


@pytest.mark.slow  # ~8 s: three applies of a Workspace
def test_the_controller_applies_allowed_commits_and_stays_on_the_last_allowed_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kiln.controller.daemon import Controller, JsonLog, Options

    monkeypatch.chdir(tmp_path)  # tick() moves into its clone
    monkeypatch.delenv("KILN_USER", raising=False)
    remote = Remote(tmp_path)
    members = {ADM: "admin", DEV: "developer", ANN: "annotator"}

    def push(author: str, files: dict[str, str | None], message: str) -> str:
        git(remote.work, "config", "user.email", author)
        return remote.push(files, message)

    first = push(OPS, {"kiln.yaml": f"policy: {{admins: [{OPS}]}}\n", "specs/vision.yaml": ws("vision", members)}, "bootstrap")
    log = io.StringIO()
    ctl = Controller(Options(source=str(remote.bare), workdir=tmp_path / "wd", port=None, once=True), JsonLog(log))
    (tmp_path / "wd").mkdir()
    clone = tmp_path / "wd" / "repo"
    assert ctl.tick() is True
    assert state(clone)[1]["lastApplied"]["commit"] == first
    # two commits at once: the admin's is applied, the annotator's after it is refused
    allowed = push(ADM, {"specs/vision.yaml": ws("vision", members, "  quotas: {maxExperiments: 5}\n")}, "quota")
    refused = push(ANN, {"specs/vision.yaml": ws("vision", members, "  quotas: {maxExperiments: 50}\n")}, "more")
    assert ctl.tick() is False
    records, ctl_rec = state(clone)
    assert ctl_rec["lastApplied"]["commit"] == allowed and git(clone, "rev-parse", "HEAD") == allowed
    (vision,) = [r for r in records.values() if r.name == "vision"]
    assert vision.spec["spec"]["quotas"] == {"maxExperiments": 5}
    err = ctl_rec["lastError"]
    assert err["kind"] == "policy" and err["commit"] == refused and ctl_rec["sync"] == "OutOfSync"
    assert f"specs/vision.yaml:1: {ANN} (annotator in vision) may not change Workspace/vision" in err["message"]
    events = [json.loads(x) for x in log.getvalue().splitlines()]
    assert [e["commit"] for e in events if e["event"] == "refused-commit"] == [refused]
    assert ctl.tick() is False  # reported once; still on the allowed commit
    assert sum("refused-commit" in e for e in log.getvalue().splitlines()) == 1
    st = kiln("status", cwd=clone, check=True).stdout
    assert f"policy commit {refused[:12]}" in st
    # the admin puts the annotator's change back: the range is allowed, the head applies
    fixed = push(ADM, {"specs/vision.yaml": ws("vision", members, "  quotas: {maxExperiments: 5}\n")}, "revert")
    assert ctl.tick() is True
    _, ctl_rec = state(clone)
    assert ctl_rec["lastApplied"]["commit"] == fixed and ctl_rec["lastError"] is None and ctl_rec["sync"] == "Synced"


def test_label_studio_accounts_only_for_members_with_the_role(tmp_path: Path) -> None:
    """The assign step creates a Label Studio account per annotator and reviewer: with a policy it
    refuses people of a workspace kiln does not manage, and a member whose applied role may not
    annotate or review; both before it reaches any server."""
    from kiln.config import load_config
    from kiln.controller.labeling_steps import labeling_assign
    from kiln.controller.steps import StepContext
    from kiln.errors import ConfigError
    from kiln.state import open_store

    (tmp_path / "kiln.yaml").write_text(
        f"policy: {{admins: [{OPS}]}}\nlabelStudio: {{url: 'http://127.0.0.1:9', tokenEnv: KILN_TEST_NO_TOKEN}}\n"
    )
    cfg = load_config(tmp_path)
    job = {
        "apiVersion": "kiln.dev/v1alpha1",
        "kind": "LabelingJob",
        "metadata": {"name": "boxes", "workspace": "vision"},
        "spec": {
            "dataset": {"name": "digits"},
            "task": "classification",
            "labels": ["a", "b"],
            "annotators": [{"user": ANN}],
            "reviewers": [DEV],
        },
    }
    ctx = StepContext(cfg, "LabelingJob/vision/boxes", job, "h")
    with pytest.raises(ConfigError, match="no applied Workspace spec") as exc:
        labeling_assign(ctx)
    assert ANN in exc.value.message and DEV in exc.value.message
    store = open_store(cfg.state_url(), tmp_path)
    try:
        store.put_kv("workspace", "vision", {"members": {ANN: "annotator", DEV: "annotator"}})
    finally:
        store.close()
    with pytest.raises(ConfigError, match=r"dev@x.com \(annotator\) may not review"):
        labeling_assign(ctx)


def test_a_merge_is_judged_by_what_it_resolves_its_branches_by_their_commits(repo: Repo) -> None:
    repo.reset()
    git(repo.root, "checkout", "-q", "-b", "side")
    dev = repo.commit(DEV, DIGITS(repo.root), "developer on a branch")
    git(repo.root, "checkout", "-q", "main")
    repo.commit(DEV2, OPEN_C(repo.root), "developer on main")
    git(repo.root, "-c", f"user.email={ANN}", "merge", "-q", "--no-edit", "side")
    report = repo.check()
    assert len(report.commits) == 3 and report.ok, report.text()  # a clean merge decides nothing itself
    # a merge that changes something itself (an "evil merge") is its author's change
    git(repo.root, "reset", "-q", "--hard", "HEAD~1")
    git(repo.root, "-c", f"user.email={ANN}", "merge", "-q", "--no-commit", "side")
    (repo.root / "specs/data/gold.yaml").write_text(dataset("gold", extra="  sharing: {access: read-write}\n"))
    git(repo.root, "add", "-A")
    git(repo.root, "-c", f"user.email={ANN}", "commit", "-q", "--no-edit")
    refused = repo.check()
    assert [(v.user, v.what) for v in refused.violations] == [(ANN, "Dataset/vision/gold")], refused.text()
    assert dev not in {v.commit for v in refused.violations}
    git(repo.root, "branch", "-q", "-D", "side")
