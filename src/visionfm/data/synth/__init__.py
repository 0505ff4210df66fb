"""Learnable synthetic data in exactly the original VisionFM on-disk layouts (``visionfm synth``).

The original ``evaluation/random_data.py`` wrote uniform noise with random labels (reference §2.10).
Here every image is a procedural picture of its modality and every label is a function of what is
drawn, so a model trained on the data can actually learn something; see ``docs/synthetic-data.md``.

Example::

    from visionfm.data.synth import generate
    summary = generate("single_cls", "data/synth", num=200, img_size=224, seed=0)
"""

from __future__ import annotations

from visionfm.data.synth.tasks import (
    DATASET,
    FINETUNE_CLASSES,
    FINETUNE_GROUP,
    MULTI_LABEL_NAMES,
    OCT_ALWAYS_ZERO,
    TASKS,
    forecast_score,
    generate,
    split_sizes,
)

__all__ = [
    "generate", "TASKS", "DATASET", "MULTI_LABEL_NAMES", "OCT_ALWAYS_ZERO", "split_sizes", "forecast_score",
    "FINETUNE_GROUP", "FINETUNE_CLASSES",
]
