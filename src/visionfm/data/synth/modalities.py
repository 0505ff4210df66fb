"""Procedural looks of the anterior-segment and cross-sectional modalities, and the pretraining registry.

* External: skin, almond-shaped lid opening with lashes and crease, white sclera with conjunctival
  vessels, striated iris, black pupil, corneal highlight.
* SlitLamp: the same eye, closer and under dimmer light, crossed by a bright curved slit beam and its
  fainter lens section.
* Ultrasound (B-scan): black frame, speckled fan, anechoic globe, bright eye wall, orbital fat echoes,
  dark optic-nerve shadow.
* UBM: dark water bath, bright curved cornea continuing into the sclera, iris leaves meeting it at the
  two angle recesses, lens capsule arc; it also returns three landmarks (see :func:`render_ubm`).
* MRI: axial orbit slice, head outline, brain, orbital fat cones, globes with lenses, optic nerves,
  rectus muscles; T1- or T2-like contrast.

Every renderer takes ``(rng, size)`` and returns uint8 ``[S, S, 3]`` (or a result object holding it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image, ImageFilter

from visionfm.data.synth.fundus import Findings, render_ffa, render_fundus
from visionfm.data.synth.oct import render_oct
from visionfm.data.synth.render import (
    blend,
    blur_mask,
    dist_from,
    draw_branches,
    gray_to_rgb,
    grid,
    grow_branch,
    mask_array,
    new_mask,
    smooth_noise,
    soft_disc,
    speckle,
    to_uint8,
)

__all__ = [
    "EyeResult",
    "UBMResult",
    "IRIS_COLOURS",
    "render_external",
    "render_slitlamp",
    "render_ultrasound",
    "render_ubm",
    "render_mri",
    "random_findings",
    "LANDMARK_NAMES",
    "PRETRAIN_RENDERERS",
]

IRIS_COLOURS: dict[str, tuple[float, float, float]] = {
    "dark_brown": (0.25, 0.15, 0.09),
    "brown": (0.42, 0.26, 0.15),
    "hazel": (0.5, 0.4, 0.2),
    "green": (0.35, 0.45, 0.3),
    "blue": (0.35, 0.5, 0.66),
}


@dataclass
class EyeResult:
    image: np.ndarray  # uint8 [S, S, 3]
    opening: np.ndarray  # bool: visible globe between the lids
    iris: np.ndarray  # bool: visible iris (excluding pupil)
    pupil: np.ndarray  # bool: visible pupil
    params: dict[str, float]


def _eye(rng: np.random.Generator, S: int, zoom: float, light: float) -> tuple[np.ndarray, dict, dict]:
    """Shared external-eye drawing. Returns float image, masks, parameters."""
    xs, ys = grid(S)
    Sf = float(S)
    cx, cy = Sf / 2 + rng.normal(0, 0.03 * Sf), Sf / 2 + rng.normal(0, 0.03 * Sf)
    a = rng.uniform(0.3, 0.36) * Sf * zoom
    h = rng.uniform(0.1, 0.16) * Sf * zoom
    tone = rng.uniform(0.55, 0.95)
    skin = np.array([0.86, 0.63, 0.5], np.float32) * tone * light
    u = (xs - cx) / a
    prof = np.clip(1.0 - u * u, 0.0, None)
    y_up = cy - h * prof**0.75
    y_lo = cy + 0.7 * h * prof**0.9
    opening = (ys > y_up) & (ys < y_lo)
    shade = 1.0 - 0.2 * (ys - cy) / Sf + 0.05 * smooth_noise(rng, S, 8)
    img = shade[..., None] * skin
    crease = np.exp(-(((ys - (y_up - 0.07 * Sf * zoom)) / (0.012 * Sf * zoom)) ** 2)) * (np.abs(u) < 0.95)
    img *= (1.0 - 0.18 * crease)[..., None]

    redness = rng.uniform(0.0, 1.0)
    sclera = np.array([0.93, 0.88, 0.85], np.float32) * rng.uniform(0.9, 1.0) * light
    sclera = sclera + redness * np.array([0.0, -0.08, -0.08], np.float32)
    lid_shadow = 1.0 - 0.35 * np.exp(-np.clip(ys - y_up, 0, None) / (0.03 * Sf * zoom))
    img = np.where(opening[..., None], sclera * lid_shadow[..., None], img)
    n_ves = int(round(redness * 12))
    if n_ves:  # conjunctival vessels from both canthi
        vm, vd = new_mask(S)
        branches = []
        for k in range(n_ves):
            sx = cx + (1 if k % 2 else -1) * a * rng.uniform(0.55, 0.95)
            ang = (math.pi if k % 2 else 0.0) + rng.normal(0, 0.4)
            grow_branch(rng, (sx, cy + rng.normal(0, 0.3 * h)), ang, steps=8, step=0.02 * Sf * zoom,
                        width=max(1.0, 0.004 * Sf * zoom), kind=0, depth=1, curl=0.0, wiggle=0.35,
                        inside=lambda x_, y_: np.ones_like(x_, dtype=bool), out=branches, branch_prob=0.2)
        draw_branches(vd, branches)
        alpha = (mask_array(vm) & opening).astype(np.float32)
        blend(img, alpha, np.array([0.78, 0.22, 0.2], np.float32) * light, 0.7)

    ic = (cx + rng.normal(0, 0.04 * a), cy + rng.normal(0, 0.08 * h))
    ri = rng.uniform(0.11, 0.14) * Sf * zoom
    cname = list(IRIS_COLOURS)[int(rng.integers(len(IRIS_COLOURS)))]
    icol = np.array(IRIS_COLOURS[cname], np.float32) * rng.uniform(0.85, 1.1) * light
    di = dist_from(S, *ic)
    theta = np.arctan2(ys - ic[1], xs - ic[0])
    stri = 0.82 + 0.18 * np.sin(theta * rng.integers(30, 60) + 2.5 * smooth_noise(rng, S, 10))
    radial = 1.0 - 0.35 * np.clip(di / ri, 0, 1) ** 4 + 0.12 * np.exp(-(((di / ri) - 0.55) / 0.06) ** 2)
    iris_in = (di < ri) & opening
    img = np.where(iris_in[..., None], icol * (stri * radial)[..., None], img)
    rp = ri * rng.uniform(0.28, 0.5)
    pupil = (di < rp) & opening
    img = np.where(pupil[..., None], np.float32(0.03), img)
    hl = dist_from(S, ic[0] - 0.35 * rp - 0.2 * ri, ic[1] - 0.35 * rp - 0.2 * ri)
    blend(img, soft_disc(hl, 0.07 * ri + 0.8, 1.5) * opening, (1.0, 1.0, 1.0), 0.95)

    lm, ld = new_mask(S)  # eyelashes along the upper lid
    n_lash = int(rng.integers(20, 40))
    for x0 in rng.uniform(cx - 0.9 * a, cx + 0.9 * a, n_lash).tolist():
        uu = (x0 - cx) / a
        y0 = cy - h * max(1.0 - uu * uu, 0.0) ** 0.75
        ang = -math.pi / 2 + uu * 0.9 + rng.normal(0, 0.15)
        ln = rng.uniform(0.025, 0.045) * Sf * zoom
        ld.line((x0, y0, x0 + ln * math.cos(ang), y0 + ln * math.sin(ang)), fill=255,
                width=max(1, int(0.004 * Sf * zoom)))
    blend(img, mask_array(lm).astype(np.float32), (0.08, 0.06, 0.05), 0.9)
    masks = {"opening": opening, "iris": iris_in & ~pupil, "pupil": pupil}
    params = {
        "eye_cx": float(cx), "eye_cy": float(cy), "eye_half_width": float(a), "aperture": float(1.7 * h),
        "iris_r": float(ri), "pupil_r": float(rp), "redness": float(redness), "conj_vessels": float(n_ves),
        "skin_tone": float(tone), "lashes": float(n_lash), "iris_colour": float(list(IRIS_COLOURS).index(cname)),
        "iris_cx": float(ic[0]), "iris_cy": float(ic[1]),
    }
    return img, masks, params


def render_external(rng: np.random.Generator, size: int) -> EyeResult:
    S = int(size)
    img, masks, params = _eye(rng, S, zoom=1.0, light=1.0)
    img += rng.normal(0.0, 0.012, img.shape).astype(np.float32)
    return EyeResult(to_uint8(img), masks["opening"], masks["iris"], masks["pupil"], params)


def render_slitlamp(rng: np.random.Generator, size: int) -> np.ndarray:
    S = int(size)
    Sf = float(S)
    img, masks, p = _eye(rng, S, zoom=1.45, light=rng.uniform(0.55, 0.75))
    xs, ys = grid(S)
    ic, ri = (p["iris_cx"], p["iris_cy"]), p["iris_r"]
    off = rng.uniform(-0.5, 0.5) * ri
    bend = rng.uniform(0.1, 0.25) * ri
    wb = max(1.0, 0.018 * Sf)
    xb = ic[0] + off + bend * ((ys - ic[1]) / ri) ** 2
    win = np.exp(-(((ys - ic[1]) / (1.25 * ri)) ** 6))
    beam = np.exp(-(((xs - xb) / wb) ** 2)) * win
    blend(img, beam.astype(np.float32), (0.97, 0.97, 1.0), 0.95)
    lens = np.exp(-(((xs - xb - 0.35 * ri) / (1.8 * wb)) ** 2)) * masks["pupil"]
    blend(img, lens.astype(np.float32), (0.85, 0.82, 0.7), 0.6)
    img += rng.normal(0.0, 0.012, img.shape).astype(np.float32)
    return to_uint8(img)


def render_ultrasound(rng: np.random.Generator, size: int) -> np.ndarray:
    S = int(size)
    Sf = float(S)
    xs, ys = grid(S)
    ax, ay = Sf / 2, -0.15 * Sf
    r = dist_from(S, ax, ay)
    ang = np.arctan2(xs - ax, ys - ay)
    half = rng.uniform(0.45, 0.55)
    fan = (np.abs(ang) < half) & (r > 0.2 * Sf) & (r < 1.12 * Sf)
    gc = (Sf / 2 + rng.normal(0, 0.03 * Sf), rng.uniform(0.4, 0.5) * Sf)
    Rg = rng.uniform(0.28, 0.34) * Sf
    dg = dist_from(S, *gc)
    img = np.full((S, S), 0.015, np.float32)
    fat = (dg > Rg) * 0.3 * np.exp(-np.clip(dg - Rg, 0, None) / (0.18 * Sf)) * (1.0 + 0.3 * smooth_noise(rng, S, 12))
    img = np.maximum(img, fat.astype(np.float32))
    nerve = (np.abs(xs - gc[0] - 0.1 * (ys - gc[1] - Rg)) < 0.045 * Sf) & (ys > gc[1] + 0.9 * Rg)
    img = np.where(nerve, 0.03, img)
    wall = np.exp(-(((dg - Rg) / (0.012 * Sf)) ** 2)) * (ys > gc[1] - 0.4 * Rg)
    img = np.maximum(img, 0.85 * wall)
    lc = (gc[0], gc[1] - Rg + 0.12 * Sf)
    lens = np.exp(-(((dist_from(S, *lc, sx=1.6) - 0.06 * Sf) / (0.006 * Sf)) ** 2))
    img = np.maximum(img, 0.45 * lens)
    if rng.random() < 0.4:  # vitreous opacities
        m, d = new_mask(S)
        for px, py in rng.normal(gc, 0.3 * Rg, (int(rng.integers(5, 20)), 2)).tolist():
            d.ellipse((px - 1, py - 1, px + 1, py + 1), fill=255)
        img = np.maximum(img, blur_mask(m, 0.6) * 0.5 * (dg < Rg))
    img = img * speckle(rng, (S, S), 1.5) * fan * np.exp(-r / (1.6 * Sf)) * 1.3
    img = np.asarray(Image.fromarray(to_uint8(img)).filter(ImageFilter.GaussianBlur(0.7)), np.float32) / 255.0
    return gray_to_rgb(to_uint8(img))


@dataclass
class UBMResult:
    image: np.ndarray  # uint8 [S, S, 3]
    landmarks: np.ndarray  # float32 [3, 2] (x, y): left angle recess, right angle recess, corneal apex
    params: dict[str, float]


LANDMARK_NAMES = ("left_angle_recess", "right_angle_recess", "corneal_apex")


def render_ubm(rng: np.random.Generator, size: int) -> UBMResult:
    """Ultrasound biomicroscopy of the anterior chamber with its three landmarks.

    Landmarks (x, y) in pixels: the two angle recesses, where the posterior corneal surface meets the
    anterior iris surface at the iris root, and the apex of the anterior corneal surface.
    """
    S = int(size)
    Sf = float(S)
    xs, ys = grid(S)
    cx = Sf * (0.5 + rng.uniform(-0.05, 0.05))
    apex = Sf * rng.uniform(0.12, 0.2)
    k = rng.uniform(1.1, 1.6) / Sf  # parabola y = apex + k (x - cx)^2
    tilt = rng.uniform(-0.05, 0.05)
    ct0 = rng.uniform(0.035, 0.05) * Sf

    def y_ant(x):
        return apex + k * (x - cx) ** 2 + tilt * (x - cx)

    def thick(x):
        return ct0 * (1.0 + 0.6 * ((x - cx) / (0.4 * Sf)) ** 2)

    def y_post(x):
        return y_ant(x) + thick(x)

    wl, wr = rng.uniform(0.3, 0.38, 2) * Sf
    pl = (cx - wl, float(y_post(cx - wl)))
    pr_ = (cx + wr, float(y_post(cx + wr)))
    pupil = rng.uniform(0.08, 0.14) * Sf
    lens_apex = float(y_post(cx)) + rng.uniform(0.18, 0.26) * Sf
    kl = rng.uniform(1.0, 1.6) / Sf

    def y_lens(x):
        return lens_apex + kl * (x - cx) ** 2

    img = np.full((S, S), 0.02, np.float32)
    ya, yp = y_ant(xs), y_post(xs)
    cornea = (ys >= ya) & (ys <= yp)
    img = np.where(cornea, 0.4 + 0.4 * np.exp(-(((ys - ya) / 1.5) ** 2)) + 0.3 * np.exp(-(((ys - yp) / 1.5) ** 2)), img)
    sclera_mask = cornea & ((xs < pl[0]) | (xs > pr_[0]))
    below = (ys > yp) & (ys < yp + 1.5 * thick(xs)) & ((xs < pl[0]) | (xs > pr_[0]))
    img = np.where(sclera_mask | below, 0.7, img)
    # iris leaves: quadrilaterals from the angle recess to the pupil margin, lying on the lens
    m, d = new_mask(S)
    ith = rng.uniform(0.03, 0.045) * Sf
    for (ax_, ay_), sgn in ((pl, -1.0), (pr_, 1.0)):
        mx = cx + sgn * pupil
        my = float(y_lens(mx)) - 0.3 * ith
        d.polygon([(ax_, ay_), (mx, my), (mx, my + 0.6 * ith), (ax_ - sgn * 0.02 * Sf, ay_ + ith * 1.4)], fill=255)
        d.ellipse((ax_ - sgn * 0.02 * Sf - ith, ay_ + ith, ax_ - sgn * 0.02 * Sf + ith, ay_ + 2.6 * ith), fill=160)
    im = np.asarray(m, np.float32) / 255.0
    img = np.where(im > 0, 0.65 * im, img)
    lens_line = np.exp(-(((ys - y_lens(xs)) / (0.006 * Sf)) ** 2)) * (np.abs(xs - cx) < pupil * 1.2)
    img = np.maximum(img, 0.55 * lens_line)
    img = img * speckle(rng, (S, S), 2.0)
    img = np.asarray(Image.fromarray(to_uint8(img)).filter(ImageFilter.GaussianBlur(0.6)), np.float32) / 255.0
    img += rng.normal(0.0, 0.01, img.shape).astype(np.float32)
    pts = np.array([pl, pr_, (cx, apex)], np.float32)
    params = {"acd": lens_apex - float(y_post(cx)), "cornea_thickness": ct0, "pupil": pupil}
    return UBMResult(gray_to_rgb(to_uint8(img)), pts, params)


def render_mri(rng: np.random.Generator, size: int) -> np.ndarray:
    """Axial orbital MRI slice (grey)."""
    S = int(size)
    Sf = float(S)
    t2 = rng.random() < 0.5
    hc = (Sf / 2 + rng.normal(0, 0.01 * Sf), 0.58 * Sf)
    ha, hb = rng.uniform(0.38, 0.43) * Sf, rng.uniform(0.45, 0.5) * Sf
    dh = dist_from(S, *hc, sx=ha / hb)  # distance in units of the vertical semi-axis
    img = np.zeros((S, S), np.float32)
    img = np.where(dh < hb, 0.6, img)  # scalp
    img = np.where(dh < hb - 0.02 * Sf, 0.06, img)  # skull
    brain = 0.26 + 0.04 * smooth_noise(rng, S, 16)
    img = np.where(dh < hb - 0.04 * Sf, brain, img)
    sep = rng.uniform(0.15, 0.19) * Sf
    gy = rng.uniform(0.2, 0.25) * Sf
    gr = rng.uniform(0.065, 0.08) * Sf
    chiasm = (Sf / 2, gy + 0.25 * Sf)
    nm, nd = new_mask(S)
    mm, md = new_mask(S)
    for sgn in (-1.0, 1.0):
        gx = Sf / 2 + sgn * sep
        fat = dist_from(S, gx, gy + 0.05 * Sf, sx=0.8) < 1.5 * gr
        img = np.where(fat, 0.55 if t2 else 0.75, img)
        dg = dist_from(S, gx, gy)
        img = np.where(dg < gr, 0.06, img)  # sclera rim
        img = np.where(dg < gr - max(1.0, 0.008 * Sf), 0.85 if t2 else 0.12, img)
        lens = dist_from(S, gx, gy - 0.75 * gr, sx=1.0, sy=0.45) < 0.35 * gr
        img = np.where(lens, 0.15 if t2 else 0.5, img)
        nd.line((gx, gy + gr, chiasm[0] + sgn * 0.02 * Sf, chiasm[1]), fill=255, width=max(1, int(0.022 * Sf)))
        for off in (-1.0, 1.0):
            md.line((gx + off * 1.1 * gr, gy, chiasm[0] + sgn * 0.05 * Sf + off * 0.02 * Sf, chiasm[1] - 0.03 * Sf),
                    fill=255, width=max(1, int(0.025 * Sf)))
    img = np.where(mask_array(mm), 0.3, img)
    img = np.where(mask_array(nm), 0.38, img)
    sinus = dist_from(S, Sf / 2, gy + 0.02 * Sf, sx=0.5) < 0.07 * Sf
    img = np.where(sinus, 0.04, img)
    img = np.asarray(Image.fromarray(to_uint8(img)).filter(ImageFilter.GaussianBlur(0.8)), np.float32) / 255.0
    noise = rng.normal(0.0, 0.025, (2, S, S)).astype(np.float32)
    img = np.sqrt((img + noise[0]) ** 2 + noise[1] ** 2)  # Rician magnitude noise
    return gray_to_rgb(to_uint8(img))


def random_findings(rng: np.random.Generator, p: float = 0.15) -> Findings:
    """A random mix of findings (DR grade 0 with probability 0.5), for unlabelled pretraining images."""
    grade = 0 if rng.random() < 0.5 else int(rng.integers(1, 5))
    flags = rng.random(7) < p
    return Findings(grade, *map(bool, flags))


def _pretrain_fundus(rng: np.random.Generator, size: int) -> np.ndarray:
    return render_fundus(rng, size, random_findings(rng)).image


def _pretrain_oct(rng: np.random.Generator, size: int) -> np.ndarray:
    return render_oct(rng, size, random_findings(rng)).image


def _pretrain_ffa(rng: np.random.Generator, size: int) -> np.ndarray:
    return render_ffa(rng, size, random_findings(rng))


# Canonical modality name -> renderer(rng, size) -> uint8 [S, S, 3]; same order as MODALITY_NAMES.
PRETRAIN_RENDERERS: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "Fundus": _pretrain_fundus,
    "OCT": _pretrain_oct,
    "FFA": _pretrain_ffa,
    "SlitLamp": render_slitlamp,
    "Ultrasound": render_ultrasound,
    "External": lambda rng, size: render_external(rng, size).image,
    "MRI": render_mri,
    "UBM": lambda rng, size: render_ubm(rng, size).image,
}
