"""Procedural colour fundus photographs (and fluorescein angiograms) with controllable findings.

A fundus image is built in layers, every one a vectorised numpy pass or a PIL mask drawn at the
target size: orange-red field with vignetting and choroidal texture -> macula -> optic disc and cup
-> findings (tessellation, atrophy, detachment, drusen, DR lesions) -> the branching vessel tree ->
flame haemorrhages -> cataract haze -> sensor noise. Every finding listed in :class:`Findings` that
is switched on is drawn visibly, so the labels written by the task writers are functions of content.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import ImageDraw

from visionfm.data.synth.render import (
    Branch,
    blend,
    blur_image,
    blur_mask,
    dist_from,
    draw_branches,
    ellipse_polygon,
    grid,
    grow_branch,
    mask_array,
    new_mask,
    smooth_noise,
    soft_disc,
    to_uint8,
)

__all__ = ["Findings", "FundusGeometry", "FundusResult", "sample_geometry", "render_fundus", "render_ffa", "DR_LESIONS"]

# Lesion counts per DR grade: (microaneurysms, haemorrhages, exudates, cotton-wool spots) ranges.
DR_LESIONS: dict[int, tuple[tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int]]] = {
    0: ((0, 0), (0, 0), (0, 0), (0, 0)),
    1: ((3, 6), (0, 0), (0, 0), (0, 0)),
    2: ((6, 12), (3, 6), (4, 10), (0, 0)),
    3: ((10, 18), (10, 18), (10, 20), (2, 4)),
    4: ((10, 18), (12, 22), (12, 24), (3, 6)),
}


@dataclass
class Findings:
    """What a synthetic fundus shows. ``grade`` is the DR grade 0..4 (0 = no DR)."""

    grade: int = 0
    glaucoma: bool = False  # large cup-to-disc ratio
    amd: bool = False  # soft drusen clustered at the macula
    cataract: bool = False  # global blur + haze
    hypertensive: bool = False  # thin, tortuous arteries
    rvo: bool = False  # dilated vein with flame haemorrhages along it
    myopia: bool = False  # tessellated fundus + temporal peripapillary atrophy
    rd: bool = False  # grey elevated detached region with folds


@dataclass
class FundusGeometry:
    size: int
    centre: tuple[float, float]
    radius: float  # radius of the circular field of view
    side: int  # +1: disc right of centre (macula / temporal to the left), -1 mirrored
    disc: tuple[float, float]
    disc_r: float
    cup_ratio: float
    macula: tuple[float, float]
    vessels: list[Branch] = field(default_factory=list)
    rvo_role: str = ""  # the main vein carrying flame haemorrhages, when RVO is shown

    def inside(self, x: np.ndarray, y: np.ndarray, margin: float = 0.97) -> np.ndarray:
        cx, cy = self.centre
        return (x - cx) ** 2 + (y - cy) ** 2 < (margin * self.radius) ** 2


@dataclass
class FundusResult:
    image: np.ndarray  # uint8 [S, S, 3]
    vessel: np.ndarray  # bool [S, S]: exactly the drawn vessel-tree pixels
    artery: np.ndarray
    vein: np.ndarray
    disc: np.ndarray  # bool, the optic disc (hard edge at disc_r)
    lesion: np.ndarray  # bool, drawn lesions (DR lesions, drusen, flame haemorrhages)
    fov: np.ndarray  # bool, the circular field of view
    geometry: FundusGeometry
    findings: Findings
    counts: dict[str, int]
    params: dict[str, float]


def _mirror(angle: float, curl: float, side: int) -> tuple[float, float]:
    """Angles are specified with temporal = +x; mirror them when temporal is -x."""
    if side > 0:  # disc right of centre: temporal points to -x
        return math.pi - angle, -curl
    return angle, curl


def sample_geometry(rng: np.random.Generator, size: int, findings: Findings, cup_ratio: float | None = None,
                    disc_scale: float = 1.0) -> FundusGeometry:
    S = float(size)
    c = S / 2.0 + rng.uniform(-0.01, 0.01, 2) * S
    side = 1 if rng.random() < 0.5 else -1
    disc = (c[0] + side * rng.uniform(0.17, 0.22) * S, c[1] + rng.uniform(-0.04, 0.04) * S)
    disc_r = rng.uniform(0.06, 0.08) * S * float(disc_scale)
    if cup_ratio is None:
        cup_ratio = rng.uniform(0.65, 0.85) if findings.glaucoma else rng.uniform(0.2, 0.45)
    macula = (disc[0] - side * rng.uniform(0.26, 0.30) * S, disc[1] + rng.uniform(0.0, 0.03) * S)
    geom = FundusGeometry(
        size, (float(c[0]), float(c[1])), 0.47 * S, side, disc, float(disc_r), float(cup_ratio), macula
    )
    geom.vessels = _vessel_tree(rng, geom, findings)
    return geom


def _vessel_tree(rng: np.random.Generator, g: FundusGeometry, f: Findings) -> list[Branch]:
    S = float(g.size)
    step = 0.022 * S
    vein_w = rng.uniform(0.011, 0.014) * S
    art_w = vein_w * rng.uniform(0.65, 0.8)
    tort = 0.0
    if f.hypertensive:
        art_w *= 0.5
        tort = 0.3
    out: list[Branch] = []
    # (role, canonical angle, curl per step, steps): temporal arcades sweep around the macula.
    arcades = (
        ("superotemporal", -1.25, 0.05, 30),
        ("inferotemporal", 1.25, -0.05, 30),
        ("superonasal", -2.2, -0.01, 20),
        ("inferonasal", 2.2, 0.01, 20),
    )
    g.rvo_role = ("superotemporal", "inferotemporal")[int(rng.integers(2))] if f.rvo else ""
    for role, a0, curl, steps in arcades:
        for kind, sep in ((1, 0.05), (0, -0.05)):
            a, cu = _mirror(a0 + sep + rng.normal(0, 0.08), curl, g.side)
            start = (g.disc[0] + 0.3 * g.disc_r * math.cos(a), g.disc[1] + 0.3 * g.disc_r * math.sin(a))
            w = vein_w if kind else art_w
            if kind == 1 and role == g.rvo_role:
                w *= 1.3  # the occluded vein is dilated
            grow_branch(
                rng,
                start,
                a,
                steps=steps,
                step=step,
                width=w,
                kind=kind,
                depth=2,
                curl=cu * rng.uniform(0.8, 1.2),
                wiggle=0.06,
                inside=g.inside,
                out=out,
                tortuosity=tort if kind == 0 else 0.0,
                role=role,
            )
    for sgn in (-1.0, 1.0):  # small macular twigs
        a, cu = _mirror(sgn * rng.uniform(0.15, 0.45), 0.0, g.side)
        grow_branch(rng, g.disc, a, steps=6, step=step, width=art_w * 0.6, kind=0, depth=0, curl=cu, wiggle=0.1,
                    inside=g.inside, out=out, tortuosity=tort)
    return out


def _scatter(rng: np.random.Generator, n: int, centre: tuple[float, float], spread: float, g: FundusGeometry,
             avoid_disc: float = 1.6) -> np.ndarray:
    """Up to ``n`` points ``[k, 2]`` around ``centre`` (Gaussian, std ``spread``) in the field, off the disc."""
    if n <= 0:
        return np.zeros((0, 2), np.float32)
    cand = rng.normal(0.0, spread, (3 * n + 4, 2)) + np.asarray(centre)
    ok = g.inside(cand[:, 0], cand[:, 1], 0.85)
    ok &= (cand[:, 0] - g.disc[0]) ** 2 + (cand[:, 1] - g.disc[1]) ** 2 > (avoid_disc * g.disc_r) ** 2
    return cand[ok][:n].astype(np.float32)


def _dots(draw: ImageDraw.ImageDraw, pts: np.ndarray, radii: np.ndarray) -> None:
    for (x, y), r in zip(pts.tolist(), radii.tolist()):
        r = max(r, 0.6)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=255)


def render_fundus(
    rng: np.random.Generator,
    size: int,
    findings: Findings | None = None,
    *,
    cup_ratio: float | None = None,
    noise: float = 0.012,
    disc_scale: float = 1.0,
) -> FundusResult:
    """Render one colour fundus photograph showing ``findings``; returns the image and its masks.

    ``disc_scale`` enlarges the optic disc (and with it the cup) beyond its natural 6-8 % of the image
    width; only the forecasting task uses it, so the cup-to-disc ratio is visible at small sizes.
    """
    f = findings or Findings()
    S = int(size)
    g = sample_geometry(rng, S, f, cup_ratio, disc_scale)
    xs, ys = grid(S)
    cx, cy = g.centre
    R = g.radius
    counts: dict[str, int] = {}

    d0 = dist_from(S, cx, cy)
    fov_alpha = soft_disc(d0, R, 1.5)
    pig = rng.uniform(0.8, 1.1)
    base = np.array([rng.uniform(0.78, 0.92), rng.uniform(0.30, 0.40), rng.uniform(0.10, 0.17)], np.float32) * pig
    shade = (1.0 - 0.45 * (d0 / R) ** 2) * (1.0 + 0.06 * smooth_noise(rng, S, 6))
    img = shade[..., None] * base

    tess = 0.0
    if f.myopia:  # tigroid pattern: dark network along zero crossings of band-limited noise
        n = smooth_noise(rng, S, max(6, S // 9))
        tess = rng.uniform(0.22, 0.3)
        img *= (1.0 - tess * np.exp(-((n / 0.25) ** 2)))[..., None]

    dm = dist_from(S, *g.macula)
    mac_depth = rng.uniform(0.25, 0.38)
    img *= (1.0 - mac_depth * np.exp(-((dm / (0.09 * S)) ** 2)) - 0.12 * np.exp(-((dm / (0.02 * S)) ** 2)))[..., None]

    dd = dist_from(S, *g.disc)
    if f.myopia:  # temporal peripapillary atrophy crescent
        temporal = -g.side
        cosang = (xs - g.disc[0]) * temporal / np.maximum(dd, 1e-3)
        outer = g.disc_r * rng.uniform(1.5, 1.8)
        ppa = ((dd < outer) & (cosang > 0.25)).astype(np.float32)
        blend(img, ppa, shade[..., None] * np.array([0.95, 0.84, 0.68], np.float32), 0.85)
    disc_alpha = soft_disc(dd, g.disc_r, 1.5)
    blend(img, disc_alpha, np.array([0.96, 0.62, 0.42], np.float32) * rng.uniform(0.95, 1.04))
    cup_c = (g.disc[0] - g.side * 0.1 * g.disc_r, g.disc[1])
    cup_alpha = soft_disc(dist_from(S, *cup_c), g.cup_ratio * g.disc_r, 2.0)
    blend(img, cup_alpha, np.array([1.0, 0.95, 0.86], np.float32))

    if f.rd:  # grey elevated region reaching in from the periphery, with folds
        rr = rng.uniform(0.22, 0.27) * S
        for phi in rng.uniform(0, 2 * np.pi, 16):  # keep the disc and the macula visible
            rc = (cx + 0.68 * R * math.cos(phi), cy + 0.68 * R * math.sin(phi))
            if (math.dist(rc, g.disc) > rr + 0.04 * S + 1.2 * g.disc_r
                    and math.dist(rc, g.macula) > rr + 0.06 * S):
                break
        dr = dist_from(S, *rc) + 0.03 * S * smooth_noise(rng, S, 5)
        alpha = soft_disc(dr, rr, 3.0) * fov_alpha
        beta = phi + np.pi / 2
        along = xs * math.cos(beta) + ys * math.sin(beta)
        folds = 0.86 + 0.14 * np.sin(along * (2 * np.pi / (0.05 * S)) + 2.0 * dr / rr)
        grey = np.array([0.62, 0.6, 0.6], np.float32) * (0.75 + 0.25 * shade)[..., None] * folds[..., None]
        blend(img, alpha, grey, 0.85)

    lesion_img, lesion_draw = new_mask(S)
    if f.amd:  # soft drusen at the macula
        k = int(rng.integers(10, 26))
        pts = _scatter(rng, k, g.macula, 0.06 * S, g)
        m, d = new_mask(S)
        _dots(d, pts, rng.uniform(0.006, 0.016, len(pts)) * S)
        lesion_draw.bitmap((0, 0), m, fill=255)
        blend(img, blur_mask(m, 0.004 * S), np.array([0.96, 0.86, 0.5], np.float32), 0.9)
        counts["drusen"] = len(pts)

    ma_r, h_r, ex_r, cw_r = DR_LESIONS[int(f.grade)]
    pole = ((g.disc[0] + g.macula[0]) / 2, (g.disc[1] + g.macula[1]) / 2)
    n_ex = int(rng.integers(ex_r[0], ex_r[1] + 1))
    if n_ex:
        m, d = new_mask(S)
        pts = _scatter(rng, n_ex, g.macula, 0.14 * S, g)
        _dots(d, pts, rng.uniform(0.005, 0.012, len(pts)) * S)
        lesion_draw.bitmap((0, 0), m, fill=255)
        blend(img, mask_array(m).astype(np.float32), np.array([0.98, 0.9, 0.38], np.float32))
        counts["exudates"] = len(pts)
    n_cw = int(rng.integers(cw_r[0], cw_r[1] + 1))
    if n_cw:
        m, d = new_mask(S)
        pts = _scatter(rng, n_cw, pole, 0.2 * S, g)
        _dots(d, pts, rng.uniform(0.015, 0.028, len(pts)) * S)
        soft = blur_mask(m, 0.006 * S)
        lesion_draw.bitmap((0, 0), m, fill=255)
        blend(img, soft, np.array([0.95, 0.92, 0.86], np.float32), 0.9)
        counts["cotton_wool"] = len(pts)
    n_ma = int(rng.integers(ma_r[0], ma_r[1] + 1))
    n_h = int(rng.integers(h_r[0], h_r[1] + 1))
    if n_ma or n_h or f.grade >= 4:
        m, d = new_mask(S)
        pts = _scatter(rng, n_ma, pole, 0.2 * S, g)
        _dots(d, pts, rng.uniform(0.005, 0.008, len(pts)) * S)
        counts["microaneurysms"] = len(pts)
        pts = _scatter(rng, n_h, pole, 0.24 * S, g)
        _dots(d, pts, rng.uniform(0.010, 0.022, len(pts)) * S)
        counts["haemorrhages"] = len(pts)
        if f.grade >= 4:  # neovascular tufts at the disc and a pre-retinal haemorrhage
            nv: list[Branch] = []
            for _ in range(int(rng.integers(3, 6))):
                a = rng.uniform(0, 2 * np.pi)
                st = (g.disc[0] + 1.2 * g.disc_r * math.cos(a), g.disc[1] + 1.2 * g.disc_r * math.sin(a))
                grow_branch(rng, st, a, steps=10, step=0.012 * S, width=max(1.0, 0.004 * S), kind=0, depth=1, curl=0.0,
                            wiggle=0.9, inside=g.inside, out=nv, branch_prob=0.3)
            draw_branches(d, nv)
            counts["neovascular"] = len(nv)
            if rng.random() < 0.7:
                a = rng.uniform(0, 2 * np.pi)
                pc = (g.disc[0] + 2.5 * g.disc_r * math.cos(a), g.disc[1] + 2.5 * g.disc_r * math.sin(a))
                rx, ry = rng.uniform(0.04, 0.07) * S, rng.uniform(0.03, 0.05) * S
                d.chord((pc[0] - rx, pc[1] - ry, pc[0] + rx, pc[1] + ry), 0, 180, fill=255)
                counts["preretinal"] = 1
        lesion_draw.bitmap((0, 0), m, fill=255)
        red = mask_array(m).astype(np.float32)
        blend(img, red, np.array([0.5, 0.06, 0.04], np.float32) * (0.7 + 0.3 * shade)[..., None])

    veins = [b for b in g.vessels if b.kind == 1]
    arts = [b for b in g.vessels if b.kind == 0]
    vm, vd = new_mask(S)
    draw_branches(vd, veins)
    am, ad = new_mask(S)
    draw_branches(ad, arts)
    fully_visible = d0 < R - 1.0  # where the field-of-view alpha is 1: vessels are clipped here
    vein = mask_array(vm) & fully_visible
    artery = mask_array(am) & ~vein & fully_visible
    vshade = (0.65 + 0.35 * shade)[..., None]
    vcol = np.array([0.52, 0.1, 0.07], np.float32) * rng.uniform(0.9, 1.05)
    acol = np.array([0.74, 0.2, 0.12], np.float32) * rng.uniform(0.9, 1.05)
    img = np.where(vein[..., None], vcol * vshade, img)
    img = np.where(artery[..., None], acol * vshade, img)
    vessel = vein | artery

    if f.rvo:  # flame haemorrhages along one main vein
        mains = [b for b in veins if b.role == g.rvo_role and b.depth == 2]
        b = mains[int(rng.integers(len(mains)))] if mains else max(veins, key=Branch.length)
        pts = b.points
        k = int(rng.integers(14, 26))
        idx = rng.integers(min(2, len(pts) - 1), len(pts), k)
        m, d = new_mask(S)
        for i, off, ln in zip(idx.tolist(), rng.normal(0, 1.5, k).tolist(), rng.uniform(0.015, 0.03, k).tolist()):
            j0, j1 = max(i - 1, 0), min(i + 1, len(pts) - 1)
            t = pts[j1] - pts[j0]
            ang = math.atan2(float(t[1]), float(t[0])) if (t != 0).any() else 0.0
            px = float(pts[i, 0]) - math.sin(ang) * off * b.width
            py = float(pts[i, 1]) + math.cos(ang) * off * b.width
            d.polygon(ellipse_polygon(px, py, ln * S, 0.006 * S + 0.5, ang + rng.normal(0, 0.2)), fill=255)
        lesion_draw.bitmap((0, 0), m, fill=255)
        blend(img, mask_array(m).astype(np.float32), np.array([0.55, 0.05, 0.04], np.float32) * vshade)
        counts["flame_haemorrhages"] = k

    haze = 0.0
    if f.cataract:
        img = blur_image(img, rng.uniform(0.010, 0.018) * S)
        haze = rng.uniform(0.35, 0.55)
        tint = np.array([0.72, 0.64, 0.56], np.float32) * (0.6 + 0.4 * shade)[..., None]
        blend(img, np.full((S, S), haze, np.float32), tint)

    if noise > 0:
        img += rng.normal(0.0, noise, img.shape).astype(np.float32)
    img *= fov_alpha[..., None]
    lesion = mask_array(lesion_img)
    fov = d0 < R
    params = {
        "pigmentation": float(pig),
        "cup_ratio": g.cup_ratio,
        "disc_r": g.disc_r,
        "vein_width": float(np.mean([b.width for b in veins if b.depth == 2] or [0.0])),
        "artery_width": float(np.mean([b.width for b in arts if b.depth == 2] or [0.0])),
        "tortuosity": 0.3 if f.hypertensive else 0.0,
        "haze": float(haze),
        "tessellation": float(tess),
        "macula_depth": float(mac_depth),
    }
    return FundusResult(to_uint8(img), vessel, artery, vein, dd <= g.disc_r, lesion, fov, g, f, counts, params)


def render_ffa(rng: np.random.Generator, size: int, findings: Findings | None = None) -> np.ndarray:
    """Fluorescein angiogram: grey mottled choroid, bright vessels and disc, dark foveal zone (uint8 RGB)."""
    f = findings or Findings()
    S = int(size)
    g = sample_geometry(rng, S, f)
    d0 = dist_from(S, *g.centre)
    fov_alpha = soft_disc(d0, g.radius, 1.5)
    level = rng.uniform(0.14, 0.24)
    shade = 1.0 - 0.4 * (d0 / g.radius) ** 2
    img = level * shade * (1.0 + 0.18 * smooth_noise(rng, S, max(6, S // 10)))
    dm = dist_from(S, *g.macula)
    img *= 1.0 - 0.6 * np.exp(-((dm / (0.05 * S)) ** 2))
    dd = dist_from(S, *g.disc)
    img += soft_disc(dd, g.disc_r, 2.0) * (rng.uniform(0.5, 0.7) - img)
    vm, vd = new_mask(S)
    draw_branches(vd, [b for b in g.vessels if b.kind == 1], fill=200)
    draw_branches(vd, [b for b in g.vessels if b.kind == 0], fill=255)
    v = np.asarray(vm, dtype=np.float32) / 255.0
    img = np.maximum(img, v * rng.uniform(0.75, 0.95) * (0.6 + 0.4 * shade))
    if f.grade > 0:  # leaking microaneurysms: bright dots
        m, d = new_mask(S)
        pts = _scatter(rng, 4 * f.grade + 2, g.macula, 0.15 * S, g)
        _dots(d, pts, rng.uniform(0.004, 0.01, len(pts)) * S)
        img = np.maximum(img, blur_mask(m, 0.004 * S) * 0.9)
    img += rng.normal(0.0, 0.015, img.shape).astype(np.float32)
    img = np.clip(img * fov_alpha, 0, 1)
    u8 = to_uint8(img)
    return np.repeat(u8[..., None], 3, axis=2)
