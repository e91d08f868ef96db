"""The label-smoothing family beyond the two conventions: one small file per published idea.

Each file holds the functional form (formula and paper in its docstring) and its ``nn.Module``;
the modules are also reachable from :mod:`labelsmooth.nn`.

=============================  ==========================================================
``confidence_penalty``         CE - beta H(p) (Pereyra et al., 2017)
``margin_label_smoothing``     CE + hinge on logit distances above a margin (MbLS, 2022)
``label_relaxation``           KL to the closest distribution with p_y >= 1 - alpha (2021)
``maxsup``                     CE + eps (z_max - mean z) (MaxSup, 2025)
``OnlineLabelSmoothing``       class-wise soft targets from the last epoch (OLS, 2021)
``spatial_label_smoothing``    Gaussian-smoothed label maps for segmentation (SVLS, 2021)
``teacher_free_kd``            KD from a hand-made virtual teacher (Tf-KD, 2020)
``focal_cross_entropy``        focal loss on smoothed targets (Lin et al., 2017)
=============================  ==========================================================
"""

from .confidence_penalty import ConfidencePenaltyLoss, confidence_penalty
from .focal import FocalLoss, focal_cross_entropy
from .label_relaxation import LabelRelaxationLoss, label_relaxation
from .margin_label_smoothing import MarginLabelSmoothingLoss, margin_label_smoothing
from .maxsup import MaxSupLoss, maxsup
from .online_label_smoothing import OnlineLabelSmoothing, online_label_smoothing
from .spatial_label_smoothing import (
    SpatialLabelSmoothingLoss,
    spatial_label_smoothing,
    spatial_smooth_labels,
    svls_kernel,
)
from .teacher_free_kd import TeacherFreeKDLoss, teacher_free_kd, virtual_teacher

__all__ = [
    "ConfidencePenaltyLoss",
    "FocalLoss",
    "LabelRelaxationLoss",
    "MarginLabelSmoothingLoss",
    "MaxSupLoss",
    "OnlineLabelSmoothing",
    "SpatialLabelSmoothingLoss",
    "TeacherFreeKDLoss",
    "confidence_penalty",
    "focal_cross_entropy",
    "label_relaxation",
    "margin_label_smoothing",
    "maxsup",
    "online_label_smoothing",
    "spatial_label_smoothing",
    "spatial_smooth_labels",
    "svls_kernel",
    "teacher_free_kd",
    "virtual_teacher",
]
