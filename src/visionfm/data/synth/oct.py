"""Procedural macular OCT B-scans: layered retina with a foveal dip, speckle and visible findings.

Every column has boundary depths (ILM, outer retina, RPE, Bruch's membrane, choroid); each pixel's
reflectivity comes from a per-layer profile indexed by its relative depth, so the whole scan is a
handful of vectorised passes. Findings (see :class:`~visionfm.data.synth.fundus.Findings`):

* DR grade 1..4 -> hyper-reflective foci, then intraretinal cysts growing in number and size,
  progressive thickening (grade >= 2) and an epiretinal membrane line (grade 4);
* glaucoma -> thin nerve-fibre layer and thinner inner retina;
* AMD -> drusen lifting the RPE into bumps with material beneath;
* cataract -> weak, blurred, noisy signal;
* RVO -> one half of the scan thickened and sponge-like with many small cysts;
* myopia -> strongly curved (staphylomatous) bowl and a thin choroid;
* retinal detachment -> the neurosensory retina lifted off the RPE over dark sub-retinal fluid;
* hypertensive retinopathy is not shown on these scans (its label is always 0 for the OCT set).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from visionfm.data.synth.fundus import Findings
from visionfm.data.synth.render import gray_to_rgb, mask_array, new_mask, smooth_noise, speckle, to_uint8

__all__ = ["OCTResult", "render_oct"]

# Reflectivity along relative depth inside the inner retina (RNFL knot set per image) and outer retina.
_OUTER_T = np.array([0.0, 0.1, 0.14, 0.72, 0.76, 0.79, 0.83, 0.87, 0.91, 0.94, 0.97, 1.0], np.float32)
_OUTER_V = np.array([0.5, 0.5, 0.13, 0.12, 0.2, 0.42, 0.2, 0.85, 0.85, 0.35, 0.6, 0.5], np.float32)


@dataclass
class OCTResult:
    image: np.ndarray  # uint8 [S, S, 3] (grey)
    findings: Findings
    counts: dict[str, int]
    params: dict[str, float]


def render_oct(rng: np.random.Generator, size: int, findings: Findings | None = None) -> OCTResult:
    f = findings or Findings()
    S = int(size)
    Sf = float(S)
    x = np.arange(S, dtype=np.float32)
    Y = x[:, None]
    counts: dict[str, int] = {}
    cx = Sf / 2
    xf = rng.uniform(0.42, 0.58) * Sf
    if f.myopia:
        y0, curv = rng.uniform(0.72, 0.78) * Sf, rng.uniform(0.7, 0.95)
    else:
        y0, curv = rng.uniform(0.6, 0.68) * Sf, rng.uniform(0.0, 0.15)
    tilt = rng.uniform(-0.06, 0.06)
    bruch = y0 - curv * ((x - cx) / Sf) ** 2 * Sf + tilt * (x - cx)

    T0 = rng.uniform(0.2, 0.25) * Sf
    rn = rng.uniform(0.25, 0.32)
    if f.glaucoma:
        T0 *= 0.78
        rn *= 0.3
    T0 *= 1.0 + 0.06 * max(0, int(f.grade) - 1)  # progressive oedematous thickening
    gx = (x - xf) / Sf
    T = T0 * (1.0 - 0.5 * np.exp(-((gx / 0.07) ** 2)))
    fin = 0.5 * (1.0 - 0.92 * np.exp(-((gx / 0.06) ** 2)))
    rvo_side = 0
    if f.rvo:
        rvo_side = 1 if rng.random() < 0.5 else -1
        T = T * (1.0 + 0.45 / (1.0 + np.exp(-rvo_side * gx / 0.03)))
    rpe_th = 0.022 * Sf
    dr = np.zeros(S, np.float32)
    if f.amd:
        k = int(rng.integers(2, 6))
        centres = rng.normal(xf, 0.12 * Sf, k)
        widths = rng.uniform(0.025, 0.05, k) * Sf
        heights = rng.uniform(0.03, 0.06, k) * Sf
        for c, w, h in zip(centres, widths, heights):
            dr = np.maximum(dr, h * np.exp(-(((x - c) / w) ** 2)))
        counts["drusen"] = k
    rpe_top = bruch - rpe_th - dr
    lift = np.zeros(S, np.float32)
    if f.rd:
        xr, wr, H = rng.uniform(0.25, 0.75) * Sf, rng.uniform(0.15, 0.25) * Sf, rng.uniform(0.05, 0.1) * Sf
        lift = H * np.clip(1.0 - ((x - xr) / wr) ** 2, 0.0, None) ** 0.7
    rbot = rpe_top - lift
    ilm = rbot - T
    ch = (rng.uniform(0.03, 0.05) if f.myopia else rng.uniform(0.1, 0.14)) * Sf
    ch_bot = bruch + ch

    # reflectivity per pixel, layer by layer (later layers overwrite earlier ones going down)
    t = (Y - ilm) / T
    inner_u = np.array([0.0, rn, rn + 0.04, 0.6, 0.64, 0.82, 0.86, 1.0], np.float32)
    inner_v = np.array([0.9, 0.8, 0.45, 0.42, 0.62, 0.6, 0.22, 0.22], np.float32)
    u = t / fin
    v = (t - fin) / (1.0 - fin)
    ret = np.where(u < 1.0, np.interp(u, inner_u, inner_v), np.interp(v, _OUTER_T, _OUTER_V)).astype(np.float32)
    chor_tex = 0.34 + 0.12 * smooth_noise(rng, S, max(6, S // 8))
    deep = 0.2 * np.exp(-np.maximum(Y - ch_bot, 0.0) / (0.08 * Sf))
    img = np.full((S, S), 0.03, np.float32)
    img = np.where(Y >= ilm, ret, img)
    img = np.where(Y >= rbot, 0.03, img)  # sub-retinal fluid (only where the retina is lifted)
    img = np.where(Y >= rpe_top, 0.95, img)
    img = np.where(Y >= rpe_top + rpe_th, 0.5, img)  # drusen material under a lifted RPE
    img = np.where(Y >= bruch, chor_tex, img)
    img = np.where(Y >= ch_bot, deep, img)

    # cysts (dark) and hyper-reflective foci (bright)
    g = int(f.grade)
    n_cyst = int(rng.integers(*{0: (0, 1), 1: (0, 1), 2: (1, 4), 3: (3, 7), 4: (5, 10)}[g]))
    n_foci = int(rng.integers(*{0: (0, 1), 1: (3, 7), 2: (4, 9), 3: (6, 13), 4: (6, 13)}[g]))
    size_f = {0: 0.0, 1: 0.0, 2: 0.016, 3: 0.026, 4: 0.034}[g]
    cm, cd = new_mask(S)
    fm, fd = new_mask(S)

    def _in_retina(n: int, spread: float, lo: float, hi: float, centre: float) -> list[tuple[float, float]]:
        xs_ = np.clip(rng.normal(centre, spread, n), 2, S - 3).astype(int)
        ts = rng.uniform(lo, hi, n)
        return [(float(a), float(ilm[a] + b * T[a])) for a, b in zip(xs_, ts)]

    for px, py in _in_retina(n_cyst, 0.12 * Sf, 0.35, 0.7, xf):
        rx = max(1.0, size_f * Sf * rng.uniform(0.6, 1.4))
        ry = rx * rng.uniform(0.6, 1.0)
        cd.ellipse((px - rx, py - ry, px + rx, py + ry), fill=255)
    counts["cysts"] = n_cyst
    if f.rvo:
        k = int(rng.integers(8, 16))
        for px, py in _in_retina(k, 0.06 * Sf, 0.3, 0.8, xf + rvo_side * 0.22 * Sf):
            r = max(1.0, 0.008 * Sf * rng.uniform(0.6, 1.4))
            cd.ellipse((px - r, py - r, px + r, py + r), fill=255)
        counts["rvo_cysts"] = k
    for px, py in _in_retina(n_foci, 0.18 * Sf, 0.15, 0.9, xf):
        r = max(0.7, 0.004 * Sf)
        fd.ellipse((px - r, py - r, px + r, py + r), fill=255)
    counts["foci"] = n_foci
    if g >= 4:  # epiretinal membrane: a bright line floating just above the ILM
        a, b = sorted(rng.uniform(0.1, 0.9, 2) * Sf)
        b = max(b, a + 0.25 * Sf)
        cols = np.arange(int(a), min(int(b), S - 1))
        pts = np.stack([cols, ilm[cols] - 0.015 * Sf - 0.01 * Sf * np.sin(cols / (0.05 * Sf))], 1)
        fd.line(pts.ravel().tolist(), fill=255, width=max(1, int(0.006 * Sf)))
    img = np.where(mask_array(cm) & (Y >= ilm) & (Y < rbot), 0.04, img)
    img = np.maximum(img, mask_array(fm) * np.float32(0.9))

    img = img * speckle(rng, (S, S), 2.5)
    gain = 1.15
    blur = 0.6
    if f.cataract:
        gain, blur = rng.uniform(0.5, 0.65), rng.uniform(1.2, 1.8)
    img = img * gain
    u8 = Image.fromarray(to_uint8(img)).filter(ImageFilter.GaussianBlur(blur))
    img = np.asarray(u8, dtype=np.float32) / 255.0
    img += rng.normal(0.0, 0.05 if f.cataract else 0.02, img.shape).astype(np.float32)
    params = {
        "retina_thickness": float(T0),
        "rnfl_fraction": float(rn),
        "curvature": float(curv),
        "choroid": float(ch),
        "gain": float(gain),
    }
    return OCTResult(gray_to_rgb(to_uint8(img)), f, counts, params)
