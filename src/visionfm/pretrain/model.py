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
            x = torch.cat(list(crops[start:end])) if end - start > 1 else crops[start]
            m = None
            if masks is not None:
                m = torch.cat(list(masks[start:end])) if end - start > 1 else masks[start]
            outs.append(self.backbone(x, mask=m))
            start = end
        return torch.cat(outs) if len(outs) > 1 else outs[0]

    def forward(
        self,
        global_crops: Sequence[Tensor],
        masks: Sequence[Tensor] | None = None,
        local_crops: Sequence[Tensor] = (),
        select: Tensor | None = None,
        patch_mean: bool = False,
    ) -> tuple[Tensor, ...]:
        """Encode the crops; all crops of one resolution go through the backbone as one batch.

        Without ``select``: ``(cls [G·B, K], patch [G·B, P, K2], local_cls [L·B, K] or None)``.

        With ``select`` (``int64 [G·B, K_sel]`` patch indices; the training path): the patch outputs
        of the chosen tokens only, see :meth:`IBOTHead.forward_selected`:
        ``(cls, patch [G·B, K_sel, K2], local_cls or None, patch_mean [G·B, K2] or None)``.
        One ``forward`` for both keeps DDP's hooks on every call.

        Local crops are encoded without masks and only their CLS token goes through the head; with
        a head without BatchNorm this equals the original's full-token pass (it is cheaper).
        """
        tokens = self._backbone_groups(global_crops, masks)
        local_cls = self._local_cls(local_crops)
        if select is None:
            cls, patch = self.head(tokens)
            return cls, patch, local_cls
        cls, patch, mean = self.head.forward_selected(tokens, select, patch_mean=patch_mean)
        return cls, patch, local_cls, mean

    def _local_cls(self, local_crops: Sequence[Tensor]) -> Tensor | None:
        if not len(local_crops):
            return None
        return self.head(self._backbone_groups(local_crops, None)[:, 0])


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
