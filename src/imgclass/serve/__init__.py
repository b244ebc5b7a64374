"""``imgclass serve``: a web app and JSON API over loaded models (playground: predictions, attributions, corruptions,
adversarial examples) and over the run store (run list, reports, comparisons, leaderboard).

``create_app(models=[...], store=..., runs_dir=..., token=..., limits=Limits(...))`` builds the ASGI app (FastAPI);
predictions go through :class:`DynamicBatcher` (concurrent requests batched within a short window); attacks and
explanations run as jobs with progress and a time limit.
"""

from .batcher import BatcherClosed, DynamicBatcher
from .app import Limits, create_app

__all__ = ["create_app", "Limits", "DynamicBatcher", "BatcherClosed"]
