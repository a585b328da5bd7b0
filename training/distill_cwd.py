"""Channel-wise distillation (CWD, Shu et al., ICCV 2021) for the detector, as a trainer subclass.

ultralytics 8.4's built-in `distill_model` matches the student's neck features to the teacher's
with an L2 loss weighted by the teacher's scores. On NEU-DET it gave the student +0.6 points of
mAP50 at 100 GPU epochs (bench/results/distill_neu_gpu.json), short of the +2 wanted. CWD
instead turns each channel of a feature map into a distribution over locations (a softmax) and
makes the student's match the teacher's (KL divergence): it transfers where each channel
responds, not the raw activations, which is what a small student can imitate. None of the
libraries we use ships it for ultralytics models, so it is written here, reusing everything else
of ultralytics' distillation: feature hooks, 1x1 projectors where channel counts differ, the
frozen teacher in eval mode, checkpoints that keep only the student, resume.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812 - the usual name
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.nn.distill_model import DistillationModel

DEFAULT_TEMPERATURE = 1.0
DEFAULT_WEIGHT = 3.0  # the CWD paper's weight for detection necks, with temperature 1


def channel_wise_distillation(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float = DEFAULT_TEMPERATURE
) -> torch.Tensor:
    """KL(teacher || student) between per-channel spatial softmaxes, averaged over channels.

    student, teacher: (N, C, H, W) with the same shape (the student already projected)."""
    n, c = student.shape[:2]
    student_logits = student.float().reshape(n * c, -1) / temperature
    teacher_logits = teacher.float().reshape(n * c, -1) / temperature
    divergence = F.kl_div(
        F.log_softmax(student_logits, dim=1),
        F.log_softmax(teacher_logits, dim=1),
        reduction="sum",
        log_target=True,
    )
    return divergence * temperature**2 / (n * c)


class ChannelWiseDistillationModel(DistillationModel):
    """ultralytics' distillation wrapper with CWD as the per-level feature loss."""

    temperature: float = DEFAULT_TEMPERATURE  # a class constant: DDP re-imports classes by name

    def loss_sl2(  # the per-level feature loss that DistillationModel.loss calls
        self,
        student_feat: torch.Tensor,
        teacher_feat: torch.Tensor,
        feat_idx: int,
        teacher_scores: tuple,
    ) -> torch.Tensor:
        return channel_wise_distillation(student_feat, teacher_feat, self.temperature)


class ChannelWiseDistillationTrainer(DetectionTrainer):
    """A detection trainer whose distillation (the `distill_model` argument) uses CWD.

    The student is wrapped once its attributes are set (class names, hyperparameters) and
    before ultralytics would wrap it with its own loss; a resumed run's wrapper is rebuilt as
    CWD with its trained projectors."""

    def set_model_attributes(self) -> None:
        super().set_model_attributes()
        if self.args.distill_model is None or isinstance(self.model, ChannelWiseDistillationModel):
            return
        if isinstance(self.model, DistillationModel):  # resumed: ultralytics rebuilt its own
            resumed = self.model
            student, teacher = resumed.student_model, resumed.teacher_model
            projector_state = resumed.projector.state_dict()
        else:
            student, teacher, projector_state = self.model, None, None
        student.args = self.args
        teacher_source: str | Path | torch.nn.Module = (
            teacher if teacher is not None else self.args.distill_model
        )
        wrapped = ChannelWiseDistillationModel(student_model=student, teacher_model=teacher_source)
        if projector_state is not None:
            wrapped.projector.load_state_dict(projector_state)
        self.model = wrapped
