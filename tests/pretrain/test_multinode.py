"""Two nodes simulated on one machine: two ``torchrun`` agents (``--nnodes 2 --nproc_per_node 1``) meeting at a
c10d rendezvous on 127.0.0.1, gloo, pretraining a vit_tiny from tar shards. The run is killed (global rank 0
SIGKILLs itself right after a mid-epoch checkpoint), both nodes resume from the shared run folder, and the
result equals, bit for bit, an uninterrupted single-node run of two processes with the same global batch and
seed. The same with ``--fsdp`` (sharded checkpoint in ``checkpoint_dcp/``, consolidated ``checkpoint.pth``).

Bit-exact is expected on CPU: both layouts run the same two ranks with the same per-rank data and seeds, and a
two-rank gloo all-reduce adds the same two numbers whichever node holds which rank.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch

from tests.pretrain.test_trainer import SRC
from visionfm.cli.main import main as cli_main

pytestmark = [pytest.mark.distributed, pytest.mark.slow, pytest.mark.xdist_group("torchrun")]

# 24 images, 4 per process × 2 processes → 3 iterations per epoch, 2 epochs; mid-epoch checkpoints every 2
# iterations (at global iterations 1 and 3). Global rank 0 kills itself after iteration 3: the last
# checkpoint is then epoch 2, iteration 1 of 3 — the resume starts mid-epoch.
KILL_AT = 3
FLAGS = ["pretrain", "--modality", "Fundus", "--arch", "vit_tiny", "--input_size", "32", "--batch_size_per_gpu", "4",
         "--epochs", "2", "--warmup_epochs", "1", "--warmup_teacher_temp_epochs", "1", "--out_dim", "64",
         "--patch_out_dim", "64", "--num_workers", "0", "--no_progress", "--seed", "3", "--saveckp_iters", "2"]

# the CLI in a worker; KILL_AT: global rank 0 SIGKILLs itself right after that iteration (the trainer's test hook)
_CHILD = """
import os, signal, sys
from visionfm.pretrain.trainer import IBOTTrainer
kill_at = int(os.environ.get("VFM_TEST_KILL_AT", "-1"))
if kill_at >= 0 and os.environ["RANK"] == "0":
    IBOTTrainer.after_iteration = lambda self, it: it == kill_at and os.kill(os.getpid(), signal.SIGKILL)
from visionfm.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def _once(root: Path, name: str, make) -> dict:
    """``make()`` (a dict) once for the whole test session, also across xdist workers (a file lock in the
    session's shared folder): the runs take ~10 s each, and pytest-xdist 3.8 does not keep the tests of an
    ``xdist_group`` on one worker, so each worker would otherwise redo them."""
    from filelock import FileLock

    done = root / f".{name}.json"
    with FileLock(str(root / f".{name}.lock")):
        if not done.exists():
            done.write_text(json.dumps(make()))
    return json.loads(done.read_text())


@pytest.fixture(scope="session")
def shards(tmp_path_factory, worker_id):
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if worker_id != "master" else base) / "multinode"  # shared by the session's workers
    root.mkdir(exist_ok=True)

    def make():
        assert cli_main(["synth", "--task", "pretrain", "--output_dir", str(root / "src"), "--num", "24",
                         "--img_size", "48", "--seed", "0"]) == 0
        assert cli_main(["prepare", "--data_path", str(root / "src"), "--output_dir", str(root / "prep"),
                         "--format", "shards", "--shard_size", "20KB", "--modality", "Fundus", "--workers", "1",
                         "--short_side", "40", "--progress", "false"]) == 0
        (root / "child.py").write_text(_CHILD)
        return json.loads((root / "prep" / "shards.json").read_text())

    index = _once(root, "shards", make)
    assert len(index["shardlist"]) >= 2  # several shards, so ranks read from different files
    return root


def _torchrun() -> str:
    exe = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    assert exe, "torchrun not found next to the interpreter"
    return exe


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(root: Path, name: str, *, nodes: int, extra=(), kill: bool = False) -> list[subprocess.CompletedProcess]:
    """One agent with two processes (``nodes=1``) or two agents with one process each (``nodes=2``), as on two
    machines: each agent is its own ``torchrun`` with ``--nnodes 2`` and the same rendezvous endpoint."""
    env = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1", VFM_TEST_KILL_AT=str(KILL_AT if kill else -1))
    flags = [*FLAGS, "--data_path", str(root / "prep" / "shards.json"), "--output_dir", str(root / "out"),
             "--name", name, *extra]
    child = [str(root / "child.py"), *flags]
    if nodes == 1:
        cmds = [[_torchrun(), "--nnodes", "1", "--nproc_per_node", "2", "--rdzv_backend", "c10d",
                 "--rdzv_endpoint", "127.0.0.1:0", *child]]
    else:
        endpoint, run_id = f"127.0.0.1:{_free_port()}", uuid.uuid4().hex[:8]
        cmds = [[_torchrun(), "--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d",
                 "--rdzv_endpoint", endpoint, "--rdzv_id", run_id, "--local_addr", "127.0.0.1", *child]
                for _ in range(2)]
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for c in cmds]
    done = []
    for p, c in zip(procs, cmds):
        out, _ = p.communicate(timeout=600)
        done.append(subprocess.CompletedProcess(c, p.returncode, out, ""))
    return done


def _ok(results):
    for r in results:
        assert r.returncode == 0, r.stdout[-4000:]


def _ckpt(run: Path) -> dict:
    return torch.load(run / "checkpoint.pth", weights_only=False, map_location="cpu")


def _losses(run: Path) -> list[float]:
    return [json.loads(x)["train_loss"] for x in (run / "log.txt").read_text().splitlines()]


MODES = {"ddp": [], "fsdp": ["--fsdp"]}


def _reference(root: Path, mode: str) -> Path:
    """The uninterrupted single-node run (two processes on one agent)."""
    _once(root, f"ref_{mode}", lambda: {"ok": _ok(_launch(root, f"ref_{mode}", nodes=1, extra=MODES[mode]))})
    return root / "out" / f"ref_{mode}"


def _killed(root: Path, mode: str) -> tuple[Path, list[int]]:
    """The two-node run killed after global iteration KILL_AT, and both agents' exit codes. The FSDP one is
    also copied for the resume without the shards (each copy is resumed by one test only)."""
    name = f"two_nodes_{mode}"

    def make():
        codes = [r.returncode for r in _launch(root, name, nodes=2, extra=MODES[mode], kill=True)]
        if mode == "fsdp":
            shutil.copytree(root / "out" / name, root / "out" / "fsdp_from_full")
        return {"codes": codes}

    return root / "out" / name, _once(root, f"killed_{mode}", make)["codes"]


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_nodes_killed_and_resumed_equal_one_node_bit_for_bit(shards, mode):
    extra = MODES[mode]
    reference = _reference(shards, mode)
    run, codes = _killed(shards, mode)
    name = run.name
    assert len(codes) == 2 and all(c != 0 for c in codes), "both nodes should stop when rank 0 is killed"
    cut = _ckpt(run)
    assert (cut["epoch"], cut["epoch_iter"], cut["iteration"]) == (1, 1, KILL_AT + 1)  # mid-epoch 2
    assert cut["world_size"] == 2
    if mode == "fsdp":
        assert json.loads((run / "checkpoint_dcp" / "visionfm.json").read_text())["iteration"] == KILL_AT + 1

    resumed = _launch(shards, name, nodes=2, extra=[*extra, "--resume", "auto"])
    _ok(resumed)
    # rank 0 alone logs: exactly one of the two nodes printed the run's lines
    assert sum("iBOT pretraining:" in r.stdout for r in resumed) == 1
    if mode == "fsdp":  # both nodes read their shards back from the shared folder
        assert "from the shards in" in "".join(r.stdout for r in resumed)

    # rank 0 alone writes: the usual files once, one event file per launch, one log line per epoch
    expected = {"checkpoint.pth", "config.yaml", "log.txt", "tf_logs"}
    expected |= {"checkpoint_dcp"} if mode == "fsdp" else set()
    assert {p.name for p in run.iterdir()} == expected
    assert len(list((run / "tf_logs").iterdir())) == 2  # the killed launch and the resumed one
    assert len(_losses(run)) == 2

    ref, got = _ckpt(reference), _ckpt(run)
    assert got["iteration"] == ref["iteration"] == 6
    for key in ("student", "teacher"):
        assert got[key].keys() == ref[key].keys()
        differing = [k for k in ref[key] if not torch.equal(got[key][k], ref[key][k])]
        assert not differing, f"{key}: {len(differing)} tensors differ, first {differing[:3]}"
    for i, st in ref["optimizer"]["state"].items():
        for k, v in st.items():
            assert torch.equal(got["optimizer"]["state"][i][k], v), (i, k)
    for k, v in ref["ibot_loss"].items():
        assert torch.equal(got["ibot_loss"][k], v), k
    assert _losses(run) == _losses(reference)


def test_fsdp_writes_the_layout_of_a_ddp_run_and_trains_the_same_weights(shards):
    """The consolidated FSDP checkpoint has the DDP checkpoint's keys, shapes and optimizer layout (so every
    reader of checkpoints keeps working) and the same weights up to float rounding (reduce-scatter vs all-reduce)."""
    references = {mode: _reference(shards, mode) for mode in MODES}
    ddp, fsdp = _ckpt(references["ddp"]), _ckpt(references["fsdp"])
    for key in ("student", "teacher"):
        assert fsdp[key].keys() == ddp[key].keys()
        for k, v in ddp[key].items():
            assert fsdp[key][k].shape == v.shape and fsdp[key][k].dtype == v.dtype, k
    assert [g["param_names"] for g in fsdp["optimizer"]["param_groups"]] == \
        [g["param_names"] for g in ddp["optimizer"]["param_groups"]]
    assert fsdp["optimizer"]["state"].keys() == ddp["optimizer"]["state"].keys()
    w0 = torch.cat([v.double().flatten() for v in ddp["student"].values() if v.is_floating_point()])
    w1 = torch.cat([v.double().flatten() for v in fsdp["student"].values() if v.is_floating_point()])
    assert float((w1 - w0).abs().max()) < 1e-4
    # (a teacher whose root group stayed gathered after its forward, missing the EMA, gave 4e-5)
    assert _losses(references["fsdp"]) == pytest.approx(_losses(references["ddp"]), rel=1e-6)
    # the consolidated file loads as an encoder like any other checkpoint
    from visionfm import load_encoder

    enc = load_encoder(str(references["fsdp"] / "checkpoint.pth"), arch="vit_tiny", patch_size=16, img_size=32)
    qkv = "blocks.0.attn.qkv.weight"
    assert torch.equal(enc.state_dict()[qkv], fsdp["teacher"][f"backbone.{qkv}"])


def test_fsdp_resumes_from_the_consolidated_checkpoint_without_the_shards(shards):
    """A run folder without ``checkpoint_dcp/`` (shards lost, or a DDP run continued with --fsdp) resumes from
    ``checkpoint.pth``, here on one node: the same weights as the uninterrupted run."""
    reference = _reference(shards, "fsdp")
    _killed(shards, "fsdp")
    run = shards / "out" / "fsdp_from_full"
    shutil.rmtree(run / "checkpoint_dcp")
    assert _ckpt(run)["iteration"] == KILL_AT + 1
    resumed = _launch(shards, run.name, nodes=1, extra=["--fsdp", "--resume", "auto"])
    _ok(resumed)
    assert "from the consolidated" in resumed[0].stdout
    ref, got = _ckpt(reference), _ckpt(run)
    for key in ("student", "teacher"):
        assert all(torch.equal(got[key][k], v) for k, v in ref[key].items()), key
