"""A real Label Studio server as part of kiln's local stack: install, start, status, stop.

Label Studio (a Django app, ~1 GB installed) runs in its OWN virtual environment so its pinned
dependencies never meet kiln's: ``$KILN_LS_VENV`` or ``~/.cache/kiln/label-studio-venv``. It is
started headless on loopback with a known admin and a legacy API token, exactly as measured in
COMPONENTS.md (token settings only take effect when the database is first created, and the server
silently moves to the next port when its port is busy, so kiln picks a free port first).

Persisted under the repository's ``.kiln/``::

    .kiln/labelstudio.json    {"url": "http://127.0.0.1:41234", "pid": 1234, "port": 41234,
                               "token_env": "KILN_LABELSTUDIO_TOKEN", "admin": "admin@kiln.local",
                               "data_dir": "...", "document_root": "...", "log": "...", "version": "1.23.2"}
    .kiln/labelstudio.token   the admin's API token, 0600, generated once; printed only by
                              ``kiln labelstudio token``
    .kiln/labelstudio.password  the admin's UI password, 0600
    .kiln/labelstudio/data/   the server's data dir (SQLite database, uploads): 0700, files 0600
    .kiln/labelstudio/files/  the document root: the exported items only (``export``), never the
                              repository or ``.kiln`` (an annotator can read anything under it)

Clients find the token in ``$KILN_LABELSTUDIO_TOKEN`` first, then in the token file
(``read_token``), so the token never has to appear in a spec, a manifest or a log.
"""

from __future__ import annotations

import ast
import json
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from kiln._util.fs import private_dir, write_text_atomic
from kiln._util.proc import pid_alive
from kiln._util.redact import is_secret_key
from kiln.errors import ConfigError, KilnError

LS_VERSION = "1.23.2"
TOKEN_ENV = "KILN_LABELSTUDIO_TOKEN"
ADMIN_EMAIL = "admin@kiln.local"
STATE_FILE = "labelstudio.json"
TOKEN_FILE = "labelstudio.token"
PASSWORD_FILE = "labelstudio.password"
# What the server inherits from kiln's environment: what Python, Django and the locale need, never
# kiln's settings (KILN_*: the state URL, deployment tokens, webhooks) nor anything secret-named.
# Label Studio runs code for every user of its UI; it gets only the LABEL_STUDIO_* settings kiln sets.
# (Plain PORT, HOST, DEBUG, USERNAME, PASSWORD, which its settings fall back to, stay out too.)
_PASS_NAMES = frozenset({"PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR",
                         "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE"})
_PASS_PREFIXES = ("LC_",)


class LabelStudioError(KilnError):
    """The local Label Studio server cannot be installed, started or reached."""


@dataclass
class ServerInfo:
    url: str
    pid: int
    port: int
    token_env: str
    admin: str
    data_dir: str
    document_root: str
    log: str
    version: str = LS_VERSION


# -- virtual environment ------------------------------------------------------------------------------
def venv_dir() -> Path:
    return Path(os.environ.get("KILN_LS_VENV") or Path.home() / ".cache" / "kiln" / "label-studio-venv")


def is_installed(venv: Path | None = None) -> bool:
    venv = venv or venv_dir()
    # pip writes the dist-info last, so its presence means a finished install of this version
    return (venv / "bin" / "label-studio").is_file() and any(
        venv.glob(f"lib/python3*/site-packages/label_studio-{LS_VERSION}.dist-info"))


def install(venv: Path | None = None, *, quiet: bool = True) -> Path:
    """Create the server's venv and ``pip install label-studio==LS_VERSION`` if not already there."""
    venv = venv or venv_dir()
    if is_installed(venv):
        return venv
    venv.parent.mkdir(parents=True, exist_ok=True)
    # uv (kiln's serve extra brings it) installs Label Studio in ~25 s where pip took 1.5-4 min (#23)
    uv = shutil.which("uv") or next((str(p) for p in [Path(sys.executable).parent / "uv"] if p.is_file()), None)
    if not (venv / "bin" / "python").exists():
        _run([sys.executable, "-m", "venv", *(["--without-pip"] if uv else []), str(venv)], "create the Label Studio venv")
    if uv:
        cmd = [uv, "pip", "install", "--python", str(venv / "bin" / "python"), f"label-studio=={LS_VERSION}"]
    else:
        cmd = [str(venv / "bin" / "python"), "-m", "pip", "install", f"label-studio=={LS_VERSION}"]
    _run(cmd + (["-q"] if quiet else []), f"install label-studio {LS_VERSION} into {venv}")
    if not is_installed(venv):
        raise LabelStudioError(f"label-studio {LS_VERSION} is not in {venv} after pip install",
                               hint=f"remove {venv} and run `kiln labelstudio start` again")
    return venv


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise LabelStudioError(f"could not {what}: " + " | ".join(tail),
                               hint="check network access to the package registry")


# -- secrets --------------------------------------------------------------------------------------------
def _write_secret(path: Path, value: str) -> None:
    write_text_atomic(path, value + "\n", mode=0o600)


def _secret(path: Path, make) -> str:
    if path.is_file():
        return path.read_text().strip()
    value = make()
    _write_secret(path, value)
    return value


def read_token(state_dir: Path) -> str:
    """The admin token: ``$KILN_LABELSTUDIO_TOKEN``, else ``.kiln/labelstudio.token``."""
    tok = os.environ.get(TOKEN_ENV)
    if tok:
        return tok
    path = state_dir / TOKEN_FILE
    if not path.is_file():
        raise LabelStudioError(f"no Label Studio token: {TOKEN_ENV} is unset and {path} does not exist",
                               hint="run `kiln labelstudio start` first")
    return path.read_text().strip()


# -- state --------------------------------------------------------------------------------------------
def read_state(state_dir: Path) -> ServerInfo | None:
    path = state_dir / STATE_FILE
    if not path.is_file():
        return None
    try:
        return ServerInfo(**json.loads(path.read_text()))
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{path}: unreadable Label Studio state ({e})",
                          hint="run `kiln labelstudio stop` and start it again") from None


def _write_state(state_dir: Path, info: ServerInfo) -> None:
    path = state_dir / STATE_FILE
    write_text_atomic(path, json.dumps(asdict(info), indent=2) + "\n", mkdir=False)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def health(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as r:
            return json.loads(r.read() or b"{}").get("status") == "UP"
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _alive(pid: int) -> bool:
    if not pid_alive(pid):
        return False
    # a zombie of ours still answers kill(0); treat it as gone
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


# -- the document root --------------------------------------------------------------------------------
def files_dir(state_dir: Path) -> Path:
    """The default document root: kiln's export folder of labelling items (``export``)."""
    return Path(state_dir).resolve() / "labelstudio" / "files"


def _overlaps(a: Path, b: Path) -> bool:
    return a == b or a.is_relative_to(b) or b.is_relative_to(a)


def unsafe_root(root: Path, repo: Path, *, keep: tuple[Path, ...] = (), allowed: Path | None = None) -> str | None:
    """Why ``root`` must not be a document root (None when it may be). Label Studio serves any
    file under it to any of its users who can add a storage (every user of the open-source edition),
    so it must hold exported items only: not the repository (kiln's secrets, state and every file of
    the checkout), not a folder inside or around it (``allowed``, kiln's own export folder, aside),
    and not a folder around ``keep`` (the server's data dir: its database holds every token)."""
    root, repo = Path(root).resolve(), Path(repo).resolve()
    if allowed is not None and root.is_relative_to(allowed.resolve()):
        return None
    if _overlaps(root, repo):
        where = "is" if root == repo else "contains" if repo.is_relative_to(root) else "is inside"
        return f"{root} {where} the repository {repo}"
    for k in keep:
        if Path(k).resolve().is_relative_to(root):
            return f"{root} contains {Path(k).resolve()}"
    return None


def export(items: list[tuple[Path, str]], dest: Path) -> int:
    """Place each ``(source file, relative name)`` at ``dest/<name>`` as a hard link (a copy across
    filesystems); returns how many were (re)placed. Never a symlink: Label Studio follows symlinks
    under its document root, so one would serve whatever it points at. A name that leaves ``dest``
    or a source that is not a regular file is refused."""
    dest = Path(dest)
    n = 0
    ready: set[Path] = set()
    for src, name in items:
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise ConfigError(f"item {name!r}: a labelling item must be a relative path inside its dataset")
        out = dest / name
        try:
            st = os.stat(src)  # follows a DVC cache symlink to the object it stands for
        except FileNotFoundError:
            raise ConfigError(f"item {name!r}: {src} does not exist") from None
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"item {name!r}: {src} is not a regular file")
        try:
            have = os.lstat(out)
            if stat.S_ISREG(have.st_mode) and (have.st_ino == st.st_ino and have.st_dev == st.st_dev
                                               or (have.st_size, have.st_mtime_ns) == (st.st_size, st.st_mtime_ns)):
                continue
        except FileNotFoundError:
            pass
        if out.parent not in ready:  # once per folder: resolving costs a system call per component
            out.parent.mkdir(parents=True, exist_ok=True)
            if out.parent.resolve() != out.parent.absolute():
                raise ConfigError(f"{out.parent} leads through a symlink; remove it from the export folder {dest}")
            ready.add(out.parent)
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        try:
            os.link(src, tmp)  # follow_symlinks: the link is to the file itself
        except OSError:
            shutil.copy2(src, tmp)  # another filesystem, or a file hard links may not reach
        os.replace(tmp, out)
        n += 1
    return n


def _private(data_dir: Path) -> None:
    """The data dir 0700, everything in it 0600 (0700 for folders): the SQLite database holds
    every user's API token in plain text; a server started before this rule left it 0644."""
    data_dir.chmod(0o700)
    for folder, dirs, files in os.walk(data_dir):
        for name, mode in [(d, 0o700) for d in dirs] + [(f, 0o600) for f in files]:
            path = os.path.join(folder, name)
            if not os.path.islink(path):  # a link's target is not the server's to change
                os.chmod(path, mode)


# -- start / stop -----------------------------------------------------------------------------------
def server_env(data_dir: Path, document_root: Path, token: str, password: str) -> dict[str, str]:
    """The server's whole environment: the allowlist above and kiln's settings, nothing else."""
    env = {k: v for k, v in os.environ.items()
           if (k in _PASS_NAMES or k.startswith(_PASS_PREFIXES)) and not is_secret_key(k)}
    env.update({
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        "LABEL_STUDIO_USERNAME": ADMIN_EMAIL,
        "LABEL_STUDIO_PASSWORD": password,
        "LABEL_STUDIO_USER_TOKEN": token,
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",  # else the env token answers 401
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(document_root),
        "LABEL_STUDIO_SSRF_PROTECTION_ENABLED": "false",  # webhooks to 127.0.0.1
        "LABEL_STUDIO_ML_BLOCK_LOCAL_IP": "false",  # ML backends on 127.0.0.1
        "LABEL_STUDIO_COLLECT_ANALYTICS": "false",
        "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",
        "SENTRY_DSN": "",
        "FRONTEND_SENTRY_DSN": "",
        "XDG_CONFIG_HOME": str(data_dir / "config"),
    })
    return env


def start(state_dir: Path, *, data_dir: Path | None = None, document_root: Path | None = None,
          port: int | None = None, seed_from: Path | None = None, venv: Path | None = None,
          timeout: float = 300.0, echo: Callable[[str], object] | None = None) -> ServerInfo:
    """Start the server (installing it first if needed) and return where it listens.

    Idempotent: a server already recorded and healthy is returned as is, unless its document root
    is one ``unsafe_root`` refuses (kiln before #20 served the repository): that one is restarted
    onto the export folder, and ``echo`` says so. ``seed_from`` copies an already-migrated data dir
    (with its ``labelstudio.token``/``.password`` beside the DB) when ``data_dir`` does not exist
    yet: a start in ~5 s instead of ~1 min of migrations.
    """
    state_dir = private_dir(Path(state_dir).resolve())
    current = read_state(state_dir)
    data_dir = Path(data_dir or (current.data_dir if current else None) or state_dir / "labelstudio" / "data").resolve()
    document_root = Path(document_root).resolve() if document_root else None
    if document_root is not None:
        _check_root(document_root, state_dir, data_dir)
    if current is not None and _alive(current.pid) and health(current.url):
        why = unsafe_root(Path(current.document_root), state_dir.parent, keep=(data_dir,),
                          allowed=files_dir(state_dir))
        if why is None:
            return current
        stop(state_dir)
        if echo:
            echo(f"Label Studio at {current.url} served {why}; restarting it onto "
                 f"{document_root or files_dir(state_dir)} (kiln's export folder of labelling items)")
    venv = install(venv)
    if document_root is None:
        document_root = files_dir(state_dir)
        document_root.mkdir(parents=True, exist_ok=True)
    if not document_root.is_dir():
        raise ConfigError(f"Label Studio document root {document_root} is not a folder")
    if seed_from is not None and not data_dir.exists():
        shutil.copytree(seed_from, data_dir)
        for name in (TOKEN_FILE, PASSWORD_FILE):
            if (seed_from / name).is_file():
                _write_secret(state_dir / name, (seed_from / name).read_text().strip())
    db_exists = (data_dir / "label_studio.sqlite3").exists()
    if db_exists and not (state_dir / TOKEN_FILE).is_file():
        # the token lives in the database from its first start; a new one would never be accepted
        raise LabelStudioError(f"{data_dir} has a database but {state_dir / TOKEN_FILE} is missing",
                               hint=f"restore the token file, or remove {data_dir} to start afresh")
    token = _secret(state_dir / TOKEN_FILE, lambda: secrets.token_hex(20))
    password = _secret(state_dir / PASSWORD_FILE, lambda: secrets.token_urlsafe(18))
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    _private(data_dir)
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    log = data_dir.parent / "server.log"
    cmd = [str(venv / "bin" / "label-studio"), "start", "--no-browser",
           "--internal-host", "127.0.0.1", "--port", str(port)]
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.fchmod(fd, 0o600)  # a log from before this rule was 0644; Django's errors may quote requests
    with open(fd, "ab") as logf:
        # umask 077: the database, uploads and exports the server writes are its user's alone
        proc = subprocess.Popen(cmd, env=server_env(data_dir, document_root, token, password),
                                stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=str(data_dir), umask=0o077)
    info = ServerInfo(url=url, pid=proc.pid, port=port, token_env=TOKEN_ENV, admin=ADMIN_EMAIL,
                      data_dir=str(data_dir), document_root=str(document_root), log=str(log))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LabelStudioError(f"Label Studio exited with code {proc.returncode} while starting: "
                                   + _tail(log), hint=f"see {log}")
        if health(url):
            _write_state(state_dir, info)
            return info
        time.sleep(0.5)
    _kill_group(proc.pid)
    raise LabelStudioError(f"Label Studio did not answer {url}/health within {timeout:.0f} s",
                           hint=f"see {log}")


def _check_root(root: Path, state_dir: Path, data_dir: Path) -> None:
    why = unsafe_root(root, state_dir.parent, keep=(data_dir, state_dir), allowed=files_dir(state_dir))
    if why is not None:
        raise ConfigError(f"Label Studio document root {why}: every Label Studio user could read it "
                          "through a local-files storage",
                          hint=f"leave --document-root out (kiln exports the items to {files_dir(state_dir)}), "
                               "or give a folder that holds exported data only")


def _tail(log: Path, n: int = 3) -> str:
    try:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-n:])


def _kill_group(pid: int, grace: float = 15.0) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)  # the server was started as a session (and group) leader
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not _alive(pid):
            break
        time.sleep(0.2)
    else:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.waitpid(pid, os.WNOHANG)  # reap when it is our child
    except ChildProcessError:
        pass


def stop(state_dir: Path) -> ServerInfo | None:
    """Stop the recorded server (and its children); None when none was recorded."""
    state_dir = Path(state_dir).resolve()
    info = read_state(state_dir)
    if info is None:
        return None
    if _alive(info.pid) and _is_label_studio(info.pid):
        _kill_group(info.pid)
    (state_dir / STATE_FILE).unlink(missing_ok=True)
    return info


def _is_label_studio(pid: int) -> bool:
    # the pid in the state file may have been reused by an unrelated process after a reboot
    try:
        return b"label-studio" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def status(state_dir: Path) -> dict[str, object]:
    info = read_state(Path(state_dir).resolve())
    if info is None:
        return {"running": False}
    alive = _alive(info.pid)
    return {"running": alive and health(info.url), "process": alive, **asdict(info)}


def user_token(state_dir: Path, email: str, venv: Path | None = None) -> str:
    """The API token of another user (e.g. an annotator), via ``label-studio user --username``.

    Open-source Label Studio has no API for an admin to read another user's token; the management
    command reads the same database the server uses.
    """
    info = read_state(Path(state_dir).resolve())
    if info is None:
        raise LabelStudioError("Label Studio is not running", hint="run `kiln labelstudio start`")
    venv = venv or venv_dir()
    env = server_env(Path(info.data_dir), Path(info.document_root), read_token(Path(state_dir)), "")
    for k in ("LABEL_STUDIO_USERNAME", "LABEL_STUDIO_PASSWORD", "LABEL_STUDIO_USER_TOKEN"):
        env.pop(k)
    proc = subprocess.run([str(venv / "bin" / "label-studio"), "user", "--username", email],
                          env=env, capture_output=True, text=True, cwd=info.data_dir)
    for line in proc.stdout.splitlines():
        # the command prints the user as a Python dict literal: {'id': 2, ..., 'token': '...'}
        if line.startswith("{") and "'token'" in line:
            try:
                return str(ast.literal_eval(line)["token"])
            except (ValueError, SyntaxError, KeyError):
                break
    raise LabelStudioError(f"no token found for Label Studio user {email}: " + _last(proc.stderr),
                           hint="create the user first (LabelingClient.ensure_user)")


def _last(text: str, n: int = 2) -> str:
    return " | ".join([ln for ln in text.splitlines() if ln.strip()][-n:])
