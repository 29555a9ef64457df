"""Config loading: overrides, validation messages, and a property test that random
input raises nothing but the project's own errors."""
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.config import DEFAULTS, config_hash, load_config, parse_override
from bench.errors import BenchError, ConfigError

BASE = ["features=[hog]", "classifiers=[svm]"]


def test_overrides_are_parsed_as_yaml():
    cfg = load_config(None, BASE + ["dataset.n_per_class=50", "protocol.n_splits=3",
                                    "prepare.size=64", "features=[hog, {name: lbp, params: {radii: [1, 2]}}]"])
    assert cfg["dataset"]["n_per_class"] == 50
    assert cfg["protocol"]["n_splits"] == 3
    assert cfg["prepare"]["size"] == [64, 64]
    assert [f["label"] for f in cfg["features"]] == ["hog", "lbp"]
    assert cfg["features"][1]["params"] == {"radii": [1, 2]}
    # per-feature prepare inherits the global one
    assert cfg["features"][0]["prepare"]["size"] == [64, 64]


def test_dataset_kind_override_drops_previous_params(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump({"dataset": {"kind": "synthetic-parcel", "n_per_class": 10},
                                 "features": ["hog"], "classifiers": ["svm"]}))
    cfg = load_config(f, ["dataset.kind=folder", "dataset.path=x"])
    assert cfg["dataset"] == {"kind": "folder", "path": "x"}


@pytest.mark.parametrize("override, words", [
    ("clasifiers=[svm]", ["unknown key 'clasifiers'", "did you mean 'classifiers'"]),
    ("protocol.n_split=3", ["protocol.n_split", "did you mean 'n_splits'"]),
    ("protocol.kind=kfolds", ["protocol.kind", "'kfolds'", "did you mean 'kfold'"]),
    ("protocol.n_splits=1", ["protocol.n_splits", ">= 2"]),
    ("protocol.n_splits=five", ["protocol.n_splits", "expected an integer", "'five'"]),
    ("prepare.color=grey", ["prepare.color", "did you mean 'gray'"]),
    ("prepare.size=[1,2,3]", ["prepare.size"]),
    ("on_missing_weights=ignore", ["on_missing_weights", "random, error"]),
    ("parallel.n_jobs=0", ["parallel.n_jobs"]),
    ("features=[{name: hog, parms: {}}]", ["features[0].parms", "did you mean 'params'"]),
    ("features=[hog, hog]", ["label 'hog' is used twice"]),
    ("output.formats=[html,docx]", ["output.formats"]),
    ("noequals", ["key=value"]),
])
def test_errors_name_key_value_and_hint(override, words):
    with pytest.raises(ConfigError) as exc:
        load_config(None, BASE + [override])
    text = exc.value.message + " " + (exc.value.hint or "")
    for w in words:
        assert w in text, (w, text)


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("features: [hog\nclassifiers: svm\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- hog\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(lst)


def test_nothing_to_run_is_an_error():
    with pytest.raises(ConfigError, match="no features"):
        load_config(None, [])
    with pytest.raises(ConfigError, match="no classifiers"):
        load_config(None, ["features=[hog]"])


def test_shipped_pipelines_validate():
    from pathlib import Path
    files = sorted((Path(__file__).resolve().parents[1] / "pipelines").glob("*.yaml"))
    assert any(f.name == "default.yaml" for f in files) and any(f.name == "smoke.yaml" for f in files)
    for f in files:
        cfg = load_config(f)
        assert cfg["features"] or cfg["finetune"], f


def test_config_hash_ignores_output_and_parallelism():
    a = load_config(None, BASE)
    b = load_config(None, BASE + ["parallel.n_jobs=1", "output.results_dir=/tmp/x"])
    c = load_config(None, BASE + ["seed=1"])
    assert config_hash(a) == config_hash(b) != config_hash(c)


yaml_scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6),
                         st.floats(allow_nan=True), st.text(max_size=12))
yaml_values = st.recursive(yaml_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=12)
keys = st.sampled_from(list(DEFAULTS) + ["dataset.kind", "protocol.n_splits", "features.0",
                                         "prepare.size", "report.gallery", "parallel.n_jobs",
                                         "features.0.params", "finetune", "zzz", "a..b"])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=st.dictionaries(st.sampled_from(list(DEFAULTS) + ["typo"]), yaml_values, max_size=6),
       overrides=st.lists(st.tuples(keys, yaml_values), max_size=3))
def test_property_random_configs_raise_only_bench_errors(tmp_path_factory, doc, overrides):
    path = tmp_path_factory.mktemp("cfg") / "p.yaml"
    path.write_text(yaml.safe_dump(doc))
    ov = [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
          for k, v in overrides]
    try:
        cfg = load_config(path, ov)
    except BenchError:
        return
    assert isinstance(cfg["features"], list) and isinstance(cfg["protocol"]["n_splits"], int)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_property_random_override_text(text):
    try:
        parse_override(text)
    except BenchError:
        pass
