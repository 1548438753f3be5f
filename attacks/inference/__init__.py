"""Inference attacks: what curious parties learn from what a protocol lets them see.

* :mod:`.property` — environment-property inference by a curious server (shadow clients + ridge
  regression; Ganju et al. 2018, Melis et al. 2019).
* :mod:`.reconstruction` — state reconstruction from a shared Q-network/policy gradient: analytic on the
  first fully connected layer (Phong et al. 2017, Geiping et al. 2020) and DLG (Zhu et al. 2019).
* :mod:`.membership` — trajectory membership inference, loss threshold (Yeom et al. 2018) calibrated by a
  reference model, scored by ROC AUC.
* :mod:`.common` — the views (:class:`~attacks.inference.common.ServerRecorder`, a ``Federation``
  observer), the membership game's ground truth (:class:`~attacks.inference.common.TrajectoryTap`), DP
  settings and scoring helpers.

Every study runs the real round loop under plaintext, SecAgg or CKKS; server-side attacks receive only the
:class:`~securefrl.behaviour.ServerView` the protocol produced.
"""

from attacks.inference.common import DP_PLACEMENTS, ObservedRound, ServerRecorder, TrajectoryTap, dp_pipeline
from attacks.inference.membership import MembershipResult, membership_study
from attacks.inference.property import PropertyInference, PropertyInferenceResult
from attacks.inference.reconstruction import (
    GradientSharingFederation,
    ReconstructionResult,
    analytic_candidates,
    dlg_reconstruct,
    reconstruction_study,
)

__all__ = [
    "DP_PLACEMENTS",
    "GradientSharingFederation",
    "MembershipResult",
    "ObservedRound",
    "PropertyInference",
    "PropertyInferenceResult",
    "ReconstructionResult",
    "ServerRecorder",
    "TrajectoryTap",
    "analytic_candidates",
    "dlg_reconstruct",
    "dp_pipeline",
    "membership_study",
    "reconstruction_study",
]
