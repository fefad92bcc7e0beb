"""Precompute a frozen text encoder's outputs for a corpus once, for every run that uses it.

With ``text_encoder.freeze=true`` the text backbone maps the same report to the same vectors in
every step, every run and every method, so its outputs are computed once per distinct report text
(:meth:`reclf.models.text.TextEncoder.precompute`) and written to one safetensors file; each run
points ``text_encoder.cache_file`` at it and its training step then costs what the image side and
the heads cost. The file is fingerprinted with the encoder's weights and settings (max_tokens,
layers, pooling), so a run with another text setting never reads it (see ``TextOutputCache``).
Texts the file does not hold (another section rule, sampled sentences, prompts) are simply encoded
when they come.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from reclf.config import TextEncoderConfig
from reclf.data.datasets import study_report
from reclf.data.studies import read_studies


@dataclass
class TextCacheResult:
    path: Path
    reports: int  # distinct report texts in the file
    encoded: int  # of which encoded now (the rest came from an existing file)
    truncated: int  # reports longer than max_tokens (their tail is not seen by the model)
    seconds: float


def shared_cache_file(folder: str | Path, text: TextEncoderConfig) -> Path:
    """Where runs that share the frozen text encoder ``text`` keep its features under ``folder``
    (the demo, ``reclf tune``): one file per encoder, pooling, length and word context."""
    context = "" if text.context == "report" else f"-{text.context}"
    return Path(folder) / f"text-{text.name}-{text.pooling}-{text.max_tokens}{context}.safetensors"


def needs_cls_attention(methods: list[dict]) -> bool:
    """Whether any of these ``method`` config sections weighs words by the [CLS] attention (MGCA's token
    loss), which the cache must then hold (it needs the slower eager attention)."""
    from reclf.methods.params import method_params

    return any(method_params(**m).token_weight > 0 for m in methods)


def corpus_reports(roots: list[str | Path], sections: list[str]) -> list[str]:
    """The training text of every study of the given study-table folders, in table order, deduplicated."""
    texts: list[str] = []
    for root in roots:
        df = read_studies(root)
        texts.extend(study_report(row, sections) for row in df.to_dict("records"))
    return [t for t in dict.fromkeys(texts) if t.strip()]


def build_text_cache(
    cfg: TextEncoderConfig, reports: list[str], path: str | Path, batch_size: int = 64, cls_attention: bool = True
) -> TextCacheResult:
    """Encode ``reports`` with the frozen encoder ``cfg`` into ``path`` (reusing what ``path`` holds).

    ``cls_attention``: also keep the last layer's ``[CLS]`` attention (MGCA's word weights; it needs the
    slower eager attention, so leave it off when no run asks for it).
    """
    from dataclasses import replace

    from reclf.models.text import build_text_encoder

    if not cfg.freeze:
        raise ValueError("a text feature cache needs a frozen text encoder: set text_encoder.freeze=true")
    start = time.time()
    encoder = build_text_encoder(replace(cfg, cache_file=None, cache_size=max(cfg.cache_size, len(reports))))
    encoder.eval()
    encoder.load_cache(path)
    encoded = encoder.precompute(reports, batch_size=batch_size, need_cls_attention=cls_attention)
    if encoded:
        encoder.save_cache(path)
    tokens = encoder.tokenizer.hf(reports, truncation=False, add_special_tokens=True)["input_ids"]
    truncated = sum(len(ids) > cfg.max_tokens for ids in tokens)
    assert encoder.cache is not None  # cache_size >= len(reports) > 0 on a frozen encoder
    return TextCacheResult(Path(path), len(encoder.cache), encoded, truncated, round(time.time() - start, 1))
