import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True)
def _seed_and_threads():
    import torch

    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def encoder():
    """A random vit_tiny/16 at 32 px (seed 0), shared by the modules that build model folders from it."""
    import torch

    from visionfm.models import build_encoder

    torch.manual_seed(0)
    return build_encoder("vit_tiny", img_size=32, patch_size=16)


@pytest.fixture(autouse=True)
def _isolated_console_logging():
    """Each test starts without the console handler an earlier test's command installed (a command run
    in-process calls ``setup_logging``; its handler would print into the next test's captured output)."""
    import logging

    root = logging.getLogger()
    level = root.level
    yield
    for h in list(root.handlers):
        if getattr(h, "_visionfm", False):
            root.removeHandler(h)
    root.setLevel(level)


@pytest.fixture(scope="session")
def probe_pretraining(tmp_path_factory):
    """A brief iBOT pretraining for the linear-probe test: ``(labelled dataset root, checkpoint, input size)``.

    The synthetic 5-grade ``single_cls`` task at 48 px (960 training, 240 val, 960 test images);
    160 training images, unlabelled, are the pretraining set. 40 iterations of 16 images (a few
    seconds per epoch on 2 CPU cores) with teacher momentum 0.9, so the EMA teacher has moved with
    the student by the end; checkpoint.pth holds both.
    """
    import shutil

    from visionfm.cli.main import main as cli_main
    from visionfm.data.synth import generate

    size = 48
    tmp = tmp_path_factory.mktemp("probe_pretraining")
    generate("single_cls", tmp / "data", num=960, img_size=size, seed=1)
    root = tmp / "data" / "FundusClassification"
    pre = tmp / "pretrain" / "Fundus"
    pre.mkdir(parents=True)
    for p in sorted((root / "dataset_A" / "training").glob("*.png"))[:160]:
        shutil.copy(p, pre / p.name)
    assert cli_main([
        "pretrain", "--data_path", str(tmp / "pretrain"), "--modality", "Fundus", "--arch", "vit_tiny",
        "--input_size", str(size), "--batch_size_per_gpu", "16", "--epochs", "4", "--warmup_epochs", "1",
        "--warmup_teacher_temp_epochs", "1", "--lr", "1e-2", "--momentum_teacher", "0.9", "--out_dim", "64",
        "--patch_out_dim", "64", "--num_workers", "0", "--saveckp_freq", "1000", "--name", "probe",
        "--output_dir", str(tmp), "--seed", "0", "--device", "cpu", "--no_progress",
    ]) == 0
    return root, tmp / "probe" / "checkpoint.pth", size
