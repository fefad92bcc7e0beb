"""The method interface: what training and evaluation may call on a model, declared once.

``VLModel`` (every registered method) implements all of it; the test stubs implement the part their
tests exercise. The seams are typed with these protocols instead of probing with ``getattr``:

- :class:`EvaluableModel`: what ``reclf.evaluate`` uses (``LoadedModel.model``): encode, score,
  explain (one pair, or a batch of pairs with what diagnostics and grounding read: word weights,
  relations, word -> region attention, all computed by the model's own code), the backbone for probes,
  and the capability flag ``has_local`` (a word-region matcher: ``local_similarity`` works, and
  ``similarity`` may fuse it with the global score). Evaluation uses nothing else of a model: no
  private attribute, no ``hasattr`` probe.
- :class:`TrainableModel`: what ``reclf.train`` uses (``pretrain``, the Lightning module): the
  loss, the tokenizer the collate function runs, the epoch hook, and saving.
- :class:`MethodModel`: both, the full contract of ``reclf.methods`` (docs/ARCHITECTURE.md, Methods).

Protocols rather than an ABC: the stubs and converted models need not inherit from reclf classes,
and ``isinstance(model, EvaluableModel)`` (runtime-checkable) checks that the names exist.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from torch import Tensor, nn

from reclf.data.tokenization import Tokenizer

__all__ = [
    "EvaluableModel",
    "Explanation",
    "Gather",
    "MethodModel",
    "PairExplanations",
    "Tokenizer",
    "TrainableModel",
    "missing_members",
]

#: All-gather with autograd across DDP ranks (``reclf.train.distributed``); ``None`` in one process.
Gather = Callable[[Tensor], Tensor]


class Explanation(Protocol):
    """What ``explain`` returns (``reclf.methods.model.Explanation`` is the dataclass that has it)."""

    words: list[str]
    attention: Tensor | None  # [W, h, w] word -> region maps, or None without local features
    grid: tuple[int, int]
    word_weights: Tensor | None  # [W] importance of each word's matching
    relations: Tensor | None  # [N, N] SRM relations
    global_score: float
    local_score: float | None


@dataclass
class PairExplanations:
    """What a model's own matcher says about each image with *its own* report (pair ``i`` with ``i``).

    Every entry is per report, cut to that report's words (``len(words[i])`` of them), on the CPU. ``None``
    where the method has no such part (ConVIRT: no word weights, relations or attention). Diagnostics and
    grounding read these instead of recomputing anything: the numbers are the ones the method trains with
    (GLoRIA's learned match scale included).
    """

    words: list[list[str]]  # each report's words, as the tokenizer splits them
    pieces: list[Tensor]  # [n] tokenizer pieces per word (the "long rare words" reference)
    grid: tuple[int, int]  # the region grid (h, w): R = h * w
    word_weights: list[Tensor] | None  # [n] importance of each word's matching, sums to 1 over the words
    relations: list[Tensor] | None  # [n, n] word -> word relations (head mean; a global node left out)
    head_relations: list[Tensor] | None  # [H, n, n] the same per head of the last relation layer
    attention: list[Tensor] | None  # [n, R] word -> region attention over the pair's own image


@runtime_checkable
class EvaluableModel(Protocol):
    """The part of the interface evaluation uses. Features are ``reclf.models.features`` dataclasses."""

    @property
    def method(self) -> str: ...

    @property
    def has_local(self) -> bool:
        """True when the method has a word-region matcher (``local_similarity`` is defined)."""
        ...

    @property
    def config(self) -> dict[str, Any]:
        """A JSON-able description (``image_encoder.image_size`` tells the input size)."""
        ...

    @property
    def image_encoder(self) -> nn.Module:
        """The backbone: ``forward(x) -> ImageEncoderOutput``, ``global_dim``, the feature pyramid."""
        ...

    def encode_image(self, images: Tensor) -> Any: ...  # [B, C, H, W] in [0, 1] -> ImageFeatures

    def encode_text(self, reports: Any) -> Any: ...  # list[str] (or the tokenizer's output) -> TextFeatures

    def global_similarity(self, img: Any, txt: Any) -> Tensor: ...  # [n_img, n_txt] cosine

    def local_similarity(self, img: Any, txt: Any) -> Tensor: ...  # [n_img, n_txt]; needs has_local

    def similarity(self, img: Any, txt: Any) -> Tensor: ...  # [n_img, n_txt], the method's own score

    def explain(self, image: Tensor, report: str) -> Explanation: ...

    def explain_pairs(self, images: Tensor, reports: list[str]) -> PairExplanations:
        """Word weights, relations and word -> region attention of each ``images[i]`` with ``reports[i]``
        (eval mode, no gradient; the model's own rules)."""
        ...

    def word_region_attention(self, img: Any, txt: Any) -> Tensor:
        """``[B, W, R]``: each report's word -> region attention over its own image (the method's own matcher,
        with its learned scale); raises ``ValueError`` for a method without word-region features."""
        ...

    def eval(self) -> Any: ...  # nn.Module's


@runtime_checkable
class TrainableModel(Protocol):
    """The part of the interface training uses (``reclf.train``)."""

    @property
    def method(self) -> str: ...

    @property
    def config(self) -> dict[str, Any]: ...

    @property
    def tokenizer(self) -> Tokenizer: ...

    def encode_image(self, images: Tensor) -> Any: ...

    def encode_text(self, reports: Any) -> Any: ...

    def similarity(self, img: Any, txt: Any) -> Tensor: ...

    def loss(self, batch: dict[str, Any], gather: Gather | None = None, gather_local: bool = False
             ) -> dict[str, Tensor]:
        """Named loss terms and their weighted total ``"loss"`` (``gather_local``: gather the local features
        across ranks too, when ``train.gather_local`` asks for it; only passed when it is true)."""
        ...

    def on_train_epoch_start(self, epoch: int) -> None: ...

    def save_pretrained(self, folder: str | Path) -> Any: ...


@runtime_checkable
class MethodModel(EvaluableModel, TrainableModel, Protocol):
    """The whole interface: what ``reclf.methods.VLModel`` implements for every method."""


def missing_members(obj: Any, protocol: type) -> list[str]:
    """The public names ``protocol`` declares (its methods, properties and annotated attributes, through its
    base protocols) that ``obj`` lacks: what to name in an error when ``isinstance(obj, protocol)`` fails."""
    names: set[str] = set()
    for base in protocol.__mro__:
        if base is object or base.__module__ == "typing":
            continue
        names |= {n for n in vars(base) if not n.startswith("_")}
        names |= {n for n in getattr(base, "__annotations__", {}) if not n.startswith("_")}
    return sorted(n for n in names if not hasattr(obj, n))

