"""A model card: the ``README.md`` written beside the weights of every saved model.

A saved folder (``model.safetensors`` + ``config.json``) is shared and reused long after the run
that made it is gone; the card says in plain words what it holds (method, encoders, image size,
text encoder and which of its layers were frozen), what it was trained on (study table and rows),
how long (optimiser steps), with which seed and reclf version, and the evaluation results that sit
in the folder. It follows Hugging Face's convention: YAML front matter (machine-readable, and
read back when the card is refreshed) followed by Markdown.

The card is documentation only: ``from_pretrained`` never reads it, so a missing or edited card
changes nothing about the model. ``save_pretrained`` writes a card from the model's own config;
``reclf export`` (and so ``reclf pretrain``) rewrites it with the training run's facts from the
checkpoint. ``reclf.evaluate.results.refresh_model_card(folder)`` rewrites it after evaluations were
written under the folder, listing their results and keeping the training facts of the existing card.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from reclf.utils.io import atomic_write_text

#: One evaluation result in the card: ``(task, metric, "value [95% CI]", file relative to the folder)``.
ResultRow = tuple[str, str, str, str]
CARD_NAME = "README.md"


@dataclass
class TrainingInfo:
    """What a training run knew about itself; every field is optional (``None``: not known)."""

    run_name: str | None = None
    data_root: str | None = None
    data_table: str | None = None
    data_rows: int | None = None
    data_splits: dict[str, int] = field(default_factory=dict)
    steps: int | None = None  # optimiser steps (Lightning's global_step); epochs are not recorded: mid-epoch
    # stops and validation-time checkpoints make Lightning's epoch counter ambiguous
    seed: int | None = None
    batch_size: int | None = None
    checkpoint: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingInfo:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})


def count_table_rows(data_root: str | Path) -> tuple[str | None, int | None, dict[str, int]]:
    """``(table path, rows, rows per split)`` of the study table in ``data_root``; ``None`` when unreadable.

    Counting never fails the save: the card then says the row count is not known.
    """
    try:
        from reclf.data.studies import table_path

        path = table_path(data_root)
    except Exception:  # noqa: BLE001 - no table here (moved, or a synthetic run): not known
        return None, None, {}
    try:
        import pandas as pd

        if path.suffix == ".parquet":
            df = pd.read_parquet(path)
        else:
            # only the columns counted: a full MIMIC-CXR table with its reports is slow to parse
            df = pd.read_csv(path, dtype=str, keep_default_na=False, usecols=lambda c: c in ("study_id", "split"))
    except Exception:  # noqa: BLE001 - unreadable table: name it, rows not known
        return str(path), None, {}
    splits = {str(k): int(v) for k, v in df["split"].value_counts().items()} if "split" in df.columns else {}
    return str(path), int(len(df)), splits


def training_info_from_checkpoint(checkpoint: dict[str, Any], ckpt_path: str | Path | None = None) -> TrainingInfo:
    """The training facts stored in a ``reclf pretrain`` checkpoint (run config, global step)."""
    cfg = (checkpoint.get("reclf") or {}).get("config") or {}
    data = cfg.get("data") or {}
    root = data.get("root")
    table, rows, splits = count_table_rows(root) if root else (None, None, {})
    return TrainingInfo(
        run_name=cfg.get("name"),
        data_root=root,
        data_table=table,
        data_rows=rows,
        data_splits=splits,
        steps=checkpoint.get("global_step"),
        seed=cfg.get("seed"),
        batch_size=data.get("batch_size"),
        checkpoint=None if ckpt_path is None else str(ckpt_path),
    )


def read_card_training(folder: str | Path) -> TrainingInfo | None:
    """The training facts in the front matter of an existing card, if any."""
    path = Path(folder) / CARD_NAME
    if not path.is_file():
        return None
    text = path.read_text()
    if not text.startswith("---\n"):
        return None
    end = text.find("\n---\n", 4)
    if end < 0:
        return None
    try:
        meta = yaml.safe_load(text[4:end]) or {}
    except yaml.YAMLError:
        return None
    training = meta.get("reclf", {}).get("training") if isinstance(meta, dict) else None
    return TrainingInfo.from_dict(training) if isinstance(training, dict) else None


def _text_layers(folder: Path, text: dict[str, Any]) -> int | None:
    """How many transformer layers the text encoder has, when the folder says so."""
    if text.get("name") == "bert-tiny":
        return text.get("num_layers")
    hf = folder / str(text.get("name", "")) / "config.json"
    if text.get("name") == "minilm":  # the offline MiniLM shipped in a PyPI package
        from reclf.models.text import TextEncoderError, minilm_dir

        try:
            hf = minilm_dir() / "config.json"
        except TextEncoderError:
            return None
    if hf.is_file():
        try:
            return json.loads(hf.read_text()).get("num_hidden_layers")
        except (json.JSONDecodeError, OSError):
            return None
    return None


def _section(config: dict[str, Any], key: str) -> dict[str, Any]:
    """``config[key]`` as a mapping (a bare name, as some custom models write, becomes ``{"name": ...}``)."""
    value = config.get(key)
    if isinstance(value, dict):
        return dict(value)
    return {"name": str(value)} if value is not None else {}


def _fmt(value: Any, unknown: str = "not recorded") -> str:
    return unknown if value is None or value == "" else str(value)


def render_model_card(
    folder: str | Path,
    config: dict[str, Any],
    training: TrainingInfo | None = None,
    name: str | None = None,
    results: list[ResultRow] | None = None,
) -> str:
    """The card's text for a folder whose ``config.json`` is ``config`` (``name``: the folder's final name)."""
    folder = Path(folder)
    shown = name or folder.name
    method = _section(config, "method")
    method_name = method.get("name", "?")
    image = _section(config, "image_encoder")
    text = _section(config, "text_encoder")
    version = config.get("reclf_version", "?")
    n_layers = _text_layers(folder, text)
    layers = f"{n_layers} layers" if n_layers else "layers: see config"
    bottom = int(text.get("freeze_layers") or 0)  # newer configs: embeddings + the first N layers
    if text.get("freeze"):
        frozen = f"all {n_layers} layers frozen" if n_layers else "all layers frozen"
    elif bottom:
        frozen = f"embeddings + layers 1-{bottom}" + (f" of {n_layers}" if n_layers else "") + " frozen"
    else:
        frozen = "none (fine-tuned)"
    resize = image.get("resize_to")
    text_name = text.get("name", "?")
    if text_name == "text_encoder":
        text_name = "text_encoder/ (saved in this folder)"
    weights = image.get("weights")
    meta: dict[str, Any] = {
        "library_name": "reclf",
        "tags": list(dict.fromkeys(["reclf", method_name, "vision-language", "contrastive-learning", "chest-x-ray"])),
        "reclf": {
            "version": version,
            "method": method_name,
            "image_encoder": image.get("name"),
            "image_size": image.get("image_size"),
            "text_encoder": text.get("name"),
            "training": asdict(training) if training is not None else None,
        },
    }
    lines = [
        "---",
        yaml.safe_dump(meta, sort_keys=False).rstrip(),
        "---",
        "",
        f"# {method_name} (reclf {version})",
        "",
        f"A {method_name} image-report model saved by reclf. Load it with",
        "",
        "```python",
        "import reclf",
        f'model = reclf.from_pretrained("path/to/{shown}")',
        "```",
        "",
        "This card is documentation only: `from_pretrained` reads `config.json` and `model.safetensors`.",
        "",
        "## Model",
        "",
        "| | |",
        "|---|---|",
        f"| method | {method_name} (every hyper-parameter: `config.json`, key `method`) |",
        f"| image encoder | {_fmt(image.get('name'))}, {image.get('in_chans', 1)} channel(s)"
        f"{', frozen' if image.get('freeze') else ''}"
        f"{f', initialised from {weights}' if weights else ''} |",
        f"| image size | {_fmt(image.get('image_size'))} px"
        f"{f' (upsampled to {resize} px inside the encoder)' if resize else ''} |",
        f"| text encoder | {text_name}, {layers}, sum of the last {text.get('last_n_layers', 1)} layer(s), "
        f"pooling {text.get('pooling', 'cls')}, at most {text.get('max_tokens', '?')} tokens, "
        f"sections {', '.join(text.get('sections') or [])} |",
        f"| text encoder frozen layers | {frozen} |",
        f"| embedding size | {_fmt(method.get('embed_dim'), 'see config.json')} |",
        f"| reclf version | {version} |",
        "",
        "## Training",
        "",
    ]
    if training is None:
        lines.append("Not recorded: this folder was saved outside `reclf pretrain` / `reclf export`.")
    else:
        rows = _fmt(training.data_rows, "not known")
        if training.data_splits:
            rows += " (" + ", ".join(f"{k} {v}" for k, v in sorted(training.data_splits.items())) + ")"
        lines += [
            "| | |",
            "|---|---|",
            f"| run | {_fmt(training.run_name)} |",
            f"| study table | {_fmt(training.data_table or training.data_root)} |",
            f"| rows | {rows} |",
            f"| steps | {_fmt(training.steps)} |",
            f"| batch size | {_fmt(training.batch_size)} |",
            f"| seed | {_fmt(training.seed)} |",
            f"| checkpoint | {_fmt(training.checkpoint)} |",
        ]
    lines += ["", "## Evaluation", ""]
    if results:
        lines += ["| task | metric | value ± std [95% CI] | file |", "|---|---|---|---|"]
        lines += [f"| {t} | {m} | {v} | {f} |" for t, m, v, f in results]
    else:
        lines.append(
            "No evaluation results listed. `reclf evaluate TASK --model THIS --out THIS/eval/TASK` writes them "
            "here; `reclf.evaluate.results.refresh_model_card(THIS)` then adds them to this card."
        )
    return "\n".join(lines) + "\n"


def write_model_card(
    folder: str | Path,
    training: TrainingInfo | None = None,
    name: str | None = None,
    results: list[ResultRow] | None = None,
) -> Path:
    """Write ``folder/README.md`` (atomically) from ``folder/config.json``; returns its path.

    ``training``: the run's facts; by default those of the card already in the folder, if any.
    ``name``: the folder's final name when ``folder`` is a temporary one (atomic saves).
    ``results``: the evaluation rows to list; evaluation owns the ``results.json`` format, so it passes
    them (``reclf.evaluate.results.refresh_model_card``) and this layer never reads evaluation files.
    """
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder} has no config.json; a model card describes a saved model folder")
    config = json.loads(config_path.read_text())
    if training is None:
        training = read_card_training(folder)
    path = folder / CARD_NAME
    atomic_write_text(path, render_model_card(folder, config, training, name=name, results=results))
    return path
