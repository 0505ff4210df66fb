"""The console handler follows ``sys.stdout``: a replaced and closed stdout (notebooks, test runners) never
turns a later log record into a '--- Logging error ---' traceback."""

import io
import logging
import sys

from visionfm.engine.logging import setup_logging


def test_console_logging_writes_to_the_current_stdout(monkeypatch, capsys):
    first = io.StringIO()
    monkeypatch.setattr(sys, "stdout", first)
    setup_logging(True)
    logging.getLogger("visionfm.test").info("one")
    first.close()  # what a test runner does to a captured stream
    second = io.StringIO()
    monkeypatch.setattr(sys, "stdout", second)
    logging.getLogger("visionfm.test").info("two")
    assert second.getvalue().endswith("INFO two\n")
    assert "Logging error" not in capsys.readouterr().err
