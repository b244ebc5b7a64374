"""Training: recipes of named settings, the modern recipe's pieces, exact resume, distillation,
adversarial training, torchrun data parallelism. Entry point: ``train(config, out)``."""

from .config import TrainConfig, apply_overrides, list_recipes, load_recipe

__all__ = ["TrainConfig", "train", "build_student", "load_recipe", "apply_overrides", "list_recipes"]


def __getattr__(name: str):
    """The loop (torchvision, timm) loads on first use: the command line lists ``train`` without paying for it."""
    if name in ("train", "build_student"):
        from . import loop

        return getattr(loop, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
