"""``kiln init`` and the ``.gitignore`` entry for kiln's private folder.

``.kiln/`` holds the state store, locks, run folders, the model registry and materialised data:
gigabytes after a few runs, and a forged copy in a commit would make ``kiln plan`` lie (see
``project.refuse_committed_private_files``). What a repository commits instead is small: specs,
``kiln.yaml``, DVC pointers and version logs of datasets, experiments' ``metrics/`` files.
"""

from __future__ import annotations

from pathlib import Path

from kiln._util.fs import write_text_atomic

GITIGNORE_ENTRY = "/.kiln/"
# lines that already keep the root's .kiln/ out of git (gitignore(5): a trailing "/" matches
# folders only, a leading "/" anchors to this folder; ".kiln" alone matches at any depth)
_SAME = {".kiln", ".kiln/", "/.kiln", "/.kiln/", ".kiln/*", "/.kiln/*", ".kiln/**", "/.kiln/**"}
_COMMENT = "# kiln's private files (state, runs, model store): never committed, see README 'What goes in git'"


def ensure_gitignore(repo: Path) -> bool:
    """Add ``/.kiln/`` to the repository's ``.gitignore`` unless a line there already ignores it;
    True when the file was written. Appends (the user's lines stay as they are), atomically."""
    path = Path(repo) / ".gitignore"
    text = path.read_text() if path.is_file() else ""
    if any(line.strip() in _SAME for line in text.splitlines()):
        return False
    sep = "" if not text or text.endswith("\n") else "\n"
    write_text_atomic(path, f"{text}{sep}{_COMMENT}\n{GITIGNORE_ENTRY}\n")
    return True


def init(repo: Path) -> list[str]:
    """Scaffold a kiln repository in ``repo`` (made if missing): the ``.gitignore`` entry and a
    ``specs/`` folder. Never overwrites a file. Returns what was done, one line each."""
    repo = Path(repo)
    repo.mkdir(parents=True, exist_ok=True)
    done = []
    if ensure_gitignore(repo):
        done.append(f"added {GITIGNORE_ENTRY} to .gitignore (kiln's private files stay out of git)")
    else:
        done.append(".gitignore already keeps .kiln/ out of git")
    if not (repo / "specs").exists():
        (repo / "specs").mkdir()
        done.append("created specs/ (put Workspace, Dataset, Experiment ... YAML files there)")
    if not (repo / ".git").exists():
        done.append("not a git repository yet: run `git init` (kiln's GitOps loop reads specs from git)")
    return done
