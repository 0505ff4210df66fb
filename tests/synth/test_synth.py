"""visionfm synth: layouts, label formats, determinism, argument checks and learnability probes."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visionfm.cli.main import main as cli_main
from visionfm.data.modalities import MODALITY_NAMES
from visionfm.data.synth import MULTI_LABEL_NAMES, TASKS, generate
from visionfm.data.synth.fundus import Findings, render_fundus
from visionfm.data.synth.render import dist_from, item_rng
from visionfm.errors import ConfigError

DS = "dataset_A"


def _img(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.mode == "RGB"
        return np.asarray(im)


def _lines(path: Path) -> list[str]:
    text = path.read_text()
    assert text.endswith("\n") and "\n\n" not in text and "\r" not in text
    return text.splitlines()


def _names(n: int) -> list[str]:
    return [f"{i:08d}.png" for i in range(n)]


def _color_hist(X: np.ndarray, bins: int = 8) -> np.ndarray:
    q = (X // (256 // bins)).astype(np.int64)
    idx = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]
    return np.log1p(np.stack([np.bincount(i.ravel(), minlength=bins**3) for i in idx]).astype(np.float64))


def _small(X: np.ndarray, k: int = 16) -> np.ndarray:
    out = [np.asarray(Image.fromarray(x).resize((k, k), Image.BILINEAR), np.float64) / 255.0 for x in X]
    return np.stack(out).reshape(len(X), -1)


def _load_cls(ds_dir: Path, split: str, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    X, Y = [], []
    for line in _lines(ds_dir / f"{split}_labels.txt")[:n]:
        rel, lab = line.split(";")
        X.append(_img(ds_dir / rel))
        Y.append([float(v) for v in lab.split(",")])
    return np.stack(X), np.asarray(Y)


# ---------------------------------------------------------------------------------------------
# generated once per module (small sizes keep the whole file well under the time budget)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    d = tmp_path_factory.mktemp("single")
    return d, generate("single_cls", d, num=160, img_size=64, seed=0)


@pytest.fixture(scope="module")
def multi(tmp_path_factory):
    d = tmp_path_factory.mktemp("multi")
    return d, generate("multi_cls", d, num=120, img_size=64, seed=0)


@pytest.fixture(scope="module")
def metric(tmp_path_factory):
    d = tmp_path_factory.mktemp("metric")
    return d, generate("metric_reg", d, num=100, img_size=64, seed=0)


@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    d = tmp_path_factory.mktemp("seg")
    return d, generate("segmentation", d, num=8, img_size=96, seed=0)


# ---------------------------------------------------------------------------------------------
# layouts


def test_pretrain_layout_all_modalities(tmp_path):
    s = generate("pretrain", tmp_path, num=3, img_size=48, seed=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(MODALITY_NAMES)
    assert s["counts"] == {m: 3 for m in MODALITY_NAMES}
    means = {}
    for m in MODALITY_NAMES:
        files = sorted(p.name for p in (tmp_path / m).iterdir())
        assert files == _names(3)
        ims = [_img(tmp_path / m / f) for f in files]
        assert all(im.shape == (48, 48, 3) and im.dtype == np.uint8 for im in ims)
        means[m] = np.mean([im.reshape(-1, 3).mean(0) for im in ims], axis=0) / 255.0
        if m in ("OCT", "FFA", "Ultrasound", "MRI", "UBM"):  # grey modalities
            assert all((im[..., 0] == im[..., 1]).all() and (im[..., 1] == im[..., 2]).all() for im in ims)
    r, g, b = means["Fundus"]
    assert r > g > b  # orange-red
    assert means["Ultrasound"].mean() < 0.15 and means["UBM"].mean() < 0.2  # dark echo images
    assert means["External"][0] > means["External"][2]


def test_single_cls_layout(single):
    d, s = single
    ds = d / "FundusClassification" / DS
    assert sorted(p.name for p in ds.iterdir()) == sorted(
        ["training", "val", "test", "training_labels.txt", "val_labels.txt", "test_labels.txt", "classes.txt"]
    )
    assert _lines(ds / "classes.txt")[1:] == ["no DR", "mild NPDR", "moderate NPDR", "severe NPDR", "proliferative DR"]
    sizes = {"training": 160, "val": 40, "test": 160}
    assert s["counts"] == {f"FundusClassification/{k}": v for k, v in sizes.items()}
    for split, n in sizes.items():
        assert sorted(p.name for p in (ds / split).iterdir()) == _names(n)
        lines = _lines(ds / f"{split}_labels.txt")
        assert len(lines) == n
        for i, line in enumerate(lines):
            assert re.fullmatch(rf"{split}/{i:08d}\.png;[0-4]", line), line
        assert sum(s["label_distribution"][f"FundusClassification/{split}"].values()) == n
    assert _img(ds / "test" / "00000000.png").shape == (64, 64, 3)
    assert len(set(line[-1] for line in _lines(ds / "training_labels.txt"))) == 5


def test_multi_cls_layout(multi):
    d, s = multi
    for group in ("FundusClassificationMulti", "OCTClassificationMulti"):
        ds = d / group / DS
        for split, n in {"training": 120, "val": 30, "test": 120}.items():
            assert sorted(p.name for p in (ds / split).iterdir()) == _names(n)
            lines = _lines(ds / f"{split}_labels.txt")
            assert len(lines) == n
            Y = []
            for i, line in enumerate(lines):
                assert re.fullmatch(rf"{split}/{i:08d}\.png;([01],){{12}}[01]", line), line
                Y.append([int(v) for v in line.split(";")[1].split(",")])
            Y = np.asarray(Y)
            assert Y.shape == (n, len(MULTI_LABEL_NAMES)) == (n, 13)
            assert (Y[:, :5].sum(1) == 1).all()  # exactly one DR grade
            assert (Y[:, 5] == 1 - Y[:, 0]).all()  # DR iff grade > 0
            if group.startswith("OCT"):
                assert (Y[:, 9] == 0).all()  # hypertensive retinopathy is not shown on OCT
        Y = _load_cls(ds, "training")[1]
        prev = Y[:, 6:].mean(0)
        expected = (prev[[0, 1, 2, 4, 5, 6]] if group.startswith("OCT") else prev)
        assert (expected > 0.1).all() and (expected < 0.55).all(), prev  # moderate prevalence


def test_segmentation_layout_and_classes(seg, tmp_path):
    d, s = seg
    base = d / "VesselSegmentation" / DS
    seen = set()
    sizes = {"training": 8, "val": 2, "test": 8}
    assert s["counts"] == {f"VesselSegmentation/{k}": v for k, v in sizes.items()}
    assert sorted(p.name for p in base.iterdir()) == ["test", "training", "val"]
    for split, n in sizes.items():
        assert sorted(p.name for p in (base / split / "images").iterdir()) == _names(n)
        assert sorted(p.name for p in (base / split / "labels").iterdir()) == _names(n)
        for name in _names(n):
            with Image.open(base / split / "labels" / name) as lab:
                assert lab.mode == "L" and lab.size == (96, 96)
                arr = np.asarray(lab)
            assert arr.dtype == np.uint8
            seen |= set(np.unique(arr).tolist())
            assert _img(base / split / "images" / name).shape == (96, 96, 3)
    assert seen == {0, 1, 2, 3}
    generate("segmentation", tmp_path, num=3, img_size=64, seed=0, num_classes=2)
    for name in _names(3):
        arr = np.asarray(Image.open(tmp_path / "VesselSegmentation" / DS / "training" / "labels" / name))
        assert set(np.unique(arr).tolist()) == {0, 1}
    for bad in (1, 5):
        with pytest.raises(ConfigError, match="num_classes"):
            generate("segmentation", tmp_path, num=2, img_size=64, num_classes=bad)


def test_landmark_layout_both_formats(tmp_path):
    a, b = tmp_path / "map", tmp_path / "points"
    generate("landmark", a, num=4, img_size=64, seed=3)
    generate("landmark", b, num=4, img_size=64, seed=3, landmark_format="points")
    for split, n in {"training": 4, "val": 2, "test": 4}.items():
        for root in (a, b):
            base = root / "LandmarkDetection" / DS / split
            assert sorted(p.name for p in (base / "images").iterdir()) == _names(n)
            assert sorted(p.name for p in (base / "labels").iterdir()) == [f"{i:08d}.npy" for i in range(n)]
        for i in range(n):
            m = np.load(a / "LandmarkDetection" / DS / split / "labels" / f"{i:08d}.npy")
            p = np.load(b / "LandmarkDetection" / DS / split / "labels" / f"{i:08d}.npy")
            assert m.shape == (64, 64, 3) and m.dtype == np.uint8
            assert (m.reshape(-1, 3).sum(0) == 1).all() and set(np.unique(m).tolist()) == {0, 1}
            assert p.shape == (3, 2) and p.dtype == np.float32
            assert ((p >= 0) & (p <= 63)).all()
            for k in range(3):  # the map's single pixel is the rounded point
                row, col = np.argwhere(m[..., k] == 1)[0]
                assert (col, row) == tuple(np.rint(p[k]).astype(int))
            assert p[0, 0] < p[2, 0] < p[1, 0] and p[2, 1] < min(p[0, 1], p[1, 1])  # angles flank the apex, below it
            # the images do not depend on the label format
            ia = (a / "LandmarkDetection" / DS / split / "images" / f"{i:08d}.png").read_bytes()
            assert ia == (b / "LandmarkDetection" / DS / split / "images" / f"{i:08d}.png").read_bytes()


def test_metric_reg_layout_and_measured_targets(metric):
    d, s = metric
    for group in ("FundusRegression", "ExternalRegression"):
        ds = d / group / DS
        spec = json.loads((ds / "targets.json").read_text())
        assert spec["dataset"] == group and len(spec["targets"]) == 38
        assert [t["index"] for t in spec["targets"]] == list(range(38))
        for split, n in {"training": 100, "val": 25, "test": 100}.items():
            assert sorted(p.name for p in (ds / split).iterdir()) == _names(n)
            lines = _lines(ds / f"{split}_labels.txt")
            assert len(lines) == n
            for i, line in enumerate(lines):
                rel, vals = line.split(";")
                assert rel == f"{split}/{i:08d}.png" and " " not in vals
                v = [float(x) for x in vals.split(",")]
                assert len(v) == 38 and all(math.isfinite(x) for x in v)
        X, Y = _load_cls(ds, "test", 10)
        assert (Y.std(0) > 0).sum() >= 30  # targets vary between images
        if group == "ExternalRegression":  # ROI = whole image: targets 0-2 are the mean R, G, B
            np.testing.assert_allclose(Y[:, :3], X.reshape(len(X), -1, 3).mean(1), atol=1e-3)


def test_forecasting_layout(tmp_path):
    s = generate("forecasting", tmp_path, num=60, img_size=48, seed=0)
    root = tmp_path / "GlaucomaForecasting"
    assert sorted(p.name for p in root.iterdir()) == ["test", "test.txt", "training", "training.txt", "val",
                                                      "val.txt"]
    labs, days = [], []
    for split, n in {"training": 60, "val": 15, "test": 60}.items():
        assert sorted(p.name for p in (root / split).iterdir()) == _names(n)
        assert len(_lines(root / f"{split}.txt")) == n
        for i, line in enumerate(_lines(root / f"{split}.txt")):
            parts = line.rstrip().split(", ")
            assert len(parts) == 3 and parts[0] == f"{split}/{i:08d}.png"
            assert (root / parts[0]).is_file()
            assert parts[1] in ("0", "1")
            assert 30 <= int(parts[2]) <= 3650
            labs.append(int(parts[1]))
            days.append(int(parts[2]))
    labs, days = np.asarray(labs), np.log(np.asarray(days))
    assert 0.2 < labs.mean() < 0.8
    assert days[labs == 1].mean() > days[labs == 0].mean()  # longer intervals progress more often
    assert s["label_distribution"]["GlaucomaForecasting/training"]["1"] == int(labs[:60].sum())


# ---------------------------------------------------------------------------------------------
# determinism and arguments


@pytest.mark.parametrize("task", TASKS)
def test_deterministic_per_seed(task, tmp_path):
    def files(root):
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    generate(task, tmp_path / "a", num=2, img_size=40, seed=7)
    generate(task, tmp_path / "b", num=2, img_size=40, seed=7)
    generate(task, tmp_path / "c", num=2, img_size=40, seed=8)
    fa, fb, fc = files(tmp_path / "a"), files(tmp_path / "b"), files(tmp_path / "c")
    assert fa == fb
    assert fa.keys() == fc.keys()
    pngs = [k for k in fa if k.endswith(".png") and "labels" not in k]
    assert all(fa[k] != fc[k] for k in pngs)


def test_workers_give_identical_output(tmp_path):
    generate("single_cls", tmp_path / "one", num=6, img_size=40, seed=1, workers=1)
    generate("single_cls", tmp_path / "two", num=6, img_size=40, seed=1, workers=2)
    one = sorted((tmp_path / "one").rglob("*.*"))
    assert len(one) == 6 + 2 + 6 + 3 + 1  # images, label files, classes.txt
    for p in one:
        assert p.read_bytes() == (tmp_path / "two" / p.relative_to(tmp_path / "one")).read_bytes()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num": 0}, "num"),
        ({"num": -3}, "num"),
        ({"num": 2.5}, "num"),
        ({"img_size": 8}, "img_size"),
        ({"seed": -1}, "seed"),
        ({"workers": 0}, "workers"),
        ({"landmark_format": "heatmap"}, "landmark_format"),
    ],
)
def test_argument_validation(tmp_path, kwargs, match):
    args = {"num": 2, "img_size": 48, **kwargs}
    with pytest.raises(ConfigError, match=match):
        generate("landmark", tmp_path, **args)
    assert not any(tmp_path.iterdir())  # nothing written before the checks
    with pytest.raises(ConfigError, match="unknown task"):
        generate("detection", tmp_path)


def test_cli(tmp_path, capsys):
    rc = cli_main(["synth", "--task", "single_cls", "--dst-dir", str(tmp_path), "--num", "3", "--img_size", "40"])
    out = capsys.readouterr().out
    assert rc == 0 and "single_cls" in out and "FundusClassification/val: 2 images" in out
    assert (tmp_path / "FundusClassification" / DS / "val_labels.txt").is_file()
    rc = cli_main(["synth", "--task", "pretrain", "--dst_dir", str(tmp_path / "x"), "--num", "0"])
    assert rc == 2 and "--num: expected an integer ≥ 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["synth", "--task", "nope", "--dst_dir", str(tmp_path)])


# ---------------------------------------------------------------------------------------------
# labels follow the content


def test_single_cls_grade_is_learnable_from_pixels(single):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    d, _ = single
    ds = d / "FundusClassification" / DS
    Xtr, ytr = _load_cls(ds, "training")
    Xte, yte = _load_cls(ds, "test", 80)
    ytr, yte = ytr[:, 0].astype(int), yte[:, 0].astype(int)
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=3000))
    clf.fit(_color_hist(Xtr), ytr)
    acc = clf.score(_color_hist(Xte), yte)
    majority = np.bincount(yte).max() / len(yte)
    print(f"single_cls colour-histogram probe: accuracy {acc:.3f} (majority {majority:.3f}, chance 0.2)")
    assert acc >= max(0.2, majority) + 0.15, (acc, majority)


def test_multi_cls_findings_are_predictable(multi):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    d, _ = multi
    checks = {
        "FundusClassificationMulti": (_color_hist, (5, 6, 7, 8, 11, 12)),  # DR, glaucoma, AMD, cataract, myopia, RD
        "OCTClassificationMulti": (_small, (6, 8, 10, 11)),  # glaucoma, cataract, RVO, myopia
    }
    aucs = {}
    for group, (feat, labels) in checks.items():
        ds = d / group / DS
        Xtr, Ytr = _load_cls(ds, "training")
        Xte, Yte = _load_cls(ds, "test")
        Ftr, Fte = feat(Xtr), feat(Xte)
        for j in labels:
            clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000)).fit(Ftr, Ytr[:, j])
            aucs[(group, MULTI_LABEL_NAMES[j])] = roc_auc_score(Yte[:, j], clf.predict_proba(Fte)[:, 1])
    print("multi_cls linear-probe AUCs:", {f"{g[:3]}:{n}": round(a, 3) for (g, n), a in aucs.items()})
    assert all(a > 0.7 for a in aucs.values()), aucs


def test_regression_targets_are_predictable(metric):
    from sklearn.linear_model import Ridge
    from sklearn.metrics import r2_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    d, _ = metric
    for group, targets in {"FundusRegression": (6, 31), "ExternalRegression": (0, 23)}.items():
        ds = d / group / DS
        names = [t["name"] for t in json.loads((ds / "targets.json").read_text())["targets"]]
        Xtr, Ytr = _load_cls(ds, "training")
        Xte, Yte = _load_cls(ds, "test")
        for j in targets:
            m = make_pipeline(StandardScaler(), Ridge(alpha=10.0)).fit(_small(Xtr), Ytr[:, j])
            r2 = r2_score(Yte[:, j], m.predict(_small(Xte)))
            print(f"{group} {names[j]}: R^2 {r2:.3f}")
            assert r2 > 0.5, (group, names[j], r2)


def test_segmentation_mask_is_exactly_the_drawn_vessels(seg):
    # Without sensor noise, vessel pixels are the only ones with the vessel colours (R/G > 3.3),
    # apart from red lesions, which carry their own class.
    for i in range(4):
        r = render_fundus(item_rng(5, "t", "seg", i), 96, Findings(grade=i % 4), noise=0.0)
        img = r.image.astype(np.float64)
        g = r.geometry
        inner = dist_from(96, *g.centre) < g.radius - 1
        vessel_colour = img[..., 0] > 3.3 * np.maximum(img[..., 1], 1.0)
        check = inner & ~r.lesion
        assert (vessel_colour[check] == r.vessel[check]).all()
        assert r.vessel.any() and not (r.vessel & ~inner).any()

    # and the written masks line up with the written images
    d, _ = seg
    base = d / "VesselSegmentation" / DS / "training"
    inside, outside = [], []
    for name in _names(8):
        img = _img(base / "images" / name).astype(np.float64)
        lab = np.asarray(Image.open(base / "labels" / name))
        fov = img.sum(-1) > 30
        inside.append(img[lab == 1][:, 1].mean())
        outside.append(img[(lab == 0) & fov][:, 1].mean())
        ratio = img[..., 0] / np.maximum(img[..., 1], 1.0)
        assert ratio[lab == 1].mean() > ratio[(lab == 0) & fov].mean() + 1.0
    assert np.mean(inside) < 0.6 * np.mean(outside)
