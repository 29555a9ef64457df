"""Run configuration: YAML pipeline files, dotted command-line overrides, validation.

A pipeline file is plain YAML (see ``pipelines/default.yaml``). Every key, its default
and its allowed values are in one table, :data:`bench.schema.SCHEMA` (:data:`DEFAULTS`
and :data:`CHOICES` are views of it). ``load_config`` merges the file over the
defaults, applies ``key=value`` overrides (values parsed as YAML, so
``dataset.n_per_class=50`` gives an int and ``features=[hog,lbp]`` a list), normalises
shorthand (``- hog`` becomes ``{name: hog}``) and validates every key: unknown keys,
wrong types and bad values raise :class:`ConfigError` naming the key, the value and
what is allowed, with a "did you mean" (:func:`bench.errors.did_you_mean`).

Overrides merge key by key and do not depend on their order: a section given as a
mapping (``protocol={kind: holdout}``) merges into the section, a more specific key
(``protocol.n_splits=3``) wins over a mapping that also sets it, and a new
``dataset.kind`` drops the parameters of the file's (or default) dataset but keeps every
``dataset.*`` given on the command line, before or after it. The same key twice: the
last one wins.

Component names and parameters (features, classifiers) are checked against the
registries by :func:`check_components` before a run creates its folder.

Suites: ``datasets:`` (a list; each entry a dataset block, or a dataset kind, with its
own optional ``prepare``, ``protocol`` and ``label``) replaces ``dataset:``. Validation
expands it into one complete single-dataset config per entry (the top level with that
entry's dataset, its ``prepare`` merged over the top-level one before the features'
own ``prepare`` and its ``protocol`` merged over the top-level one), each checked as a
run of its own; ``cfg["datasets"]`` then holds those configs, ``name`` = the entry's
label, and ``bench.suite.run`` hands each to ``bench.engine.run``.
"""
from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import yaml

from . import schema
from .errors import ConfigError, did_you_mean
from .records import check_cell_ids

SECTIONS = ("prepare", "protocol", "parallel", "cache", "output", "report")  # mappings of fixed keys
DEFAULTS: dict[str, Any] = {k: (schema.defaults(k) if k in SECTIONS else copy.deepcopy(v.default))
                            for k, v in schema.SCHEMA[""].items()}
# allowed values of the enumerated single-valued keys, "section.key" (output.formats is a list)
CHOICES = {(f"{sec}.{k}" if sec else k): key.allowed
           for sec in ("", *SECTIONS) for k, key in schema.SCHEMA[sec].items()
           if key.allowed is not None and (sec, k) != ("output", "formats")}

FEATURE_KEYS = ("name", "label", "params", "prepare")
SUITE_ENTRY_KEYS = ("prepare", "protocol", "label")  # besides the dataset block's own keys
CLASSIFIER_KEYS = ("name", "label", "params", "search")


def _merge(base: dict, over: dict, path: str = "") -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "dataset":
            out[key] = _merge(out[key], value, f"{path}{key}.")
        elif key == "dataset" and isinstance(value, dict) and isinstance(out.get(key), dict):
            # a different dataset kind drops the default's parameters
            merged = dict(out[key]) if value.get("kind", out[key].get("kind")) == out[key].get("kind") else {}
            merged.update(copy.deepcopy(value))
            out[key] = merged
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value",
                          "e.g. dataset.n_per_class=50 or features=[hog,lbp]")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key", "e.g. dataset.path=data/my_images")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {key}: cannot parse value {raw!r} ({exc.__class__.__name__})",
                          "quote strings containing ':' or brackets, e.g. key='a:b'") from None
    return key.split("."), value


def _update(dst: dict, src: dict) -> None:
    """Merge ``src`` into ``dst`` key by key (nested mappings too; anything else replaces)."""
    for key, value in src.items():
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            _update(dst[key], value)
        else:
            dst[key] = copy.deepcopy(value)


def apply_override(cfg: dict, parts: list[str], value: Any) -> None:
    """Set the dotted key ``parts`` to ``value``; a mapping merges into a mapping per key."""
    node: Any = cfg
    for i, part in enumerate(parts[:-1]):
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            try:
                node = node[int(part)]
            except (ValueError, IndexError):
                raise ConfigError(f"override {'.'.join(parts)}: {where} is not a valid list index",
                                  f"the list has {len(node)} entries") from None
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"override {'.'.join(parts)}: {'.'.join(parts[:i])} is not a section",
                              f"{'.'.join(parts[:i])} holds a single value; set it directly")
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        try:
            node[int(last)] = value
        except (ValueError, IndexError):
            raise ConfigError(f"override {'.'.join(parts)}: not a valid list index",
                              f"the list has {len(node)} entries, numbered from 0") from None
    elif isinstance(node, dict):
        if isinstance(value, dict) and isinstance(node.get(last), dict):
            _update(node[last], value)
        else:
            node[last] = value
    else:
        raise ConfigError(f"override {'.'.join(parts)}: {'.'.join(parts[:-1])} is not a section",
                          f"{'.'.join(parts[:-1])} holds a single value; set it directly")


def check_folder_name(key: str, value) -> None:
    """``value`` must be one plain folder name: a run folder ``results_dir/<name>-<hash>`` never
    lands outside ``results_dir`` (no ``/`` or ``\\``, not ``.`` or ``..``, no leading dot)."""
    if not isinstance(value, str) or not value or re.search(r"[/\\\0]", value) or value.startswith(".") \
            or value.strip() != value:
        raise ConfigError(f"{key}: {value!r} is not a plain folder name",
                          f"use letters, digits, '-', '_' and '.', no path separators, e.g. {key}=my-run")


def _type_error(key, value, expected, hint=None):
    return ConfigError(f"{key}: expected {expected}, got {value!r} ({type(value).__name__})",
                       hint or "fix the value in the pipeline file or override")


def _check_int(key, value, minimum=None):
    if isinstance(value, bool) or not isinstance(value, int):
        raise _type_error(key, value, "an integer")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{key}: must be >= {minimum}, got {value}", f"set {key} to at least {minimum}")


def _check_choice(key, value, allowed=None):
    allowed = CHOICES[key] if allowed is None else allowed
    if value not in allowed:
        shown = ", ".join("null" if a is None else str(a).lower() if isinstance(a, bool) else str(a)
                          for a in allowed)
        raise ConfigError(f"{key}: {value!r} is not one of {shown}", did_you_mean(value, allowed) +
                          f"allowed: {shown}")


def _check_keys(section: str, given: dict, allowed) -> None:
    for key in given:
        if key not in allowed:
            where = f"{section}.{key}" if section else key
            raise ConfigError(f"unknown key {where!r}", did_you_mean(key, allowed) +
                              f"allowed{' in ' + section if section else ''}: {', '.join(map(str, allowed))}")


def _norm_size(key, value):
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value, value]
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
        raise _type_error(key, value, "null, a positive int or [height, width]")
    return [int(value[0]), int(value[1])]


def _norm_prepare(key, value, base=None) -> dict:
    out = dict(base or DEFAULTS["prepare"])
    if value is None:
        return out
    if not isinstance(value, dict):
        raise _type_error(key, value, "a mapping like {color: gray, size: [64, 64]}")
    _check_keys(key, value, DEFAULTS["prepare"].keys())
    out.update(value)
    _check_choice(f"{key}.color", out["color"], CHOICES["prepare.color"])
    _check_choice(f"{key}.interpolation", out["interpolation"], CHOICES["prepare.interpolation"])
    out["size"] = _norm_size(f"{key}.size", out["size"])
    out["crop"] = _norm_size(f"{key}.crop", out["crop"])
    dr = out["depth_range"]
    if not (dr is None or dr == "minmax" or (isinstance(dr, (list, tuple)) and len(dr) == 2
                                              and all(isinstance(v, (int, float)) for v in dr)
                                              and dr[0] < dr[1])):
        raise _type_error(f"{key}.depth_range", dr, "null, 'minmax' or [low, high] with low < high")
    if isinstance(dr, tuple):
        out["depth_range"] = list(dr)
    return out


def _norm_components(key: str, items, allowed_keys) -> list[dict]:
    if items is None:
        return []
    if isinstance(items, (str, dict)):
        items = [items]
    if not isinstance(items, list):
        raise _type_error(key, items, "a list of names or {name: ..., params: {...}} mappings")
    out, labels = [], set()
    for i, item in enumerate(items):
        where = f"{key}[{i}]"
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict):
            raise _type_error(where, item, "a name or a mapping with 'name'")
        _check_keys(where, item, allowed_keys)
        if not isinstance(item.get("name"), str) or not item["name"]:
            raise ConfigError(f"{where}: missing 'name'", f"e.g. {{name: hog}}")
        params = item.get("params") or {}
        if not isinstance(params, dict):
            raise _type_error(f"{where}.params", params, "a mapping of keyword arguments")
        entry = {"name": item["name"], "params": params}
        if "prepare" in allowed_keys:
            entry["prepare"] = item.get("prepare")
        if "search" in allowed_keys:
            search = item.get("search")
            if search is not None and not (isinstance(search, dict) and all(
                    isinstance(v, list) and v for v in search.values())):
                raise _type_error(f"{where}.search", search, "a mapping param -> non-empty list of values")
            entry["search"] = search
        label = item.get("label") or item["name"]
        if not isinstance(label, str):
            raise _type_error(f"{where}.label", label, "a string")
        if label in labels:
            raise ConfigError(f"{where}: label {label!r} is used twice in {key}",
                              "give each entry a distinct 'label'")
        labels.add(label)
        entry["label"] = label
        out.append(entry)
    return out


def _suite_label(entry: dict) -> str:
    import re
    raw = entry.get("name") or (Path(str(entry["path"])).stem if entry.get("path") else entry["kind"])
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(raw)).strip("-.") or entry["kind"]


def _validate_suite(cfg: dict) -> dict:
    """Expand ``datasets:`` into one validated single-dataset config per entry (module docstring)."""
    entries = cfg["datasets"]
    if isinstance(entries, (str, dict)):
        entries = [entries]
    if not isinstance(entries, list) or not entries:
        raise _type_error("datasets", cfg["datasets"], "a non-empty list of dataset blocks",
                          "e.g. datasets: [digits, {kind: folder, path: data/textures, label: textures}]")
    members, labels = [], set()
    for i, entry in enumerate(entries):
        where = f"datasets[{i}]"
        if isinstance(entry, str):
            entry = {"kind": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("kind"), str):
            raise ConfigError(f"{where}: needs a 'kind'", "e.g. {kind: folder, path: my_images}; "
                              "see `python -m bench list datasets`")
        entry = copy.deepcopy(entry)
        prepare, protocol, label = (entry.pop(k, None) for k in SUITE_ENTRY_KEYS)
        label = label if label is not None else _suite_label(entry)
        if not isinstance(label, str) or not label or "/" in label or label in (".", ".."):
            raise _type_error(f"{where}.label", label, "a folder name without '/'")
        if label in labels:
            raise ConfigError(f"{where}: label {label!r} is used by two datasets",
                              f"give each entry a distinct 'label' (e.g. label: {label}-2)")
        labels.add(label)
        sub = copy.deepcopy(cfg)
        sub.update(datasets=None, dataset=entry, name=label)
        for key, value in (("prepare", prepare), ("protocol", protocol)):
            if value is None:
                continue
            if not isinstance(value, dict):
                raise _type_error(f"{where}.{key}", value, "a mapping")
            sub[key] = {**(cfg.get(key) or {}), **value}
        try:
            members.append(validate(sub))
        except ConfigError as exc:
            raise ConfigError(f"{where} ({label}): {exc.message}", exc.hint) from None
    top = validate({**copy.deepcopy(cfg), "datasets": None})
    top["dataset"] = None
    top["datasets"] = members
    return top


def validate(cfg: dict) -> dict:
    """Normalise and check a merged config; returns a new dict."""
    if not isinstance(cfg, dict):
        raise ConfigError("a pipeline file must be a YAML mapping at the top level",
                          "see pipelines/default.yaml")
    _check_keys("", cfg, DEFAULTS.keys())
    if cfg.get("datasets") is not None:
        return _validate_suite(cfg)
    cfg = copy.deepcopy(cfg)
    _check_top(cfg)
    _check_components_shape(cfg)
    for section in SECTIONS[1:]:  # prepare: in _check_components_shape
        value = cfg[section]
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise _type_error(section, value, "a mapping")
        _check_keys(section, value, DEFAULTS[section].keys())
        cfg[section] = {**DEFAULTS[section], **value}
    _check_protocol(cfg["protocol"])
    _check_parallel(cfg["parallel"])
    _check_output_report(cfg)
    cfg["finetune"] = _check_finetune(cfg["finetune"])
    check_cell_ids([f["label"] for f in cfg["features"]], [c["label"] for c in cfg["classifiers"]],
                   [m["label"] for m in cfg["finetune"]])
    if cfg["count"] is not None:
        if not isinstance(cfg["count"], dict):
            raise _type_error("count", cfg["count"], "null or a mapping")
        _check_keys("count", cfg["count"], schema.keys("count"))
    return cfg


def _check_top(cfg: dict) -> None:
    """name, seed, plugins, dataset, and the top-level switches."""
    check_folder_name("name", cfg["name"])
    _check_int("seed", cfg["seed"], 0)
    plugins = cfg["plugins"] or []
    if isinstance(plugins, str):
        plugins = [plugins]
    if not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
        raise _type_error("plugins", plugins, "a list of paths to .py files")
    cfg["plugins"] = plugins
    ds = cfg["dataset"]
    if not isinstance(ds, dict) or not isinstance(ds.get("kind"), str):
        raise ConfigError("dataset: needs a 'kind'", "e.g. dataset: {kind: folder, path: my_images}; "
                          "see `python -m bench list datasets`")
    _check_choice("on_missing_weights", cfg["on_missing_weights"])
    _check_choice("engine", cfg["engine"])
    if not isinstance(cfg["offline"], bool):
        raise _type_error("offline", cfg["offline"], "true (never download weights) or false")
    _check_choice("on_bad_image", cfg["on_bad_image"])


def _check_components_shape(cfg: dict) -> None:
    """prepare, features (each with its own prepare over the top one), classifiers."""
    cfg["prepare"] = _norm_prepare("prepare", cfg["prepare"])
    cfg["features"] = _norm_components("features", cfg["features"], FEATURE_KEYS)
    for i, f in enumerate(cfg["features"]):
        f["prepare"] = _norm_prepare(f"features[{i}].prepare", f["prepare"], base=cfg["prepare"])
    cfg["classifiers"] = _norm_components("classifiers", cfg["classifiers"], CLASSIFIER_KEYS)
    if not cfg["features"] and not cfg["finetune"]:
        raise ConfigError("no features and no finetune models to benchmark",
                          "add e.g. features: [hog, lbp] (see `python -m bench list features`)")
    if cfg["features"] and not cfg["classifiers"]:
        raise ConfigError("features are given but no classifiers",
                          "add e.g. classifiers: [svm, random_forest] (see `python -m bench list classifiers`)")


def _check_protocol(p: dict) -> None:
    _check_choice("protocol.kind", p["kind"])
    _check_choice("protocol.group", p["group"])
    _check_choice("protocol.metric", p["metric"])
    _check_int("protocol.n_splits", p["n_splits"], 2)
    _check_int("protocol.n_repeats", p["n_repeats"], 1)
    if not isinstance(p["test_size"], (int, float)) or isinstance(p["test_size"], bool) \
            or not 0 < p["test_size"] < 1:
        raise _type_error("protocol.test_size", p["test_size"], "a fraction between 0 and 1")
    if not isinstance(p["leak_check"], bool):
        raise _type_error("protocol.leak_check", p["leak_check"], "true or false")


def _check_parallel(par: dict) -> None:
    _check_choice("parallel.backend", par["backend"])
    if isinstance(par["n_jobs"], bool) or not isinstance(par["n_jobs"], int) or par["n_jobs"] == 0:
        raise _type_error("parallel.n_jobs", par["n_jobs"], "a non-zero integer (-1 = all cores)")
    cs = par["chunk_size"]
    if cs != "auto" and (isinstance(cs, bool) or not isinstance(cs, int) or cs < 1):
        raise _type_error("parallel.chunk_size", cs, "auto or a number of images >= 1")
    if par["address"] is not None and not isinstance(par["address"], str):
        raise _type_error("parallel.address", par["address"], "null or 'tcp://host:port'")


def _check_output_report(cfg: dict) -> None:
    """cache, output and report sections."""
    if not isinstance(cfg["cache"]["enabled"], bool):
        raise _type_error("cache.enabled", cfg["cache"]["enabled"], "true or false")
    out = cfg["output"]
    fmts = out["formats"]
    if isinstance(fmts, str):
        fmts = [s.strip() for s in fmts.split(",") if s.strip()]
    formats = schema.allowed("output", "formats")
    if not isinstance(fmts, list) or any(f not in formats for f in fmts):
        raise _type_error("output.formats", out["formats"], f"a list from {', '.join(formats)}")
    out["formats"] = fmts
    if out["run_id"] is not None:
        check_folder_name("output.run_id", out["run_id"])
    rep = cfg["report"]
    if isinstance(rep["gallery"], bool) or not isinstance(rep["gallery"], int) or rep["gallery"] < 0:
        raise _type_error("report.gallery", rep["gallery"], "a number of images >= 0")
    if isinstance(rep["analysis_budget_s"], bool) or not isinstance(rep["analysis_budget_s"], (int, float)) \
            or rep["analysis_budget_s"] <= 0:
        raise _type_error("report.analysis_budget_s", rep["analysis_budget_s"], "seconds > 0")
    for k in ("tsne", "learning_curves", "retrieval", "explain"):
        if not isinstance(rep[k], bool):
            raise _type_error(f"report.{k}", rep[k], "true or false")
    for k in ("author", "contribution"):  # summary.pdf's name line and "Contribution" box
        if rep[k] is not None and not isinstance(rep[k], str):
            raise _type_error(f"report.{k}", rep[k], "text (or leave it out)")


def _check_finetune(ft) -> list:
    """Each ``finetune:`` entry completed by :func:`bench.finetune.validate_spec`; labels unique."""
    given = ft
    ft = ft or []
    if isinstance(ft, dict):
        ft = [ft]
    if not isinstance(ft, list) or not all(isinstance(m, dict) for m in ft):
        raise _type_error("finetune", given, "a list of {mode: scratch|transfer|finetune, ...}")
    labels = set()
    for i, m in enumerate(ft):
        label = m.get("label") or (m.get("backbone", "cnn") + "-" + str(m.get("mode", "transfer")))
        if label in labels:
            raise ConfigError(f"finetune[{i}]: label {label!r} is used twice", "give each model a 'label'")
        labels.add(label)
        m["label"] = label
        from . import finetune  # no TensorFlow import: validation only
        m = ft[i] = finetune.validate_spec(m, f"finetune[{i}]")
        folds = m.get("folds")
        if folds is not None and not (isinstance(folds, list) and folds and all(
                isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in folds)):
            raise _type_error(f"finetune[{i}].folds", folds, "null (all splits) or a list of split indices")
    return ft


def apply_overrides(cfg: dict, overrides: list[str]) -> bool:
    """Apply ``key=value`` overrides to ``cfg`` in place, independently of their order (module
    docstring): shallower keys first, so a more specific key wins; a new dataset kind first
    drops the base dataset's parameters. Returns whether any override names ``dataset``."""
    parsed = []
    for text in overrides:
        parts, value = parse_override(text)
        if parts[0] not in DEFAULTS:
            raise ConfigError(f"unknown key {parts[0]!r} in override {text!r}",
                              did_you_mean(parts[0], DEFAULTS) + f"allowed: {', '.join(DEFAULTS)}")
        parsed.append((parts, value))
    parsed.sort(key=lambda pv: len(pv[0]))  # stable: the same key twice, the last one wins
    kinds = [v.get("kind") if p == ["dataset"] and isinstance(v, dict) else v
             for p, v in parsed if p == ["dataset", "kind"] or (p == ["dataset"] and isinstance(v, dict)
                                                                and "kind" in v)]
    base = cfg.get("dataset")
    if kinds and (not isinstance(base, dict) or kinds[-1] != base.get("kind")):
        cfg["dataset"] = {"kind": kinds[-1]}  # a new dataset kind starts from its own defaults
    for parts, value in parsed:
        apply_override(cfg, parts, value)
    return any(p[0] == "dataset" for p, _ in parsed)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _numbers(v) -> bool:
    return _is_number(v) or (isinstance(v, (list, tuple)) and len(v) > 0 and all(_is_number(x) for x in v))


def _check_param_types(factory, params: dict, where: str) -> None:
    """A parameter whose default is a flag takes true/false; one whose default is a number (or a
    list of numbers) takes a number or a list of numbers. Other defaults are not judged here."""
    import inspect
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return
    for key, value in params.items():
        p = sig.parameters.get(key)
        if p is None or value is None or p.default is p.empty or p.default is None:
            continue
        d = p.default
        if isinstance(d, bool):
            ok, expected = isinstance(value, bool), "true or false"
        elif _numbers(d):
            ok, expected = _numbers(value), "a number or a list of numbers"
        else:
            continue
        if not ok:
            raise ConfigError(f"{where}.params.{key}: expected {expected} (the default is {d!r}), "
                              f"got {value!r} ({type(value).__name__})",
                              f"e.g. {key}: {json.dumps(list(d) if isinstance(d, tuple) else d)}")


def check_components(cfg: dict) -> None:
    """Check the features and classifiers of a validated config against the registries before any
    work (so a typo leaves no half-made run folder): each name registered, each parameter one the
    component takes and of its default's type (:func:`_check_param_types`), each extractor's own
    ``check_params()``, each ``search`` key a classifier parameter. Call after the plugins load."""
    from .registry import CLASSIFIERS, FEATURES
    for i, spec in enumerate(cfg.get("features") or []):
        where = f"features[{i}] ({spec['label']})"
        _check_param_types(FEATURES.get(spec["name"], where=f"features[{i}]"), spec["params"], where)
        extractor = FEATURES.create(spec["name"], where=where, **spec["params"])
        try:
            extractor.check_params() if hasattr(extractor, "check_params") else None
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: bad parameter value in {spec['params']}: {exc}",
                              f"see the parameters of {spec['name']!r}: `python -m bench list features`") from None
    for i, spec in enumerate(cfg.get("classifiers") or []):
        where = f"classifiers[{i}] ({spec['label']})"
        factory = CLASSIFIERS.get(spec["name"], where=f"classifiers[{i}]")
        _check_param_types(factory, spec["params"], where)
        CLASSIFIERS.create(spec["name"], where=where, **spec["params"])
        for key, values in (spec.get("search") or {}).items():
            CLASSIFIERS.create(spec["name"], where=f"{where}.search", **{key: values[0]})
            for v in values:
                _check_param_types(factory, {key: v}, f"{where}.search")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> dict:
    """Read a pipeline file (or only defaults), apply overrides, validate."""
    raw: dict = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"pipeline file {str(path)!r} does not exist",
                              "pass --config pipelines/<name>.yaml; available: " +
                              ", ".join(sorted(p.name for p in Path("pipelines").glob("*.yaml")))
                              if Path("pipelines").is_dir() else "check the path")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ConfigError(f"{path}:{where} is not valid YAML ({getattr(exc, 'problem', exc)})",
                              "check indentation and quoting") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read pipeline file {str(path)!r}: {exc}",
                              "check that it is a readable UTF-8 text file") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys",
                              "see pipelines/default.yaml for the layout")
        _check_keys("", raw, DEFAULTS.keys())
    cfg = _merge(DEFAULTS, raw)
    dataset_given = apply_overrides(cfg, overrides or []) or "dataset" in raw
    if dataset_given and cfg.get("datasets") is not None:
        raise ConfigError("both 'dataset' and 'datasets' are given",
                          "a suite lists its datasets under 'datasets:' only; drop 'dataset' "
                          "(override a suite entry with datasets.0.path=...)")
    return validate(cfg)


def config_hash(cfg: dict) -> str:
    """Stable hash of what determines the results (output paths, parallelism, the offline
    switch and the inference engine excluded: rows record the weights they got, and their
    labels say random-init; engines give the same embeddings within 1e-4)."""
    relevant = {k: v for k, v in cfg.items()
                if k not in ("output", "parallel", "report", "offline", "engine")}
    if relevant.get("datasets"):  # a suite: each member by its own hash
        relevant["datasets"] = [config_hash(m) for m in relevant["datasets"]]
    else:  # single-dataset configs hash as before the key existed (their run folders resume)
        relevant.pop("datasets", None)
    text = json.dumps(relevant, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=4).hexdigest()


def dump(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None)
