"""Evaluation figures and self-contained HTML reports.

* :mod:`visionfm.reports.plots` — ROC / PR curves, confusion matrices, calibration, regression
  scatter plots, image overlays (contours and landmarks); each returns the saved PNG path.
* :mod:`visionfm.reports.html` — ``report.html`` with embedded figures, ``metrics.json`` and
  ``predictions.csv`` (all written atomically), and the end-of-run helpers
  :func:`evaluate_classification_run` / :func:`evaluate_regression_run`.
* :mod:`visionfm.reports.colours` — the mask palette, display colours and attention heat maps shared
  by ``visionfm predict`` and the web app; :mod:`visionfm.reports.units` — units in output names.

The names below are imported on first use, so that ``visionfm.reports.colours`` (needed by every
prediction) does not pull in the plotting and metrics stack (matplotlib figures, SciPy).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from visionfm.reports.html import (
        evaluate_classification_run,
        evaluate_regression_run,
        write_metrics_json,
        write_predictions_csv,
        write_report,
    )
    from visionfm.reports.plots import (
        NothingToPlotError,
        plot_calibration,
        plot_confusion_matrix,
        plot_pr,
        plot_regression_scatter,
        plot_roc,
        save_overlay,
    )

_EXPORTS = {
    "write_report": "html",
    "write_metrics_json": "html",
    "write_predictions_csv": "html",
    "evaluate_classification_run": "html",
    "evaluate_regression_run": "html",
    "plot_roc": "plots",
    "plot_pr": "plots",
    "plot_confusion_matrix": "plots",
    "plot_calibration": "plots",
    "plot_regression_scatter": "plots",
    "save_overlay": "plots",
    "NothingToPlotError": "plots",
}

__all__ = [
    "NothingToPlotError",
    "evaluate_classification_run",
    "evaluate_regression_run",
    "plot_calibration",
    "plot_confusion_matrix",
    "plot_pr",
    "plot_regression_scatter",
    "plot_roc",
    "save_overlay",
    "write_metrics_json",
    "write_predictions_csv",
    "write_report",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
