"""Inference on files: image/DICOM readers and the ``visionfm predict`` pipeline."""
