"""The pass rules of the explanation checks, torch-free so the dashboard can state them.

`explain` sets a pass flag on three of the metrics it stores; these are the
rules it applies (pipeline.explain.faithfulness and the explain stage take their
thresholds from here) and the dashboard shows in words. One home, so the stored
flags and the rule a reader sees cannot drift apart.
"""
from __future__ import annotations

from dataclasses import dataclass

ENERGY_FACTOR = 2.0      # gt_energy passes at this many times the uniform map's share
POINTING_MARGIN = 0.10   # pointing passes this far above another image's map
SANITY_THRESHOLD = 0.5   # sanity passes when the randomised model's map correlates below this
# The method gradient-free maps are compared with when both are computed (metric 'agree_gradcam_spearman').
AGREEMENT_REFERENCE = "gradcam"


@dataclass(frozen=True)
class Check:
    """Passes when value >= factor × baseline + margin, or, with `below`, when value < below."""
    metric: str              # explanation_metrics.metric carrying the pass flag
    name: str                # what the check asks, for people
    baseline: str | None     # the metric it is compared with (None: a fixed threshold, `below`)
    rule: str                # the pass rule in words
    factor: float = 1.0
    margin: float = 0.0
    below: float | None = None

    def passes(self, value: float, baseline: float | None) -> bool:
        if self.below is not None:
            return bool(value < self.below)
        return bool(value >= self.factor * baseline + self.margin)


CHECKS: tuple[Check, ...] = (
    Check("gt_energy", "energy inside the action-unit regions", "gt_energy_uniform",
          f"passes at {ENERGY_FACTOR:g}× or more the share a uniform map puts there", factor=ENERGY_FACTOR),
    Check("pointing", "CAM peak inside the action-unit regions", "pointing_shuffled",
          f"passes at {POINTING_MARGIN:.2f} or more above another image's map (shuffled)", margin=POINTING_MARGIN),
    Check("sanity_spearman", "changes when the model is randomised", None,
          f"passes when the mean Spearman similarity to the randomised model's map is below {SANITY_THRESHOLD:g}",
          below=SANITY_THRESHOLD),
)


def describe_sanity_skip(*, model_source: str, gradient_free: bool) -> str | None:
    """Why the randomisation sanity check is not run for a method, or None when it is.

    model_source: 'checkpoint' (trained here) or a model card's format ('pytorch', 'torchscript', 'onnx').
    gradient_free: the method perturbs the input (occlusion, RISE) instead of reading a layer.
    The check re-initialises the model's weights layer by layer and recomputes the maps, so it
    needs the model as a PyTorch module; `explain` skips it where these reasons say, and the
    dashboard shows the same words.
    """
    if model_source not in ("checkpoint", "pytorch"):
        article = "an" if model_source[:1].lower() in "aeiou" else "a"
        return (f"it re-initialises the model's weights layer by layer, which needs the model as a PyTorch "
                f"module (a trained run or a pytorch card); this run's model is {article} {model_source} file")
    if gradient_free:
        return ("it is run for the CAM methods only: on a randomised copy a gradient-free map would cost its "
                "whole perturbation sweep per image again")
    return None
