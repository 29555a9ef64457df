"""Dotted photos -> points: painted synthetic dots (positions, classes, touching dots, masks),
bad inputs through the CLI, and the two shared NOAA photos against their counts.csv."""
import io

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.spatial.distance import cdist

from bench.cli import main
from bench.data.dots import DOT_COLOURS, find_dots, pair_files, points_from_dots
from bench.data.sealion import SEALION_CLASSES, make_scene
from bench.errors import DataError


def _jpeg(img, quality=90):
    """Round trip through JPEG, as the survey photos are stored."""
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def _paint(img, dots, radius=4):
    """Filled discs of the NOAA dot colours at ``(x, y, class)``, as the annotators drew them."""
    out = img.copy()
    for x, y, cls in dots:
        cv2.circle(out, (int(x), int(y)), radius, tuple(int(v) for v in DOT_COLOURS[cls]), -1,
                   lineType=cv2.LINE_AA)
    return out


def _painted_scene(seed=0, n=40, touching=True, black_box=None):
    """A synthetic scene, its dotted copy (one dot per animal, a few touching pairs) and truth."""
    img, animals, _ = make_scene([seed, 7], (256, 320), n)
    dots = [(a["x"], a["y"], a["class"]) for a in animals]
    if touching:  # touching dots: same colour 8 px apart, and two colours 7 px apart
        dots += [(30, 240, "adult_females"), (38, 240, "adult_females"),
                 (300, 20, "pups"), (300, 27, "juveniles")]
    dots = [(x, y, c) for x, y, c in dots if 5 <= x < 315 and 5 <= y < 251]
    inside = []
    if black_box is not None:  # dots inside the box are painted, then blacked out with it;
        x0, y0, x1, y1 = black_box  # none is drawn within 14 px of its edge
        near = [(x, y, c) for x, y, c in dots if x0 - 14 <= x < x1 + 14 and y0 - 14 <= y < y1 + 14]
        inside = [(x, y, c) for x, y, c in near if x0 + 4 <= x < x1 - 4 and y0 + 4 <= y < y1 - 4]
        dots = [d for d in dots if d not in near]
    dotted = _paint(img, dots + inside)
    if black_box is not None:
        dotted[y0:y1, x0:x1] = 0
        assert inside, "the test needs dots under the black box"
    return _jpeg(img), _jpeg(dotted), pd.DataFrame(dots, columns=["x", "y", "class"])


def _match(found, truth):
    """Nearest found dot of every true dot: (distances, same class?)."""
    d = cdist(truth[["x", "y"]].to_numpy(float), found[["x", "y"]].to_numpy(float))
    j = d.argmin(1)
    return d[np.arange(len(truth)), j], found["class"].to_numpy()[j] == truth["class"].to_numpy()


@pytest.mark.parametrize("seed", [0, 1])
def test_painted_dots_are_recovered_within_2px_with_their_class(seed):
    train, dotted, truth = _painted_scene(seed)
    res = find_dots(train, dotted)
    assert set(truth["class"]) == set(SEALION_CLASSES) or len(truth) > 30
    assert len(res.points) == len(truth)
    dist, same = _match(res.points, truth)
    assert dist.max() <= 2.0, dist.max()
    assert same.all(), truth[~same]
    # one found dot per true dot (no dot claimed twice)
    d = cdist(res.points[["x", "y"]].to_numpy(float), truth[["x", "y"]].to_numpy(float))
    assert len(set(d.argmin(1))) == len(truth)


def test_every_dot_colour_is_recovered_on_every_background():
    """All five colours on sand, rock and water (dark and bright backgrounds)."""
    img, _, _ = make_scene([3, 7], (256, 320), 0)
    dots = [(20 + 30 * i, 20 + 45 * j, c) for j, c in enumerate(SEALION_CLASSES) for i in range(10)]
    train, dotted = _jpeg(img), _jpeg(_paint(img, dots))
    res = find_dots(train, dotted)
    truth = pd.DataFrame(dots, columns=["x", "y", "class"])
    assert len(res.points) == len(truth)
    dist, same = _match(res.points, truth)
    assert dist.max() <= 2.0 and same.all()


def test_blacked_out_region_is_masked_and_its_dots_dropped():
    box = (100, 60, 220, 180)
    train, dotted, truth = _painted_scene(0, black_box=box)
    res = find_dots(train, dotted)
    x0, y0, x1, y1 = box
    assert res.mask[y0:y1, x0:x1].all() and res.mask.mean() < 0.35
    assert not res.mask[:, :40].any()
    # the edge of the black box differs from the photo but yields no dot
    assert len(res.points) == len(truth)
    dist, same = _match(res.points, truth)
    assert dist.max() <= 2.0 and same.all()


def test_log_detector_finds_the_same_isolated_dots():
    train, dotted, truth = _painted_scene(1, touching=False)
    res = find_dots(train, dotted, detector="log")
    dist, same = _match(res.points, truth)
    assert len(res.points) == len(truth) and dist.max() <= 2.0 and same.all()


# --------------------------------------------------------------- folders, CLI, errors
def _write_pair(tmp_path, names=("1.jpg", "2.jpg"), dotted_names=None, seed=0):
    tdir, ddir = tmp_path / "Train", tmp_path / "TrainDotted"
    tdir.mkdir(), ddir.mkdir()
    truth = {}
    for k, name in enumerate(names):
        train, dotted, t = _painted_scene(seed + k, touching=False)
        Image.fromarray(train).save(tdir / name, quality=95)
        truth[name] = t
    for k, name in enumerate(dotted_names or names):
        train, dotted, _ = _painted_scene(seed + k, touching=False)
        Image.fromarray(dotted).save(ddir / name, quality=95)
    return tdir, ddir, truth


def test_cli_writes_the_points_csv_and_prints_the_summary(tmp_path, capsys):
    tdir, ddir, truth = _write_pair(tmp_path)
    out = tmp_path / "ann.csv"
    assert main(["points-from-dots", str(tdir), str(ddir), "--out", str(out)]) == 0
    df = pd.read_csv(out)
    assert list(df.columns) == ["image", "x", "y", "class"]
    printed = capsys.readouterr().out
    for name, t in truth.items():
        got = df[df["image"] == name]
        assert len(got) == len(t)
        counts = t["class"].value_counts()
        line = next(ln for ln in printed.splitlines() if ln.strip().startswith(name))
        assert line.split()[1:6] == [str(int(counts.get(c, 0))) for c in SEALION_CLASSES]
    # the CSV is what the points dataset reads
    from bench.data.points import read_annotations
    pts = read_annotations(out, tdir)
    assert len(pts) == sum(len(t) for t in truth.values())


def test_mismatched_file_sets_name_the_missing_files(tmp_path, capsys):
    tdir, ddir, _ = _write_pair(tmp_path, names=("1.jpg", "2.jpg"), dotted_names=("1.jpg", "3.jpg"))
    assert main(["points-from-dots", str(tdir), str(ddir), "--out", str(tmp_path / "a.csv")]) == 2
    err = capsys.readouterr().err
    assert "only in" in err and "2.jpg" in err and "3.jpg" in err and "hint:" in err
    with pytest.raises(DataError, match="same photos"):
        pair_files(tdir, ddir)


def test_different_sizes_and_unreadable_files_are_clear_errors(tmp_path, capsys):
    tdir, ddir, _ = _write_pair(tmp_path, names=("1.jpg",))
    Image.fromarray(np.zeros((50, 60, 3), np.uint8)).save(ddir / "1.jpg")
    assert main(["points-from-dots", str(tdir), str(ddir), "--out", str(tmp_path / "a.csv")]) == 2
    err = capsys.readouterr().err
    assert "1.jpg" in err and "60x50" in err and "320x256" in err and "hint:" in err
    (ddir / "1.jpg").write_bytes(b"not a jpeg")
    assert main(["points-from-dots", str(tdir), str(ddir), "--out", str(tmp_path / "a.csv")]) == 2
    err = capsys.readouterr().err
    assert "cannot read image" in err and "1.jpg" in err
    assert main(["points-from-dots", str(tmp_path / "nope"), str(ddir)]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_points_from_dots_help_has_examples(capsys):
    with pytest.raises(SystemExit):
        main(["points-from-dots", "--help"])
    assert "examples:" in capsys.readouterr().out


# --------------------------------------------------------------- the shared NOAA photos
def test_shared_photos_match_counts_csv(shared_data, tmp_path):
    """The two real survey photos: every class within 1 of counts.csv (measured: exact)."""
    root = shared_data / "sealion_scenes"
    if not root.is_dir():
        pytest.skip(f"{root} not present")
    points, summary = points_from_dots(root / "train", root / "dotted", tmp_path / "a.csv",
                                       mask_dir=tmp_path / "masks")
    truth = pd.read_csv(root / "counts.csv").set_index("image")
    got = summary.set_index("image")
    for image, row in truth.iterrows():
        for cls in SEALION_CLASSES:
            assert abs(int(got.at[image, cls]) - int(row[cls])) <= 1, (image, cls, got.loc[image])
    # a blacked-out region is found on both photos (about 5 % of the pixels)
    assert ((got["masked_%"] > 1) & (got["masked_%"] < 20)).all()
    assert (tmp_path / "masks" / "42.png").is_file()


# --------------------------------------------------------------- the noaa-dotted dataset
def test_noaa_dotted_dataset_masks_the_photos_and_is_cached(tmp_path):
    from bench.registry import DATASETS
    from bench.components import load_components

    load_components()
    root = tmp_path / "noaa"
    (root / "train").mkdir(parents=True), (root / "dotted").mkdir()
    truth = {}
    for k, box in enumerate([(100, 60, 220, 180), None]):
        train, dotted, t = _painted_scene(k, touching=False, black_box=box)
        Image.fromarray(train).save(root / "train" / f"{k + 1}.png")
        Image.fromarray(dotted).save(root / "dotted" / f"{k + 1}.png")
        truth[f"{k + 1}.png"] = t
    cache = tmp_path / "cache"
    ds = DATASETS.create("noaa-dotted", path=str(root), patch_size=16, cache_dir=str(cache))
    pts = ds.meta["points"]
    for name, t in truth.items():
        assert (pts["image"] == name).sum() == len(t)
    folder = cache / next(p.name for p in cache.iterdir() if not p.name.startswith("."))
    masked = np.asarray(Image.open(folder / "1.png"))
    assert (masked[60:180, 100:220] == 0).all() and masked[:, :40].any()
    assert ds.class_names[-1] == "background" and "pups" in ds.class_names
    mtime = (folder / "annotations.csv").stat().st_mtime_ns
    again = DATASETS.create("noaa-dotted", path=str(root), patch_size=16, cache_dir=str(cache))
    assert (folder / "annotations.csv").stat().st_mtime_ns == mtime and again.keys == ds.keys


@pytest.mark.slow
def test_sealion_real_pipeline_runs_end_to_end(shared_data, tmp_path):
    """pipelines/sealion_real.yaml on the two shared photos (regression counters only, to
    stay short): both photos counted, each by a model trained on the other."""
    from bench import engine
    from bench.config import load_config

    root = shared_data / "sealion_scenes"
    if not root.is_dir():
        pytest.skip(f"{root} not present")
    cfg = load_config("pipelines/sealion_real.yaml", [
        f"dataset.path={root}", "features=[color_hist]", "classifiers=[logreg]",
        "count.method=[regression]",
        "count.regression={features: [color_hist], regressors: [random_forest], tile: 256,"
        " normalize: grayworld}",
        f"output.results_dir={tmp_path / 'results'}", f"cache.dir={tmp_path / 'cache'}",
        "output.formats=[]"])
    ctx = engine.run(cfg)
    counts = pd.read_csv(ctx.run_dir / "analysis" / "counts.csv")
    reg = counts[counts["method"] == "regression"]
    assert sorted(reg.groupby("image")["split"].first().items()) == [("42.png", 1), ("44.png", 0)]
    truth = pd.read_csv(root / "counts.csv").assign(image=lambda d: d["image"].str.replace(".jpg", ".png"))
    got = reg.pivot_table(index="image", columns="class", values="true")
    for _, row in truth.iterrows():
        for cls in SEALION_CLASSES:
            assert got.at[row["image"], cls] == row[cls]
