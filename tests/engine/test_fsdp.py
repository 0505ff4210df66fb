"""``--fsdp`` without torchrun: the refusals, and the sharded checkpoint's metadata reader (no code runs from it).
The sharded training itself is tested under torchrun in tests/pretrain/test_multinode.py."""

from __future__ import annotations

import os
import pickle

import pytest

from tests.pretrain.test_trainer import _flags, _write_images
from visionfm.cli.main import main as cli_main


class _Boom:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_the_sharded_checkpoint_metadata_is_read_without_running_code(tmp_path):
    from visionfm.engine.fsdp import _safe_reader
    from visionfm.io.restricted_pickle import UnsafePickleError

    folder = tmp_path / "checkpoint_dcp"
    folder.mkdir()
    (folder / ".metadata").write_bytes(pickle.dumps(_Boom()))
    with pytest.raises(UnsafePickleError, match=r"system"):
        _safe_reader(str(folder)).read_metadata()


def test_fsdp_needs_several_processes_and_says_so(tmp_path, capsys):
    _write_images(tmp_path / "data", "Fundus", 8)
    code = cli_main(_flags(tmp_path / "data", tmp_path / "out", "one", ["--fsdp"]))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "--fsdp" in err[0] and "torchrun --nproc_per_node" in err[0], err
    assert not (tmp_path / "out" / "one" / "checkpoint.pth").exists()


def _documented_launches():
    """Each ``torchrun ... -m visionfm.cli.main pretrain ...`` command of docs/scale-out.md and of the SLURM
    example, joined across its ``\\`` line ends, with the example's shell variables given values."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    texts = {"docs/scale-out.md": (root / "docs" / "scale-out.md").read_text(),
             "examples/slurm/pretrain.sbatch": (root / "examples" / "slurm" / "pretrain.sbatch").read_text()}
    values = {"$SLURM_NNODES": "4", "$GPUS_PER_NODE": "8", "$HEAD_NODE": "node1", "$SLURM_JOB_ID": "123",
              "$DATA": "/shared/vfm/shards.json", "$RUNS": "/shared/runs"}
    out = []
    for name, text in texts.items():
        joined = text.replace("\\\n", " ")
        for line in joined.splitlines():
            if "torchrun" in line and "visionfm.cli.main pretrain" in line:
                line = line.replace('"', "")
                for var, value in values.items():
                    line = line.replace(var, value)
                out.append((name, re.sub(r"^.*?torchrun", "torchrun", line).split()))
    return out


def test_the_documented_multinode_commands_parse():
    """Copy-pasteable: every torchrun flag is torchrun's, every visionfm flag is pretrain's."""
    from torch.distributed.run import get_args_parser

    from visionfm.cli.pretrain import config_from_argv

    launches = _documented_launches()
    assert {n for n, _ in launches} == {"docs/scale-out.md", "examples/slurm/pretrain.sbatch"} and len(launches) >= 3
    for name, words in launches:
        assert "$" not in " ".join(words), (name, words)
        split = words.index("visionfm.cli.main")
        launcher = get_args_parser().parse_args([*words[1:split - 1], "script.py"])  # torchrun's own parser
        assert launcher.rdzv_backend == "c10d" and launcher.rdzv_endpoint, name
        cfg = config_from_argv(words[split + 2:])
        assert cfg.data_path.endswith("shards.json"), name
