"""visionfm.train is the CLI command as a function: same config, same run folder, same metrics."""

import json

import pytest

import visionfm
from tests.tasks.test_features import run_cli, write_vfm
from visionfm.errors import ConfigError

OPTIONS = {"arch": "vit_tiny", "input_size": 32, "patch_size": 16, "modality": "Fundus", "batch_size_per_gpu": 16,
           "num_workers": 0, "epochs": 8, "lr": 0.05, "device": "cpu", "report_n_boot": 0, "num_labels": 3}


def test_train_equals_the_cli_and_rejects_unknown_options(tmp_path):
    data = write_vfm(tmp_path / "data", n_train=24, n_test=12, n_val=6, n_classes=3)
    result = visionfm.train("classification", data=data, encoder="random", name="api", output_dir=str(tmp_path),
                            **OPTIONS)
    flags = [x for k, v in OPTIONS.items() for x in (f"--{k}", str(v))]
    assert run_cli("train-cls", "--name", "cli", "--data_path", str(data), "--pretrained_weights", "random",
                   "--output_dir", str(tmp_path), *flags) == 0
    cli_metrics = json.loads((tmp_path / "cli" / "report" / "metrics.json").read_text())
    assert result.run_dir == tmp_path / "api" and result.config.epochs == 8
    assert result.metrics["accuracy"] == cli_metrics["accuracy"] and result.metrics["f1_macro"] == cli_metrics["f1_macro"]
    assert result.load().task == "classification"
    with pytest.raises(ConfigError, match="unknown option.*epoch_count.*valid:.*epochs"):
        visionfm.train("classification", data=data, encoder="random", epoch_count=3)
    with pytest.raises(ConfigError, match="unknown task 'clasification'"):
        visionfm.train("clasification", data=data)
