"""``manifest``: a CSV or TSV listing image files with their labels (a labelling tool's export).

Layout::

    manifest.csv        path,label[,group][,split][,any metadata columns ...]
    images/a.png        paths relative to the manifest's folder (absolute paths work too)

* ``path``: an image file (any format the ``folder`` dataset reads: png, jpg, tif, gif,
  bmp, npy), relative to the folder holding the manifest.
* ``label``: the class name; classes are sorted (numerically when every label is an
  integer) to give labels 0..k-1.
* ``group`` (optional): the source of the image (a patient, a photo); splits are then
  grouped, so no group is on both sides of a train/test split.
* ``split`` (optional): ``train``, ``val`` or ``test`` (``valid``/``validation`` mean
  ``val``), used by ``protocol: {kind: predefined}``.
* every other column is metadata, kept per image in ``dataset.json``
  (``meta.metadata``, one mapping per image in dataset order).

Column names can be changed (``path_column``, ``label_column``, ``group_column``,
``split_column``). The delimiter is a tab for ``.tsv``/``.tab`` files and a comma
otherwise, unless ``delimiter`` is given. The file is parsed with Python's ``csv``
module, so quoted fields may hold commas and line breaks; every problem raises a
``DataError`` naming the file, the physical line and the column. Images are read,
hashed and checked like the ``folder`` dataset's (``on_bad_image: error | skip``).
"""
from __future__ import annotations

import csv
import hashlib
import logging
import os
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from ..registry import DATASETS
from .base import Dataset
from .folder import (LOADER_VERSION, FolderLoader, _bad_list_text, _scan, check_load_options,
                     check_max_per_class, image_modality, subsample_per_class)

log = logging.getLogger(__name__)

SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                 "validation": "val", "dev": "val", "test": "test", "testing": "test"}


def _delimiter(path: Path, delimiter: str | None, header: str) -> str:
    if delimiter is not None:
        if not isinstance(delimiter, str) or len(delimiter.replace("\\t", "\t")) != 1:
            raise ConfigError(f"dataset.delimiter must be one character, got {delimiter!r}",
                              "e.g. delimiter: ';' (a tab is '\\t')")
        return delimiter.replace("\\t", "\t")
    if path.suffix.lower() in (".tsv", ".tab"):
        return "\t"
    if "," not in header and "\t" in header:
        return "\t"
    return ","


def read_manifest(path: Path, columns: dict, delimiter: str | None = None) -> tuple[list[dict], list[str]]:
    """Rows of a manifest as dicts with ``line`` (physical line number), and the header.

    ``columns`` maps the roles ``path``, ``label``, ``group``, ``split`` to column names;
    ``path`` and ``label`` must be present.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text (byte {exc.start})",
                        "save the manifest as UTF-8") from None
    except OSError as exc:
        raise DataError(f"cannot read manifest {path}: {exc.strerror}", "check the path") from None
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise DataError(f"{path} is empty or its first line is blank",
                        f"the first line must name the columns, e.g. {columns['path']},{columns['label']}")
    delim = _delimiter(path, delimiter, lines[0])
    reader = csv.reader(text.splitlines(keepends=True), delimiter=delim, strict=True)
    try:
        header = [h.strip() for h in next(reader)]
    except csv.Error as exc:
        raise DataError(f"{path}, line 1: cannot parse the header ({exc})", "check the quoting") from None
    for role in ("path", "label"):
        if columns[role] not in header:
            raise DataError(f"{path}, line 1: no column {columns[role]!r} (found: {', '.join(header)})",
                            f"name the columns {columns['path']},{columns['label']}[,group][,split] or set "
                            f"dataset.{role}_column" + ("; is it tab-separated? set dataset.delimiter"
                                                       if len(header) == 1 else ""))
    dup = sorted({h for h in header if header.count(h) > 1})
    if dup:
        raise DataError(f"{path}, line 1: column(s) {', '.join(dup)} appear twice",
                        "give columns distinct names")
    rows = []
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise DataError(f"{path}, line {reader.line_num}: {exc}",
                            "check the quoting of this line (a field with the delimiter needs quotes)"
                            ) from None
        line = reader.line_num
        if not fields or all(not f.strip() for f in fields):
            continue  # blank line
        if len(fields) != len(header):
            raise DataError(f"{path}, line {line}: {len(fields)} fields, the header has {len(header)}",
                            f"every line needs the columns {delim.join(header)!r}"
                            + ("; quote fields that contain the delimiter"
                               if len(fields) > len(header) else ""))
        row = {h: f.strip() for h, f in zip(header, fields)}
        row["__line__"] = line
        rows.append(row)
    if not rows:
        raise DataError(f"{path} has a header but no rows", "add one line per image")
    return rows, header


def _bad(path: Path, row: dict, column: str, message: str, hint: str) -> DataError:
    return DataError(f"{path}, line {row['__line__']}, column {column!r}: {message}", hint)


def _sorted_classes(values: list[str]) -> list[str]:
    uniq = sorted(set(values))
    try:
        return sorted(uniq, key=lambda v: (int(v), v))
    except ValueError:
        return uniq


def _check_rows(file: Path, rows: list[dict], columns: dict, has_group: bool, has_split: bool) -> dict:
    """Validate every row (naming its line and column); resolve paths into ``row["__full__"]``
    and normalise split names. Returns resolved path -> first line."""
    path_column, label_column = columns["path"], columns["label"]
    group_column, split_column = columns["group"], columns["split"]
    root = file.parent
    seen: dict[str, int] = {}
    for row in rows:
        p = row[path_column]
        if not p:
            raise _bad(file, row, path_column, "empty path", "every line needs an image path")
        if not row[label_column]:
            raise _bad(file, row, label_column, "empty label", "every image needs a class label")
        if has_group and not row[group_column]:
            raise _bad(file, row, group_column, "empty group",
                       "give every image its group (e.g. the patient or photo id), or drop the column")
        if has_split:
            s = SPLIT_ALIASES.get(row[split_column].lower())
            if s is None:
                raise _bad(file, row, split_column, f"{row[split_column]!r} is not a split name",
                           "use train, val or test")
            row[split_column] = s
        full = Path(os.path.expanduser(p))
        full = full if full.is_absolute() else root / full
        if not full.is_file():
            raise _bad(file, row, path_column, f"{p!r} not found" + ("" if full.exists() else f" ({full})"),
                       "paths are relative to the manifest's folder " f"({root})")
        key = str(full.resolve())
        if key in seen:
            raise _bad(file, row, path_column, f"{p!r} is listed twice (first on line {seen[key]})",
                       "list every image once")
        seen[key] = row["__line__"]
        row["__full__"] = full

    return seen


def _subsample(labels: np.ndarray, splits, max_per_class: int, seed: int) -> np.ndarray:
    """Sorted row indices keeping at most ``max_per_class`` per class (per split, if any)."""
    if splits is None:
        return subsample_per_class(labels, max_per_class, seed)
    splits = np.asarray(splits)
    keep = []
    for s in dict.fromkeys(splits.tolist()):
        idx = np.flatnonzero(splits == s)
        keep.append(idx[subsample_per_class(labels[idx], max_per_class, seed)])
    return np.sort(np.concatenate(keep))


def _drop_bad_rows(file: Path, bad: list, on_bad_image: str, rows, labels, scanned):
    """Unreadable images: an error naming them and their lines, or (``skip``) the rows without them."""
    if on_bad_image == "error":
        raise DataError(f"{len(bad)} unreadable image(s) listed in {file}: {_bad_list_text(bad)}",
                        "fix or remove these files or lines, or set dataset.on_bad_image: skip")
    log.warning("skipped %d unreadable image(s) listed in %s: %s", len(bad), file, _bad_list_text(bad))
    ok = [i for i, s in enumerate(scanned) if not s[2]]
    rows, labels, scanned = [rows[i] for i in ok], labels[ok], [scanned[i] for i in ok]
    if len(np.unique(labels)) < 2:
        raise DataError(f"after skipping unreadable images, {file} has fewer than 2 classes left",
                        "fix the files")
    return rows, labels, scanned


@DATASETS.register("manifest", "Image files listed in a CSV/TSV (path,label[,group][,split][,metadata]), "
                               "paths relative to the manifest",
                   example="dataset.kind=manifest dataset.path=labels.csv")
def manifest_dataset(path, path_column: str = "path", label_column: str = "label",
                     group_column: str = "group", split_column: str = "split", delimiter: str | None = None,
                     on_bad_image: str = "error", max_per_class: int | None = None, seed: int = 0,
                     color: str = "auto", name: str | None = None) -> Dataset:
    """Load the images a manifest lists (see the module docstring).

    Args:
        path: the CSV/TSV file.
        path_column, label_column, group_column, split_column: column names of those roles
            (the group and split columns are optional in the file).
        delimiter: one character; default tab for .tsv/.tab, else comma.
        on_bad_image: ``"error"`` or ``"skip"`` (as the ``folder`` dataset).
        max_per_class: keep at most this many images per class (per split when the
            manifest has a split column), stratified random subsample with ``seed``.
        color: ``"auto"``, ``"gray"`` or ``"rgb"`` (as the ``folder`` dataset).
        name: dataset name (default: the manifest's stem).
    """
    check_load_options(on_bad_image, color)
    max_per_class = check_max_per_class(max_per_class)
    columns = {"path": path_column, "label": label_column, "group": group_column, "split": split_column}
    for role, col in columns.items():
        if not isinstance(col, str) or not col:
            raise ConfigError(f"dataset.{role}_column must be a column name, got {col!r}")
    file = Path(os.path.expanduser(str(path)))
    if not file.is_file():
        raise DataError(f"dataset.path '{file}' does not exist" if not file.exists()
                        else f"dataset.path '{file}' is not a file",
                        "point dataset.path to a CSV or TSV file with columns path,label")
    file = file.resolve()
    root = file.parent
    rows, header = read_manifest(file, columns, delimiter)
    has_group = group_column in header
    has_split = split_column in header
    meta_cols = [h for h in header if h not in columns.values()]

    seen = _check_rows(file, rows, columns, has_group, has_split)

    class_names = _sorted_classes([r[label_column] for r in rows])
    index = {c: i for i, c in enumerate(class_names)}
    labels = np.array([index[r[label_column]] for r in rows], dtype=np.int64)
    if max_per_class is not None:
        keep = _subsample(labels, [r[split_column] for r in rows] if has_split else None, max_per_class, seed)
        rows, labels = [rows[i] for i in keep], labels[keep]

    scanned = _scan([r["__full__"] for r in rows], full=(on_bad_image == "skip"))
    bad = [(f"{r['__full__']} (line {r['__line__']})", reason)
           for r, (_, _, reason) in zip(rows, scanned) if reason]
    if bad:
        rows, labels, scanned = _drop_bad_rows(file, bad, on_bad_image, rows, labels, scanned)

    modality, target = image_modality(file, {k for _, k, _ in scanned}, color, "manifests")

    digests = tuple(d for d, _, _ in scanned)
    salt = f"bench.folder/{LOADER_VERSION}/{target}/"  # same bytes, same pixels as a folder dataset
    keys = [hashlib.blake2b((salt + d).encode(), digest_size=16).hexdigest() for d in digests]
    relpaths = tuple(os.path.relpath(r["__full__"], root) if not Path(r[path_column]).is_absolute()
                     else str(r["__full__"]) for r in rows)
    loader = FolderLoader(str(root), relpaths, digests, target)
    present = np.bincount(labels, minlength=len(class_names))
    meta = {"kind": "manifest", "path": str(file), "columns": header, "metadata_columns": meta_cols,
            "metadata": [{c: r[c] for c in meta_cols} for r in rows] if meta_cols else [],
            "lines": [int(r["__line__"]) for r in rows], "color": color, "target": target,
            "on_bad_image": on_bad_image, "n_listed": len(seen), "n_bad": len(bad),
            "max_per_class": max_per_class, "seed": seed, "class_counts": present.tolist()}
    return Dataset(name=name or file.stem, loader=loader, labels=labels, class_names=class_names, keys=keys,
                   groups=np.asarray([r[group_column] for r in rows]) if has_group else None,
                   ids=list(relpaths), modality=modality, meta=meta, bad=bad,
                   split=np.asarray([r[split_column] for r in rows], dtype=object) if has_split else None)
