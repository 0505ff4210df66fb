"""Bad flags and ``--config`` values across every command (issue 13, findings 5 and 6): each one is refused
with exit code 2 and exactly one line on stderr that names the flag, no traceback, nothing written.

Most inputs fail when the command's values are checked (:mod:`visionfm.config.checks`), before any model
is built; the few that need data (the batch larger than the data set, bounds known once the encoder is
loaded) share one tiny synthetic fixture. The table is built from a list of bad values per flag, applied
to every command that has the flag (``visionfm <cmd> --help``), plus the inputs of one command only.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml

from visionfm.cli.main import COMMANDS, build_parser
from visionfm.cli.main import main as cli_main

OUT = "{out}"  # replaced by a fresh path per case; it must not exist afterwards
DATA = "{data}"  # a path that is never read by these cases (they fail before)

# Every command with the flags it needs to get past argparse; {out} is where it would write.
BASE: dict[str, list[str]] = {
    "pretrain": ["--name", "r", "--data_path", DATA, "--output_dir", OUT, "--arch", "vit_tiny", "--input_size", "32"],
    "train-cls": ["--name", "r", "--data_path", DATA, "--pretrained_weights", "random", "--arch", "vit_tiny",
                  "--input_size", "32", "--output_dir", OUT],
    "train-multi-cls": ["--name", "r", "--datasets", "a", "--data_path", DATA, "--output_dir", OUT],
    "train-reg": ["--name", "r", "--datasets", "a", "--data_path", DATA, "--output_dir", OUT],
    "train-seg": ["--name", "r", "--data_path", DATA, "--pretrained_weights", "random", "--arch", "vit_tiny",
                  "--input_size", "32", "--output_dir", OUT],
    "train-landmark": ["--name", "r", "--data_path", DATA, "--pretrained_weights", "random", "--arch", "vit_tiny",
                       "--input_size", "32", "--output_dir", OUT],
    "train-forecast": ["--data_path", DATA, "--pretrained_weights", "random", "--arch", "vit_tiny", "--input_size",
                       "32", "--output_dir", OUT],
    "finetune": ["--data_path", DATA, "--pretrained_weights", "random", "--arch", "vit_tiny", "--input_size", "32",
                 "--output_dir", OUT],
    "evaluate": ["--data_path", DATA, "--model", DATA, "--output_dir", OUT],
    "extract": ["--pretrained_weights", "random", "--arch", "vit_tiny", "--input_size", "32", "--data_path", DATA,
                "--dst_root", OUT],
    "predict": ["--model", DATA, "--input", DATA, "--output", OUT],
    "synth": ["--task", "single_cls", "--dst_dir", OUT, "--num", "2", "--img_size", "32"],
    "prepare": ["--data_path", DATA, "--dst_path", OUT, "--workers", "1"],
    "serve": ["--models", DATA],
    "demo": ["--output_dir", OUT],
    "export": ["--weights", DATA, "--out", OUT + "/x.safetensors"],
    "convert-features": [DATA, OUT],
    "weights": ["fetch", "Fundus"],
    "datasets": ["fetch", "visionfm-processed"],
}

# Bad values of a flag, tried on every command that has it: (flag, value).
GENERIC: list[tuple[str, str]] = [
    ("batch_size_per_gpu", "0"), ("batch_size_per_gpu", "-4"), ("batch_size_per_gpu", "x"),
    ("epochs", "0"), ("epochs", "-1"), ("lr", "nan"), ("lr", "-1"), ("lr", "inf"),
    ("num_workers", "-1"), ("input_size", "0"), ("patch_size", "0"), ("patch_size", "-16"),
    ("n_last_blocks", "0"), ("n_last_blocks", "99"), ("seed", "-1"), ("val_freq", "0"), ("device", "gpu"),
    ("report_n_boot", "-1"), ("num_labels", "0"), ("weight_decay", "-0.1"), ("bn_momentum", "1.5"),
    ("output_dir", "{file}"), ("avgpool_patchtokens", "3"), ("amp", "maybe"), ("embed_dim", "0"),
]

# Generic values a command accepts on purpose, or checks only once its data or model is read.
GENERIC_SKIP = {
    ("train-forecast", "num_labels", "0"),  # unused, as in the original: any value is accepted
    ("finetune", "n_last_blocks", "99"),  # bounded by the encoder's depth: test_bounds_known_after_loading
    ("evaluate", "n_last_blocks", "99"),  # read from the checkpoint, checked against its head there
}

# Inputs of one command: (command, extra argv, the flag the message must name).
SPECIFIC: list[tuple[str, list[str], str]] = [
    # pretraining
    ("pretrain", ["--input_size", "50"], "--input_size"),
    ("pretrain", ["--patch_size", "0"], "--patch_size"),  # was ZeroDivisionError
    ("pretrain", ["--out_dim", "0"], "--out_dim"),
    ("pretrain", ["--patch_out_dim", "-1"], "--patch_out_dim"),
    ("pretrain", ["--out_dim", "256"], "--patch_out_dim"),  # default 8192 + default head sharing: size mismatch
    ("pretrain", ["--out_dim", "64", "--patch_out_dim", "128", "--shared_head", "true",
                  "--shared_head_teacher", "false"], "--patch_out_dim"),
    ("pretrain", ["--pred_ratio", "1.5"], "--pred_ratio"),
    ("pretrain", ["--pred_ratio", "-0.1"], "--pred_ratio"),
    ("pretrain", ["--pred_ratio", "0.3", "--pred_ratio_var", "0.5"], "--pred_ratio"),
    ("pretrain", ["--pred_ratio", "0.1", "0.3", "--pred_ratio_var", "0", "0", "0"], "--pred_ratio"),
    ("pretrain", ["--saveckp_iters", "-1"], "--saveckp_iters"),  # was: a checkpoint every iteration
    ("pretrain", ["--saveckp_freq", "0"], "--saveckp_freq"),
    ("pretrain", ["--momentum_teacher", "1.5"], "--momentum_teacher"),
    ("pretrain", ["--drop_path", "1"], "--drop_path"),
    ("pretrain", ["--teacher_temp", "0"], "--teacher_temp"),
    ("pretrain", ["--warmup_teacher_temp", "-0.04"], "--warmup_teacher_temp"),
    ("pretrain", ["--teacher_patch_temp", "nan"], "--teacher_patch_temp"),
    ("pretrain", ["--warmup_teacher_temp_epochs", "-1"], "--warmup_teacher_temp_epochs"),
    ("pretrain", ["--clip_grad", "-1"], "--clip_grad"),
    ("pretrain", ["--min_lr", "-1e-6"], "--min_lr"),
    ("pretrain", ["--weight_decay_end", "nan"], "--weight_decay_end"),
    ("pretrain", ["--warmup_epochs", "-1"], "--warmup_epochs"),
    ("pretrain", ["--epochs", "2", "--warmup_epochs", "5"], "--warmup_epochs"),
    ("pretrain", ["--freeze_last_layer", "-1"], "--freeze_last_layer"),
    ("pretrain", ["--global_crops_number", "0"], "--global_crops_number"),
    ("pretrain", ["--local_crops_number", "-2"], "--local_crops_number"),
    ("pretrain", ["--local_crops_number", "2", "--local_crops_size", "50"], "--local_crops_size"),
    ("pretrain", ["--global_crops_scale", "0", "1"], "--global_crops_scale"),
    ("pretrain", ["--global_crops_scale", "0.5", "1.5"], "--global_crops_scale"),
    ("pretrain", ["--local_crops_scale", "0.4", "0.05"], "--local_crops_scale"),
    ("pretrain", ["--lambda1", "-1"], "--lambda1"),
    ("pretrain", ["--lambda2", "inf"], "--lambda2"),
    ("pretrain", ["--pred_start_epoch", "-1"], "--pred_start_epoch"),
    ("pretrain", ["--max_nonfinite_steps", "0"], "--max_nonfinite_steps"),
    ("pretrain", ["--log_freq", "0"], "--log_freq"),
    ("pretrain", ["--optimizer", "adam"], "--optimizer"),
    ("pretrain", ["--precision", "fp8"], "--precision"),
    ("pretrain", ["--shared_head", "maybe"], "--shared_head"),
    ("pretrain", ["--arch", "vit_huge"], "--arch"),
    # the decoders and fine-tuning
    ("train-cls", ["--input_size", "50", "--patch_size", "16"], "--input_size"),
    ("train-cls", ["--input_size", "50"], "--input_size"),  # patch size from the (random) weights
    ("train-cls", ["--n_last_blocks", "5"], "--n_last_blocks"),  # the features hold 4 levels
    ("train-cls", ["--dataset_format", "imagenet"], "--dataset_format"),
    ("train-cls", ["--task", "regression"], "--task"),
    ("train-cls", ["--head", "mlp"], "--head"),
    ("train-multi-cls", ["--datasets"], "--datasets"),
    ("train-multi-cls", ["--fusion", "mean"], "--fusion"),
    ("train-reg", ["--lr_scaling", "sqrt"], "--lr_scaling"),
    ("train-seg", ["--block_ids", "1", "2", "3", "-1"], "--block_ids"),
    ("train-seg", ["--block_ids", "1", "2"], "--block_ids"),
    ("train-seg", ["--n_overlays", "-1"], "--n_overlays"),
    ("train-seg", ["--cache_max_gb", "nan"], "--cache_max_gb"),
    ("train-seg", ["--scheduler", "linear"], "--scheduler"),
    ("train-landmark", ["--sigma", "0"], "--sigma"),
    ("train-landmark", ["--affine_p", "1.5"], "--affine_p"),
    ("train-forecast", ["--max_len", "0"], "--max_len"),
    ("train-forecast", ["--pos_weight", "0"], "--pos_weight"),
    ("train-forecast", ["--threshold", "2"], "--threshold"),
    ("train-forecast", ["--specificity", "-0.5"], "--specificity"),
    ("train-forecast", ["--dropout", "1"], "--dropout"),
    ("train-forecast", ["--n_last_blocks", "6"], "--n_last_blocks"),
    ("finetune", ["--accum_iter", "0"], "--accum_iter"),
    ("finetune", ["--layer_decay", "0"], "--layer_decay"),
    ("finetune", ["--min_crop_scale", "0"], "--min_crop_scale"),
    ("finetune", ["--smoothing", "1"], "--smoothing"),
    ("finetune", ["--reprob", "2"], "--reprob"),
    ("finetune", ["--mixup", "-1"], "--mixup"),
    ("finetune", ["--mixup_prob", "1.5"], "--mixup_prob"),
    ("finetune", ["--encoder_lr_scale", "nan"], "--encoder_lr_scale"),
    ("finetune", ["--warmup_epochs", "-1"], "--warmup_epochs"),
    ("finetune", ["--drop_path", "1.5"], "--drop_path"),
    ("finetune", ["--recipe", "mae"], "--recipe"),
    ("evaluate", ["--split", "training"], "--split"),
    # the commands without a typed config
    ("extract", ["--mode", "dense"], "--mode"),
    ("predict", ["--batch_size", "0"], "--batch_size"),
    ("predict", ["--days", "-30"], "--days"),
    ("predict", ["--days", "nan"], "--days"),
    ("predict", ["--output", "{file}"], "--output"),
    ("synth", ["--num", "0"], "--num"),
    ("synth", ["--img_size", "0"], "--img_size"),
    ("synth", ["--num_classes", "7"], "--num_classes"),
    ("synth", ["--workers", "0"], "--workers"),
    ("synth", ["--dst_dir", "{file}"], "--dst_dir"),
    ("prepare", ["--quality", "0"], "--quality"),
    ("prepare", ["--quality", "101"], "--quality"),
    ("prepare", ["--short_side", "0"], "--short_side"),
    ("prepare", ["--max_side", "-1"], "--max_side"),
    ("prepare", ["--workers", "0"], "--workers"),
    ("prepare", ["--dst_path", "{file}/sub"], "--dst_path"),
    ("serve", ["--port", "-1"], "--port"),
    ("serve", ["--port", "70000"], "--port"),
    ("serve", ["--workers", "0"], "--workers"),
    ("serve", ["--max_upload_mb", "0"], "--max_upload_mb"),
    ("serve", ["--max_megapixels", "nan"], "--max_megapixels"),
    ("serve", ["--log_level", "verbose"], "--log_level"),
    ("demo", ["--num", "0"], "--num"),
    ("demo", ["--img_size", "-64"], "--img_size"),
    ("demo", ["--pretrain_epochs", "0"], "--pretrain_epochs"),
    ("demo", ["--decoder_epochs", "0"], "--decoder_epochs"),
    ("demo", ["--seg_epochs", "-1"], "--seg_epochs"),
    ("export", ["--patch_size", "0"], "--patch_size"),
    ("convert-features", ["--progress", "sometimes"], "--progress"),
    ("weights", ["--url", "ftp://example.org/x.pth"], "--url"),  # refused before any download
    ("datasets", ["--url", "ftp://example.org/x.zip"], "--url"),
]

# ``--config`` YAML values (argparse checks neither their type nor their choices): (command, YAML, flag).
YAML_CASES: list[tuple[str, dict, str]] = [
    ("pretrain", {"epochs": [1, 2]}, "--epochs"),
    ("pretrain", {"epochs": 1.5}, "--epochs"),
    ("pretrain", {"lr": "nan"}, "--lr"),
    ("pretrain", {"lr": [0.1]}, "--lr"),
    ("pretrain", {"optimizer": "adam"}, "--optimizer"),
    ("pretrain", {"pred_ratio": 1.5}, "--pred_ratio"),
    ("pretrain", {"global_crops_scale": [0.5]}, "--global_crops_scale"),
    ("pretrain", {"shared_head": "perhaps"}, "--shared_head"),
    ("pretrain", {"use_flash": "yes please"}, "--use_flash"),
    ("evaluate", {"arch": "vit_huge"}, "--arch"),
    ("pretrain", {"device": "gpu"}, "--device"),
    ("train-cls", {"device": "gpu"}, "--device"),  # was: ran on the CPU
    ("train-cls", {"epochs": [1, 2]}, "--epochs"),
    ("train-cls", {"batch_size_per_gpu": 0}, "--batch_size_per_gpu"),
    ("train-cls", {"test": "no"}, "--test"),
    ("train-cls", {"num_labels": None}, "--num_labels"),
    ("train-cls", {"task": "regression"}, "--task"),
    ("train-cls", {"n_last_blocks": True}, "--n_last_blocks"),
    ("train-seg", {"block_ids": [1, 2, 3]}, "--block_ids"),
    ("train-seg", {"head_type": "mlp"}, "--head_type"),
    ("train-multi-cls", {"bn_momentum": -1}, "--bn_momentum"),
    ("train-reg", {"fusion": "sum"}, "--fusion"),
    ("finetune", {"recipe": "mae"}, "--recipe"),
    ("finetune", {"mixup": "lots"}, "--mixup"),
    ("evaluate", {"split": "training"}, "--split"),
    ("extract", {"batch_size_per_gpu": 0}, "--batch_size_per_gpu"),
    ("extract", {"mode": "dense"}, "--mode"),
    ("predict", {"device": "gpu"}, "--device"),
    ("predict", {"batch_size": [8]}, "--batch_size"),
    ("prepare", {"format": "gif"}, "--format"),
    ("prepare", {"quality": 0}, "--quality"),
    ("serve", {"port": "http"}, "--port"),
    ("serve", {"device": "tpu"}, "--device"),
]


def _flags(command: str) -> set[str]:
    _, subs = build_parser()
    sp = subs[command]
    importlib.import_module(COMMANDS[command][0]).add_arguments(sp)
    return {a.dest for a in sp._actions}


def _generic_cases() -> list[tuple[str, list[str], str]]:
    cases = []
    for command in BASE:
        have = _flags(command)
        for flag, value in GENERIC:
            if flag not in have or (command, flag, value) in GENERIC_SKIP:
                continue
            cases.append((command, [f"--{flag}", value], f"--{flag}"))
    return cases


def _id(case) -> str:
    command, extra, _, data = case
    return f"{command}:{'yaml:' + ','.join(f'{k}={v}' for k, v in data.items()) if data else ' '.join(extra)}"


CASES = list({_id(c): c for c in [(c, ["--config", "{yaml}"], flag, data) for c, data, flag in YAML_CASES]
              + [(c, extra, flag, None) for c, extra, flag in _generic_cases() + SPECIFIC]}.values())


@pytest.fixture
def no_server(monkeypatch):
    """A ``serve`` case that got past the checks must not start a server."""
    try:
        import uvicorn
    except ImportError:
        return

    def refuse(*a, **k):
        raise AssertionError("the server was started")

    monkeypatch.setattr(uvicorn, "run", refuse)


def _run(argv: list[str]) -> int:
    try:
        return cli_main(argv)
    except SystemExit as exc:  # argparse
        return int(exc.code or 0)


def _assert_refused(capfd, argv: list[str], flag: str, out: Path, progress_logged: bool = False) -> str:
    """Exit code 2, one line on stderr naming ``flag`` (after INFO progress lines when ``progress_logged``:
    a check that needs the data or the model runs after the command has said what it starts), no
    traceback, ``out`` not created. Returns the line."""
    code = _run(argv)
    cap = capfd.readouterr()
    lines = [x for x in cap.err.splitlines() if x.strip()]
    assert code == 2, (code, cap.err[-2000:])
    assert "Traceback" not in cap.err + cap.out
    if progress_logged:
        assert all(" INFO " in x for x in lines[:-1]), cap.err
        lines = lines[-1:]
    assert len(lines) == 1, cap.err
    assert flag in lines[0] or flag.replace("_", "-") in lines[0], lines[0]
    assert not out.exists(), f"{out} was created"
    return lines[0]


def test_the_table_is_large_and_distinct():
    ids = [_id(c) for c in CASES]
    assert len(ids) == len(set(ids))
    assert len(CASES) >= 100, len(CASES)
    assert {c[0] for c in CASES} >= set(BASE) and set(BASE) == set(COMMANDS) - {"info"}


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_bad_flag_is_one_line_exit_2(case, tmp_path, capfd, no_server):
    command, extra, flag, data = case
    out = tmp_path / "out"
    a_file = tmp_path / "a_file.txt"
    a_file.write_text("not a folder\n")
    cfg = tmp_path / "run.yaml"
    if data is not None:
        cfg.write_text(yaml.safe_dump(data))
    subst = {"{out}": str(out), "{data}": str(tmp_path / "no_data"), "{file}": str(a_file), "{yaml}": str(cfg)}

    def fill(s: str) -> str:
        for k, v in subst.items():
            s = s.replace(k, v)
        return s

    argv = [command] + [fill(x) for x in BASE[command]] + [fill(x) for x in extra]
    line = _assert_refused(capfd, argv, flag, out)
    assert line.startswith(f"visionfm {command}: error: ")
    if data is not None:
        assert str(cfg) in line  # a YAML value names its file
    assert not (tmp_path / "no_data").exists()


# -- the inputs that need data: one tiny shared fixture ------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from visionfm.data.synth import generate

    root = tmp_path_factory.mktemp("tiny")
    generate("pretrain", root / "pre", num=4, img_size=32, seed=0)
    generate("single_cls", root / "cls", num=4, img_size=32, seed=0)
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):  # the fine-tuning layout: <split>/<class>/ images
        for cls in ("a", "b"):
            (root / "folders" / split / cls).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
                    root / "folders" / split / cls / f"{i}.png")
    return root


PRETRAIN_TINY = ["--modality", "Fundus", "--arch", "vit_tiny", "--input_size", "32", "--epochs", "1",
                 "--warmup_epochs", "0", "--warmup_teacher_temp_epochs", "0", "--out_dim", "16", "--patch_out_dim",
                 "16", "--num_workers", "0", "--device", "cpu", "--no_progress", "--name", "r"]


@pytest.mark.parametrize("extra, flag", [
    (["--batch_size_per_gpu", "100"], "--batch_size_per_gpu"),  # 4 images: no batch can be filled
])
def test_pretrain_batch_larger_than_the_data_set(tiny, tmp_path, capfd, extra, flag):
    out = tmp_path / "out"
    argv = ["pretrain", "--data_path", str(tiny / "pre"), "--output_dir", str(out), *PRETRAIN_TINY, *extra]
    line = _assert_refused(capfd, argv, flag, out, progress_logged=True)
    assert "4 images" in line


def test_config_value_overridden_by_a_flag_is_not_blamed(tmp_path, capfd):
    """A bad YAML value that the command line overrides never reaches the checks; the good flag wins."""
    from visionfm.cli.options import VFMArgumentParser, parse_with_config, to_config
    from visionfm.cli.train_cls import add_arguments
    from visionfm.config import TrainClsConfig

    cfg = tmp_path / "run.yaml"
    cfg.write_text("epochs: 0\nlr: 0.5\n")
    p = VFMArgumentParser(prog="visionfm train-cls")
    add_arguments(p)
    c = to_config(TrainClsConfig, parse_with_config(p, ["--name", "r", "--config", str(cfg), "--epochs", "3"]))
    assert (c.epochs, c.lr) == (3, 0.5)


def test_accepted_values_stay_accepted(tmp_path):
    """The edges of each range pass, and values are kept as given (ints as floats where floats are expected)."""
    from visionfm.config import PretrainConfig, TrainClsConfig

    c = TrainClsConfig.from_mapping({"name": "r", "epochs": 1, "lr": 0, "num_workers": 0, "n_last_blocks": 4,
                                     "bn_momentum": 1, "report_n_boot": 0, "patch_size": 16, "input_size": 32,
                                     "output_dir": str(tmp_path / "new" / "folder")})
    assert c.lr == 0.0 and isinstance(c.lr, float) and c.patch_size == 16
    p = PretrainConfig.from_mapping({"name": "r", "pred_ratio": 0.0, "saveckp_iters": 0, "drop_path": 0,
                                     "momentum_teacher": 1, "norm_in_head": None, "global_crops_scale": [0.32, 1]})
    assert p.pred_ratio == [0.0] and p.global_crops_scale == [0.32, 1.0]


FINETUNE_TINY = ["--pretrained_weights", "random", "--arch", "vit_tiny", "--input_size", "32", "--epochs", "1",
                 "--num_workers", "0", "--device", "cpu", "--report_n_boot", "0", "--name", "r"]


@pytest.mark.parametrize("extra, flag", [
    (["--n_last_blocks", "13"], "--n_last_blocks"),  # vit_tiny has 12 blocks
    (["--n_last_blocks", "99", "--avgpool_patchtokens", "2"], "--n_last_blocks"),
])
def test_bounds_known_after_loading(tiny, tmp_path, capfd, extra, flag):
    out = tmp_path / "out"
    argv = ["finetune", "--data_path", str(tiny / "folders"), "--output_dir", str(out), *FINETUNE_TINY, *extra]
    line = _assert_refused(capfd, argv, flag, out, progress_logged=True)
    assert "12" in line


# -- the rule table agrees with the flags ---------------------------------------------------------------------


def test_rule_choices_are_the_flags_choices():
    """A config value is checked against the same choices as its flag (YAML and API values skip argparse)."""
    from visionfm.config import CONFIGS
    from visionfm.config.checks import rules_for

    for command in CONFIGS:
        _, subs = build_parser()
        sp = subs[command]
        importlib.import_module(COMMANDS[command][0]).add_arguments(sp)
        rules = rules_for(command)
        for a in sp._actions:
            if a.choices is not None:
                assert a.dest in rules and rules[a.dest].choices is not None, (command, a.dest)
                assert list(rules[a.dest].choices) == list(a.choices), (command, a.dest)


def test_constants_mirror_their_layers():
    from visionfm.config.checks import ARCH_NAMES, FEATURE_LEVELS
    from visionfm.engine.features import CLS_LEVELS
    from visionfm.models.archs import ARCHS

    assert list(ARCH_NAMES) == list(ARCHS) and FEATURE_LEVELS == CLS_LEVELS
