"""Student and teacher networks for iBOT (reference §4.4).

``MultiCropNetwork`` is the original's ``MultiCropWrapper``: crops of equal size share one backbone
pass, the head runs once. The student's forward takes global *and* local crops in one call so DDP
sees exactly one forward per backward.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from visionfm.models.encoder import VisionFMEncoder
from visionfm.pretrain.head import IBOTHead

__all__ = ["MultiCropNetwork", "build_student_teacher"]


class MultiCropNetwork(nn.Module):
    """``backbone`` + ``head`` with the official state-dict names (``backbone.*``, ``head.*``)."""

    def __init__(self, backbone: VisionFMEncoder, head: IBOTHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def _backbone_groups(self, crops: Sequence[Tensor], masks: Sequence[Tensor] | None) -> Tensor:
        """Run the backbone once per run of equal-sized crops; concatenate along the batch."""
        outs = []
        start = 0
        while start < len(crops):
            end = start + 1
            while end < len(crops) and crops[end].shape[-2:] == crops[start].shape[-2:]:
                end += 1
            x = torch.cat(list(crops[start:end]))
            m = torch.cat(list(masks[start:end])) if masks is not None else None
            outs.append(self.backbone(x, mask=m))
            start = end
        return torch.cat(outs)

    def forward(
        self,
        global_crops: Sequence[Tensor],
        masks: Sequence[Tensor] | None = None,
        local_crops: Sequence[Tensor] = (),
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Returns ``(cls [G·B, K], patch [G·B, P, K2], local_cls [L·B, K] or None)``.

        Local crops are encoded without masks and only their CLS token goes through the head; with
        a head without BatchNorm this equals the original's full-token pass (it is cheaper).
        """
        tokens = self._backbone_groups(global_crops, masks)
        cls, patch = self.head(tokens)
        local_cls = None
        if len(local_crops):
            local_tokens = self._backbone_groups(local_crops, None)
            local_cls = self.head(local_tokens[:, 0])
        return cls, patch, local_cls


def build_student_teacher(args) -> tuple[MultiCropNetwork, MultiCropNetwork]:
    """Build the student (drop-path, mask token) and the teacher (no drop-path, no mask token)."""
    student_backbone = VisionFMEncoder(
        args.arch, args.input_size, args.patch_size, drop_path_rate=args.drop_path,
        masked_im_modeling=args.use_masked_im_modeling,
    )
    teacher_backbone = VisionFMEncoder(args.arch, args.input_size, args.patch_size, 0.0, masked_im_modeling=False)
    dim = student_backbone.embed_dim
    # BatchNorm becomes SyncBatchNorm in the trainer when several processes run (reference §4.4);
    # a single process uses plain BatchNorm either way.
    norm = "bn" if args.norm_in_head == "syncbn" else args.norm_in_head
    student = MultiCropNetwork(
        student_backbone,
        IBOTHead(dim, args.out_dim, args.patch_out_dim, norm=norm, act=args.act_in_head,
                 norm_last_layer=args.norm_last_layer, shared_head=args.shared_head),
    )
    teacher = MultiCropNetwork(
        teacher_backbone,
        IBOTHead(dim, args.out_dim, args.patch_out_dim, norm=norm, act=args.act_in_head,
                 norm_last_layer=True, shared_head=args.shared_head_teacher),
    )
    return student, teacher
