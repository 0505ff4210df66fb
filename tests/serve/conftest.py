"""Shared fixtures for the ``visionfm serve`` tests: tiny packaged model folders and a live server."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

SIZE = 32

#: a model card addition that would run script if the page inserted the card as HTML
CARD_INJECTION = ('Notes: <script>window.__pwned = 1</script> <img src="x" onerror="window.__pwned = 2"> '
                  'and **checked on 12 eyes**.')
DR_METRICS = {"accuracy": 0.8125, "f1_macro": 0.7134, "auroc_macro": 0.9021, "n_images": 48,
              "ci": {"f1_macro": {"low": 0.6012, "high": 0.8033, "level": 0.95, "n_boot": 500},
                     "auroc_macro": {"low": 0.8411, "high": 0.9530, "level": 0.95, "n_boot": 500}}}


@pytest.fixture(scope="session")
def tiny_encoder():
    from visionfm.models import build_encoder

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build_encoder("vit_tiny", img_size=SIZE, patch_size=16)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory, tiny_encoder) -> Path:
    """A folder of model folders like a user's: a classification run (``dr/model``, with metrics, 95 % CIs
    and a model card addition that tries script injection), a multi-label classifier, a regression model
    with units, a UNETR segmenter, a landmark model with names and metrics, one without landmark names."""
    from visionfm.models.heads import ClsHead
    from visionfm.models.heads.reg import RegHead
    from visionfm.models.heads.unetr import UnetrHead
    from visionfm.packaging import model_folder_from_training

    root = tmp_path_factory.mktemp("models")
    enc = tiny_encoder
    pooled = {"type": "pooled", "n_last_blocks": 4, "avgpool": 0}
    dense = {"type": "dense", "block_ids": [2, 5, 8, 11]}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model_folder_from_training(
            root / "dr" / "model", encoder=enc, head=ClsHead(192 * 4, 3).eval(), task="classification",
            task_kind="multiclass", modality="Fundus", input_size=SIZE, features=pooled, head_type="cls",
            head_args={"embed_dim": 192 * 4, "num_classes": 3}, class_names=["normal", "dr", "amd"],
            name="DR grading (test)", metrics=DR_METRICS, model_card_extra=CARD_INJECTION,
            data={"evaluated_on": "the test split, with the epoch selected on val", "selection_split": "val",
                  "data_path": str(root / "dr-images"), "run": str(root / "dr")})
        model_folder_from_training(
            root / "findings", encoder=enc, head=ClsHead(192 * 4, 3).eval(), task="classification",
            task_kind="multilabel", modality="Fundus", input_size=SIZE, features=pooled, head_type="cls",
            head_args={"embed_dim": 192 * 4, "num_classes": 3}, class_names=["drusen", "haemorrhage", "exudate"],
            name="Findings (test)")
        model_folder_from_training(
            root / "biomarkers", encoder=enc, head=RegHead(192 * 4, 2).eval(), task="regression",
            modality="Fundus", input_size=SIZE, features=pooled, head_type="reg",
            head_args={"embed_dim": 192 * 4, "num_targets": 2},
            target_names=["cup-to-disc ratio [ratio]", "vessel density [%]"], target_mean=[0.4, 12.0],
            target_std=[0.1, 3.0], name="Biomarkers (test)")
        model_folder_from_training(
            root / "seg", encoder=enc, head=UnetrHead(192, 3, patch_size=16).eval(), task="segmentation",
            modality="Fundus", input_size=SIZE, interpolation="bilinear", features=dense, head_type="unetr",
            head_args={"embed_dim": 192, "num_classes": 3, "patch_size": 16},
            class_names=["background", "disc", "cup"], name="Disc/cup segmentation (test)")
        model_folder_from_training(
            root / "fovea", encoder=enc, head=UnetrHead(192, 2, patch_size=16).eval(), task="landmark",
            modality="Fundus", input_size=SIZE, interpolation="bilinear", features=dense, head_type="unetr",
            head_args={"embed_dim": 192, "num_classes": 2, "patch_size": 16},
            landmark_names=["fovea", "disc centre"], name="Fovea (test)",
            metrics={"mre_px": 3.21, "mre_original_px": 4.07, "selection": {"split": "val", "key": "mre_px",
                                                                            "value": 2.95}})
        model_folder_from_training(
            root / "points", encoder=enc, head=UnetrHead(192, 2, patch_size=16).eval(), task="landmark",
            modality="Fundus", input_size=SIZE, interpolation="bilinear", features=dense, head_type="unetr",
            head_args={"embed_dim": 192, "num_classes": 2, "patch_size": 16}, name="Unnamed points (test)")
    broken = root / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    return root


def retina_bytes() -> bytes:
    import skimage.data

    return (Path(skimage.data.__file__).parent / "retina.jpg").read_bytes()


@contextlib.contextmanager
def live_server(app) -> Iterator[str]:
    """``app`` served by uvicorn on a free loopback port in a background thread; yields the base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
