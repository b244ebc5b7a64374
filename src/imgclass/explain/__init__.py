"""Explanations: attribution maps with one call shape, concept tests (TCAV), and faithfulness metrics.

``explain(classifier, images, targets=None, method="gradcam", internal_batch_size=64, **params)``
returns ``(N, H, W)`` maps at the input's resolution for float pixels in [0, 1]. Methods register by
name in :data:`METHODS`: gradient methods (``saliency``, ``input_x_gradient``, ``ig``, ``guided_backprop``,
``deconvnet``, ``smoothgrad`` over any of them), CAMs (``gradcam``, ``gradcam++``, ``scorecam``) and
perturbation methods (``occlusion``, ``rise``, ``extremal``).
"""

from . import cam, gradient, perturbation  # noqa: F401  (register the methods)
from .base import METHODS, Method, explain, get_method, reduce_channels, register_method, resolve_targets
from .cam import cam_layer, tokens_to_grid
from .images import image_files, load_images, normalize_map, overlay
from .metrics import (CurveResult, RandomizationResult, deletion_auc, insertion_auc, perturbation_curve,
                      random_maps, randomization_check, randomized_copy, spearman, weight_layers)
from .tcav import ConceptScore, TCAVResult, tcav, train_cav

__all__ = [
    "METHODS", "Method", "explain", "get_method", "register_method", "reduce_channels", "resolve_targets",
    "cam_layer", "tokens_to_grid", "image_files", "load_images", "normalize_map", "overlay",
    "CurveResult", "RandomizationResult", "deletion_auc", "insertion_auc", "perturbation_curve", "random_maps",
    "randomization_check", "randomized_copy", "spearman", "weight_layers", "ConceptScore", "TCAVResult", "tcav", "train_cav",
]
