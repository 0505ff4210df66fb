"""The 38 regression targets of the ``metric_reg`` task: measured properties of each rendered image.

Each data set (FundusRegression, ExternalRegression) has 38 targets: 18 generic image statistics
computed on the saved pixels inside a region of interest (the circular field of view for fundus, the
whole frame for external photographs), then 20 modality-specific measurements taken from the drawn
structures (masks and the geometry they were drawn with), expressed in biomarker-like units
(percent, millimetres at a nominal scale, counts) plus a few combinations. :func:`target_specs`
returns the names, units and definitions that are written to ``targets.json``.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from visionfm.data.synth.fundus import FundusResult
from visionfm.data.synth.modalities import EyeResult

__all__ = [
    "NUM_TARGETS",
    "GENERIC",
    "FUNDUS_SPECIFIC",
    "EXTERNAL_SPECIFIC",
    "target_specs",
    "fundus_targets",
    "external_targets",
]

NUM_TARGETS = 38
IRIS_MM = 11.7  # nominal horizontal visible iris diameter used to express external-eye sizes in mm

# (name, unit, definition)
GENERIC: list[tuple[str, str, str]] = [
    ("mean_red", "0-255", "mean R value inside the region of interest (ROI)"),
    ("mean_green", "0-255", "mean G value inside the ROI"),
    ("mean_blue", "0-255", "mean B value inside the ROI"),
    ("std_red", "0-255", "standard deviation of R inside the ROI"),
    ("std_green", "0-255", "standard deviation of G inside the ROI"),
    ("std_blue", "0-255", "standard deviation of B inside the ROI"),
    ("mean_luminance", "0-255", "mean of Y = 0.299 R + 0.587 G + 0.114 B inside the ROI"),
    ("luminance_p10", "0-255", "10th percentile of Y inside the ROI"),
    ("luminance_p90", "0-255", "90th percentile of Y inside the ROI"),
    ("rms_contrast", "%", "100 * std(Y) / mean(Y) inside the ROI"),
    ("mean_saturation", "%", "100 * mean of (max(RGB) - min(RGB)) / max(RGB) inside the ROI"),
    ("red_green_ratio", "ratio", "mean_red / mean_green"),
    ("blue_green_ratio", "ratio", "mean_blue / mean_green"),
    ("edge_density", "0-255/px", "mean absolute horizontal + vertical difference of Y inside the ROI"),
    ("bright_fraction", "%", "100 * fraction of ROI pixels with Y > 200"),
    ("dark_fraction", "%", "100 * fraction of ROI pixels with Y < 40"),
    ("centre_ratio", "ratio", "mean Y in the central third of the image / mean Y inside the ROI"),
    ("red_minus_blue", "0-255", "mean_red - mean_blue"),
]

FUNDUS_SPECIFIC: list[tuple[str, str, str]] = [
    ("vessel_density", "%", "100 * vessel-tree pixels / field-of-view pixels"),
    ("artery_density", "%", "100 * artery pixels / field-of-view pixels"),
    ("vein_density", "%", "100 * vein pixels / field-of-view pixels"),
    ("av_width_ratio", "ratio", "drawn main-artery width / main-vein width (thin arteries: hypertension)"),
    ("disc_radius", "% of width", "100 * optic-disc radius / image width"),
    ("cup_disc_ratio", "ratio", "optic-cup radius / optic-disc radius"),
    ("cup_area", "% of FOV", "100 * cup area / field-of-view area"),
    ("macula_darkness", "%", "100 * (1 - mean Y within 0.05 S of the fovea / mean Y of the FOV)"),
    ("red_lesion_count", "count", "microaneurysms + haemorrhages + flame haemorrhages drawn"),
    ("exudate_count", "count", "hard exudates drawn"),
    ("lesion_area", "% of FOV", "100 * drawn lesion pixels (all kinds) / FOV pixels"),
    ("cotton_wool_count", "count", "cotton-wool spots drawn"),
    ("drusen_count", "count", "drusen drawn"),
    ("haze", "%", "100 * cataract haze opacity (0 when clear)"),
    ("tessellation", "%", "100 * depth of the tessellation pattern (0 when absent)"),
    ("artery_tortuosity", "rad", "amplitude of the sinusoidal heading change of arteries"),
    ("disc_macula_distance", "disc radii", "distance from disc centre to fovea / disc radius"),
    ("dr_severity_index", "score", "red_lesion_count + 2 * exudate_count + 5 * cotton_wool_count"),
    ("vessel_redness", "score", "vessel_density * mean_red / 100"),
    ("disc_contrast", "ratio", "mean Y on the optic disc / mean Y of the FOV"),
]

EXTERNAL_SPECIFIC: list[tuple[str, str, str]] = [
    ("pupil_diameter", "mm", "2 * pupil radius / iris diameter * 11.7 mm"),
    ("iris_diameter", "% of width", "100 * iris diameter / image width"),
    ("pupil_iris_ratio", "ratio", "pupil radius / iris radius"),
    ("fissure_height", "mm", "vertical lid opening / iris diameter * 11.7 mm"),
    ("fissure_width", "mm", "horizontal lid opening / iris diameter * 11.7 mm"),
    ("eye_centre_x", "% of width", "100 * x of the lid-opening centre / width"),
    ("eye_centre_y", "% of height", "100 * y of the lid-opening centre / height"),
    ("sclera_fraction", "%", "100 * visible sclera pixels / lid-opening pixels"),
    ("scleral_redness", "0-255", "mean (R - G) over visible sclera pixels"),
    ("conjunctival_vessels", "count", "conjunctival vessels drawn"),
    ("iris_red", "0-255", "mean R over visible iris pixels"),
    ("iris_green", "0-255", "mean G over visible iris pixels"),
    ("iris_blue", "0-255", "mean B over visible iris pixels"),
    ("iris_colour_class", "class", "0 dark brown, 1 brown, 2 hazel, 3 green, 4 blue"),
    ("skin_luminance", "0-255", "mean Y outside the lid opening"),
    ("lash_count", "count", "eyelashes drawn on the upper lid"),
    ("opening_area", "%", "100 * lid-opening pixels / image pixels"),
    ("iris_decentration", "iris radii", "distance between iris centre and lid-opening centre / iris radius"),
    ("pupil_fissure_product", "mm^2", "pupil_diameter * fissure_height"),
    ("redness_exposure", "score", "scleral_redness * sclera_fraction / 100"),
]

assert len(GENERIC) + len(FUNDUS_SPECIFIC) == NUM_TARGETS
assert len(GENERIC) + len(EXTERNAL_SPECIFIC) == NUM_TARGETS


def target_specs(dataset: str) -> list[dict[str, object]]:
    """``[{'index', 'name', 'unit', 'definition'}]`` for ``FundusRegression`` or ``ExternalRegression``."""
    specific = FUNDUS_SPECIFIC if dataset.startswith("Fundus") else EXTERNAL_SPECIFIC
    roi = "circular field of view" if dataset.startswith("Fundus") else "whole image"
    out = []
    for i, (name, unit, definition) in enumerate(GENERIC + specific):
        if i < len(GENERIC):
            definition = definition.replace("the ROI", f"the ROI ({roi})")
        out.append({"index": i, "name": name, "unit": unit, "definition": definition})
    return out


def _luma(img: np.ndarray) -> np.ndarray:
    f = img.astype(np.float32)
    return 0.299 * f[..., 0] + 0.587 * f[..., 1] + 0.114 * f[..., 2]


def _generic(img: np.ndarray, roi: np.ndarray) -> list[float]:
    px = img[roi].astype(np.float32)
    y = _luma(img)
    yr = y[roi]
    mean = px.mean(axis=0)
    std = px.std(axis=0)
    my = float(yr.mean())
    p10, p90 = np.percentile(yr, [10, 90])
    mx, mn = px.max(axis=1), px.min(axis=1)
    sat = float(np.mean((mx - mn) / np.maximum(mx, 1.0)))
    gx = np.abs(np.diff(y, axis=1))[roi[:, 1:] & roi[:, :-1]]
    gy = np.abs(np.diff(y, axis=0))[roi[1:, :] & roi[:-1, :]]
    edge = float(gx.mean() + gy.mean()) if gx.size and gy.size else 0.0
    S = img.shape[0]
    a, b = S // 3, S - S // 3
    centre = float(y[a:b, a:b].mean()) / max(my, 1e-3)
    return [
        float(mean[0]), float(mean[1]), float(mean[2]),
        float(std[0]), float(std[1]), float(std[2]),
        my, float(p10), float(p90),
        100.0 * float(yr.std()) / max(my, 1e-3),
        100.0 * sat,
        float(mean[0]) / max(float(mean[1]), 1e-3),
        float(mean[2]) / max(float(mean[1]), 1e-3),
        edge,
        100.0 * float(np.mean(yr > 200)),
        100.0 * float(np.mean(yr < 40)),
        centre,
        float(mean[0] - mean[2]),
    ]


def fundus_targets(r: FundusResult) -> list[float]:
    img, g = r.image, r.geometry
    S = img.shape[0]
    fov = r.fov
    nf = float(fov.sum())
    gen = _generic(img, fov)
    y = _luma(img)
    my = gen[6]
    yy, xx = np.mgrid[0:S, 0:S]
    mac = (xx - g.macula[0]) ** 2 + (yy - g.macula[1]) ** 2 < (0.05 * S) ** 2
    c = r.counts
    red = c.get("microaneurysms", 0) + c.get("haemorrhages", 0) + c.get("flame_haemorrhages", 0)
    ex, cw = c.get("exudates", 0), c.get("cotton_wool", 0)
    vd = 100.0 * float((r.vessel & fov).sum()) / nf
    cup_r = g.cup_ratio * g.disc_r
    dm = float(np.hypot(g.disc[0] - g.macula[0], g.disc[1] - g.macula[1]))
    spec = [
        vd,
        100.0 * float((r.artery & fov).sum()) / nf,
        100.0 * float((r.vein & fov).sum()) / nf,
        r.params["artery_width"] / max(r.params["vein_width"], 1e-3),
        100.0 * g.disc_r / S,
        g.cup_ratio,
        100.0 * np.pi * cup_r**2 / nf,
        100.0 * (1.0 - float(y[mac].mean()) / max(my, 1e-3)),
        float(red),
        float(ex),
        100.0 * float((r.lesion & fov).sum()) / nf,
        float(cw),
        float(c.get("drusen", 0)),
        100.0 * r.params["haze"],
        100.0 * r.params["tessellation"],
        r.params["tortuosity"],
        dm / g.disc_r,
        float(red + 2 * ex + 5 * cw),
        vd * gen[0] / 100.0,
        float(y[r.disc].mean()) / max(my, 1e-3),
    ]
    return gen + spec


def external_targets(r: EyeResult) -> list[float]:
    img, p = r.image, r.params
    S = img.shape[0]
    roi = np.ones(img.shape[:2], bool)
    gen = _generic(img, roi)
    f = img.astype(np.float32)
    sclera = r.opening & ~r.iris & ~r.pupil
    n_open = max(float(r.opening.sum()), 1.0)
    mm = IRIS_MM / (2.0 * p["iris_r"])
    red = float((f[..., 0] - f[..., 1])[sclera].mean()) if sclera.any() else 0.0
    iris_px = f[r.iris] if r.iris.any() else np.zeros((1, 3), np.float32)
    iris_mean = iris_px.mean(axis=0)
    scl_frac = 100.0 * float(sclera.sum()) / n_open
    pupil_mm = 2.0 * p["pupil_r"] * mm
    fiss_h = p["aperture"] * mm
    y = _luma(img)
    spec = [
        pupil_mm,
        100.0 * 2.0 * p["iris_r"] / S,
        p["pupil_r"] / p["iris_r"],
        fiss_h,
        2.0 * p["eye_half_width"] * mm,
        100.0 * p["eye_cx"] / S,
        100.0 * p["eye_cy"] / S,
        scl_frac,
        red,
        p["conj_vessels"],
        float(iris_mean[0]), float(iris_mean[1]), float(iris_mean[2]),
        p["iris_colour"],
        float(y[~r.opening].mean()),
        p["lashes"],
        100.0 * n_open / (S * S),
        float(np.hypot(p["iris_cx"] - p["eye_cx"], p["iris_cy"] - p["eye_cy"])) / p["iris_r"],
        pupil_mm * fiss_h,
        red * scl_frac / 100.0,
    ]
    return gen + spec


TARGET_FUNCTIONS: dict[str, Callable] = {"FundusRegression": fundus_targets, "ExternalRegression": external_targets}
