"""The Dataset workflow's steps: fetch -> validate -> preprocess-<i> -> split -> version.

Each task of a Dataset's workflow (``kiln.controller.render._dataset``) runs one of these in its
own process. They hand data to each other through a staging folder per spec hash, and the last
one versions the result with DVC at a fixed place in the user's repository::

    .kiln/workspaces/<ws>/datasets/<name>/
        staging/<spec-hash>/
            source/            fetch: the materialised source (a copy; never the user's files)
            source.json        fetch summary
            validated.json     validate: detected format, counts, content hash
            op-<i>/ op-<i>.json  preprocess-<i>: output of ops 0..i (lineage and fitted
                               transforms of all of them in op-<i>/.kiln/; tables: the
                               rows' split, decided by op-0, in op-<i>/.kiln/splits.json)
            split/ split.json  split: the final layout, with .kiln/splits.json (the manifest)
        step.lock              held by every step of this dataset (a retried task may
                               overlap an orphan of a killed run)
    data/<ws>/<name>/          the versioned folder (DVC-tracked, git-ignored)
    data/<ws>/<name>.dvc       what git tracks; commit it (versioning.commit: auto does)
    data/<ws>/<name>.versions.json   versions log (kiln.data.versioning)

Why a fixed ``data/<ws>/<name>/``: the ``.dvc`` file's place is what users commit and what other
datasets and experiments refer to, so it must not depend on the spec's hash or the source.

Idempotency: a stage folder is filled under a temporary name and renamed into place, so its
existence means it is complete; a step whose stage exists returns the recorded summary. Any step
rebuilds missing earlier stages itself (``_ensure``): the runner may memoize fetch/validate for a
spec hash whose staging folder was cleaned up after an earlier successful version. Versioning
is idempotent through DVC: the version id is the content hash of the folder, so the same data
gives the same id and no new log entry. Outputs are small summaries; the data never travels in
them.

Errors a user can fix (a corrupt image, a missing COCO image, a date column, a bad op parameter)
are ``DatasetFormatError``s naming the file as the user knows it (the staging prefix is replaced
by the source path); ``kiln step`` exits 4 for them, which the workflow does not retry.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln._util.fs import read_json, write_json_atomic
from kiln.api.dataset import Dataset, DatasetSpec
from kiln.api.source_policy import OBJECT_STORES, spec_problems
from kiln.controller.deployment_steps import capture_dir
from kiln.controller.handlers.base import TemporaryError
from kiln.controller.plan import source_fingerprint
from kiln.controller.steps import StepContext, workspace_dir
from kiln.data import load
from kiln.data.archive import ArchiveLimits, extract_archive
from kiln.data.errors import DatasetFormatError
from kiln.data.formats import export
from kiln.data.formats._base import write_dataset_json
from kiln.data.formats.segmentation_json import BACKGROUND, FORMAT_FILE
from kiln.data.preprocess import Pipeline, apply_ops
from kiln.data.samples import materialize_sample
from kiln.data.sources import AddressRefused, check_links, inside, open_url
from kiln.data.splits import DEFAULT_RATIOS, assign_splits
from kiln.data.versioning import DatasetRepo
from kiln.errors import ConfigError, KilnError

if TYPE_CHECKING:
    from kiln.config import KilnConfig
    from kiln.data.model import DatasetContent

DATA_ROOT = "data"


class SourceNotAvailable(KilnError):
    """The spec is valid but its source cannot be materialised by this kiln version."""


# -- paths ---------------------------------------------------------------------------------------

def dataset_home(config: KilnConfig, workspace: str, name: str) -> Path:
    return workspace_dir(config, workspace) / "datasets" / name


def data_rel(workspace: str, name: str) -> str:
    """Where a dataset's versioned folder lives, relative to the repository root."""
    return f"{DATA_ROOT}/{workspace}/{name}"


def applied_dataset_spec(config: KilnConfig, workspace: str, name: str) -> dict[str, Any]:
    """The ``spec`` of the Dataset as last applied (the state record), {} when none is recorded."""
    from kiln.state import open_store

    store = open_store(config.state_url(), config.repo, max_attempts=config.historyLimit, read_only=True)
    try:
        rec = store.get(f"Dataset/{workspace}/{name}")
    finally:
        store.close()
    return dict((rec.spec or {}).get("spec") or {}) if rec is not None else {}


def dataset_label(config: KilnConfig, workspace: str, name: str, lineage: dict[str, Any] | None = None, *,
                  applied: dict[str, Any] | None = None) -> str | None:
    """Which column of a tabular dataset is the label: the one place every reader of a versioned
    table asks (training, ``kiln infer``, ``kiln data export``). A version records it in its
    lineage (so a fresh clone knows it); older versions fall back to the applied spec. None: the
    CSV reader's default, the last column. The pipeline's own stages write the label last, but a
    version without ops or splits keeps the user's column order."""
    if lineage and lineage.get("label"):
        return str(lineage["label"])
    if applied is None:  # the caller may have read the applied spec already
        applied = applied_dataset_spec(config, workspace, name)
    label = applied.get("label")
    return str(label) if label else None


def _staging(ctx: StepContext) -> Path:
    ws, name = ctx.workspace, ctx.name
    return dataset_home(ctx.config, ws, name) / "staging" / ctx.spec_hash


def stages(spec: DatasetSpec) -> list[str]:
    """Folder stages in order; the last one is what gets versioned."""
    return ["source", *[f"op-{i}" for i in range(len(spec.preprocessing))], *(["split"] if spec.splits else [])]


def data_task(spec: DatasetSpec) -> str | None:
    """kiln.data's task for a spec: tables are all ``tabular``; images keep theirs."""
    return "tabular" if spec.type == "tabular" else spec.task


def _source_desc(spec: DatasetSpec) -> str:
    src = spec.source
    for k in ("path", "archive", "url", "sample", "capture"):
        v = getattr(src, k)
        if v:
            return f"{k}:{v}"
    ref = src.dataset
    assert ref is not None
    return f"dataset:{ref.workspace + '/' if ref.workspace else ''}{ref.name}@{ref.version}"


# -- stage folders -------------------------------------------------------------------------------

def _fresh_tmp(stage_dir: Path) -> Path:
    """A clean temporary sibling for building ``stage_dir``; leftovers of killed tries go first."""
    stage_dir.parent.mkdir(parents=True, exist_ok=True)
    for old in stage_dir.parent.glob(f".{stage_dir.name}.tmp*"):
        shutil.rmtree(old, ignore_errors=True)
    tmp = stage_dir.with_name(f".{stage_dir.name}.tmp{os.getpid()}")
    return tmp


def _finish_stage(tmp: Path, stage_dir: Path, summary: dict[str, Any]) -> dict[str, Any]:
    # summary first: once the folder has its final name, the stage counts as done
    write_json_atomic(stage_dir.with_name(stage_dir.name + ".json"), summary, default=str)
    os.replace(tmp, stage_dir)
    return summary


def _done(stage_dir: Path) -> dict[str, Any] | None:
    f = stage_dir.with_name(stage_dir.name + ".json")
    if stage_dir.is_dir() and f.is_file():
        return json.loads(f.read_text())
    return None


def _tree_size(root: Path) -> tuple[int, int]:
    files = size = 0
    for dirpath, _, names in os.walk(root):
        for n in names:
            files += 1
            size += os.path.getsize(os.path.join(dirpath, n))
    return files, size


def _user_path_error(exc: Exception, staged: Path, shown: str) -> Exception:
    """Re-point a DatasetFormatError from the staging copy to the path the user knows: the file
    it names, and any staging path inside its message."""

    if not isinstance(exc, DatasetFormatError):
        return exc
    base = str(staged)

    def user(text: str) -> str:
        return text.replace(base + os.sep, shown.rstrip("/") + "/").replace(base, shown)

    f = exc.file
    if f == base or f.startswith(base + os.sep) or base in exc.problem or base in (exc.hint or ""):
        return DatasetFormatError(user(f), user(exc.problem), hint=user(exc.hint) if exc.hint else None)
    return exc


def _shown_source(ctx: StepContext, spec: DatasetSpec) -> str:
    src = spec.source
    if src.path:
        import tarfile
        import zipfile

        p = ctx.config.repo / src.path
        if p.is_file():
            return f"{src.path}!" if zipfile.is_zipfile(p) or tarfile.is_tarfile(p) else str(Path(src.path).parent)
        return src.path
    if src.archive:
        return f"{src.archive}!"
    if src.url:
        return src.url
    return _source_desc(spec)


# -- fetch ---------------------------------------------------------------------------------------

def _limits(config: KilnConfig) -> ArchiveLimits:
    d = config.datasets
    return ArchiveLimits(max_bytes=d.maxArchiveBytes, max_members=d.maxArchiveMembers, max_ratio=d.maxExpansionRatio)


def _place_file_or_archive(path: Path, out: Path, shown: str, limits: ArchiveLimits) -> None:
    """A single file: archives are extracted (safely), anything else is copied into ``out``."""
    import tarfile
    import zipfile


    if zipfile.is_zipfile(path) or tarfile.is_tarfile(path):
        try:
            extract_archive(path, out, limits)
        except Exception as exc:
            raise _user_path_error(exc, path, shown) from None
        return
    out.mkdir(parents=True)
    shutil.copyfile(path, out / path.name)


def _too_big(url: str, size: int | None, limit: int) -> DatasetFormatError:
    said = f"is {size:,} bytes," if size is not None else "goes on"
    return DatasetFormatError(url, f"download {said} past the limit of {limit:,} bytes",
                              hint="raise datasets.maxDownloadBytes in kiln.yaml if this is a real dataset")


def _http_get(url: str, dest: Path, config: KilnConfig) -> None:
    """Download with every address of every hop checked (kiln.data.sources.open_url), at most
    ``datasets.maxDownloadBytes``, counted as the bytes arrive (Content-Length may lie)."""
    import urllib.error

    limit = config.datasets.maxDownloadBytes
    try:
        with open_url(url, config.datasets) as r, open(dest, "wb") as f:
            declared = r.headers.get("Content-Length") or ""
            if declared.isdigit() and int(declared) > limit:
                raise _too_big(url, int(declared), limit)
            got = 0
            while chunk := r.read(1 << 20):
                got += len(chunk)
                if got > limit:
                    raise _too_big(url, None, limit)
                f.write(chunk)
    except urllib.error.HTTPError as e:
        raise DatasetFormatError(url, f"download failed: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        if isinstance(reason, AddressRefused):
            raise DatasetFormatError(url, f"refused: {reason}", hint=_PRIVATE_HINT) from None
        raise TemporaryError(f"{url}: download failed ({reason})",
                             hint="check the URL and the network; the step is retried") from None


_PRIVATE_HINT = ("use a public URL, or set datasets.allowPrivateNetworks in kiln.yaml "
                 "(env KILN_DATASETS_ALLOW_PRIVATE_NETWORKS) if the operator means it")


def _download(url: str, out: Path, config: KilnConfig) -> None:
    """http(s) with urllib (no extra dependency); object stores (and file:// where allowed)
    through fsspec. ``kiln.data.sources`` decided at validate which URLs may be read at all."""
    from urllib.parse import urlparse


    scheme = urlparse(url).scheme
    dl = out.with_name(out.name + ".download")
    shutil.rmtree(dl, ignore_errors=True)
    dl.mkdir(parents=True)
    try:
        if scheme in ("http", "https"):
            name = Path(urlparse(url).path).name or "download"
            _http_get(url, dl / name, config)
            _place_file_or_archive(dl / name, out, url, _limits(config))
            return
        try:
            import fsspec

            fs, path = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as e:
            pkg = OBJECT_STORES.get(scheme, f"an fsspec filesystem for {scheme}://")
            raise ConfigError(f"source.url {url}: cannot read {scheme}:// URLs here ({e})",
                              hint=f"install {pkg} in kiln's environment") from None
        if not fs.exists(path):
            raise DatasetFormatError(url, "does not exist")
        size = int(fs.du(path, total=True))
        if size > config.datasets.maxDownloadBytes:
            raise _too_big(url, size, config.datasets.maxDownloadBytes)
        if fs.isdir(path):
            fs.get(path.rstrip("/") + "/", str(out), recursive=True)
            return
        local = dl / Path(path).name
        fs.get(path, str(local))
        _place_file_or_archive(local, out, url, _limits(config))
    finally:
        shutil.rmtree(dl, ignore_errors=True)


def _fetch_into(ctx: StepContext, spec: DatasetSpec, out: Path) -> dict[str, Any]:
    src = spec.source
    extra: dict[str, Any] = {}
    settings = ctx.config.datasets
    # the same check as validate: a spec may reach the step without it (settings changed since)
    for _field, value, problem, hint in spec_problems(src, settings):
        raise DatasetFormatError(value, problem, hint=hint)
    if src.capture:
        return _fetch_capture(ctx, src.capture, out)
    if src.sample:
        materialize_sample(src.sample, out)
    elif src.path:
        p = inside(ctx.config.repo, src.path)
        if not p.exists():
            raise DatasetFormatError(src.path, "source path does not exist",
                                     hint="give a folder or file relative to the repository root")
        if p.is_dir():
            check_links(p, src.path)
            # a copy, never links: DVC makes tracked files read-only, which must not reach the user's
            shutil.copytree(p, out, ignore=shutil.ignore_patterns(".git", ".dvc"))
        else:
            _place_file_or_archive(p, out, src.path, _limits(ctx.config))
    elif src.archive:
        p = inside(ctx.config.repo, src.archive, allow_outside=settings.allowFileUrls)
        if not p.is_file():
            raise DatasetFormatError(src.archive, "archive does not exist")

        try:
            extract_archive(p, out, _limits(ctx.config))
        except DatasetFormatError as exc:
            raise DatasetFormatError(src.archive, exc.problem, hint=exc.hint) from None
    elif src.url:
        _download(src.url, out, ctx.config)
    else:
        ref = src.dataset
        assert ref is not None
        ws = ctx.workspace
        dr = DatasetRepo(ctx.config.repo, remote_url=ctx.config.dvc.remote)
        v = dr.materialize(data_rel(ref.workspace or ws, ref.name), ref.version, out)
        extra["parentDataset"] = {"dataset": f"{ref.workspace or ws}/{ref.name}", "version": v.id}
    files, size = _tree_size(out)
    return {"stage": "source", "from": _source_desc(spec), "files": files, "size": size, **extra}


def _fetch_capture(ctx: StepContext, deployment: str, out: Path) -> dict[str, Any]:
    """Copy what Deployment ``deployment`` captured (kiln.bento.capture layout) into ``out``:
    image instances as unlabelled files ``<day>_<id>.<ext>`` (flat: a ``<day>/`` folder would read
    as a class of an image folder), tabular rows as ``captured.csv``; each
    instance's prediction goes to ``.kiln/pre-annotations.jsonl`` ({"id", "file", "row",
    "prediction", "model", "version", "time"}) for relabelling, not as a label."""
    import csv


    ws = ctx.workspace
    cap = capture_dir(ctx.config, ws, deployment)
    index = cap / "index.jsonl"
    if not index.is_file():
        raise SourceNotAvailable(f"source.capture {deployment!r}: the deployment has captured nothing yet ({index})",
                                 hint="apply the Deployment with capture: and send it requests first")
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    pre: list[dict[str, Any]] = []
    for line in index.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line cut by a crash of the writer
        item = {k: rec.get(k) for k in ("id", "prediction", "model", "version", "time")}
        if rec.get("file"):
            src_file = cap / rec["file"]
            if not src_file.is_file():
                continue
            name = "_".join(Path(rec["file"]).parts)
            shutil.copy2(src_file, out / name)
            item["file"] = name
        elif isinstance(rec.get("input"), dict):
            item["row"] = len(rows)
            rows.append(rec["input"])
        pre.append(item)
    if rows:
        cols = list(dict.fromkeys(k for r in rows for k in r))
        with open(out / "captured.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols)
            w.writeheader()
            w.writerows(rows)
    (out / ".kiln").mkdir(exist_ok=True)
    (out / ".kiln" / "pre-annotations.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pre))
    files, size = _tree_size(out)
    return {"stage": "source", "from": f"capture:{deployment}", "files": files, "size": size,
            "captured": len(pre)}


def _ensure_source(ctx: StepContext, spec: DatasetSpec) -> dict[str, Any]:
    stage = _staging(ctx) / "source"
    done = _done(stage)
    fp = source_fingerprint(ctx.config, ctx.workspace, spec.source)
    if done is not None and (fp is None or done.get("fingerprint") == fp[1]):
        return done
    if done is not None:  # the files changed since this spec's staging was filled (a failed run)
        shutil.rmtree(_staging(ctx), ignore_errors=True)
    tmp = _fresh_tmp(stage)
    try:
        summary = _fetch_into(ctx, spec, tmp)
        if fp is not None:
            summary["fingerprint"] = fp[1]
        if not tmp.exists():
            tmp.mkdir(parents=True)
        return _finish_stage(tmp, stage, summary)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -- validate ------------------------------------------------------------------------------------

def _load(root: Path, spec: DatasetSpec, fmt: str, *, verify: bool) -> DatasetContent:
    options: dict[str, Any] = {"label": spec.label} if spec.type == "tabular" and spec.label else {}
    if spec.type == "tabular" and spec.task is not None:  # csv's target: the Dataset's task (TARGETS)
        options["target"] = spec.task
    return load(root, fmt, data_task(spec), verify=verify, **options)


def _record_background(root: Path, spec: DatasetSpec) -> None:
    """The spec's ``background`` goes into the staged copy's ``.kiln/format.json``, so that every
    later reader of the version (training, labelling, counts, export) reads the masks alike."""
    if spec.background is not None:
        write_dataset_json(root / FORMAT_FILE, {"background": None if spec.background == "none" else spec.background})


def _ensure_validated(ctx: StepContext, spec: DatasetSpec) -> dict[str, Any]:
    f = _staging(ctx) / "validated.json"
    if f.is_file() and (_staging(ctx) / "source").is_dir():
        return json.loads(f.read_text())
    src = _ensure_source(ctx, spec)
    root = _staging(ctx) / "source"
    shown = _shown_source(ctx, spec)
    fmt = spec.format
    if fmt == "masks":
        fmt = "segmentation-json"  # PNG masks beside images: the segmentation-json layout reads them
    _record_background(root, spec)
    try:
        content = _load(root, spec, fmt, verify=True)
        if spec.type == "image" and content.task == "tabular":
            raise DatasetFormatError(shown, "holds a table, but the spec says type: image")
        if spec.type == "tabular" and content.task != "tabular":
            raise DatasetFormatError(shown, f"holds {content.task} images, but the spec says type: tabular")
        counts = content.class_counts()
        if spec.classes is not None:
            # the implicit background of masks is no class a user lists
            implicit = {BACKGROUND} if content.task == "semantic-segmentation" else set()
            unknown = sorted(set(counts) - set(spec.classes) - implicit)
            if unknown:
                raise DatasetFormatError(shown, f"class(es) {unknown} are not in spec.classes {spec.classes}",
                                         hint="add them to spec.classes or fix the labels")
        n = len(content.items) if content.table is None else len(content.table.frame)
        if content.table is not None and not spec.preprocessing:  # ops may still drop or convert a column
            check_table(content.table, spec, str(root / (content.table.source or "")))
        if n == 0:
            raise DatasetFormatError(shown, "the dataset is empty")
    except Exception as exc:
        raise _user_path_error(exc, root, shown) from None
    summary = {"format": content.format, "task": content.task, "items": n, "classes": len(counts),
               "contentHash": content.content_hash(), "from": src["from"],
               "parentDataset": src.get("parentDataset")}
    write_json_atomic(f, summary, default=str)
    return summary


# -- preprocess ----------------------------------------------------------------------------------

def _merge_kiln_dir(prev: Path, new: Path, label: str | None) -> None:
    """Ops run one per task, so op-<i>'s own lineage/fitted pipeline covers op i only; prepend
    those of ops 0..i-1 so the final folder carries the whole chain (applied again at serving)."""

    pk, nk = prev / ".kiln", new / ".kiln"
    if not (pk / "lineage.json").is_file():
        return
    plin = json.loads((pk / "lineage.json").read_text())
    nlin = json.loads((nk / "lineage.json").read_text())
    merged = {"parent": plin["parent"], "ops": plin["ops"] + nlin["ops"]}
    if "fittedOn" in nlin or "fittedOn" in plin:
        merged["fittedOn"] = nlin.get("fittedOn") or plin["fittedOn"]
    write_dataset_json(nk / "lineage.json", merged)
    if (pk / "preprocess.joblib").is_file() and (nk / "preprocess.joblib").is_file():
        import joblib


        a, b = joblib.load(pk / "preprocess.joblib"), joblib.load(nk / "preprocess.joblib")
        joblib.dump(Pipeline(a.ops + b.ops, label), nk / "preprocess.joblib")
        write_dataset_json(nk / "preprocess.json", {"ops": plin["ops"] + nlin["ops"]})


def _op_split(spec: DatasetSpec, prev: Path, *, first: bool) -> dict[str, Any]:
    """The split a table's op fits on: the spec's (or, without ``spec.splits``, the default that
    training applies, ``kiln.data.splits.DEFAULT_RATIOS``); after the first op, the assignment the
    first op decided, carried in the previous stage's manifest, so every op and the split stage
    see one assignment however the ops reorder the rows."""
    sp = spec.splits
    split: dict[str, Any] = ({"ratios": {"train": sp.train, "validation": sp.validation, "test": sp.test},
                              "seed": sp.seed, "stratify": sp.stratify} if sp is not None
                             else {"ratios": dict(DEFAULT_RATIOS), "seed": 0, "stratify": True})
    carried = prev / ".kiln" / "splits.json"
    if not first and carried.is_file():
        m = json.loads(carried.read_text())
        split.update(items=m["items"], stratified=m.get("stratified"))
    return split


def _op_dict(op: Any) -> dict[str, Any]:
    params = dict(op.params)
    if op.columns:
        params["columns"] = op.columns
    return {"name": op.op, "params": params}


def _ensure_stage(ctx: StepContext, spec: DatasetSpec, stage_name: str) -> dict[str, Any]:
    """Make stage ``stage_name`` exist (and, first, every stage before it)."""
    if stage_name == "source":
        return _ensure_validated(ctx, spec)
    order = stages(spec)
    if stage_name not in order:
        raise KilnError(f"dataset {ctx.ref} has no stage {stage_name!r}; stages: {', '.join(order)}")
    stage = _staging(ctx) / stage_name
    done = _done(stage)
    if done is not None:
        return done
    prev_name = order[order.index(stage_name) - 1]
    _ensure_stage(ctx, spec, prev_name)
    validated = _ensure_validated(ctx, spec)
    prev = _staging(ctx) / prev_name
    fmt = validated["format"]
    content = _load(prev, spec, fmt, verify=False)
    tmp = _fresh_tmp(stage)
    seed = spec.splits.seed if spec.splits else 0
    try:
        if stage_name.startswith("op-"):
            i = int(stage_name[3:])
            op = spec.preprocessing[i]
            try:
                split = _op_split(spec, prev, first=i == 0) if content.task == "tabular" else None
                new = apply_ops(content, prev, [_op_dict(op)], tmp, seed=seed, format=fmt, split=split)
            except Exception as exc:
                if isinstance(exc, DatasetFormatError) and exc.file.startswith("op "):
                    raise DatasetFormatError(f"spec.preprocessing[{i}] ({op.op})", exc.problem, hint=exc.hint) from None
                raise
            _merge_kiln_dir(prev, tmp, content.table.label if content.table else None)
            summary: dict[str, Any] = {"stage": stage_name, "op": op.op, "contentHash": new.content_hash()}
        else:  # split

            sp = spec.splits
            assert sp is not None
            ratios = {"train": sp.train, "validation": sp.validation, "test": sp.test}
            new_content, manifest = assign_splits(content, ratios, sp.seed, stratify=sp.stratify)
            carried = prev / ".kiln" / "splits.json"
            if content.task == "tabular" and spec.preprocessing and carried.is_file():
                manifest = json.loads(carried.read_text())  # decided before the ops fitted on it
            export(new_content, tmp, fmt)
            if (prev / ".kiln").is_dir():
                shutil.copytree(prev / ".kiln", tmp / ".kiln", dirs_exist_ok=True)
            write_dataset_json(tmp / ".kiln" / "splits.json", manifest)
            counts: dict[str, int] = {}
            for s in manifest["items"].values():
                counts[s] = counts.get(s, 0) + 1
            summary = {"stage": "split", **counts, "stratified": manifest["stratified"]}
        return _finish_stage(tmp, stage, summary)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -- steps ---------------------------------------------------------------------------------------

def _locked(fn):
    """Run a step holding the dataset's lock: after a kill -9 of the controller, the orphaned
    task process may still be building a stage while the resumed run retries the same task."""
    import functools

    @functools.wraps(fn)
    def run(ctx: StepContext) -> dict[str, Any]:
        ws, name = ctx.workspace, ctx.name
        fd = _lock(dataset_home(ctx.config, ws, name) / "step.lock")
        try:
            return fn(ctx)
        finally:
            os.close(fd)
    return run


@_locked
def dataset_fetch(ctx: StepContext) -> dict[str, Any]:
    s = _ensure_source(ctx, ctx.model(Dataset).spec)
    return {k: s[k] for k in ("from", "files", "size") if k in s}


@_locked
def dataset_validate(ctx: StepContext) -> dict[str, Any]:
    v = _ensure_validated(ctx, ctx.model(Dataset).spec)
    return {"format": v["format"], "items": v["items"], "classes": v["classes"], "contentHash": v["contentHash"][:16]}


@_locked
def dataset_preprocess(ctx: StepContext) -> dict[str, Any]:
    spec = ctx.model(Dataset).spec
    try:
        i = int(ctx.args["op-index"])
    except (KeyError, ValueError):
        raise KilnError("dataset.preprocess needs --arg op-index=<n>") from None
    if not 0 <= i < len(spec.preprocessing):
        raise KilnError(f"op-index {i} is out of range: the spec has {len(spec.preprocessing)} op(s)")
    s = _ensure_stage(ctx, spec, f"op-{i}")
    return {"op": s["op"], "index": i, "contentHash": s["contentHash"][:16]}


@_locked
def dataset_split(ctx: StepContext) -> dict[str, Any]:
    spec = ctx.model(Dataset).spec
    if spec.splits is None:
        raise KilnError(f"dataset {ctx.ref} has no spec.splits; nothing to split")
    return _ensure_stage(ctx, spec, "split")


def _lock(path: Path):
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)  # released when the process dies, also on kill -9
    return fd


def _replace_tree(src: Path, dst: Path) -> None:
    """Make ``dst`` hold a copy of ``src`` (hard links where possible), swapping folders by
    rename so that ``dst`` is never a mix of two versions."""
    new = dst.with_name(f".{dst.name}.new{os.getpid()}")
    shutil.rmtree(new, ignore_errors=True)

    def link(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, new, copy_function=link)
    if dst.exists():
        aside = dst.with_name(f".{dst.name}.old{os.getpid()}")
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(dst, aside)
        os.replace(new, dst)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(new, dst)


def git_commit(repo: Path, paths: list[str], message: str) -> str | None:
    """Stage and commit exactly ``paths`` (never what else the user has staged); the new commit's
    sha, or None when they were already committed as they are."""
    paths = [p for p in paths if (repo / p).exists() or _git(repo, "ls-files", "--", p).strip()]
    if not paths:
        return None
    # one commit at a time: datasets of one apply version side by side (#16), and git refuses a
    # second `git add` or `git commit` while another holds .git/index.lock
    fd = _lock(repo / ".kiln" / "locks" / "git-commit.lock")
    try:
        _git(repo, "add", "--", *paths)
        if subprocess.run(["git", "diff", "--cached", "--quiet", "--", *paths], cwd=repo).returncode == 0:
            return None
        _git(repo, "commit", "-q", "-m", message, "--", *paths)
        return _git(repo, "rev-parse", "HEAD").strip()
    finally:
        os.close(fd)


def _git(repo: Path, *args: str) -> str:
    p = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
    if p.returncode != 0:
        last = (p.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise KilnError(f"git {args[0]} failed in {repo}: {last}",
                        hint="set git user.name/user.email, or use versioning.commit: manual and commit yourself")
    return p.stdout


@_locked
def dataset_version(ctx: StepContext) -> dict[str, Any]:
    spec = ctx.model(Dataset).spec
    ws, name = ctx.workspace, ctx.name
    final_name = stages(spec)[-1]
    _ensure_stage(ctx, spec, final_name)
    validated = _ensure_validated(ctx, spec)
    final = _staging(ctx) / final_name
    content = _load(final, spec, validated["format"], verify=False)
    if content.table is not None and spec.preprocessing:
        check_table(content.table, spec, f"{_shown_source(ctx, spec)} after spec.preprocessing")
    lineage = {
        "source": validated["from"],
        "sourceContentHash": validated["contentHash"],
        "derivedFrom": validated.get("parentDataset"),
        "ops": [{"op": o.op, "columns": o.columns, "params": o.params} for o in spec.preprocessing],
        "splits": spec.splits.model_dump() if spec.splits else None,
    }
    if content.table is not None:  # where the label is, for readers without the spec (dataset_label)
        # a label the CSV reader defaulted to (no task, no label: the last column, still last in
        # the version) is not pinned, so that a clustering experiment can read it as a feature
        lineage["label"] = content.table.label if spec.label or spec.task else None
    fitted = (read_json(final / ".kiln" / "lineage.json") or {}).get("fittedOn")
    if fitted:  # which rows the version's fitted preprocessing learnt from
        lineage["fittedOn"] = fitted
    carried = _carry_additions(ctx, spec, content)
    if carried is not None:  # what labelling or inference added stays in the dataset
        final, content, lineage["carried"] = carried
    out = write_version(ctx.config, ws, name, final, content, lineage, push=spec.versioning.push,
                        remote=spec.versioning.remote, commit=spec.versioning.commit)
    # the staging copies are no longer needed; a later memoized run rebuilds what it lacks
    shutil.rmtree(dataset_home(ctx.config, ws, name) / "staging", ignore_errors=True)
    shutil.rmtree(dataset_home(ctx.config, ws, name) / "carry", ignore_errors=True)
    return out


def _carry_additions(ctx: StepContext, spec: DatasetSpec,
                     content: DatasetContent) -> tuple[Path, DatasetContent, dict[str, Any]] | None:
    """The new source version plus the items the current version holds that labelling or
    ``kiln infer --as-version`` added (``kiln.data.merge.added_paths``), written to a staging
    folder: (folder, its content, the lineage's ``carried`` entry); None when there are none.
    Tables are not carried: added rows would bypass the version's fitted preprocessing."""
    from kiln.data.merge import added_paths, carry_additions, load_as

    if content.table is not None:
        return None
    rel = data_rel(ctx.workspace, ctx.name)
    folder = ctx.config.repo / rel
    dr = DatasetRepo(ctx.config.repo, remote_url=ctx.config.dvc.remote)
    current = dr.current(rel) if folder.is_dir() else None
    paths = added_paths(dr, rel, current)
    if not paths:
        return None
    home = dataset_home(ctx.config, ctx.workspace, ctx.name)
    union, stage = home / "carry-union", home / "carry"
    for d in (union, stage):
        shutil.rmtree(d, ignore_errors=True)
    merged = carry_additions(content, load_as(folder, content.task), paths, union)
    if merged is None:
        return None
    written = export(merged, stage, content.format)
    shutil.rmtree(union, ignore_errors=True)
    mine = {it.path for it in content.items}
    kept = sorted(it.path for it in written.items if it.path not in mine)
    return stage, written, {"from": current, "items": len(kept), "paths": kept}


def check_table(table: Any, spec: DatasetSpec, shown: str) -> None:
    """What a version of a table may not hold (``kiln.data.schema``): free text (no feature as it
    is), and, when the spec says ``missingLabels: error``, rows without a label. Date columns are
    kept: the models featurise them (``kiln.algorithms.featurize``)."""
    for col, typ in table.columns.items():
        if typ == "text" and col != table.label:
            example = str(table.frame[col].dropna().iloc[0])
            raise DatasetFormatError(
                shown, f"column {col!r} holds free text (e.g. {example[:60]!r}), which kiln does not featurise",
                hint=f"drop it with `{{op: drop_columns, columns: [{col}]}}` in spec.preprocessing, or turn it into "
                     "categories or numbers (e.g. its length, a keyword flag) in the CSV")
    if table.label and spec.missingLabels == "error":
        n = int(table.frame[table.label].isna().sum())
        if n:
            raise DatasetFormatError(shown, f"{n} row(s) have no value in label column {table.label!r}",
                                     hint="fill or remove them, or set spec.missingLabels: skip to leave them out of training")


def write_version(config: KilnConfig, ws: str, name: str, folder: Path, content: DatasetContent,
                  lineage: dict[str, Any], *, push: bool = True, remote: str | None = None,
                  commit: str = "manual", message: str = "") -> dict[str, Any]:
    """Make ``folder`` the dataset's new current version: the one code path every producer of a
    version uses (the Dataset workflow, a completed LabelingJob). ``lineage`` gets ``parent``
    (the version it replaces) and ``contentHash`` added; the same bytes give the same version id
    (DVC), so calling it again with unchanged content adds nothing."""

    rel = data_rel(ws, name)
    repo = config.repo
    dr = DatasetRepo(repo, remote_url=config.dvc.remote)
    previous = dr.current(rel)
    # lock the versioned folder against a Dataset workflow versioning the same dataset meanwhile
    fd = _lock(dataset_home(config, ws, name) / "version.lock")
    try:
        _replace_tree(folder, repo / rel)
        lineage = {"parent": previous, **lineage, "contentHash": content.content_hash()}
        known = {v.id for v in dr.versions(rel)}
        v = dr.add_version(rel, content=content, lineage=lineage, push=push, remote=remote)
        n = dr.number(rel, v.id)
        committed = None
        if commit == "auto":
            parent = str(Path(rel).parent)
            committed = git_commit(repo, [f"{rel}.dvc", f"{rel}.versions.json", f"{parent}/.gitignore",
                                          ".dvc/config", ".dvc/.gitignore", ".dvcignore"],
                                   message or f"kiln: dataset {ws}/{name} v{n} ({v.id[:12]})")
    finally:
        os.close(fd)
    return {"version": v.id, "number": n, "new": v.id not in known, "path": rel, "files": v.files,
            "size": v.size, "commit": committed}
