"""Training: recipes of named settings, the modern recipe's pieces, exact resume, distillation,
adversarial training, torchrun data parallelism. Entry point: ``train(config, out)``."""

from .config import TrainConfig, apply_overrides, list_recipes, load_recipe
from .loop import build_student, train

__all__ = ["TrainConfig", "train", "build_student", "load_recipe", "apply_overrides", "list_recipes"]
