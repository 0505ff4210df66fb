"""The iBOT loss: cross-view CLS distillation plus masked patch distillation (reference §4.6).

Notation: ``G`` global crops (teacher and student), ``L`` local crops (student only), ``C = G + L``,
``B`` images per crop, ``P`` patches, ``K`` CLS prototypes, ``K2`` patch prototypes.

Differences from the original (behaviour otherwise identical):

* the temperature schedules no longer crash when ``epochs < warmup_teacher_temp_epochs
  (+ mim_start_epoch)``: they are cut to ``epochs`` values (see
  :func:`visionfm.pretrain.schedules.teacher_temp_schedule`); an epoch past the end uses the last value;
* the loss is computed in float32 whatever the input dtype (under autocast the original's
  softmax/log-softmax already ran in float32);
* ``G = 1, L = 0`` (no cross-view CLS pair, a division by zero in the original) is rejected.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from .schedules import teacher_temp_schedule

__all__ = ["IBOTLoss"]


def _dist_ready() -> bool:
    return dist.is_available() and dist.is_initialized()


class IBOTLoss(nn.Module):
    """iBOT loss with teacher centring and per-epoch teacher temperatures.

    Args:
        out_dim: CLS prototype count K.
        patch_out_dim: patch prototype count K2. Pass ``out_dim`` when either head is shared (the
            original's rule: K2 = K whenever a head is shared).
        global_crops: G.
        local_crops: L.
        warmup_teacher_temp, teacher_temp: teacher CLS temperature, start and end of the warm-up.
        warmup_teacher_patch_temp, teacher_patch_temp: the same for patch tokens.
        warmup_teacher_temp_epochs: linear warm-up length of both temperatures.
        epochs: run length (length of the schedules).
        lambda1, lambda2: weights of the CLS and patch terms.
        mim_start_epoch: the patch temperature stays at its warm-up value for this many epochs first.
        student_temp: student temperature for both terms.
        center_momentum, center_momentum2: EMA momentum of the CLS and patch centres.

    Buffers ``center [1, K]`` and ``center2 [1, 1, K2]`` keep the official names, so the ``ibot_loss``
    entry of official checkpoints loads directly.
    """

    center: Tensor
    center2: Tensor

    def __init__(
        self,
        out_dim: int,
        patch_out_dim: int,
        global_crops: int = 2,
        local_crops: int = 0,
        warmup_teacher_temp: float = 0.07,
        teacher_temp: float = 0.04,
        warmup_teacher_patch_temp: float = 0.04,
        teacher_patch_temp: float = 0.07,
        warmup_teacher_temp_epochs: int = 30,
        epochs: int = 100,
        lambda1: float = 1.0,
        lambda2: float = 1.0,
        mim_start_epoch: int = 0,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
        center_momentum2: float = 0.9,
    ) -> None:
        super().__init__()
        if global_crops < 1 or local_crops < 0:
            raise ValueError(f"need global_crops >= 1 and local_crops >= 0, got {global_crops}, {local_crops}")
        if global_crops == 1 and local_crops == 0:
            raise ValueError("one global crop and no local crops leave no cross-view pair for the CLS loss")
        self.global_crops = global_crops
        self.local_crops = local_crops
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.center_momentum2 = center_momentum2
        self.lambda1 = lambda1
        self.lambda2 = lambda2
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.register_buffer("center2", torch.zeros(1, 1, patch_out_dim))
        self.teacher_temp_schedule = teacher_temp_schedule(
            warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs, epochs
        )
        self.teacher_patch_temp_schedule = teacher_temp_schedule(
            warmup_teacher_patch_temp,
            teacher_patch_temp,
            warmup_teacher_temp_epochs,
            epochs,
            hold_epochs=mim_start_epoch,
        )

    @property
    def n_crops(self) -> int:
        return self.global_crops + self.local_crops

    @staticmethod
    def _at(schedule: Sequence[float], epoch: int) -> float:
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        return float(schedule[min(epoch, len(schedule) - 1)])

    def teacher_temperature(self, epoch: int) -> float:
        """Teacher CLS temperature used at ``epoch``."""
        return self._at(self.teacher_temp_schedule, epoch)

    def teacher_patch_temperature(self, epoch: int) -> float:
        """Teacher patch temperature used at ``epoch``."""
        return self._at(self.teacher_patch_temp_schedule, epoch)

    def forward(
        self,
        student_cls: Tensor,
        student_patch: Tensor,
        teacher_cls: Tensor,
        teacher_patch: Tensor,
        student_masks: Sequence[Tensor] | Tensor,
        epoch: int,
        student_local_cls: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Compute the loss, then update the centres.

        Args:
            student_cls: ``[C*B, K]`` CLS outputs, global crops first then local crops, crop-major
                (rows ``c*B .. (c+1)*B-1`` belong to crop c). May also be only the ``[G*B, K]``
                global part when ``student_local_cls`` is given.
            student_patch: ``[G*B, P, K2]`` patch outputs of the (masked) global crops.
            teacher_cls: ``[G*B, K]``.
            teacher_patch: ``[G*B, P, K2]``.
            student_masks: G boolean masks ``[B, H, W]`` (H*W = P) of the student's global crops;
                extra entries (local-crop masks) are ignored. A ``[G, B, H, W]`` tensor also works.
            epoch: current epoch (selects the teacher temperatures).
            student_local_cls: optional ``[L*B, K]``, appended after ``student_cls``.

        Returns:
            ``{"cls": λ1·ΣL1/n1, "patch": λ2·ΣL2/n2, "loss": cls + patch}``, scalar tensors, with
            ``n1 = G·C − G`` (cross-view pairs) and ``n2 = G``.
        """
        G, C = self.global_crops, self.n_crops
        if student_local_cls is not None:
            student_cls = torch.cat([student_cls, student_local_cls], dim=0)
        if teacher_cls.shape[0] % G:
            raise ValueError(f"teacher_cls has {teacher_cls.shape[0]} rows, not a multiple of G={G}")
        B = teacher_cls.shape[0] // G
        if student_cls.shape[0] != C * B:
            raise ValueError(f"student_cls has {student_cls.shape[0]} rows, expected C*B = {C}*{B}")
        if student_patch.shape[0] != G * B or teacher_patch.shape != student_patch.shape:
            raise ValueError(
                f"student_patch {tuple(student_patch.shape)} and teacher_patch {tuple(teacher_patch.shape)} "
                f"must both be [G*B, P, K2] with G*B = {G * B}"
            )
        if teacher_patch.shape[-1] != self.center2.shape[-1] or teacher_cls.shape[-1] != self.center.shape[-1]:
            raise ValueError(
                f"output widths (K={teacher_cls.shape[-1]}, K2={teacher_patch.shape[-1]}) do not match the loss "
                f"(out_dim={self.center.shape[-1]}, patch_out_dim={self.center2.shape[-1]}); with a shared head "
                "pass patch_out_dim=out_dim"
            )
        P = student_patch.shape[1]
        masks = torch.stack(list(student_masks[:G])) if not isinstance(student_masks, Tensor) else student_masks[:G]
        masks = masks.reshape(G, B, -1)
        if masks.shape[-1] != P:
            raise ValueError(f"masks have {masks.shape[-1]} patches per image, student_patch has {P}")

        # float32 throughout: under autocast the einsum below would otherwise run in fp16/bf16.
        with torch.autocast(device_type=student_cls.device.type, enabled=False):
            cls_loss = self._cls_loss(student_cls, teacher_cls, epoch)
            patch_loss = self._patch_loss(student_patch, teacher_patch, masks.reshape(G * B, P), epoch)
        self.update_center(teacher_cls, teacher_patch.float().mean(1))
        return {"cls": cls_loss, "patch": patch_loss, "loss": cls_loss + patch_loss}

    def forward_selected(
        self,
        student_cls: Tensor,
        student_patch: Tensor,
        teacher_cls: Tensor,
        teacher_patch: Tensor,
        teacher_patch_mean: Tensor,
        valid: Tensor,
        epoch: int,
        student_local_cls: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """The same loss from the patch outputs of selected tokens only (the training path).

        Only masked tokens enter the patch term, so the student and teacher patch outputs are needed
        at those positions alone. The caller gathers ``K ≥`` (most masked tokens of any image)
        positions per image, masked ones first, and marks which of them are masked in ``valid``.

        Args:
            student_cls, teacher_cls, student_local_cls, epoch: as in :meth:`forward`.
            student_patch, teacher_patch: ``[G*B, K, K2]`` outputs at the selected positions (any
                dtype, e.g. bf16: the loss runs in float32).
            teacher_patch_mean: ``[G*B, K2]`` mean of the teacher's patch outputs over *all* patches
                of each crop (for the centre), see :meth:`IBOTHead.forward_selected`.
            valid: ``[G*B, K]`` bool, True where the selected token is masked; every masked token of
                an image must be among its selected ones.

        Returns:
            the same dict as :meth:`forward`, equal to it up to float rounding.
        """
        G = self.global_crops
        if student_local_cls is not None:
            student_cls = torch.cat([student_cls, student_local_cls], dim=0)
        rows = teacher_cls.shape[0]
        if student_patch.shape != teacher_patch.shape or student_patch.shape[0] != rows or rows % G:
            raise ValueError(
                f"student_patch {tuple(student_patch.shape)} and teacher_patch {tuple(teacher_patch.shape)} "
                f"must both be [G*B, K, K2] with G*B = {rows}"
            )
        if valid.shape != student_patch.shape[:2] or teacher_patch_mean.shape != (rows, student_patch.shape[-1]):
            raise ValueError(
                f"valid {tuple(valid.shape)} must be [G*B, K] = {tuple(student_patch.shape[:2])} and "
                f"teacher_patch_mean {tuple(teacher_patch_mean.shape)} [G*B, K2]"
            )
        if student_cls.shape[0] != self.n_crops * (rows // G):
            raise ValueError(f"student_cls has {student_cls.shape[0]} rows, expected C*B = {self.n_crops}*{rows // G}")
        with torch.autocast(device_type=student_cls.device.type, enabled=False):
            cls_loss = self._cls_loss(student_cls, teacher_cls, epoch)
            patch_loss = self._patch_loss(student_patch, teacher_patch, valid, epoch)
        self.update_center(teacher_cls, teacher_patch_mean)
        return {"cls": cls_loss, "patch": patch_loss, "loss": cls_loss + patch_loss}

    def _cls_loss(self, student_cls: Tensor, teacher_cls: Tensor, epoch: int) -> Tensor:
        """λ1 · mean over the cross-view pairs of the batch-mean CLS cross-entropy (float32)."""
        G, C = self.global_crops, self.n_crops
        B = teacher_cls.shape[0] // G
        temp = self.teacher_temperature(epoch)
        # Every (teacher view q, student view v != q) pair. With T [G,B,K] and log S [C,B,K] the pair
        # losses are one einsum; the diagonal q == v (global views only) is removed.
        log_s_cls = F.log_softmax(student_cls.float() / self.student_temp, dim=-1).reshape(C, B, -1)
        t_cls = F.softmax((teacher_cls.float() - self.center) / temp, dim=-1).detach().reshape(G, B, -1)
        pair = -torch.einsum("qbk,vbk->qv", t_cls, log_s_cls) / B  # [G, C] batch-mean pair losses
        n1 = G * C - G
        return (pair.sum() - pair.diagonal().sum()) / n1 * self.lambda1

    def _patch_loss(self, student_patch: Tensor, teacher_patch: Tensor, valid: Tensor, epoch: int) -> Tensor:
        """λ2 · mean over global views of the batch mean of each image's masked-token cross-entropy.

        ``student_patch``/``teacher_patch`` are ``[G*B, T, K2]`` (T = every patch, or the selected
        ones); ``valid [G*B, T]`` marks the masked tokens. Same view only (q == v); each image's
        tokens are averaged with ``max(Σ valid, 1)``, so an image without a mask contributes 0.
        """
        G = self.global_crops
        temp2 = self.teacher_patch_temperature(epoch)
        log_s = F.log_softmax(student_patch.float() / self.student_temp, dim=-1)
        t = F.softmax((teacher_patch.float() - self.center2) / temp2, dim=-1).detach()
        token = -torch.einsum("ntk,ntk->nt", t, log_s)  # [G*B, T], no [G*B,T,K2] product buffer
        m = valid.to(device=token.device, dtype=token.dtype, non_blocking=True)
        per_image = (token * m).sum(-1) / m.sum(-1).clamp(min=1.0)  # [G*B]; empty mask -> 0
        return per_image.reshape(G, -1).mean(-1).sum() / G * self.lambda2

    @torch.no_grad()
    def update_center(self, teacher_cls: Tensor, teacher_patch_mean: Tensor) -> None:
        """EMA of the mean raw teacher outputs, averaged over all ranks.

        ``center <- m·center + (1−m)·mean_rows(teacher_cls)``;
        ``center2 <- m2·center2 + (1−m2)·mean_rows(teacher_patch_mean)``, where
        ``teacher_patch_mean [rows, K2]`` is each crop's mean patch output. Means are a sum
        all-reduced over ranks divided by ``rows·world``. Everything stays on the device (one fused
        all-reduce, no ``.item()``), so it never forces a host sync.
        """
        K = self.center.shape[-1]
        rows = teacher_cls.shape[0]
        sums = torch.cat([teacher_cls.float().sum(0), teacher_patch_mean.float().sum(0)])
        world = 1
        if _dist_ready():
            dist.all_reduce(sums)
            world = dist.get_world_size()
        sums = sums / (rows * world)
        self.center.mul_(self.center_momentum).add_(sums[:K].view_as(self.center), alpha=1 - self.center_momentum)
        self.center2.mul_(self.center_momentum2).add_(
            sums[K:].view_as(self.center2), alpha=1 - self.center_momentum2
        )
