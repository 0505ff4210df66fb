"""Readers (PyTorch datasets) for every on-disk layout VisionFM uses; see docs/data-layouts.md.

Every reader derives from :class:`SampleDataset`, which implements the ``on_error`` policy
("fail" raises a DataFormatError naming the file, "skip" logs it and serves the next readable sample).
"""

from __future__ import annotations

from visionfm.data.images import ON_ERROR_POLICIES, OnErrorPolicy, SampleDataset, check_on_error
from visionfm.data.layouts.forecasting import ForecastingDataset, ForecastSample, forecasting_label_file
from visionfm.data.layouts.imagefolder import (
    RETFOUND_CLASS_ORDERS,
    ImageFolderDataset,
    retfound_class_order,
)
from visionfm.data.layouts.landmark import LandmarkDataset, heatmaps_to_points, load_landmark_array
from visionfm.data.layouts.pretrain import PretrainImages
from visionfm.data.layouts.segmentation import PairedSample, SegmentationDataset, check_mask_ids, find_paired_samples
from visionfm.data.layouts.vfm import LabeledSample, VFMDataset, find_vfm_datasets

__all__ = [
    "ON_ERROR_POLICIES",
    "OnErrorPolicy",
    "SampleDataset",
    "check_on_error",
    "PretrainImages",
    "VFMDataset",
    "LabeledSample",
    "find_vfm_datasets",
    "ImageFolderDataset",
    "RETFOUND_CLASS_ORDERS",
    "retfound_class_order",
    "SegmentationDataset",
    "PairedSample",
    "find_paired_samples",
    "check_mask_ids",
    "LandmarkDataset",
    "heatmaps_to_points",
    "load_landmark_array",
    "ForecastingDataset",
    "ForecastSample",
    "forecasting_label_file",
]
