"""SLURM without torchrun: ranks come from SLURM_PROCID / SLURM_NTASKS, or the run is refused in one line;
never N independent rank-0 runs (the original's start-up never set the world size in this branch)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from visionfm.engine.distributed import launch_ranks
from visionfm.errors import ConfigError


def test_torchrun_variables_win_over_slurm():
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "SLURM_PROCID": "0", "SLURM_NTASKS": "8"}
    assert launch_ranks(env) == (3, 4, 1)


def test_slurm_ranks_with_a_rendezvous():
    env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "MASTER_ADDR": "node1",
           "MASTER_PORT": "29500"}
    assert launch_ranks(env) == (5, 8, 1)


def test_one_slurm_task_is_one_process():
    assert launch_ranks({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) == (0, 1, 0)
    assert launch_ranks({}) == (0, 1, 0)


def test_slurm_without_rendezvous_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="SLURM started 2 tasks but MASTER_ADDR and MASTER_PORT are not set"):
        launch_ranks({"SLURM_PROCID": "1", "SLURM_NTASKS": "2"})


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT") and not k.startswith("SLURM_")}
    env.update(extra)
    return env


def test_cli_under_slurm_without_rendezvous_exits_2(tmp_path):
    env = _clean_env(SLURM_PROCID="0", SLURM_NTASKS="2")
    r = subprocess.run([sys.executable, "-m", "visionfm.cli.main", "train-reg", "--name", "x", "--data_path",
                        str(tmp_path), "--datasets", "none", "--device", "cpu"], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert "MASTER_ADDR" in lines[-1] and "Traceback" not in r.stderr


def test_two_srun_tasks_form_one_group():
    """Two processes started as srun would (SLURM variables only) join one gloo group of size 2."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = ("import torch.distributed as dist\n"
            "from visionfm.engine.distributed import init_distributed, cleanup_distributed\n"
            "env = init_distributed('cpu')\n"
            "print(env.rank, env.world_size, dist.get_world_size(), dist.get_rank())\n"
            "cleanup_distributed()\n")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=_clean_env(SLURM_PROCID=str(r), SLURM_NTASKS="2", SLURM_LOCALID=str(r),
                                             MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)))
             for r in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-500:] for o in outs]
    assert sorted(o[0].split() for o in outs) == [["0", "2", "2", "0"], ["1", "2", "2", "1"]]
