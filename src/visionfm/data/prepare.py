"""One-time down-sizing of a pretraining image tree (``visionfm prepare``).

Pretraining decodes every image and cuts two 224-px crops out of it each epoch. On full-size fundus
photographs (1024-4000 px) nearly all of that work is spent decoding and resampling pixels the crops
then throw away: ~20 ms per 1024-px JPEG per core, ~63 ms at 2048 px. :func:`prepare_images` does the
decode and the down-sizing once and writes a tree that ``visionfm pretrain --data_path DST`` reads
unchanged::

    SRC/<ModalityFolder>/**/<image>  ->  DST/<CanonicalModality>/**/<image stem>.<jpg|png|webp>

Discovery is exactly :class:`~visionfm.data.layouts.PretrainImages` (aliases such as ``Silt-Lamp``
become the canonical ``SlitLamp`` folder, nested folders are kept). When one modality has several
source folders (``SlitLamp`` and ``Silt-Lamp``), each keeps its own sub-folder under the canonical
one, so file names cannot clash; two sources that would still share an output name (``a.png`` and
``a.jpg``) keep their old extension in the new name (``a.png.jpg``, ``a.jpg.jpg``).

Size rule (aspect ratio kept, never upscaled):

* default ``short_side=448`` (2 x 224): the smallest global crop of ``RandomResizedCrop(224,
  scale=(0.32, 1), ratio=(0.8, 1.2))`` covers 32 % of the image area, i.e. at least
  ``sqrt(0.32 / 1.2) * 448 = 231`` px on its shorter side, so every global crop is still *down*-sampled
  to 224 and loses nothing that the crop from the full-size image would have kept. (Local 96-px crops
  at scale 0.05 keep >= 87 px, i.e. at most a 1.1x upsample.) Use a larger ``short_side`` for a larger
  ``--global_crops_size``: ``short_side >= 2 * input_size`` is the rule of thumb.
* ``max_side=N``: the longer side becomes ``N`` instead.

Resampling: JPEG sources are decoded at reduced DCT scale (``Image.draft``) down to no less than twice
the target size, then ``Image.resize(LANCZOS, reducing_gap=3)``, which box-reduces by an integer
factor (``Image.reduce``) before the final Lanczos pass, as ``Image.thumbnail`` does; the result is
visually indistinguishable from a full Lanczos resize at a fraction of the cost. Outputs are always
8-bit RGB (grayscale modalities such as OCT are stored as RGB for simplicity; pretraining converts to
RGB on load anyway), JPEG quality 95 by default; EXIF orientation is ignored, as the image loader does.

Resumable: an output that exists and is at least as new as its source is skipped unless
``overwrite``; each output is written to a temporary file in its folder and moved into place with
``os.replace``, so an interrupted run leaves only complete files (temporaries are hidden and ignored
by the loaders). ``DST/prepare.json`` records the source, the settings, per-modality counts and
the corrupt files; a rerun with different settings into the same folder is refused unless
``overwrite`` (it would otherwise mix two sizes).
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from PIL import Image, features

from visionfm.data.images import _to_rgb, list_subdirs
from visionfm.data.layouts.pretrain import PretrainImages
from visionfm.data.modalities import MODALITY_NAMES, canonical_modality
from visionfm.errors import ConfigError, DataFormatError
from visionfm.io.atomic import atomic_path, save_json_atomic

__all__ = ["DEFAULT_SHORT_SIDE", "FORMATS", "PrepareSettings", "prepare_images", "target_size"]

DEFAULT_SHORT_SIDE = 448  # 2 x 224, see the module docstring
FORMATS: dict[str, str] = {"jpeg": ".jpg", "png": ".png", "webp": ".webp"}
_PIL_FORMAT = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}
_SETTING_KEYS = ("short_side", "max_side", "format", "quality")  # those that change the output pixels
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, Image.DecompressionBombError)


@dataclass(frozen=True)
class PrepareSettings:
    """How outputs are sized and encoded (exactly one of ``short_side`` / ``max_side`` is set)."""

    short_side: int | None
    max_side: int | None
    format: str
    quality: int


def target_size(width: int, height: int, short_side: int | None = None, max_side: int | None = None) -> tuple[int, int]:
    """Output ``(width, height)``: aspect ratio kept, never larger than the input, sides >= 1.

    ``short_side`` scales the shorter side to that length, ``max_side`` the longer one; the input
    size is returned unchanged when it is already at most that large.
    """
    if (short_side is None) == (max_side is None):
        raise ConfigError("give exactly one of short_side and max_side")
    ref = min(width, height) if short_side is not None else max(width, height)
    limit = short_side if short_side is not None else max_side
    assert limit is not None
    if ref <= limit:
        return width, height
    scale = limit / ref
    return max(1, round(width * scale)), max(1, round(height * scale))


# --------------------------------------------------------------------------------------------------
# One image (runs in worker processes)


def _convert_one(src: str, dst: str, settings: PrepareSettings) -> tuple[str, int, int, str]:
    """Decode, down-size and write one image.

    Returns ``(status, source_pixels, output_pixels, message)`` with status ``"written"``,
    ``"corrupt"`` (the source cannot be decoded; message says why) or ``"write_error"``.
    """
    try:
        with Image.open(src) as img:
            w, h = img.size
            tw, th = target_size(w, h, settings.short_side, settings.max_side)
            if (tw, th) != (w, h) and img.format == "JPEG":
                # DCT-domain reduction by 1/2, 1/4 or 1/8, never below twice the final size.
                img.draft(None, (2 * tw, 2 * th))
            img.load()  # full decode: a truncated file fails here
            out = _to_rgb(img)
        if out.size != (tw, th):
            out = out.resize((tw, th), Image.Resampling.LANCZOS, reducing_gap=3.0)
    except _DECODE_ERRORS as exc:
        reason = "unknown format or corrupt header" if isinstance(exc, Image.UnidentifiedImageError) else (
            f"{type(exc).__name__}: {exc}")
        return "corrupt", 0, 0, reason
    params: dict[str, Any] = {}
    if settings.format in ("jpeg", "webp"):
        params["quality"] = settings.quality
    try:
        with atomic_path(dst) as tmp:
            out.save(tmp, format=_PIL_FORMAT[settings.format], **params)
    except OSError as exc:
        return "write_error", w * h, 0, f"cannot write output ({exc.strerror or exc})"
    return "written", w * h, tw * th, ""


def _convert_job(job: tuple[int, str, str, PrepareSettings]) -> tuple[int, tuple[str, int, int, str]]:
    index, src, dst, settings = job
    return index, _convert_one(src, dst, settings)


# --------------------------------------------------------------------------------------------------
# Planning


def _resolve_modalities(src_root: Path, modality: str | Sequence[str]) -> tuple[list[str], bool]:
    """Canonical modality names to prepare and whether they came from ``"all"``."""
    names = [m.strip() for m in modality.split(",")] if isinstance(modality, str) else [str(m) for m in modality]
    names = [m for m in names if m]
    if [m.lower() for m in names] == ["all"]:
        present: list[str] = []
        for d in list_subdirs(src_root):
            try:
                present.append(canonical_modality(d.name))
            except ValueError:
                continue
        present = list(dict.fromkeys(present))
        if not present:
            found = ", ".join(d.name for d in list_subdirs(src_root)) or "none"
            raise DataFormatError(
                f"no modality folder found (expected any of {', '.join(MODALITY_NAMES)} or an accepted "
                f"spelling); sub-folders found: {found}",
                src_root,
            )
        return present, True
    if not names:
        raise ConfigError(f"no modality given; use a comma list of {', '.join(MODALITY_NAMES)} or 'all'")
    try:
        return list(dict.fromkeys(canonical_modality(m) for m in names)), False
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _plan(src_root: Path, dst_root: Path, modalities: list[str], from_all: bool, ext: str) -> tuple[
    list[tuple[Path, Path, str]], list[str]
]:
    """``[(source, output, modality)]`` in discovery order, plus the modalities left out as empty."""
    planned: list[tuple[Path, Path, str]] = []
    empty: list[str] = []
    for modality in modalities:
        try:
            images = PretrainImages(src_root, [modality])
        except DataFormatError:
            if from_all:  # a modality folder without images: nothing to prepare, not an error
                empty.append(modality)
                continue
            raise
        folders = images.folders[modality]
        for folder in folders:
            inside = dst_root == folder or folder in dst_root.parents
            if inside:
                raise ConfigError(f"--dst_path {dst_root} lies inside the source modality folder {folder}; "
                                  "choose a destination outside it")
        groups: dict[Path, list[Path]] = defaultdict(list)
        base = dst_root / modality
        for src, _ in images.samples:
            folder = next(f for f in folders if f in src.parents)
            rel = src.relative_to(folder)
            out_dir = base / folder.name if len(folders) > 1 else base
            groups[(out_dir / rel).with_suffix(ext)].append(src)
        for out, sources in groups.items():
            if len(sources) == 1:
                planned.append((sources[0], out, modality))
                continue
            for src in sources:  # a.png + a.jpg -> a.png.jpg, a.jpg.jpg
                planned.append((src, out.with_name(src.name + ext), modality))
    seen: dict[Path, Path] = {}
    for src, out, _ in planned:
        if out in seen:
            raise DataFormatError(f"{seen[out]} and {src} would both be written to {out}; rename one of them",
                                  src_root)
        seen[out] = src
    return planned, empty


def _up_to_date(src: Path, out: Path) -> bool:
    try:
        return out.stat().st_mtime >= src.stat().st_mtime
    except FileNotFoundError:
        return False


def _check_previous_settings(dst_root: Path, settings: PrepareSettings) -> None:
    import json

    path = dst_root / "prepare.json"
    if not path.is_file():
        return
    try:
        previous = json.loads(path.read_text(encoding="utf-8")).get("settings", {})
    except (OSError, ValueError, AttributeError):
        return  # unreadable record: nothing to compare with
    now = asdict(settings)
    changed = [k for k in _SETTING_KEYS if k in previous and previous[k] != now[k]]
    if changed:
        what = ", ".join(f"{k} {previous[k]!r} -> {now[k]!r}" for k in changed)
        raise ConfigError(
            f"{dst_root} was prepared with other settings ({what}); existing outputs would be kept at the old "
            "size. Use --overwrite to redo every image, or another --dst_path"
        )


# --------------------------------------------------------------------------------------------------
# Entry point


def prepare_images(
    data_path: str | os.PathLike[str],
    dst_path: str | os.PathLike[str],
    modality: str | Sequence[str] = "all",
    *,
    short_side: int | None = None,
    max_side: int | None = None,
    format: str = "jpeg",
    quality: int = 95,
    workers: int | None = None,
    overwrite: bool = False,
    on_corrupt: str = "skip",
    progress: bool = False,
) -> dict[str, Any]:
    """Write down-sized copies of a pretraining tree; return (and store as ``DST/prepare.json``) a summary.

    Args:
        data_path: ``SRC`` with one folder per modality (any accepted spelling).
        dst_path: ``DST``; created if missing. Outputs go to ``DST/<CanonicalModality>/...``.
        modality: comma list or sequence of modality names, or ``"all"`` (every modality folder present;
            folders without images are left out and listed under ``empty_modalities``).
        short_side: shorter output side (default :data:`DEFAULT_SHORT_SIDE` when ``max_side`` is unset).
        max_side: longer output side instead; exclusive with ``short_side``.
        format: ``"jpeg"``, ``"png"`` or ``"webp"``.
        quality: 1-100, for JPEG and WebP.
        workers: processes (default ``os.cpu_count()``); 1 converts in this process.
        overwrite: redo images whose output is already up to date.
        on_corrupt: ``"skip"`` reports and counts undecodable sources; ``"fail"`` stops at the first.
        progress: show a tqdm progress bar (on stderr).

    Raises:
        ConfigError: bad arguments, or ``DST`` prepared before with other settings (without ``overwrite``).
        DataFormatError: missing modality folders, a corrupt source with ``on_corrupt="fail"``, an
            output that cannot be written, or two sources that map onto one output.
    """
    src_root = Path(data_path).resolve()
    dst_root = Path(dst_path).resolve()
    if short_side is not None and max_side is not None:
        raise ConfigError("--short_side and --max_side are exclusive; give one of them")
    if short_side is None and max_side is None:
        short_side = DEFAULT_SHORT_SIDE
    for name, value in (("short_side", short_side), ("max_side", max_side)):
        if value is not None and (not isinstance(value, int) or value < 16):
            raise ConfigError(f"--{name} must be an integer >= 16, got {value!r}")
    fmt = str(format).lower()
    fmt = "jpeg" if fmt == "jpg" else fmt
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {format!r}")
    if fmt == "webp" and not features.check("webp"):
        raise ConfigError("this Pillow build cannot write WebP; use --format jpeg or png")
    if not isinstance(quality, int) or not 1 <= quality <= 100:
        raise ConfigError(f"--quality must be an integer in [1, 100], got {quality!r}")
    if on_corrupt not in ("fail", "skip"):
        raise ConfigError(f"--on_corrupt must be 'fail' or 'skip', got {on_corrupt!r}")
    workers = (os.cpu_count() or 1) if workers is None else workers
    if not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"--workers must be an integer >= 1, got {workers!r}")
    if not src_root.is_dir():
        raise DataFormatError("source is not a folder", src_root)
    if dst_root == src_root:
        raise ConfigError("--dst_path must differ from --data_path")
    settings = PrepareSettings(short_side, max_side, fmt, quality)
    if not overwrite:
        _check_previous_settings(dst_root, settings)

    t0 = time.perf_counter()
    modalities, from_all = _resolve_modalities(src_root, modality)
    planned, empty = _plan(src_root, dst_root, modalities, from_all, FORMATS[fmt])
    counts = {m: {"found": 0, "written": 0, "up_to_date": 0, "corrupt": 0} for m in modalities if m not in empty}
    jobs: list[tuple[int, str, str, PrepareSettings]] = []
    for i, (src, out, m) in enumerate(planned):
        counts[m]["found"] += 1
        if not overwrite and _up_to_date(src, out):
            counts[m]["up_to_date"] += 1
        else:
            jobs.append((i, str(src), str(out), settings))
    for d in {Path(j[2]).parent for j in jobs}:
        d.mkdir(parents=True, exist_ok=True)

    corrupt: list[dict[str, str]] = []
    src_pixels = out_pixels = 0
    t_convert = time.perf_counter()

    def record(index: int, result: tuple[str, int, int, str]) -> None:
        nonlocal src_pixels, out_pixels
        status, sp, op, message = result
        src, out, m = planned[index]
        if status == "written":
            counts[m]["written"] += 1
            src_pixels += sp
            out_pixels += op
        elif status == "corrupt":
            if on_corrupt == "fail":
                raise DataFormatError(f"corrupt or unreadable image ({message}); --on_corrupt skip reports "
                                      "it and goes on", src)
            counts[m]["corrupt"] += 1
            corrupt.append({"path": str(src), "modality": m, "error": message})
        else:
            raise DataFormatError(message, out)

    bar = None
    if progress and jobs:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), desc="prepare", unit="img", dynamic_ncols=True, mininterval=1.0, file=sys.stderr)
    try:
        if workers == 1 or len(jobs) <= 1:
            for job in jobs:
                record(*_convert_job(job))
                if bar is not None:
                    bar.update(1)
        else:
            n_proc = min(workers, len(jobs))
            with cf.ProcessPoolExecutor(max_workers=n_proc) as pool:
                pending: set[cf.Future] = set()
                todo = iter(jobs)
                window = n_proc * 8  # bounded queue: a million paths do not become a million futures
                try:
                    while True:
                        for job in todo:
                            pending.add(pool.submit(_convert_job, job))
                            if len(pending) >= window:
                                break
                        if not pending:
                            break
                        done, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                        for fut in done:
                            record(*fut.result())
                            if bar is not None:
                                bar.update(1)
                except BaseException:
                    for fut in pending:
                        fut.cancel()
                    raise
    finally:
        if bar is not None:
            bar.close()
    convert_seconds = time.perf_counter() - t_convert

    written = sum(c["written"] for c in counts.values())
    summary: dict[str, Any] = {
        "source": str(src_root),
        "destination": str(dst_root),
        "modalities": list(counts),
        "empty_modalities": empty,
        "settings": {**asdict(settings), "extension": FORMATS[fmt], "mode": "RGB", "resample": "draft+LANCZOS",
                     "workers": workers, "overwrite": bool(overwrite), "on_corrupt": on_corrupt},
        "counts": counts,
        "total": {k: sum(c[k] for c in counts.values()) for k in ("found", "written", "up_to_date", "corrupt")},
        "corrupt_files": corrupt,
        "seconds": round(time.perf_counter() - t0, 3),
        "convert_seconds": round(convert_seconds, 3),
        "images_per_second": round(written / convert_seconds, 2) if written and convert_seconds > 0 else None,
        "mean_source_pixels": round(src_pixels / written, 1) if written else None,
        "mean_output_pixels": round(out_pixels / written, 1) if written else None,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    dst_root.mkdir(parents=True, exist_ok=True)
    save_json_atomic(summary, dst_root / "prepare.json")
    return summary


def prepare_shards(data_path: str | os.PathLike[str], dst_path: str | os.PathLike[str],
                   modality: str | Sequence[str] = "all", *, shard_size: str | int = "1GB",
                   **options: Any) -> dict[str, Any]:
    """:func:`prepare_images` into ``DST/images`` (JPEG; the resumable step), then the images packed as tar shards
    in the WebDataset layout with ``DST/shards.json`` (:mod:`visionfm.data.shards`); returns the prepare
    summary with the shard index under ``"shards"`` (also recorded in ``DST/images/prepare.json``)."""
    from visionfm.data.shards import pack_shards, parse_size

    size = parse_size(shard_size)
    dst_root = Path(dst_path).resolve()
    options["format"] = "jpeg"
    summary = prepare_images(data_path, dst_root / "images", modality, **options)
    src_root = Path(data_path).resolve()
    modalities, from_all = _resolve_modalities(src_root, modality)
    planned, _ = _plan(src_root, dst_root / "images", modalities, from_all, FORMATS["jpeg"])
    sources: dict[Path, tuple[Path, tuple[int, int] | None]] = {}
    for src, out, _m in planned:
        try:
            with Image.open(src) as im:  # the header only
                sources[out] = (src, im.size)
        except (OSError, ValueError):
            sources[out] = (src, None)
    index = pack_shards(dst_root / "images", dst_root, size, sources)
    summary["shards"] = {k: index[k] for k in ("n_images", "modality_counts")} | {
        "n_shards": len(index["shardlist"]), "index": str(dst_root / "shards.json")}
    save_json_atomic(summary, dst_root / "images" / "prepare.json")
    return summary
