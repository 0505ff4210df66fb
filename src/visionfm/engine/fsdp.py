"""FSDP2 for pretraining (``--fsdp``): per-block sharding, full (consolidated) state dicts, and sharded
checkpoints with ``torch.distributed.checkpoint`` (DCP).

Everything here is torch's own machinery — ``fully_shard``, ``get/set_model_state_dict``,
``get/set_optimizer_state_dict``, ``dcp.save``/``dcp.load`` — arranged for the iBOT trainer:

* :func:`shard_network` applies ``fully_shard`` to every transformer block of a
  :class:`~visionfm.pretrain.model.MultiCropNetwork` and then to the network (the patch embedding, the
  tokens, the final norm and the head are the root's group). Student and teacher are sharded the same
  way, so their local shards line up element for element and the teacher EMA runs on the shards.
* :func:`full_model_state` / :func:`full_optimizer_state` gather the consolidated state on rank 0 in
  the layout a DDP run writes (plain parameter names; the optimizer ``state_dict`` indexed by position,
  with our groups' ``param_names``), so ``checkpoint.pth`` of an FSDP run is read by every tool that
  reads ours or the original's.
* :func:`save_sharded` writes each rank's shards with DCP into a temporary folder that rank 0 renames
  into place after a barrier (the folder is always either the previous checkpoint or the new one);
  :func:`load_sharded` reads it back with a metadata reader that unpickles through our restricted
  unpickler (DCP's own reader calls ``pickle.load``).
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

__all__ = [
    "DCP_DIR",
    "shard_network",
    "is_sharded",
    "local_tensor",
    "full_model_state",
    "load_full_model_state",
    "full_optimizer_state",
    "load_full_optimizer_state",
    "save_sharded",
    "load_sharded",
    "sharded_iteration",
]

#: the sharded checkpoint's folder in the run folder (next to the consolidated ``checkpoint.pth``)
DCP_DIR = "checkpoint_dcp"
_MARKER = "visionfm.json"  # in DCP_DIR: which iteration the shards hold (written last, by rank 0)


def shard_network(net: nn.Module, *, param_dtype: torch.dtype | None = None) -> nn.Module:
    """``fully_shard`` each block of ``net.backbone.blocks``, then ``net`` itself (in place).

    ``param_dtype`` (bf16 training on a GPU): parameters are all-gathered in that dtype and gradients
    reduced in float32; ``None`` keeps float32 everywhere (autocast still runs the matmuls in bf16).
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32 if param_dtype else None)
    for block in net.backbone.blocks:  # type: ignore[union-attr]
        fully_shard(block, mp_policy=mp)
    fully_shard(net, mp_policy=mp)
    return net


def is_sharded(t: Any) -> bool:
    """Whether ``t`` is an FSDP2 (DTensor) parameter or gradient."""
    return isinstance(t, DTensor)


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (a view: in-place updates reach the parameter); other tensors as they are."""
    return t.to_local() if is_sharded(t) else t  # type: ignore[attr-defined]


def _options(full: bool, cpu_offload: bool = False, strict: bool = True):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=full, cpu_offload=cpu_offload, strict=strict)


def full_model_state(net: nn.Module) -> dict[str, torch.Tensor]:
    """The consolidated ``state_dict`` of a sharded ``net`` on rank 0, on the CPU (``{}`` on other ranks),
    under the names ``net.state_dict()`` gives (ours keep the official ``weight_g``/``weight_v``; torch's
    ``get_model_state_dict`` cannot map those back to parameters). A collective: every rank gathers."""
    rank0 = dist.get_rank() == 0
    out: dict[str, torch.Tensor] = {}
    for key, value in net.state_dict().items():
        full = value.full_tensor() if is_sharded(value) else value  # all-gather, one tensor at a time
        if rank0:
            out[key] = full.detach().cpu().clone()
    return out


@torch.no_grad()
def load_full_model_state(net: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy a consolidated ``state`` (every rank holds all of it) into the sharded ``net``; each rank keeps
    its slice (no communication). Keys must match ``net.state_dict()``'s exactly."""
    from torch.distributed.tensor import distribute_tensor

    from visionfm.errors import CheckpointError

    own = net.state_dict()
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or extra:
        raise CheckpointError(f"{source}: does not fit this network (missing {missing[:3]}, unexpected {extra[:3]})")
    for key, target in own.items():
        full = state[key]
        if tuple(full.shape) != tuple(target.shape):
            raise CheckpointError(f"{source}: {key} has shape {tuple(full.shape)}, this network {tuple(target.shape)}")
        if is_sharded(target):
            piece = distribute_tensor(full.to(target.device, target.dtype), target.device_mesh, target.placements,
                                      src_data_rank=None).to_local()
            target.to_local().copy_(piece)
        else:
            target.copy_(full)


def _fqn_to_index(optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Our groups' ``param_names`` → the position ``optimizer.state_dict()`` gives each parameter."""
    out, i = {}, 0
    for group in optimizer.param_groups:
        for name in group["param_names"]:
            out[name] = i
            i += 1
    return out


def full_optimizer_state(net: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The consolidated optimizer state on rank 0 in ``optimizer.state_dict()``'s layout (``{}`` elsewhere).
    A collective."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    by_name: dict[str, Any] = dict(get_optimizer_state_dict(net, optimizer, options=_options(True, cpu_offload=True)))
    if not by_name:
        return {}
    index = _fqn_to_index(optimizer)
    groups = []
    for saved, group in zip(by_name["param_groups"], optimizer.param_groups):
        groups.append({**{k: v for k, v in saved.items() if k != "params"},
                       "param_names": list(group["param_names"]),
                       "params": [index[n] for n in group["param_names"]]})
    return {"state": {index[n]: s for n, s in by_name["state"].items()}, "param_groups": groups}


def load_full_optimizer_state(net: nn.Module, optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """Load an optimizer ``state_dict`` in our layout (already fitted to ``optimizer``'s groups, see
    :func:`~visionfm.pretrain.optim.adapt_optimizer_state`) into the sharded optimizer."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    name_of = {i: n for n, i in _fqn_to_index(optimizer).items()}
    by_name: dict[str, Any] = {
        "state": {name_of[int(i)]: s for i, s in saved.get("state", {}).items()},
        "param_groups": [{**{k: v for k, v in g.items() if k != "params"},
                          "params": [name_of[int(i)] for i in g["params"]]} for g in saved["param_groups"]],
    }
    # strict=False: a parameter without state (no step yet, e.g. the last layer while frozen) starts fresh
    set_optimizer_state_dict(net, optimizer, by_name, options=_options(True, strict=False))


def _sharded_state(student: nn.Module, teacher: nn.Module, optimizer: torch.optim.Optimizer
                   ) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(DCP state, optimizer state by name)``. The DCP state holds tensors only — the networks' own
    ``state_dict`` (DTensors sharing storage with the parameters, so ``dcp.load`` writes into them in
    place) and the optimizer's per-parameter tensors — so reading it back never unpickles an object
    (the groups' hyperparameters come from the optimizer being loaded into; the schedules set lr and wd)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    # (for a fresh optimizer this first creates its state, with an lr-0 step)
    optim: dict[str, Any] = dict(get_optimizer_state_dict(student, optimizer))
    bad = [f"{n}.{k}" for n, st in optim["state"].items() for k, v in st.items() if not torch.is_tensor(v)]
    if bad:
        raise TypeError(f"optimizer state holds non-tensors ({bad[:3]}); the sharded checkpoint stores tensors only")
    return {"student": student.state_dict(), "teacher": teacher.state_dict(), "optimizer": optim["state"]}, optim


def save_sharded(run_dir: Path, iteration: int, student: nn.Module, teacher: nn.Module,
                 optimizer: torch.optim.Optimizer) -> Path:
    """Every rank writes its shards of student, teacher and optimizer to ``run_dir/checkpoint_dcp``.

    Written into ``.checkpoint_dcp.tmp`` first; after all ranks finished, rank 0 adds the marker
    (``iteration``) and renames the folder into place. A collective."""
    import torch.distributed.checkpoint as dcp

    from visionfm.io.atomic import replace_dir, save_json_atomic

    dest = run_dir / DCP_DIR
    tmp = run_dir / f".{DCP_DIR}.tmp"
    rank0 = dist.get_rank() == 0
    if rank0:
        shutil.rmtree(tmp, ignore_errors=True)  # a save that was interrupted
    dist.barrier()
    dcp.save(_sharded_state(student, teacher, optimizer)[0], checkpoint_id=str(tmp))
    dist.barrier()
    if rank0:
        save_json_atomic({"iteration": int(iteration), "world_size": dist.get_world_size()}, tmp / _MARKER)
        replace_dir(tmp, dest)
    dist.barrier()
    return dest


def sharded_iteration(run_dir: Path) -> int | None:
    """The iteration the sharded checkpoint in ``run_dir`` holds (``None``: none, or unfinished)."""
    marker = run_dir / DCP_DIR / _MARKER
    try:
        return int(json.loads(marker.read_text())["iteration"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_sharded(run_dir: Path, student: nn.Module, teacher: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Read ``run_dir/checkpoint_dcp`` into the sharded student, teacher and optimizer (each rank its shards;
    the world size may differ from the one that wrote it). A collective."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    state, optim = _sharded_state(student, teacher, optimizer)
    reader = _safe_reader(str(run_dir / DCP_DIR))
    saved = set(reader.read_metadata().state_dict_metadata)
    # parameters the saved optimizer had no state for (no step yet: the last layer while frozen) get none now
    optim["state"] = state["optimizer"] = {
        name: st for name, st in optim["state"].items() if all(f"optimizer.{name}.{k}" in saved for k in st)}
    dcp.load(state, storage_reader=reader)  # in place, weights and optimizer tensors
    set_optimizer_state_dict(student, optimizer, optim, options=_options(False, strict=False))


def _dcp_metadata_globals() -> dict[str, frozenset[str]]:
    """What DCP's ``.metadata`` pickle needs: its own metadata dataclasses, torch sizes/dtypes, the
    file-system reader's storage info, and the dataclass reconstructor — data, no callables."""
    return {
        "torch.distributed.checkpoint.metadata": frozenset({
            "Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
            "TensorProperties", "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING"}),
        "torch.distributed.checkpoint.filesystem": frozenset({"_StorageInfo"}),
        "torch.distributed.checkpoint.planner": frozenset({"WriteItemType", "LoadItemType"}),
        "torch": frozenset({"Size", "float32", "float16", "bfloat16", "float64", "int64", "int32", "int16",
                            "int8", "uint8", "bool", "strided", "contiguous_format", "preserve_format",
                            "channels_last"}),
        "torch.serialization": frozenset({"_get_layout"}),  # name -> torch.strided etc. (a table lookup)
        "pathlib": frozenset({"PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"}),  # the checkpoint id
        "copyreg": frozenset({"_reconstructor"}),
        "collections": frozenset({"OrderedDict"}),
    }


def _safe_reader(path: str) -> Any:
    """DCP's ``FileSystemReader`` for ``path``, whose ``.metadata`` goes through our restricted unpickler
    (the class is made here so that torch.distributed.checkpoint is imported only with ``--fsdp``)."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    from visionfm.io.restricted_pickle import RestrictedUnpickler

    class SafeFileSystemReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            meta_path = self._get_metadata_path(kwargs.get("rank"))
            with self.fs.create_stream(meta_path, "rb") as fh:
                data = fh.read()
            metadata = RestrictedUnpickler(io.BytesIO(data), source=os.fspath(meta_path),
                                           extra_globals=_dcp_metadata_globals()).load()
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeFileSystemReader(path)
