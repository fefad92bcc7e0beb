"""Training: LightningModule, DataModule, ``pretrain(cfg)``, ``reclf pretrain`` and ``reclf export``.

Lightning is imported lazily: ``from reclf.train import pretrain`` stays cheap until it is called.
"""

from reclf.train.pretrain import PretrainResult, pretrain

__all__ = ["PretrainResult", "pretrain"]
