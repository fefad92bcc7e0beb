"""Alignment parts in the joint space: local matching, aggregators (pooling, SRM, IRM) and losses.

These parts know nothing of encoders: they take L2-normalised joint-space tensors
(``ImageFeatures`` / ``TextFeatures`` fields) and return scores and losses; ``reclf.methods``
composes them into ConVIRT, GLoRIA, MGCA and RECLF.
"""

from reclf.align.aggregators import (
    AGGREGATORS,
    AggregateOutput,
    Aggregator,
    AggregatorConfig,
    IRMConfig,
    SRMConfig,
    build_aggregator,
)
from reclf.align.losses import (
    Temperature,
    global_contrastive_loss,
    info_nce,
    local_contrastive_loss,
    mgca_token_loss,
    topk_candidates,
)
from reclf.align.matching import attend, attend_paired, pairwise_local_outputs, pairwise_local_scores
from reclf.align.prototypes import PrototypeLoss, sinkhorn

__all__ = [
    "AGGREGATORS",
    "AggregateOutput",
    "Aggregator",
    "AggregatorConfig",
    "IRMConfig",
    "PrototypeLoss",
    "SRMConfig",
    "Temperature",
    "attend",
    "attend_paired",
    "build_aggregator",
    "global_contrastive_loss",
    "info_nce",
    "local_contrastive_loss",
    "mgca_token_loss",
    "pairwise_local_outputs",
    "pairwise_local_scores",
    "sinkhorn",
    "topk_candidates",
]
