"""Each command's flags and its typed config (visionfm.config) are the same set with the same defaults."""

import dataclasses
import importlib

import pytest

from visionfm.cli.main import COMMANDS, build_parser
from visionfm.cli.options import NOT_CONFIG, to_config
from visionfm.config import CONFIGS
from visionfm.errors import ConfigError


def _parser(command):
    _, subs = build_parser()
    sp = subs[command]
    importlib.import_module(COMMANDS[command][0]).add_arguments(sp)
    return sp


@pytest.mark.parametrize("command", sorted(CONFIGS))
def test_flags_and_config_fields_agree(command):
    sp = _parser(command)
    dests = {a.dest for a in sp._actions if a.dest != "help" and a.dest not in NOT_CONFIG}
    cls = CONFIGS[command]
    assert dests == set(cls.field_names()), (dests ^ set(cls.field_names()))
    for f in dataclasses.fields(cls):
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            assert next(a for a in sp._actions if a.dest == f.name).required
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        flag_default = sp.get_default(f.name)
        assert (list(default) if isinstance(default, tuple) else default) == \
            (list(flag_default) if isinstance(flag_default, tuple) else flag_default), f.name


def test_to_config_and_from_mapping_errors():
    sp = _parser("train-seg")
    cfg = to_config(CONFIGS["train-seg"], sp.parse_args(["--name", "r", "--epochs", "3"]))
    assert (cfg.name, cfg.epochs, cfg.lr) == ("r", 3, 0.001)
    with pytest.raises(ConfigError, match="unknown option.*epoch_count"):
        CONFIGS["train-seg"].from_mapping({"name": "r", "epoch_count": 3})
    with pytest.raises(ConfigError, match="needs name"):
        CONFIGS["train-seg"].from_mapping({})
