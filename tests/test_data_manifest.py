"""The ``manifest`` dataset: CSV/TSV of path,label[,group][,split][,metadata]."""
import json

import numpy as np
import pytest

from bench import engine
from bench.cli import main
from bench.config import load_config
from bench.data.manifest import manifest_dataset
from bench.errors import DataError

from data_helpers import rng_image, write


def make_images(root, n=24, n_groups=6):
    """Class ``a`` bright left half, ``b`` bright right half; ``n_groups`` source photos."""
    rows = []
    for i in range(n):
        cls = "ab"[i % 2]
        img = rng_image((16, 16), seed=i) // 4
        if cls == "a":
            img[:, :8] += 150
        else:
            img[:, 8:] += 150
        rel = f"img/{cls}_{i:02d}.png"
        write(root / rel, img)
        rows.append((rel, cls, f"g{i % n_groups}", "test" if i >= n - 6 else "train", f"site{i % 3}"))
    return rows


def write_manifest(path, rows, header=("path", "label", "group", "split", "site"), delim=","):
    lines = [delim.join(header)] + [delim.join(r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_manifest_loads_paths_labels_groups_split_and_metadata(tmp_path):
    rows = make_images(tmp_path)
    ds = manifest_dataset(write_manifest(tmp_path / "m.csv", rows))
    assert len(ds) == 24 and ds.class_names == ["a", "b"] and ds.name == "m"
    assert ds.labels.tolist() == [i % 2 for i in range(24)]
    assert ds.groups.tolist() == [f"g{i % 6}" for i in range(24)]
    assert ds.split.tolist() == ["train"] * 18 + ["test"] * 6
    assert ds.meta["metadata_columns"] == ["site"]
    assert ds.meta["metadata"][4] == {"site": "site1"}
    assert ds.ids[0] == "img/a_00.png" and ds.modality == "gray"
    expect = rng_image((16, 16), seed=3) // 4  # the image as written
    expect[:, 8:] += 150
    np.testing.assert_array_equal(ds.load(3), expect)
    # TSV, other column names, a subfolder manifest with ../ paths
    (tmp_path / "lists").mkdir()
    tsv = write_manifest(tmp_path / "lists" / "m.tsv", [("../" + r[0], r[1]) for r in rows],
                         header=("file", "diagnosis"), delim="\t")
    ds2 = manifest_dataset(tsv, path_column="file", label_column="diagnosis")
    assert ds2.keys == ds.keys and ds2.groups is None and ds2.split is None


def test_numeric_labels_sort_numerically(tmp_path):
    rows = make_images(tmp_path, n=12)
    rows = [(p, ["2", "10"][i % 2]) for i, (p, *_) in enumerate(rows)]
    ds = manifest_dataset(write_manifest(tmp_path / "m.csv", rows, header=("path", "label")))
    assert ds.class_names == ["2", "10"]


@pytest.mark.parametrize("edit, line, column, text", [
    (lambda L: L.__setitem__(4, "img/nothere.png,a,g1,train,x"), 5, "path", "not found"),
    (lambda L: L.__setitem__(3, "img/a_02.png,,g2,train,x"), 4, "label", "empty label"),
    (lambda L: L.__setitem__(6, "img/a_05.png,a,g5,holdout,x"), 7, "split", "'holdout' is not a split"),
    (lambda L: L.__setitem__(2, "img/b_01.png,b,g1,train"), 3, None, "4 fields, the header has 5"),
    (lambda L: L.__setitem__(8, "img/a_00.png,a,g0,train,x"), 9, "path", "listed twice (first on line 2)"),
    (lambda L: L.__setitem__(5, "img/b_04.png,b,,train,x"), 6, "group", "empty group"),
])
def test_bad_line_is_named(tmp_path, edit, line, column, text):
    rows = make_images(tmp_path)
    lines = write_manifest(tmp_path / "m.csv", rows).read_text().splitlines()
    edit(lines)
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as e:
        manifest_dataset(tmp_path / "m.csv")
    msg = e.value.message
    assert f"m.csv, line {line}" in msg and text in msg
    if column:
        assert f"column {column!r}" in msg
    assert e.value.hint


def test_line_numbers_count_blank_lines_and_quoted_line_breaks(tmp_path):
    rows = make_images(tmp_path, n=6)
    text = ("path,label,group,split,site\n\n"
            + f'{rows[0][0]},a,g0,train,"two\nlines"\n'
            + f"{rows[1][0]},b,g1,train,x\n"
            + "img/gone.png,b,g1,train,x\n")
    (tmp_path / "m.csv").write_text(text)
    with pytest.raises(DataError, match=r"line 6, column 'path': 'img/gone.png' not found"):
        manifest_dataset(tmp_path / "m.csv")


def test_missing_columns_and_empty_files(tmp_path):
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(DataError, match="empty"):
        manifest_dataset(tmp_path / "e.csv")
    (tmp_path / "h.csv").write_text("file,label\nx.png,a\n")
    with pytest.raises(DataError, match=r"line 1: no column 'path' \(found: file, label\)") as e:
        manifest_dataset(tmp_path / "h.csv")
    assert "path_column" in e.value.hint
    (tmp_path / "t.csv").write_text("path\tlabel\nx.png\ta\n")  # tab-separated, .csv name: sniffed
    with pytest.raises(DataError, match="x.png"):
        manifest_dataset(tmp_path / "t.csv")


def test_unreadable_image_error_and_skip(tmp_path):
    rows = make_images(tmp_path, n=12)
    (tmp_path / rows[3][0]).write_bytes(b"not an image")
    path = write_manifest(tmp_path / "m.csv", rows)
    with pytest.raises(DataError, match=r"unreadable image.*b_03.png \(line 5\)"):
        manifest_dataset(path)
    ds = manifest_dataset(path, on_bad_image="skip")
    assert len(ds) == 11 and len(ds.bad) == 1 and "line 5" in ds.bad[0][0]


def _cfg(tmp_path, manifest, *extra):
    return load_config(None, [
        "dataset.kind=manifest", f"dataset.path={manifest}", "features=[lbp]", "classifiers=[logreg]",
        "protocol.n_splits=3", f"output.results_dir={tmp_path / 'results'}", "report.tsne=false",
        "report.learning_curves=false", "report.gallery=0", "report.retrieval=false",
        f"cache.dir={tmp_path / 'cache'}", "parallel.n_jobs=1", "finetune=[]", *extra])


def test_group_column_gives_grouped_folds(tmp_path):
    rows = make_images(tmp_path, n=36, n_groups=9)
    ctx = engine.run(_cfg(tmp_path, write_manifest(tmp_path / "m.csv", rows)))
    plan = json.loads((ctx.run_dir / "splits.json").read_text())
    assert plan["grouped"] and "Group" in plan["splitter"]
    groups = np.array([r[2] for r in rows])
    for f in plan["folds"]:
        assert not set(groups[f["train"]]) & set(groups[f["test"]])
    meta = json.loads((ctx.run_dir / "dataset.json").read_text())
    assert meta["meta"]["metadata"][0] == {"site": "site0"} and meta["grouped"]
    assert meta["split"][:2] == ["train", "train"]
    assert meta["prepare_suggestion"]["native"] == [16, 16]
    assert all(r["status"] == "ok" for r in ctx.records())


def test_manifest_split_column_with_predefined(tmp_path):
    rows = make_images(tmp_path, n=24)
    ctx = engine.run(_cfg(tmp_path, write_manifest(tmp_path / "m.csv", rows), "protocol.kind=predefined"))
    plan = json.loads((ctx.run_dir / "splits.json").read_text())
    assert plan["folds"][0]["test"] == list(range(18, 24)) and plan["folds"][0]["train"] == list(range(18))


def test_cli_bad_manifest_line(tmp_path, capsys):
    rows = make_images(tmp_path, n=6)
    rows[2] = ("img/missing.png", "a", "g0", "train", "x")
    path = write_manifest(tmp_path / "m.csv", rows)
    code = main(["run", "dataset.kind=manifest", f"dataset.path={path}", "features=[lbp]",
                 "classifiers=[logreg]", "finetune=[]", f"output.results_dir={tmp_path / 'r'}"])
    err = capsys.readouterr().err
    assert code == 2 and "line 4, column 'path': 'img/missing.png' not found" in err and "hint:" in err


def test_max_per_class_per_split(tmp_path):
    rows = make_images(tmp_path, n=24)
    ds = manifest_dataset(write_manifest(tmp_path / "m.csv", rows), max_per_class=2, seed=1)
    assert sorted(zip(ds.split.tolist(), ds.labels.tolist())) == sorted(
        [("train", 0)] * 2 + [("train", 1)] * 2 + [("test", 0)] * 2 + [("test", 1)] * 2)
    for i, rel in enumerate(ds.ids):  # each kept row keeps its own path, label and metadata
        j = int(rel.split("_")[1][:2])
        assert ds.labels[i] == j % 2 and ds.meta["metadata"][i] == {"site": f"site{j % 3}"}
