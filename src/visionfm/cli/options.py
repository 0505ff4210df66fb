"""Argument parsing shared by every command.

Every flag is accepted in the original's underscore spelling (``--batch_size_per_gpu``) and in the
hyphenated spelling (``--batch-size-per-gpu``). ``--config run.yaml`` supplies defaults for any flag
(YAML keys use the underscore names, any alias of a flag included); flags given on the command line win,
and a required flag may come from the file. ``--local_rank`` /
``--local-rank`` (passed by the deprecated ``torch.distributed.launch``) are accepted and ignored:
rank always comes from the environment.

One vocabulary across commands (docs/original-commands.md, "One flag vocabulary"): a concept has one
canonical flag, the original's name where it had one (``--output_dir``, ``--batch_size_per_gpu``,
``--pretrained_weights``, ``--data_path``, ``--num_workers``, ``--head_type``), and the other spellings
commands used are aliases of the same option. ``--help`` shows every flag's default (:class:`VFMHelpFormatter`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

import yaml

__all__ = [
    "VFMArgumentParser",
    "VFMHelpFormatter",
    "NUM_WORKERS",
    "add_device_argument",
    "bool_flag",
    "parse_with_config",
    "to_config",
    "check_args",
    "arch_choices",
    "add_store_decoder_arguments",
    "add_dense_arguments",
    "add_arch_arguments",
    "add_modality_argument",
]

# Flags that steer parsing or the launcher, not the command itself (they are not config fields).
NOT_CONFIG = {"config", "dist_url", "local_rank", "command"}
# Namespace attribute: {flag dest: --config file} for the values that came from the YAML file.
CONFIG_SOURCES = "_config_sources"
# DataLoader workers of every command that loads images: the original's value for main_pretrain.py,
# train_cls_decoder.py and the fine-tuning/inference scripts (its other scripts used 4).
NUM_WORKERS = 10


def format_default(value: Any) -> str:
    """A default as ``--help`` shows it: booleans ``true``/``false`` (as :func:`bool_flag` reads them), lists
    space-separated (as typed), ``None`` as ``not set``, an empty string as ``''``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "not set"
    if isinstance(value, (list, tuple)):
        return " ".join(format_default(v) for v in value) if value else "none"
    if value == "":
        return "''"
    return str(value)


class VFMHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every flag's help ends with its default, ``(default: ...)`` formatted by :func:`format_default`, or
    ``(required)``; a help that already states its default (``(default: ...``, ``default: ...``) is kept."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if isinstance(action, (argparse._SubParsersAction, argparse._SubParsersAction._ChoicesPseudoAction)):
            return text  # the command list: a choice of parsers, each with its own defaults
        if text == argparse.SUPPRESS or "%(default)" in text or "(default" in text or "default:" in text:
            return text
        if action.required or (not action.option_strings and action.nargs in (None, "+")):
            return f"{text} (required)".strip()
        if action.default is argparse.SUPPRESS:
            return text
        return f"{text} (default: {format_default(action.default).replace('%', '%%')})".strip()


def add_device_argument(p: argparse.ArgumentParser) -> None:
    """``--device``, the same everywhere: ``auto`` picks CUDA when it is available, else the CPU."""
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where to run: auto = cuda when a GPU is available, else cpu")


def arch_choices() -> list[str]:
    """The ``--arch`` choices: the architecture table of :mod:`visionfm.models.archs`."""
    from visionfm.models.archs import ARCHS

    return list(ARCHS)


def to_config(cls: Any, args: argparse.Namespace) -> Any:
    """The command's typed config (:mod:`visionfm.config`) from its parsed flags; every value is checked
    there (:mod:`visionfm.config.checks`), those from ``--config`` YAML too."""
    values = {k: v for k, v in vars(args).items() if k not in NOT_CONFIG and not k.startswith("_")}
    return cls.from_mapping(values, sources=getattr(args, CONFIG_SOURCES, None))


def _flag_kind(action: argparse.Action) -> Any:
    """The annotation a flag's parsed value has (``int``, ``list[float] | None``...), for :func:`check_args`."""
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)) or action.type is bool_flag:
        kind: Any = bool
    elif action.type in (int, float):
        kind = action.type
    elif action.type is None:
        kind = str
    else:
        return Any
    if action.nargs in ("+", "*") or (isinstance(action.nargs, int) and action.nargs > 0):  # store_true: nargs 0
        kind = list[kind]  # type: ignore[valid-type]
    return kind | None if action.default is None else kind


def check_args(command: str, parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Check the flags of a command without a typed config (``extract``, ``predict``, ``serve``...) with
    the same rules as the configs (:func:`visionfm.config.checks.check_values`): types read off the
    flags, their ``choices``, and the ranges of the rule table. Values from ``--config`` YAML, which
    argparse leaves unchecked, are checked here like flags."""
    from visionfm.config.checks import Rule, check_values

    actions = [a for a in parser._actions if a.dest not in NOT_CONFIG and a.dest not in ("help", "version")]
    kinds = {a.dest: _flag_kind(a) for a in actions}
    choices = {a.dest: Rule(choices=tuple(a.choices)) for a in actions if a.choices is not None}
    values = {a.dest: getattr(args, a.dest) for a in actions if hasattr(args, a.dest)}
    checked = check_values(command, values, kinds, getattr(args, CONFIG_SOURCES, None), extra_rules=choices)
    for key, value in checked.items():
        setattr(args, key, value)


def bool_flag(value: str | bool) -> bool:
    """Parse on/off/true/false/1/0/yes/no (case-insensitive), as the original's ``bool_flag``."""
    if isinstance(value, bool):
        return value
    v = str(value).strip().lower()
    if v in {"on", "true", "1", "yes", "y"}:
        return True
    if v in {"off", "false", "0", "no", "n"}:
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false, on/off, 1/0), got {value!r}")


class VFMArgumentParser(argparse.ArgumentParser):
    """ArgumentParser that also registers the hyphenated twin of every ``--snake_case`` flag."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", VFMHelpFormatter)
        kwargs.setdefault("allow_abbrev", True)  # unambiguous prefixes (--epoch), as the original's argparse
        super().__init__(*args, **kwargs)

    def add_argument(self, *names: Any, **kwargs: Any):  # type: ignore[override]
        extra = []
        for n in names:
            if isinstance(n, str) and n.startswith("--") and "_" in n:
                twin = n.replace("_", "-")
                if twin not in names:
                    extra.append(twin)
        return super().add_argument(*names, *extra, **kwargs)

    def error(self, message: str):  # type: ignore[override]
        """A usage error as one line on stderr (``visionfm CMD: error: ...``), exit code 2; ``--help``
        shows the usage."""
        self.exit(2, f"{self.prog}: error: {' '.join(str(message).split())}\n")

    def _get_option_tuples(self, option_string: str) -> list[Any]:
        # A prefix of a flag also prefixes its hyphenated twin (``--batch`` → ``--batch_size_per_gpu`` and
        # ``--batch-size-per-gpu``); one action matched twice is not ambiguous, so keep one match per action.
        seen: set[int] = set()
        unique = []
        for t in super()._get_option_tuples(option_string):  # type: ignore[misc]
            if id(t[0]) not in seen:
                seen.add(id(t[0]))
                unique.append(t)
        return unique

    def add_distributed_arguments(self) -> None:
        self.add_argument("--dist_url", default="env://", help="rendezvous URL (torchrun sets the environment)")
        self.add_argument("--local_rank", type=int, default=0,
                          help="accepted for torch.distributed.launch and ignored: rank comes from the environment")

    def add_config_argument(self) -> None:
        self.add_argument("--config", default=None, help="YAML file of flag values; command-line flags override it")

    def add_resume_argument(self) -> None:
        self.add_argument("--resume", action="store_true",
                          help="continue <output_dir>/<name>/checkpoint_last (refused when its settings differ); "
                               "without it an existing run of the same name is refused (see --overwrite)")

    def add_overwrite_argument(self) -> None:
        self.add_argument("--overwrite", action="store_true",
                          help="replace an earlier run in the run folder (its checkpoints, log.txt, reports); "
                               "without it (and without --resume) an existing run is refused")

    def add_run_arguments(self, resume: bool = True, report: bool = True) -> None:
        """The flags every training/evaluation command ends with: report resamples, device, resume,
        the launcher's flags and ``--config``."""
        if report:
            self.add_argument("--report_n_boot", type=int, default=1000,
                              help="bootstrap resamples for report CIs (0: none)")
        add_device_argument(self)
        if resume:
            self.add_resume_argument()
            self.add_overwrite_argument()
        self.add_distributed_arguments()
        self.add_config_argument()

    def add_encoder_arguments(self, weights_help: str = "encoder weights file, a modality name of the official "
                                                        "files, a model folder, or 'random' (needed to train)",
                              weights_default: str | None = None) -> None:
        """``--arch``, ``--input_size``, ``--patch_size``, ``--pretrained_weights``, ``--checkpoint_key``."""
        add_arch_arguments(self)
        self.add_argument("--input_size", type=int, default=224, help="side S of the square input (multiple of 16)")
        self.add_argument("--pretrained_weights", default=weights_default, help=weights_help)
        self.add_argument("--checkpoint_key", default="teacher",
                          help="sub-dict of the weights file holding the encoder")


def add_catalogue_arguments(p: argparse.ArgumentParser, *, actions_help: str, name_help: str, url_help: str,
                            json_help: str) -> None:
    """``ACTION [NAME] [--url URL] [--json]`` of the catalogue commands (``weights``, ``datasets``)."""
    p.add_argument("action", choices=["list", "path", "fetch"], help=actions_help)
    p.add_argument("name", nargs="?", default=None, help=name_help)
    p.add_argument("--url", default=None, help=url_help)
    p.add_argument("--json", action="store_true", default=False, help=json_help)


def check_catalogue_arguments(command: str, args: argparse.Namespace, example: str) -> None:
    """``list`` takes no NAME and no ``--url``; ``path`` and ``fetch`` need NAME; only ``fetch`` downloads."""
    from visionfm.errors import ConfigError

    if args.action == "list":
        if args.name is not None or args.url is not None:
            raise ConfigError(f"{command} list takes no NAME and no --url")
        return
    if not args.name:
        raise ConfigError(f"{command} {args.action}: NAME is required ({example}; see `visionfm {command} list`)")
    if args.action == "path" and args.url is not None:
        raise ConfigError(f"--url: only `{command} fetch` downloads")


def add_arch_arguments(p: argparse.ArgumentParser) -> None:
    """``--arch`` and ``--patch_size`` of a command that loads a frozen encoder: read from the weights file
    when not given, checked against it when given (``random`` weights: vit_base, 16)."""
    p.add_argument("--arch", default=None, choices=arch_choices(),
                   help="encoder architecture (default: read from the weights; checked when given; random: vit_base)")
    p.add_argument("--patch_size", type=int, default=None,
                   help="patch size (default: read from the weights; checked when given; random: 16)")


def add_modality_argument(p: argparse.ArgumentParser, fallback: str = "Fundus") -> None:
    """``--modality`` where it selects the normalisation statistics of images fed to a loaded encoder."""
    p.add_argument("--modality", default=None,
                   help=f"normalisation statistics (default: the modality the weights record, else {fallback}); "
                        "given, it wins")


def add_amp_argument(p: argparse.ArgumentParser) -> None:
    """``--amp`` of a command that runs a frozen encoder: bf16 autocast on CUDA, or fp32 as the original."""
    p.add_argument("--amp", type=bool_flag, default=True,
                   help="bf16 autocast of the frozen encoder on CUDA (false: fp32, as the original; no effect on CPU)")


def parse_with_config(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv``; when ``--config`` is given, its YAML values become the defaults.

    Unknown YAML keys are an error naming the file and the key, like an unknown flag. A key may be any
    spelling of a flag (``dst_root`` or ``output_dir`` for extract's output folder); a required flag given
    in the file need not be on the command line.
    """
    required = [a for a in parser._actions if a.required and a.option_strings]
    cfg_path = _config_path(parser, argv)
    defaults: dict[str, Any] = {}
    if cfg_path:
        path = Path(cfg_path)
        if not path.is_file():
            parser.error(f"--config {cfg_path}: file not found")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f":{mark.line + 1}" if mark is not None else ""
            parser.error(f"--config {cfg_path}{where}: not valid YAML ({getattr(exc, 'problem', None) or exc})")
        except (OSError, UnicodeDecodeError) as exc:
            parser.error(f"--config {cfg_path}: cannot read it as UTF-8 text ({exc})")
        if not isinstance(data, dict):
            parser.error(f"--config {cfg_path}: expected a mapping of flag names to values, got {type(data).__name__}")
        actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}
        names = {o.lstrip("-").replace("-", "_"): a for a in actions.values() for o in a.option_strings}
        for key, value in data.items():
            action = actions.get(str(key).replace("-", "_")) or names.get(str(key).replace("-", "_"))
            if action is None:
                parser.error(f"--config {cfg_path}: unknown key {key!r}")
            if action.dest in defaults:
                parser.error(f"--config {cfg_path}: {key!r} repeats another spelling of --{action.dest}")
            defaults[action.dest] = _yaml_value(parser, action, value, str(cfg_path))
        parser.set_defaults(**defaults)
    given = [a for a in required if a.dest in defaults]
    for a in given:
        a.required = False
    try:
        args = parser.parse_args(argv)
        # which values came from the file (the flags not given on the command line), for the checks' messages
        if defaults:
            probe = argparse.Namespace(**{k: _FROM_FILE for k in defaults})
            parser.parse_known_args(argv, namespace=probe)
            setattr(args, CONFIG_SOURCES, {k: str(cfg_path) for k in defaults if getattr(probe, k) is _FROM_FILE})
    finally:
        for a in given:
            a.required = True
    return args


_FROM_FILE = object()


def _config_path(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> str | None:
    """The ``--config`` value of ``argv`` alone (the full parse, which needs the file's values, comes after)."""
    flags = [o for a in parser._actions if a.dest == "config" for o in a.option_strings]
    if not flags:
        return None
    pre = _ConfigOnly(add_help=False)
    pre.add_argument(*flags, dest="config", default=None)
    try:
        return pre.parse_known_args(argv)[0].config
    except ValueError:  # e.g. --config without a value: the full parse reports it
        return None


class _ConfigOnly(argparse.ArgumentParser):
    def error(self, message: str):  # type: ignore[override]
        raise ValueError(message)


def _yaml_value(parser: argparse.ArgumentParser, action: argparse.Action, value: Any, path: str) -> Any:
    """A YAML string value converted by the flag's ``type``, as argparse would convert it on the command
    line, with an error naming the file (argparse would name only the flag); other values are checked
    with the config (:mod:`visionfm.config.checks`)."""
    if not isinstance(value, str) or not callable(action.type):
        return value
    try:
        converted = action.type(value)
    except (argparse.ArgumentTypeError, TypeError, ValueError) as exc:
        if isinstance(exc, argparse.ArgumentTypeError):
            why = str(exc)
        else:
            why = {int: "expected an integer", float: "expected a number"}.get(action.type, "invalid value")
            why += f", got {value!r}"
        parser.error(f"--{action.dest}: {why} (from --config {path})")
    many = action.nargs in ("+", "*") or (isinstance(action.nargs, int) and action.nargs > 0)
    return [converted] if many else converted


def add_store_decoder_arguments(p: VFMArgumentParser, *, epochs: int, output_dir: str, num_labels: int,
                                num_labels_help: str | None = None,
                                lr_help: str = "base LR, scaled by batch_size_per_gpu*world/256") -> None:
    """Flags shared by the decoders trained on several feature stores (``train-multi-cls``,
    ``train-reg``): the original scripts' flags plus the fusion options. Defaults differ per script."""
    p.add_argument("--name", required=True, help="run name; outputs go to <output_dir>/<name>")
    p.add_argument("--epochs", type=int, default=epochs, help="training epochs")
    p.add_argument("--lr", type=float, default=0.001, help=lr_help)
    p.add_argument("--batch_size_per_gpu", "--batch_size", type=int, default=128, help="samples per batch and process")
    p.add_argument("--data_path", required=True, help="folder holding the feature-store folders")
    p.add_argument("--datasets", nargs="+", required=True,
                   help="feature-store folders under --data_path (each the --output_dir of one 'visionfm extract')")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--num_workers", type=int, default=NUM_WORKERS,
                   help="kept for compatibility: features are in memory")
    p.add_argument("--val_freq", type=int, default=1, help="validate every this many epochs (and at the last)")
    p.add_argument("--output_dir", default=output_dir, help="outputs go to <output_dir>/<name>")
    p.add_argument("--num_labels", type=int, default=num_labels, help=num_labels_help or "label columns")
    p.add_argument("--load_from", default=None,
                   help="decoder checkpoint: with --test, evaluate it; without, resume/initialise from it")
    p.add_argument("--test", action="store_true", help="only evaluate --load_from on the test split")
    p.add_argument("--embed_dim", type=int, default=None,
                   help="encoder width D (head input 4·D); read from the stores, checked when given")
    p.add_argument("--fusion", default="pooled", choices=["pooled", "concat", "attention"],
                   help="pooled: every image is a sample (the original); concat/attention: one sample per subject")
    p.add_argument("--subject_map", default=None, help="CSV path,subject mapping images to subjects (for fusion)")
    p.add_argument("--bn_momentum", type=float, default=0.1, help="head BatchNorm momentum (0.99: the original)")
    p.add_run_arguments()


def add_dense_arguments(p: VFMArgumentParser, *, modality: str, num_labels: int, output_dir: str,
                        data_path: str | None, labels_help: str) -> None:
    """The flags of ``train_seg_decoder.py`` / ``train_landmark_decoder.py`` plus visionfm's extras
    (``data_path`` None: ``--data_path`` is required)."""
    p.add_argument("--name", required=True, help="run name; outputs go to <output_dir>/<name>")
    p.add_encoder_arguments()
    p.add_argument("--epochs", type=int, default=100, help="training epochs")
    p.add_argument("--lr", type=float, default=0.001, help="AdamW learning rate (not scaled by batch size)")
    p.add_argument("--batch_size_per_gpu", "--batch_size", type=int, default=128,
                   help="images per batch and process")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--num_workers", type=int, default=NUM_WORKERS, help="image-loading workers per process")
    p.add_argument("--val_freq", type=int, default=1, help="validate every this many epochs (and at the last)")
    p.add_argument("--data_path", default=data_path, required=data_path is None,
                   help="folder of dataset folders (<dataset>/<split>/images)")
    add_modality_argument(p, modality)
    p.add_argument("--head_type", "--head", dest="head_type", default="unetr", choices=["unetr", "linear"],
                   help="decoder head: UNETR or a linear patch classifier")
    p.add_argument("--output_dir", default=output_dir, help="outputs go to <output_dir>/<name>")
    p.add_argument("--num_labels", type=int, default=num_labels, help=labels_help)
    p.add_argument("--load_from", default=None, help="decoder checkpoint to initialise the head from")
    # visionfm extras
    p.add_argument("--block_ids", type=int, nargs=4, default=None,
                   help="the 4 encoder blocks feeding the decoder (default [3,5,7,11] / [5,11,17,23])")
    p.add_argument("--no_augment", action="store_true",
                   help="no random augmentation: features are computed once and cached (much faster)")
    p.add_argument("--scheduler", default="cosine", choices=["cosine", "step", "constant"],
                   help="per-epoch LR schedule; 'step' = StepLR(20, 0.5), 'constant' = the original's behaviour")
    p.add_argument("--weight_decay", type=float, default=0.05, help="AdamW weight decay")
    p.add_argument("--n_overlays", type=int, default=8, help="overlay figures of test images in the report")
    p.add_argument("--cache_max_gb", type=float, default=8.0,
                   help="with --no_augment, fall back to live features when the cache would exceed this")
    add_amp_argument(p)
    p.add_run_arguments(report=False)
