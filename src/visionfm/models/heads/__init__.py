"""Decoder heads trained on frozen encoder features."""

from visionfm.models.heads.cls import ClsHead, LinearHead, build_cls_head

__all__ = ["ClsHead", "LinearHead", "build_cls_head"]
