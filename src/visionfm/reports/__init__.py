"""Evaluation figures and self-contained HTML reports.

* :mod:`visionfm.reports.plots` — ROC / PR curves, confusion matrices, calibration, regression
  scatter plots, image overlays (contours and landmarks); each returns the saved PNG path.
* :mod:`visionfm.reports.html` — ``report.html`` with embedded figures, ``metrics.json`` and
  ``predictions.csv`` (all written atomically), and the end-of-run helpers
  :func:`evaluate_classification_run` / :func:`evaluate_regression_run`.
"""

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

__all__ = [
    "write_report",
    "write_metrics_json",
    "write_predictions_csv",
    "evaluate_classification_run",
    "evaluate_regression_run",
    "plot_roc",
    "plot_pr",
    "plot_confusion_matrix",
    "plot_calibration",
    "plot_regression_scatter",
    "save_overlay",
    "NothingToPlotError",
]
