"""One CLI vocabulary: every flag of every command (nested sub-commands included) has help text and shows
its default in ``--help``; no placeholder defaults; one canonical flag per concept, with the spellings
commands used before kept as aliases of the same option, and one default per concept where the table
says so (docs/original-commands.md, "One flag vocabulary")."""

from __future__ import annotations

import argparse
import importlib
import re

import pytest
import yaml

from visionfm.cli.main import COMMANDS, build_parser
from visionfm.cli.options import VFMArgumentParser, bool_flag, format_default, parse_with_config

SKIP = ("help", "version")


def _parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    """(prog, parser) for the top-level parser, every command and every nested sub-command parser."""
    top, subs = build_parser()
    for name, sp in subs.items():
        importlib.import_module(COMMANDS[name][0]).add_arguments(sp)
    found: list[tuple[str, argparse.ArgumentParser]] = []

    def walk(prog: str, parser: argparse.ArgumentParser) -> None:
        found.append((prog, parser))
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, child in a.choices.items():
                    walk(f"{prog} {name}", child)

    walk("visionfm", top)
    return found


def _command(name: str) -> argparse.ArgumentParser:
    _, subs = build_parser()
    importlib.import_module(COMMANDS[name][0]).add_arguments(subs[name])
    return subs[name]


def _flat(text: str) -> str:
    return " ".join(text.split())


def _shown_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The help text of ``action`` exactly as ``--help`` prints it (whitespace aside)."""
    fmt = parser._get_formatter()
    return _flat(fmt._expand_help(action)) if action.help else ""


def _is_bool(action: argparse.Action) -> bool:
    return isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)) or action.type is bool_flag


PARSERS = _parsers()


def test_the_walk_covers_every_command():
    progs = {prog for prog, _ in PARSERS}
    assert {f"visionfm {name}" for name in COMMANDS} <= progs
    assert sum(len(p._actions) for _, p in PARSERS) > 400  # every flag of every command is checked below


@pytest.mark.parametrize("prog,parser", PARSERS, ids=[prog for prog, _ in PARSERS])
def test_every_flag_has_help_and_shows_its_default(prog, parser, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100000")  # one line per flag: the shown text is found in --help as is
    page = _flat(parser.format_help())
    problems = []
    for action in parser._actions:
        if action.dest in SKIP:
            continue
        name = "/".join(action.option_strings) or action.dest
        if not action.help or action.help == argparse.SUPPRESS or not action.help.strip():
            problems.append(f"{name}: no help text")
            continue
        shown = _shown_help(parser, action)
        if shown not in page:
            problems.append(f"{name}: its help is not in --help")
        if isinstance(action, argparse._SubParsersAction):
            continue  # the command list; each command is checked on its own
        if "/path/to" in str(action.default):
            problems.append(f"{name}: placeholder default {action.default!r} (make the flag required)")
        if action.required or (not action.option_strings and action.nargs in (None, "+")):
            if "(required)" not in shown:
                problems.append(f"{name}: required, but --help does not say so: {shown!r}")
            continue
        own = "(default" in action.help or "default:" in action.help  # states its default in words
        expected = f"(default: {format_default(action.default)})"
        if not own and not shown.endswith(expected):
            problems.append(f"{name}: --help does not end with {expected!r}: {shown!r}")
        if _is_bool(action) and re.search(r"\(default: (True|False)\)", shown):
            problems.append(f"{name}: boolean default not shown as true/false: {shown!r}")
    assert not problems, f"{prog}:\n" + "\n".join(problems)


def test_a_flag_without_help_is_caught():
    """The check above fails for a flag added without help (and shows the default of one with help)."""
    p = VFMArgumentParser(prog="x")
    p.add_argument("--undocumented", type=int, default=3)
    p.add_argument("--documented", type=int, default=3, help="a number")
    p.add_argument("--switch", action="store_true", help="a switch")
    p.add_argument("--path", required=True, help="a path")
    by_dest = {a.dest: a for a in p._actions}
    assert not by_dest["undocumented"].help
    assert _shown_help(p, by_dest["documented"]) == "a number (default: 3)"
    assert _shown_help(p, by_dest["switch"]) == "a switch (default: false)"
    assert _shown_help(p, by_dest["path"]) == "a path (required)"
    with pytest.raises(AssertionError, match="--undocumented.*no help text"):
        test_every_flag_has_help_and_shows_its_default("x", p, pytest.MonkeyPatch())


# concept: (canonical flag, the other accepted spellings, the one default every command has or NO_CHECK).
# Aliases are those commands used before; hyphenated twins (--output-dir) are always accepted too.
NO_CHECK = object()
VOCABULARY: dict[str, tuple[str, set[str], object]] = {
    "output folder": ("--output_dir", {"--dst_dir", "--dst_root", "--dst_path", "--output"}, NO_CHECK),
    "batch size": ("--batch_size_per_gpu", {"--batch_size"}, NO_CHECK),
    "decoder head": ("--head_type", {"--head"}, NO_CHECK),
    "encoder weights": ("--pretrained_weights", {"--weights"}, NO_CHECK),
    "input data": ("--data_path", set(), NO_CHECK),
    "model folder(s) to apply": ("--model", {"--models"}, NO_CHECK),
    "unreadable input policy": ("--on_corrupt", {"--on_error"}, NO_CHECK),
    "DataLoader workers": ("--num_workers", set(), 10),
    "device": ("--device", set(), "auto"),
    "seed": ("--seed", set(), 0),
    "input size": ("--input_size", set(), 224),
    "YAML defaults": ("--config", set(), None),
    "launcher rendezvous": ("--dist_url", set(), "env://"),
    "run name": ("--name", set(), NO_CHECK),
}
# An action of one command may carry a spelling of another concept on purpose: evaluate's fine-tuned
# checkpoint is the original's --pretrained_weights, which visionfm also calls --load_from.
EXTRA_SPELLINGS = {("evaluate", "--pretrained_weights"): {"--load_from"}}
# The least number of commands each concept is expected in (so that the table cannot pass vacuously).
AT_LEAST = {"output folder": 12, "batch size": 10, "decoder head": 4, "encoder weights": 8, "input data": 10,
            "model folder(s) to apply": 3, "unreadable input policy": 3, "DataLoader workers": 9, "device": 12,
            "seed": 12, "input size": 7, "YAML defaults": 12, "launcher rendezvous": 10, "run name": 8}


def _canon(flag: str) -> str:
    return flag.replace("-", "_").replace("__", "--", 1)


def _vocabulary_use() -> dict[str, dict[str, argparse.Action]]:
    """{concept: {command: the action carrying one of its spellings}}."""
    use: dict[str, dict[str, argparse.Action]] = {c: {} for c in VOCABULARY}
    for name in COMMANDS:
        for action in _command(name)._actions:
            spellings = {_canon(o) for o in action.option_strings}
            for concept, (canonical, aliases, _) in VOCABULARY.items():
                if spellings & ({canonical} | aliases):
                    assert name not in use[concept], f"{name}: two flags for {concept}"
                    use[concept][name] = action
    return use


def test_one_canonical_flag_and_one_default_per_concept():
    use = _vocabulary_use()
    problems = []
    for concept, (canonical, aliases, default) in VOCABULARY.items():
        if len(use[concept]) < AT_LEAST[concept]:
            problems.append(f"{concept}: only in {sorted(use[concept])}")
        defaults = {}
        for name, action in use[concept].items():
            spellings = {_canon(o) for o in action.option_strings}
            if canonical not in spellings:
                problems.append(f"{name}: {concept} has no {canonical} (it has {sorted(spellings)})")
            other = spellings - {canonical} - aliases - EXTRA_SPELLINGS.get((name, canonical), set())
            if other:
                problems.append(f"{name}: {concept} also spelled {sorted(other)}, not in the vocabulary")
            if action.option_strings and action.option_strings[0] != canonical and canonical != "--model":
                problems.append(f"{name}: {canonical} is not the first (shown) name of {concept}")
            defaults[name] = "required" if action.required else action.default
        if default is not NO_CHECK:
            wrong = {n: d for n, d in defaults.items() if d != default}
            if wrong:
                problems.append(f"{concept}: default {default!r} expected, got {wrong}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("command,argv,dest,value", [
    ("extract", ["--dst_root", "s"], "dst_root", "s"),
    ("extract", ["--output_dir", "s"], "dst_root", "s"),
    ("extract", ["--output-dir", "s"], "dst_root", "s"),
    ("synth", ["--dst_dir", "d"], "dst_dir", "d"),
    ("synth", ["--output_dir", "d"], "dst_dir", "d"),
    ("prepare", ["--dst_path", "d"], "dst_path", "d"),
    ("prepare", ["--output_dir", "d"], "dst_path", "d"),
    ("predict", ["--output", "o"], "output", "o"),
    ("predict", ["--output_dir", "o"], "output", "o"),
    ("predict", ["--batch_size", "3"], "batch_size", 3),
    ("predict", ["--batch_size_per_gpu", "3"], "batch_size", 3),
    ("predict", ["--on_error", "fail"], "on_error", "fail"),
    ("predict", ["--on_corrupt", "fail"], "on_error", "fail"),
    ("train-cls", ["--head", "linear"], "head", "linear"),
    ("train-cls", ["--head_type", "linear"], "head", "linear"),
    ("finetune", ["--head_type", "linear"], "head", "linear"),
    ("train-seg", ["--head", "linear"], "head_type", "linear"),
    ("train-seg", ["--batch_size", "5"], "batch_size_per_gpu", 5),
    ("export", ["--weights", "w"], "weights", "w"),
    ("export", ["--pretrained_weights", "w"], "weights", "w"),
    ("serve", ["--model", "m"], "models", "m"),
    ("serve", [], "device", "auto"),
])
def test_old_and_canonical_spellings_parse_the_same(command, argv, dest, value):
    required = {"extract": ["--pretrained_weights", "w", "--dst_root", "x"], "prepare": ["--data_path", "d",
                "--dst_path", "x"], "predict": ["--model", "m", "--input", "i"], "export": ["--out", "o", "--weights",
                "x"], "train-cls": ["--name", "r"], "finetune": ["--data_path", "d"], "train-seg": ["--name", "r"]}
    args = _command(command).parse_args(required.get(command, []) + argv)
    assert getattr(args, dest) == value


def test_required_paths_are_required(capsys):
    """A required path missing from the command line is argparse's one-line usage error, exit 2."""
    for command, argv, flag in [("pretrain", ["--name", "r"], "--data_path"),
                                ("train-cls", [], "--name"),
                                ("train-reg", ["--name", "r", "--datasets", "a"], "--data_path"),
                                ("train-multi-cls", ["--name", "r", "--datasets", "a"], "--data_path"),
                                ("train-landmark", ["--name", "r"], "--data_path"),
                                ("extract", ["--pretrained_weights", "random"], "--output_dir")]:
        with pytest.raises(SystemExit) as err:
            parse_with_config(_command(command), argv)
        lines = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
        assert err.value.code == 2 and len(lines) == 1 and "required" in lines[0] and flag in lines[0], lines


def test_config_file_takes_any_spelling_and_required_flags(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"name": "r", "datasets": ["a"], "data_path": "feats", "batch_size": 7}))
    args = parse_with_config(_command("train-reg"), ["--config", str(cfg)])
    assert (args.name, args.datasets, args.data_path, args.batch_size_per_gpu) == ("r", ["a"], "feats", 7)
    args = parse_with_config(_command("train-reg"), ["--config", str(cfg), "--data_path", "cli"])
    assert args.data_path == "cli"  # the command line wins
    cfg.write_text(yaml.safe_dump({"output_dir": "stores", "pretrained_weights": "random"}))
    assert parse_with_config(_command("extract"), ["--config", str(cfg)]).dst_root == "stores"
    cfg.write_text(yaml.safe_dump({"output_dir": "a", "dst_root": "b", "pretrained_weights": "random"}))
    with pytest.raises(SystemExit):
        parse_with_config(_command("extract"), ["--config", str(cfg)])


def test_help_shows_required_and_defaults(capsys):
    with pytest.raises(SystemExit):
        parse_with_config(_command("extract"), ["--help"])
    page = _flat(capsys.readouterr().out)
    assert "--output_dir OUTPUT_DIR, --dst_root OUTPUT_DIR" in page
    assert "(the original's --dst_root) (required)" in page
    assert "(default: 10)" in page and "(default: auto)" in page and "(default: true)" in page
