"""The eight imaging modalities, their normalisation statistics and every spelling users type.

The original code base spelled modalities differently in each script (reference §2.1), which made
slit-lamp pretraining impossible. Here every name goes through :func:`canonical_modality` once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from visionfm.errors import ConfigError

__all__ = [
    "Modality",
    "MODALITIES",
    "MODALITY_NAMES",
    "canonical_modality",
    "get_modality",
    "get_stats",
]


@dataclass(frozen=True)
class Modality:
    """One imaging modality: canonical name, RGB mean/std in [0, 1] units, human description."""

    name: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    description: str


MODALITIES: dict[str, Modality] = {
    m.name: m
    for m in (
        Modality(
            "Fundus",
            (0.423737496137619, 0.2609460651874542, 0.128403902053833),
            (0.29482534527778625, 0.20167365670204163, 0.13668020069599152),
            "colour fundus photograph",
        ),
        Modality(
            "OCT",
            (0.21091926, 0.21091926, 0.21091919),
            (0.17598894, 0.17598891, 0.17598893),
            "optical coherence tomography B-scan",
        ),
        Modality(
            "FFA",
            (0.2020487, 0.20205145, 0.20201068),
            (0.17406046, 0.17404206, 0.17401208),
            "fundus fluorescein angiography",
        ),
        Modality(
            "SlitLamp",
            (0.5556667, 0.40288574, 0.38857886),
            (0.26516676, 0.23311588, 0.23903583),
            "slit-lamp photograph",
        ),
        Modality(
            "Ultrasound",
            (0.05989236, 0.05978666, 0.056694973),
            (0.154277, 0.15504874, 0.14464583),
            "ocular B-mode ultrasound",
        ),
        Modality(
            "External",
            (0.4936253, 0.36324808, 0.25956994),
            (0.32001, 0.27109432, 0.21991591),
            "external eye photograph",
        ),
        Modality("MRI", (0.17368862,) * 3, (0.16198656,) * 3, "orbital magnetic resonance image"),
        Modality("UBM", (0.096110865,) * 3, (0.20977867,) * 3, "ultrasound biomicroscopy"),
    )
}

MODALITY_NAMES: tuple[str, ...] = tuple(MODALITIES)

# Spellings seen in the original code base or typed by users; matched after folding case and
# dropping spaces, hyphens and underscores (so "Slit Lamp", "slit-lamp" and "SLIT_LAMP" all match).
_ALIASES: dict[str, str] = {
    "fundus": "Fundus",
    "cfp": "Fundus",
    "colorfundus": "Fundus",
    "colourfundus": "Fundus",
    "fundusphoto": "Fundus",
    "oct": "OCT",
    "ffa": "FFA",
    "fa": "FFA",
    "fluoresceinangiography": "FFA",
    "slitlamp": "SlitLamp",
    "siltlamp": "SlitLamp",  # the original's misspelling (PretrainData, random_data)
    "ultrasound": "Ultrasound",
    "bultrasound": "Ultrasound",
    "bscan": "Ultrasound",
    "us": "Ultrasound",
    "external": "External",
    "externaleye": "External",
    "eye": "External",
    "mri": "MRI",
    "ubm": "UBM",
    "ultrasoundbiomicroscopy": "UBM",
}


def _fold(name: str) -> str:
    return re.sub(r"[\s\-_]+", "", name).lower()


def canonical_modality(name: str) -> str:
    """Return the canonical modality name for any accepted spelling.

    Raises:
        ConfigError (a ValueError): naming the unknown value and listing the valid names.
    """
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"modality must be a non-empty string, got {name!r}; valid: {', '.join(MODALITY_NAMES)}")
    hit = _ALIASES.get(_fold(name))
    if hit is None:
        raise ConfigError(
            f"unknown modality {name!r}; valid modalities are {', '.join(MODALITY_NAMES)} "
            "(case-insensitive; spellings such as 'Slit Lamp', 'B-Ultrasound' or 'External Eye' are accepted)"
        )
    return hit


def get_modality(name: str) -> Modality:
    return MODALITIES[canonical_modality(name)]


def get_stats(name: str) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """(mean, std) for the modality, as ``utils.get_stats`` in the original (reference §2.1)."""
    m = get_modality(name)
    return m.mean, m.std
