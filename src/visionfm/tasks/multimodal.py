"""Several feature stores as one training set: pooled (the original) or fused per subject.

``--datasets A B ...`` names store folders under ``--data_path``, each the ``--dst_root`` of one
``visionfm extract`` run (``<data_path>/<A>/<dataset>/<split>/pass_<k>/``), possibly of different
modalities and encoders of the same width. Every store of one entry must come from one encoder.

* ``fusion="pooled"`` (reference §3.4): the union of all images; each image is one sample whose
  input is its last-4 CLS tokens concatenated, ``[N, 4·D]``. Training uses every flip-augmented pass.
* ``fusion="concat" | "attention"``: images are grouped per **subject** — the optional third field of
  the vfm label file (kept as ``subject`` in the store's ``index.csv``) or ``--subject_map``; an image
  without one is a subject of its own. Each subject gets one feature vector per modality slot (the
  mean over its images of that modality) and a presence flag, packed as ``[N, M, 4·D + 1]`` (see
  :mod:`visionfm.models.heads.fusion`). Every image of a subject must carry the same labels.
  Training pass ``k`` groups pass ``k mod passes`` of every store, so augmented views are paired.

After training, a ``pooled`` run whose stores all come from ONE encoder (same weights fingerprint),
one modality and one input size is also written as a model folder ``<run>/model/`` (that encoder +
the selected head; see docs/inference.md). Fused runs and runs over several encoders, modalities or
input sizes write none and log why: a fused model predicts from several images of a subject, and a
model folder is a single-image model with one preprocessing.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Protocol, Sequence

import torch
from torch import nn

from visionfm.errors import ConfigError, DataFormatError
from visionfm.reports.summary import summary_from_report

if TYPE_CHECKING:
    from visionfm.config import StoreDecoderConfig

__all__ = [
    "EntrySplit",
    "ModelInputs",
    "SubjectMap",
    "load_entry_split",
    "load_entries",
    "build_inputs",
    "build_fused_model",
    "modality_slots",
    "FUSIONS",
]

log = logging.getLogger("visionfm.multimodal")

FUSIONS = ("pooled", "concat", "attention")
N_LAST_BLOCKS = 4


@dataclass
class EntrySplit:
    """One ``--datasets`` entry's stores of one split (all passes for ``training``)."""

    entry: str
    split: str
    modality: str
    cls: torch.Tensor  # [N, levels, D]
    labels: torch.Tensor  # [N, L]
    rel_paths: list[str]
    subjects: list[str]
    pass_ids: torch.Tensor  # [N] long: which pass a row comes from
    n_passes: int
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.cls.shape[0])

    @property
    def image_ids(self) -> list[str]:
        return [f"{self.entry}/{p}" for p in self.rel_paths]


@dataclass
class ModelInputs:
    """Head inputs of one split: pooled ``x [N, F]`` or packed fused ``x [N, M, F + 1]``."""

    x: torch.Tensor
    labels: torch.Tensor  # [N, L]
    ids: list[str]  # image id (pooled) or subject id (fused), one per row
    members: list[dict[str, list[str]]] | None = None  # fused: modality -> image ids, per row

    def __len__(self) -> int:
        return int(self.x.shape[0])


# -- loading ------------------------------------------------------------------------------------------


def load_entry_split(data_path: str | Path, entry: str, split: str) -> EntrySplit | None:
    """All stores ``<data_path>/<entry>/<dataset>/<split>/pass_*`` (only ``pass_0`` unless ``training``);
    ``None`` when no dataset of the entry has this split."""
    from visionfm.data.features import FeatureStore, identity_mismatches

    root = Path(data_path) / entry
    if not root.is_dir():
        raise ConfigError(f"--datasets {entry}: no folder {root} (expected the --dst_root of a 'visionfm extract' run)")
    stores = []
    pass_ids = []
    n_passes = 1
    for ds in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        sdir = ds / split
        if not sdir.is_dir():
            continue
        passes = sorted((p for p in sdir.glob("pass_*") if p.is_dir() and p.name.split("_")[1].isdigit()),
                        key=lambda p: int(p.name.split("_")[1]))
        if split != "training":
            passes = passes[:1]
        n_passes = max(n_passes, len(passes))
        for k, pdir in enumerate(passes):
            st = FeatureStore.open(pdir, expect=stores[0].meta if stores else None)
            stores.append(st)
            pass_ids.append(torch.full((len(st),), k, dtype=torch.long))
    if not stores:
        return None
    first = stores[0].meta
    for st in stores[1:]:
        diffs = identity_mismatches(st.meta, first)
        if diffs:
            raise ConfigError(f"feature store {st.folder} differs from the other stores of {entry}: {'; '.join(diffs)}")
    widths = {tuple(st.labels.shape[1:]) for st in stores}
    if len(widths) != 1:
        raise DataFormatError(f"--datasets {entry}: stores hold different label counts {sorted(widths)}")
    return EntrySplit(
        entry=entry, split=split, modality=str(first.get("modality") or entry),
        cls=torch.cat([st.cls for st in stores]).float(), labels=torch.cat([st.labels for st in stores]).float(),
        rel_paths=[r["rel_path"] for st in stores for r in st.index],
        subjects=[(r.get("subject") or "").strip() for st in stores for r in st.index],
        pass_ids=torch.cat(pass_ids), n_passes=n_passes, meta=dict(first),
    )


def load_entries(data_path: str | Path, entries: Sequence[str], split: str, embed_dim: int | None) -> list[EntrySplit]:
    """Every entry's stores of ``split`` (entries without that split are left out), checked to share
    the feature width ``embed_dim`` (``--embed_dim``), the CLS levels and the label count."""
    if not entries:
        raise ConfigError("--datasets needs at least one feature-store folder name")
    if len(set(entries)) != len(entries):
        raise ConfigError(f"--datasets lists a folder twice: {list(entries)}")
    parts = [p for p in (load_entry_split(data_path, e, split) for e in entries) if p is not None]
    for p in parts:
        levels, width = int(p.cls.shape[1]), int(p.cls.shape[2])
        if embed_dim is not None and width != int(embed_dim):
            raise ConfigError(f"stores of {p.entry} hold {width}-wide features ({p.meta.get('arch')}), "
                              f"but --embed_dim is {embed_dim}")
        if levels < N_LAST_BLOCKS:
            raise DataFormatError(f"stores of {p.entry} hold {levels} CLS levels; {N_LAST_BLOCKS} are needed")
        if p.labels.shape[1] != parts[0].labels.shape[1]:
            raise DataFormatError(f"{p.entry} has {p.labels.shape[1]} labels per image but {parts[0].entry} has "
                                  f"{parts[0].labels.shape[1]}")
        if width != int(parts[0].cls.shape[2]):
            raise ConfigError(f"{p.entry} features are {width} wide, {parts[0].entry} features "
                              f"{parts[0].cls.shape[2]}: all encoders must share one width")
    return parts


# -- subjects -----------------------------------------------------------------------------------------


def _norm_path(p: str) -> str:
    p = p.strip().replace("\\", "/")
    while p.startswith("./"):
        p = p[2:]
    return p


class SubjectMap:
    """Image path → subject id, read from a CSV with columns ``path,subject``.

    The header may name the path column ``path``, ``image``, ``img_path`` or ``rel_path`` and the
    subject column ``subject`` or ``subject_id``; a file without a header is read as two columns.
    A path matches an image when it equals the store's ``rel_path`` (``<dataset>/<path in the label
    file>``), ``<entry>/<rel_path>``, the path in the label file, or ends with ``/<rel_path>``.
    """

    PATH_COLS = ("path", "image", "img_path", "rel_path", "image_path")
    SUBJECT_COLS = ("subject", "subject_id")

    def __init__(self, mapping: Mapping[str, str], source: str = "subject map") -> None:
        self.source = source
        self.exact = {_norm_path(k): str(v).strip() for k, v in mapping.items()}
        self._suffix: dict[int, dict[str, str | None]] = {}

    @classmethod
    def read(cls, path: str | Path) -> SubjectMap:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"--subject_map {path}: file not found")
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = [r for r in csv.reader(fh) if r and any(c.strip() for c in r)]
        if not rows:
            raise DataFormatError("empty subject map", path)
        head = [c.strip().lower() for c in rows[0]]
        pcol = next((head.index(c) for c in cls.PATH_COLS if c in head), None)
        scol = next((head.index(c) for c in cls.SUBJECT_COLS if c in head), None)
        if pcol is not None and scol is not None:
            body, start = rows[1:], 2
        elif len(head) == 2:
            pcol, scol, body, start = 0, 1, rows, 1
        else:
            raise DataFormatError(f"expected columns path,subject (found {rows[0]})", path, 1)
        mapping: dict[str, str] = {}
        for i, r in enumerate(body, start=start):
            if len(r) <= max(pcol, scol) or not r[pcol].strip() or not r[scol].strip():
                raise DataFormatError(f"row needs an image path and a subject id, found {r}", path, i)
            key = _norm_path(r[pcol])
            if key in mapping and mapping[key] != r[scol].strip():
                raise DataFormatError(f"image {key!r} is mapped to two subjects "
                                      f"({mapping[key]!r}, {r[scol].strip()!r})",
                                      path, i)
            mapping[key] = r[scol].strip()
        return cls(mapping, str(path))

    def _by_suffix(self, depth: int) -> dict[str, str | None]:
        if depth not in self._suffix:
            table: dict[str, str | None] = {}
            for k, v in self.exact.items():
                parts = k.split("/")
                if len(parts) > depth:
                    suf = "/".join(parts[-depth:])
                    table[suf] = v if table.get(suf, v) == v else None  # None: ambiguous suffix
            self._suffix[depth] = table
        return self._suffix[depth]

    def lookup(self, entry: str, rel_path: str) -> str | None:
        rel = _norm_path(rel_path)
        written = rel.split("/", 1)[1] if "/" in rel else rel
        for cand in (f"{entry}/{rel}", rel, written):
            if cand in self.exact:
                return self.exact[cand]
        hit = self._by_suffix(len(rel.split("/"))).get(rel)
        return hit


def modality_slots(parts: Sequence[EntrySplit]) -> list[str]:
    """Sorted distinct modalities of the entries: the fusion slots."""
    return sorted({p.modality for p in parts})


# -- inputs -------------------------------------------------------------------------------------------


def _pool(cls: torch.Tensor) -> torch.Tensor:
    from visionfm.engine.features import pool_tokens

    return pool_tokens(cls, None, N_LAST_BLOCKS, 0)


def _same_labels(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise equality (NaN equals NaN, relative tolerance 1e-6)."""
    both_nan = torch.isnan(a) & torch.isnan(b)
    close = torch.isclose(a, b, rtol=1e-6, atol=1e-6)
    return (both_nan | close).all(dim=1)


def build_inputs(parts: Sequence[EntrySplit], fusion: str, modalities: Sequence[str] | None = None,
                 subject_map: SubjectMap | None = None) -> ModelInputs:
    """Head inputs of one split; see the module docstring.

    Raises:
        DataFormatError: a subject whose images carry different labels (naming it and two images).
        ConfigError: a modality not among ``modalities`` (the training split's slots).
    """
    if not parts:
        raise ValueError("no stores to build inputs from")
    if fusion not in FUSIONS:
        raise ConfigError(f"--fusion {fusion!r}; expected one of {', '.join(FUSIONS)}")
    if fusion == "pooled":
        return ModelInputs(torch.cat([_pool(p.cls) for p in parts]), torch.cat([p.labels for p in parts]),
                           [i for p in parts for i in p.image_ids])
    slots = list(modalities) if modalities is not None else modality_slots(parts)
    for p in parts:
        if p.modality not in slots:
            raise ConfigError(f"{p.entry} holds modality {p.modality!r}, which the model has no slot for "
                              f"(slots: {', '.join(slots)})")
    n_passes = max(p.n_passes for p in parts)
    keys: dict[tuple[int, str], int] = {}
    g_parts, m_parts, f_parts, y_parts, row_ids = [], [], [], [], []
    for p in parts:
        subj = []
        for rel, s in zip(p.rel_paths, p.subjects):
            mapped = subject_map.lookup(p.entry, rel) if subject_map is not None else None
            subj.append(mapped or s or f"image:{p.entry}/{rel}")
        feats = _pool(p.cls)
        slot = slots.index(p.modality)
        ids = p.image_ids
        for k in range(n_passes):
            rows = torch.nonzero(p.pass_ids == (k % p.n_passes)).flatten()
            if rows.numel() == 0:
                continue
            g = [keys.setdefault((k, subj[r]), len(keys)) for r in rows.tolist()]
            g_parts.append(torch.tensor(g, dtype=torch.long))
            m_parts.append(torch.full((len(g),), slot, dtype=torch.long))
            f_parts.append(feats[rows])
            y_parts.append(p.labels[rows])
            row_ids.extend(ids[r] for r in rows.tolist())
    g = torch.cat(g_parts)
    m = torch.cat(m_parts)
    feats = torch.cat(f_parts)
    labels = torch.cat(y_parts)
    n_groups, n_slots, width = len(keys), len(slots), feats.shape[1]
    # labels: the first row of each group is the reference; every other row must agree
    first = torch.full((n_groups,), len(g), dtype=torch.long).scatter_reduce(
        0, g, torch.arange(len(g)), reduce="amin")  # the lowest row index of each group
    ref = labels[first]
    ok = _same_labels(labels, ref[g])
    if not bool(ok.all()):
        bad = int(torch.nonzero(~ok).flatten()[0])
        other = int(first[g[bad]])
        subject = next(s for (_, s), gi in keys.items() if gi == int(g[bad]))
        fmt = lambda t: ",".join(f"{v:g}" for v in t.tolist())  # noqa: E731
        raise DataFormatError(f"subject {subject!r}: images carry different labels — {row_ids[other]} has "
                              f"[{fmt(labels[other])}] but {row_ids[bad]} has [{fmt(labels[bad])}]; "
                              "every image of a subject must have the same labels for fusion")
    sums = torch.zeros(n_groups, n_slots, width).index_put_((g, m), feats, accumulate=True)
    counts = torch.zeros(n_groups, n_slots).index_put_((g, m), torch.ones(len(g)), accumulate=True)
    present = counts > 0
    from visionfm.models.heads.fusion import pack_modalities

    x = pack_modalities(sums / counts.clamp(min=1)[..., None], present)
    subjects = [""] * n_groups
    members: list[dict[str, list[str]]] = [dict() for _ in range(n_groups)]
    for (_, s), gi in keys.items():
        subjects[gi] = s.removeprefix("image:")
    for gi, mi, rid in zip(g.tolist(), m.tolist(), row_ids):
        members[gi].setdefault(slots[mi], []).append(rid)
    return ModelInputs(x, ref, subjects, members)


def build_fused_model(kind: str, fusion: str, n_slots: int, feat_dim: int, n_out: int,
                      bn_momentum: float = 0.1) -> nn.Module:
    """``kind="cls"`` → ClsHead, ``"reg"`` → RegHead; behind a fusion module unless ``fusion="pooled"``."""
    from visionfm.models.heads.cls import ClsHead
    from visionfm.models.heads.fusion import AttentionFusion, ConcatFusion, FusedModel
    from visionfm.models.heads.reg import RegHead

    def head(dim: int) -> nn.Module:
        if kind == "cls":
            return ClsHead(dim, n_out, layers=3, bn_momentum=bn_momentum)
        if kind == "reg":
            return RegHead(dim, n_out, bn_momentum=bn_momentum)
        raise ValueError(f"unknown head kind {kind!r}")

    if fusion == "pooled":
        return head(feat_dim)
    fuse: nn.Module
    if fusion == "concat":
        fuse = ConcatFusion(n_slots, feat_dim)
    elif fusion == "attention":
        fuse = AttentionFusion(n_slots, feat_dim)
    else:
        raise ConfigError(f"--fusion {fusion!r}; expected one of {', '.join(FUSIONS)}")
    return FusedModel(fuse, head(fuse.out_dim))  # type: ignore[arg-type]


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch: int = 4096) -> torch.Tensor:
    """Raw outputs ``[N, C]`` of ``model`` (eval mode) on CPU float32."""
    model.eval()
    dev = next(model.parameters()).device
    outs = [model(x[i:i + batch].to(dev)).float().cpu() for i in range(0, len(x), batch)]
    return torch.cat(outs) if outs else torch.zeros(0, 1)


def read_fused_inputs(opts: StoreDecoderConfig, roles: Sequence[str], modalities: Sequence[str] | None,
                      embed_dim: int | None) -> tuple[dict[str, ModelInputs | None], list[str], dict[str, Any]]:
    """Load the ``roles`` (``train``/``val``/``test``) of ``--datasets`` and build their inputs.

    Returns ``(inputs per role, modality slots, info)`` with ``info`` describing the entries
    (modality, encoder arch and weights fingerprint, sample counts) for checkpoints and reports.
    """
    split_of = {"train": "training", "val": "val", "test": "test"}
    subject_map = SubjectMap.read(opts.subject_map) if getattr(opts, "subject_map", None) else None
    if subject_map is not None and opts.fusion == "pooled":
        log.warning("--subject_map has no effect with --fusion pooled (every image is its own sample)")
    loaded = {r: load_entries(opts.data_path, opts.datasets, split_of[r], embed_dim) for r in roles}
    found = [p for r in roles for p in loaded[r]]
    if not found:
        raise DataFormatError(f"no feature stores of {', '.join(opts.datasets)} under {opts.data_path}")
    base = loaded.get("train") or loaded.get("test") or found
    slots = list(modalities) if modalities is not None else modality_slots(base)
    out: dict[str, ModelInputs | None] = {}
    for r in roles:
        out[r] = build_inputs(loaded[r], opts.fusion, slots, subject_map) if loaded[r] else None
    info = {
        "encoder": shared_encoder(found),
        "entries": {p.entry: {"modality": p.modality, "arch": p.meta.get("arch"),
                              "weights_fingerprint": str(p.meta.get("weights_fingerprint") or "")[:16],
                              "input_size": p.meta.get("input_size")} for p in found},
        "embed_dim": int(found[0].cls.shape[2]),  # the stores' width (checked equal across them)
        "n_samples": {r: (len(v) if v is not None else 0) for r, v in out.items()},
        "n_images": {r: sum(len(p) for p in loaded[r]) for r in roles},
    }
    return out, slots, info


def shared_encoder(parts: Sequence[EntrySplit]) -> dict[str, Any]:
    """The one encoder (source, fingerprint, arch, sizes, modality, seed) behind every store of ``parts``,
    or ``{"mismatch": reason}`` when the stores differ in encoder weights, modality or input size."""
    keys = ("weights_fingerprint", "modality", "input_size", "arch", "patch_size")
    first = parts[0].meta if parts else {}
    for p in parts[1:]:
        for k in keys:
            if p.meta.get(k) != first.get(k):
                what = {"weights_fingerprint": "encoder weights"}.get(k, k.replace("_", " "))
                return {"mismatch": f"the stores differ in {what} ({parts[0].entry}: {first.get(k)!s:.16}, "
                                    f"{p.entry}: {p.meta.get(k)!s:.16})"}
    out = {k: first.get(k) for k in (*keys, "weights_source", "checkpoint_key", "seed")}
    return out


def package_multi_store_run(opts: StoreDecoderConfig, spec: Any, run_dir: Path, model: nn.Module, meta: Mapping[str,
                                                                                                                Any],
                            metrics: Mapping[str, Any] | None) -> Path | None:
    """``<run>/model/`` for a pooled single-encoder run (see the module docstring); ``None`` with a warning
    saying why when no single-image model can be written."""
    from visionfm.engine.features import weights_fingerprint
    from visionfm.packaging import encoder_for_package, model_folder_from_training

    if opts.fusion != "pooled":
        log.warning("model folder not written: --fusion %s combines the images of a subject (per modality) into "
                    "one prediction, and a model folder is a single-image model", opts.fusion)
        return None
    enc = dict((meta.get("data") or {}).get("encoder") or {})
    if "mismatch" in enc:
        log.warning("model folder not written: %s; a model folder holds one encoder and one preprocessing",
                    enc["mismatch"])
        return None
    src = enc.get("weights_source")
    if not src or not (str(src) == "random" or Path(str(src)).exists()):
        log.warning("model folder not written: the stores' encoder weights (%s) are not available here", src)
        return None
    seed = enc.get("seed")
    encoder = encoder_for_package(str(src), str(enc.get("arch")), enc.get("checkpoint_key"), int(enc["patch_size"]),
                                  int(enc["input_size"]), None if seed is None else int(seed))
    if enc.get("weights_fingerprint") and weights_fingerprint(encoder) != enc["weights_fingerprint"]:
        log.warning("model folder not written: the encoder rebuilt from %s does not match the stores' weights "
                    "fingerprint", src)
        return None
    data = {"data_path": str(opts.data_path), "datasets": ", ".join(opts.datasets), "source": "feature stores",
            "selection_split": meta.get("selection_split"),
            "evaluated_on": f"the test split, with the epoch selected on {meta.get('selection_split')}",
            "run": str(run_dir)}
    common: dict[str, Any] = dict(
        encoder=encoder, head=model, modality=str(enc["modality"]), input_size=int(enc["input_size"]),
        interpolation="bilinear", features={"type": "pooled", "n_last_blocks": N_LAST_BLOCKS, "avgpool": 0},
        metrics=metrics, data=data, name=f"{opts.name} ({enc['modality']})", weights_source=str(src))
    fields = spec.model_fields(meta, int(meta["feat_dim"]), float(meta.get("bn_momentum", 0.1)))
    return model_folder_from_training(run_dir / "model", **fields, **common)


# -- the shared command driver ------------------------------------------------------------------------


class TaskSpec(Protocol):
    """What a multi-store decoder command's task class (:class:`~visionfm.tasks.multilabel.Multilabel`,
    :class:`~visionfm.tasks.regression.Regression`) supplies to :func:`run_multi_store_command`.

    Attributes: ``kind`` (``"cls"`` or ``"reg"``, the head), ``selection_key`` and
    ``higher_is_better`` (model selection on the dict returned by ``evaluate``).
    """

    kind: str
    selection_key: str
    higher_is_better: bool
    #: the ``best_*`` key of the original's ``checkpoint_<epoch>_linear.pth``
    original_best_key: str

    def setup(self, train_labels: torch.Tensor | None, test_labels: torch.Tensor,
              info: Mapping[str, Any] | None) -> dict[str, Any]:
        """Check the labels; return checkpoint metadata with ``num_outputs`` (``info``: a loaded
        checkpoint's JSON in ``--test`` mode, else ``None``)."""
        ...

    def train_targets(self, labels: torch.Tensor) -> torch.Tensor:
        ...

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        ...

    def evaluate(self, outputs: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
        ...

    def report(self, run_dir: Path, outputs: torch.Tensor, inputs: ModelInputs, meta: dict[str, Any]) -> dict[str, Any]:
        ...

    def model_fields(self, meta: Mapping[str, Any], feat_dim: int, bn_momentum: float) -> dict[str, Any]:
        """``task``, head and names of a pooled run's model folder."""
        ...


def lr_and_schedule(opts: StoreDecoderConfig, world_size: int) -> tuple[float, str]:
    """The optimizer's LR and per-epoch schedule: ``opts.lr_scaling`` (``"none"``: ``--lr`` as given;
    ``"linear"``: × batch·world/256) and ``opts.scheduler`` where the command has them (train-reg, whose
    defaults are the original's raw LR, constant); otherwise the original train_cls_multi_decoder's rule,
    linear scaling, constant with SGD (cosine with AdamW)."""
    optimizer = getattr(opts, "optimizer", "adamw")
    scaling = getattr(opts, "lr_scaling", "linear")
    if scaling not in ("none", "linear"):
        raise ConfigError(f"--lr_scaling {scaling!r}; expected none or linear")
    lr = opts.lr * (opts.batch_size_per_gpu * world_size / 256.0 if scaling == "linear" else 1.0)
    return lr, getattr(opts, "scheduler", None) or ("constant" if optimizer == "sgd" else "cosine")


#: the visionfm13 layout's headline metrics, shown in the ending summary after the task's key metrics
VISIONFM13_SUMMARY = ("f1_mean", "auroc_mean")


def run_multi_store_command(opts: StoreDecoderConfig, spec: TaskSpec) -> int:
    """Load ``--datasets`` stores, train a head with :func:`~visionfm.engine.trainer.fit`
    (or, with ``--test``, evaluate ``--load_from``), then report on the test split."""
    from visionfm.engine.distributed import command_session
    from visionfm.engine.logging import RunLogger
    from visionfm.engine.trainer import (
        FitConfig,
        TensorBatches,
        fit,
        load_decoder_checkpoint,
        load_decoder_weights,
        loss_step,
        selection_split,
        start_point,
        write_original_checkpoint,
    )
    from visionfm.io import save_json_atomic

    with command_session(opts.device, seed=opts.seed) as env:
        run_dir = Path(opts.output_dir) / opts.name
        if opts.test and not opts.load_from:
            raise ConfigError("--test needs --load_from CHECKPOINT")
        ckpt_info: dict[str, Any] | None = None
        modalities = None
        if opts.test:
            _, ckpt_info, _ = load_decoder_checkpoint(opts.load_from)
            if ckpt_info.get("fusion") and ckpt_info["fusion"] != opts.fusion:
                log.info("using --fusion %s recorded in %s", ckpt_info["fusion"], opts.load_from)
                opts.fusion = ckpt_info["fusion"]
            modalities = ckpt_info.get("modalities")
        roles = ["test"] if opts.test else ["train", "val", "test"]
        inputs, slots, data_info = read_fused_inputs(opts, roles, modalities, opts.embed_dim)
        test = inputs.get("test")
        if test is None:
            raise DataFormatError(f"no test split in the stores of {', '.join(opts.datasets)}")
        train = inputs.get("train")
        if not opts.test and train is None:
            raise DataFormatError(f"no training split in the stores of {', '.join(opts.datasets)}")
        task_meta = spec.setup(train.labels if train is not None else None, test.labels, ckpt_info)
        n_out = int(task_meta["num_outputs"])
        embed_dim = int(data_info.pop("embed_dim"))  # --embed_dim, when given, was checked against it
        feat_dim = N_LAST_BLOCKS * embed_dim
        model = build_fused_model(spec.kind, opts.fusion, len(slots), feat_dim, n_out, opts.bn_momentum)
        meta = {**task_meta, "fusion": opts.fusion, "modalities": slots, "feat_dim": feat_dim,
                "embed_dim": embed_dim, "datasets": list(opts.datasets), "bn_momentum": opts.bn_momentum,
                "data": data_info}
        if opts.test:
            load_decoder_weights(model, opts.load_from)
            model.to(env.device)
            outputs = predict(model, test.x)
            if env.is_main:
                head = spec.report(run_dir, outputs, test,
                                   {**meta, "evaluated": "test (from --load_from)", "checkpoint": str(opts.load_from),
                                    "checkpoint_epoch": ckpt_info.get("epoch") if ckpt_info else None})
                print(summary_from_report(opts.command, run_dir / "report", head, selection={
                    "metric": spec.selection_key, "epoch": ckpt_info.get("epoch") if ckpt_info else None},
                    paths={"checkpoint": opts.load_from}, extra_metrics=VISIONFM13_SUMMARY))
            return 0
        val, sel_split = selection_split(inputs.get("val"), test, warn=env.is_main)
        meta["selection_split"] = sel_split
        resume_from, init_from = start_point(run_dir, opts.load_from, opts.resume, overwrite=opts.overwrite,
                                             is_main=env.is_main)  # before anything is written there
        run_logger = RunLogger(run_dir, enabled=env.is_main)
        run_logger.log({"run": opts.name, "fusion": opts.fusion, "modalities": slots, "samples": data_info["n_samples"],
                        "selection_split": sel_split})
        x_val, y_val = val.x, val.labels

        def evaluate(m: nn.Module) -> dict[str, Any]:
            return spec.evaluate(predict(m, x_val), y_val)

        optimizer = getattr(opts, "optimizer", "adamw")
        lr, scheduler = lr_and_schedule(opts, env.world_size)
        cfg = FitConfig(epochs=opts.epochs, lr=lr, batch_size=opts.batch_size_per_gpu, optimizer=optimizer,
                        weight_decay=0.0 if optimizer == "sgd" else 0.05, scheduler=scheduler,
                        val_freq=opts.val_freq, seed=opts.seed, amp=False)
        batches = TensorBatches(train.x, spec.train_targets(train.labels), cfg.batch_size, cfg.seed,  # type: ignore[union-attr]
                                env.rank, env.world_size, env.device)
        identity = {k: v for k, v in meta.items() if k != "data"}
        result = fit(model, batches, loss_step(spec.loss), evaluate, selection_key=spec.selection_key,
                     higher_is_better=spec.higher_is_better, run_dir=run_dir, cfg=cfg, env=env, run_logger=run_logger,
                     meta=meta, identity=identity, resume_from=resume_from, init_from=init_from)
        best = run_dir / "checkpoint_best"
        sd, info, _ = load_decoder_checkpoint(best)
        model.load_state_dict(sd)
        outputs = predict(model, test.x)
        if env.is_main:
            metrics = spec.report(run_dir, outputs, test, {**meta, "checkpoint_epoch": result.best_epoch,
                                                           "evaluated": f"test (best epoch selected on {sel_split})"})
            info["test_metrics"] = metrics
            save_json_atomic(info, best.with_suffix(".json"))
            if opts.fusion == "pooled":  # the original's checkpoint_<epoch>_linear.pth (§5.3, §5.6)
                write_original_checkpoint(run_dir / f"checkpoint_{result.best_epoch}_linear.pth", model.state_dict(),
                                          spec.kind, result.best_epoch, {spec.original_best_key: result.best_value})
            folder = package_multi_store_run(opts, spec, run_dir, model, meta, metrics)
            run_logger.log({"final_test": metrics, "best_epoch": result.best_epoch, "selection_split": sel_split})
            run_logger.close()
            print(summary_from_report(opts.command, run_dir / "report", metrics, selection={
                "metric": spec.selection_key, "value": result.best_value, "epoch": result.best_epoch,
                "epochs": opts.epochs, "split": sel_split, "higher_is_better": spec.higher_is_better},
                paths={"model": folder, "log": run_dir / "log.txt"}, extra_metrics=VISIONFM13_SUMMARY))
        return 0


def write_members(run_dir: Path, inputs: ModelInputs) -> None:
    """``subjects.json``: for fused runs, which images of which modality made up each test subject."""
    from visionfm.io import save_json_atomic

    if inputs.members is not None:
        save_json_atomic({s: m for s, m in zip(inputs.ids, inputs.members)}, run_dir / "test_subjects.json")
