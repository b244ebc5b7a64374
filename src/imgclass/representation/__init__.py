"""Representation quality of frozen features: pure algorithms on feature matrices (torch / numpy), no probe
machinery. Used by the ``representation`` probe and by the training loop's online kNN monitor.

- :mod:`.knn`: weighted kNN classification (InstDisc / lightly ``knn_predict`` protocol);
- :mod:`.linear`: the linear probe (multinomial logistic regression, L2 strength chosen on a held-out split);
- :mod:`.fewshot`: k-shot accuracy (logistic regression and nearest prototype) over seeded episodes;
- :mod:`.clustering`: k-means with NMI, ARI and Hungarian-matched accuracy;
- :mod:`.cka`: linear centred kernel alignment between layers (Kornblith et al. 2019).
"""

from .cka import cka_matrix, linear_cka
from .clustering import cluster_metrics, hungarian_accuracy
from .fewshot import fewshot_accuracy
from .knn import knn_predictions, knn_scores, knn_top1
from .linear import LinearProbe, linear_probe

__all__ = ["knn_scores", "knn_predictions", "knn_top1", "linear_probe", "LinearProbe", "fewshot_accuracy",
           "cluster_metrics", "hungarian_accuracy", "linear_cka", "cka_matrix"]
