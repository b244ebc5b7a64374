"""imgclass: evaluate, explain, stress-test and train image classifiers in one toolkit."""

__version__ = "0.2.0"

from .data import load_dataset  # noqa: E402
from .models import Classifier, load_model  # noqa: E402
from .evaluate import evaluate  # noqa: E402

__all__ = ["__version__", "load_dataset", "load_model", "Classifier", "evaluate"]
