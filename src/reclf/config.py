"""Typed configuration: dataclasses, YAML presets and dotted ``key=value`` overrides.

Every command that takes a config resolves it the same way: dataclass defaults, then the YAML
preset, then command-line overrides (``train.max_steps=200 method.aggregator=irm``). An unknown
key or a value of the wrong type is an error that names the key and lists the valid ones, raised
before any work starts. Values on the command line are parsed with ``yaml.safe_load`` (data only,
never ``eval``). The resolved config is saved next to every output (``save_config``).

Presets ship inside the package (``reclf/presets/*.yaml``) and are addressed by name
(``reclf pretrain demo_reclf``), so a command means the same recipe whatever the working folder and
however reclf was installed; ``reclf presets`` lists them. A path to any YAML file works too.

The ``method`` section is a free mapping here because each method has its own hyper-parameters;
it is validated against the method's own dataclass when the model is built
(``reclf.methods.create_model``), which also happens before any work starts.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from reclf.utils.io import atomic_write_text

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


@dataclass
class ImageEncoderConfig:
    """Which image encoder, from which weights, and which stage gives the regions."""

    # cnn-small | resnet18/34/50 | vit-tiny | vit-tiny-12 | vit-small | vit-b16 | efficientnet-lite0
    name: str = "cnn-small"
    weights: str | None = None  # None (random) | torchvision/timm state dict file | "imagenet" (efficientnet-lite0)
    local_stage: str | None = None  # None: the encoder's default (ResNet: layer3, as GLoRIA and MGCA)
    in_chans: int = 1
    image_size: int = 128
    freeze: bool = False
    # upsample the input to this size inside the encoder (bilinear, align_corners, as GLoRIA's and MGCA's
    # ResNet forward): the region grid is set by it, e.g. 224 crops -> 299 gives ResNet-50 layer3 19x19 = 361
    # regions instead of 14x14 = 196. None: the input as given. CNN encoders only
    resize_to: int | None = None


#: Text encoder names that build without a download (``reclf.models.text``); any other name is a Hugging Face
#: name or folder, whose tokenizer and architecture config ``save_pretrained`` keeps beside the weights.
BUILTIN_TEXT_ENCODERS = ("bert-tiny", "minilm")


@dataclass
class TextEncoderConfig:
    """Which text encoder, and how reports become words."""

    name: str = "bert-tiny"  # bert-tiny (random init) | minilm (offline pretrained) | any HF name or folder
    max_tokens: int = 128
    last_n_layers: int = 1  # sum of the last N hidden layers (GLoRIA uses 4)
    word_merge: str = "sum"  # sum | mean: WordPiece pieces to words
    pooling: str = "cls"  # cls | mean | max: the report vector ([CLS] as MGCA, token mean as GLoRIA, max as ConVIRT)
    # report: each word's vector is read in its report (BERT's contextual states). word: each word is encoded
    # alone ("[CLS] pieces [SEP]") and the report vector is the mean of its words — a bag of words, so a report
    # and its twin with sides swapped between two findings have the same word vectors and report vector, and
    # only the report's structure (SRM's sentence graph) can tell them apart: the test that isolates SRM
    context: str = "report"
    sections: list[str] = field(default_factory=lambda: ["findings", "impression"])
    freeze: bool = False  # freeze the whole backbone (its outputs are then cached per report: see cache_size)
    freeze_layers: int = 0  # freeze the embeddings and the first N transformer layers (ConVIRT: 6); 0 = none
    # keep only the first N transformer layers of a pretrained encoder (MGCA builds ClinicalBERT from a
    # 6-layer bert_config.json, so it runs the first 6 of its 12 layers); None = all
    keep_layers: int | None = None
    cache_size: int = 100_000  # frozen backbone: reports whose outputs are kept in memory (0 = no cache)
    cache_file: str | None = None  # frozen backbone: a file of precomputed outputs to start from (if it exists)
    # small BERT built from a config (bert-tiny): size knobs
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 2


@dataclass
class DataConfig:
    """Where the paired corpus lives and how it is loaded."""

    root: str = "out/synth/pretrain"
    batch_size: int = 32
    num_workers: int = 0
    on_error: str = "skip"  # skip | raise
    max_bad_fraction: float = 0.05
    shuffle_sentences: bool = False
    augment: bool = True
    limit_train: int | None = None  # use only the first N training studies (seeded order)
    # train split only: k random sentences of each report per study and epoch (seeded by seed, epoch, study);
    # 1 is GLoRIA's one-random-sentence sampling. 0: the full report
    sample_sentences: int = 0


@dataclass
class TrainConfig:
    """Optimisation and the run's bookkeeping."""

    max_epochs: int = 5
    max_steps: int = -1
    lr: float = 1e-3  # the heads (projections, aggregator, temperatures, prototypes) and any part without its own
    lr_text: float | None = None  # the text encoder's backbone (a pretrained BERT: 1e-5 .. 5e-5); None = lr
    lr_image: float | None = None  # the image encoder; None = lr
    weight_decay: float = 0.05
    warmup_fraction: float = 0.1
    grad_clip: float = 1.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW betas (GLoRIA: 0.5, 0.999)
    # cosine: linear warm-up then cosine decay, per step; plateau: ReduceLROnPlateau on val/loss per epoch
    # (GLoRIA: factor 0.5, patience 5; no warm-up)
    scheduler: str = "cosine"
    plateau_factor: float = 0.5
    plateau_patience: int = 5
    accumulate: int = 1
    precision: str = "32-true"  # 32-true | bf16-mixed | 16-mixed
    devices: int | str = 1
    num_nodes: int = 1
    accelerator: str = "auto"
    strategy: str = "auto"  # auto | ddp | ddp_spawn ...
    gather_local: bool = False  # also score word-region matchings against other ranks' batches
    compile: bool = False
    deterministic: bool = True
    val_every_n_epochs: int = 1
    log_every_n_steps: int = 10
    runs_dir: str = "runs"
    resume: str | None = None  # PATH | auto
    dry_run: bool = False  # two steps on tiny inputs, then stop
    checkpoint_every_n_steps: int = 0  # also write last.ckpt every n optimiser steps (0: only after validation)
    progress: bool = True


#: ``train.scheduler`` values (``PretrainModule.configure_optimizers`` builds each)
SCHEDULERS = ("cosine", "plateau")
#: ``train.precision`` values (Lightning's names; the short ones are its older spellings)
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "32", "bf16", "16")


@dataclass
class Config:
    """The whole run: encoders, method, data, training and the seed."""

    name: str = "run"
    seed: int = 0
    image_encoder: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    method: dict[str, Any] = field(default_factory=lambda: {"name": "reclf"})
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# ---------------------------------------------------------------------------------------------
# generic dataclass <-> mapping conversion with type checks


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check (and gently coerce: int -> float) ``value`` against the annotation ``tp``."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue  # the next member of the union; when none fits, the error below names the union
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {sorted(_field_names(tp))}, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if origin in (list, tuple):
        if isinstance(value, str | bytes) or not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    return value


def _field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def unknown_key_error(key: str, valid: list[str], prefix: str = "") -> ConfigError:
    """The error for a key that is not in ``valid``: it names the key, the nearest valid one and all of them."""
    import difflib

    near = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f" (did you mean {prefix}{near[0]}?)" if near else ""
    return ConfigError(
        f"unknown config key {prefix}{key!s}{hint}; valid keys here: {', '.join(prefix + n for n in valid)}"
    )


def coerce_fields(cls: type, data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The values of ``data`` checked against the fields of dataclass ``cls`` (types coerced, nothing added).

    An unknown key is an error naming it and the nearest valid key; so is a value of the wrong type.
    """
    hints = typing.get_type_hints(cls)
    names = _field_names(cls)
    for key in data:
        if key not in names:
            raise unknown_key_error(str(key), names, prefix)
    return {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping; unknown keys and wrong types are errors."""
    return cls(**coerce_fields(cls, data, prefix))


def overrides_to_dict(overrides: Sequence[str], data: dict[str, Any] | None = None) -> dict[str, Any]:
    """``["a.b=3", "c=x"]`` -> ``{"a": {"b": 3}, "c": "x"}`` (on top of ``data``, which is changed in place)."""
    data = {} if data is None else data
    for text in overrides:
        keys, value = parse_override(text)
        set_dotted(data, keys, value)
    return data


def to_dict(obj: Any) -> Any:
    """A plain, YAML/JSON-ready view of a (nested) dataclass."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b=3"`` -> (["a", "b"], 3). Values are YAML scalars/lists, never evaluated code."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value (e.g. train.max_steps=100)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: cannot parse the value ({exc})") from exc
    return key.split("."), value


def set_dotted(data: dict[str, Any], path: list[str], value: Any) -> None:
    node = data
    for part in path[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set {'.'.join(path)}: {part} is not a section")
        node = child
    node[path[-1]] = value


PRESET_DIR = Path(__file__).resolve().parent / "presets"


@dataclass(frozen=True)
class Preset:
    """A recipe shipped with the package: its name (file stem), file, and one-line description."""

    name: str
    path: Path
    description: str


def _description(path: Path) -> str:
    """The preset's first comment line (presets open with a comment saying what they are)."""
    for line in path.read_text().splitlines():
        text = line.strip()
        if not text:
            continue
        if text.startswith("#"):
            return text.lstrip("#").strip().rstrip(",;:").strip()
        break
    return ""


def list_presets() -> list[Preset]:
    """Every shipped preset, sorted by name."""
    return [Preset(p.stem, p, _description(p)) for p in sorted(PRESET_DIR.glob("*.yaml"))]


def preset_path(name: str) -> Path:
    """The file of the shipped preset ``name`` (``.yaml`` optional); never a file of the working folder.

    Raises :class:`ConfigError` listing the shipped names when there is no such preset.
    """
    stem = name[: -len(".yaml")] if name.endswith(".yaml") else name
    path = PRESET_DIR / f"{stem}.yaml"
    if "/" in stem or "\\" in stem or not stem or not path.is_file():
        names = ", ".join(p.name for p in list_presets()) or "(none installed)"
        raise ConfigError(
            f"no shipped preset named {name!r}; shipped presets: {names} (`reclf presets` describes them)"
        )
    return path


def config_file(spec: str | Path) -> Path:
    """What a command's CONFIG argument names: an existing YAML file, else a shipped preset by name.

    A path that exists is used as given (your own or an edited copy of a preset); anything else
    must be a preset name, with or without ``.yaml``. The error names both possibilities.
    """
    path = Path(spec)
    if path.is_file():
        return path
    text = str(spec)
    if "/" in text or "\\" in text:  # meant as a path: do not guess a preset
        raise ConfigError(f"config file {spec} does not exist (a preset is named without a folder, e.g. demo_reclf)")
    try:
        return preset_path(text)
    except ConfigError:
        names = ", ".join(p.name for p in list_presets()) or "(none installed)"
        raise ConfigError(
            f"config {text!r} is neither a YAML file here nor a shipped preset; "
            f"shipped presets: {names} (`reclf presets` describes them)"
        ) from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def resolve(
    cls: type[T], path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> T:
    """Defaults <- YAML preset <- ``key=value`` overrides, validated against ``cls``."""
    data = overrides_to_dict(overrides, load_yaml(path) if path is not None else {})
    obj = from_dict(cls, data)
    if isinstance(obj, Config):
        validate_values(obj)
    return obj


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The run config used by ``reclf pretrain``; ``path`` is a YAML file or a shipped preset name."""
    cfg = resolve(Config, config_file(path) if path is not None else None, overrides)
    if "name" not in cfg.method:
        raise ConfigError("method.name is required (one of convirt, gloria, mgca, reclf, ...)")
    return cfg


def _check(ok: bool, key: str, value: Any, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r}: {rule}")


def check_optimizer(train: TrainConfig) -> None:
    """The optimiser's and scheduler's settings (``PretrainModule.configure_optimizers`` relies on them).

    Part of :func:`validate_values`, so that a bad ``train.betas`` fails when the config is resolved,
    before any data is read or run folder made, not when Lightning first builds the optimiser.
    """
    import math

    def at_least(key: str, value: Any, lo: float) -> None:
        _check(isinstance(value, int | float) and math.isfinite(value) and value >= lo, key, value, f"must be >= {lo}")

    _check(
        len(train.betas) == 2 and all(math.isfinite(b) and 0.0 <= b < 1.0 for b in train.betas),
        "train.betas",
        train.betas,
        "must be two numbers in [0, 1), e.g. [0.9, 0.999]",
    )
    _check(train.scheduler in SCHEDULERS, "train.scheduler", train.scheduler, f"must be one of {', '.join(SCHEDULERS)}")
    if train.scheduler == "plateau":
        _check(0.0 < train.plateau_factor < 1.0, "train.plateau_factor", train.plateau_factor, "must be in (0, 1)")
        at_least("train.plateau_patience", train.plateau_patience, 0)


def validate_values(cfg: Config) -> None:
    """Check the ranges of numeric settings, naming the key (types are checked by :func:`from_dict`).

    Without it a bad value shows up late and far away: ``image_size=0`` as a PyTorch shape error, ``lr=nan``
    as a silently diverging run, ``num_workers=-1`` as a DataLoader ``ValueError`` naming no key.
    """
    import math

    def positive_number(key: str, value: Any) -> None:
        _check(
            isinstance(value, int | float) and math.isfinite(value) and value > 0,
            key,
            value,
            "must be a finite number > 0",
        )

    def at_least(key: str, value: Any, lo: float) -> None:
        _check(isinstance(value, int | float) and math.isfinite(value) and value >= lo, key, value, f"must be >= {lo}")

    ie, te, data, train = cfg.image_encoder, cfg.text_encoder, cfg.data, cfg.train
    _check(ie.image_size >= 8, "image_encoder.image_size", ie.image_size, "must be at least 8 pixels (e.g. 128, 224)")
    _check(ie.in_chans >= 1, "image_encoder.in_chans", ie.in_chans, "must be >= 1")
    _check(te.max_tokens >= 4, "text_encoder.max_tokens", te.max_tokens, "must be at least 4 tokens")
    _check(te.last_n_layers >= 1, "text_encoder.last_n_layers", te.last_n_layers, "must be >= 1")
    for key in ("hidden_size", "num_layers", "num_heads"):
        at_least(f"text_encoder.{key}", getattr(te, key), 1)
    at_least("data.batch_size", data.batch_size, 1)
    at_least("data.num_workers", data.num_workers, 0)
    _check(
        0.0 <= data.max_bad_fraction <= 1.0, "data.max_bad_fraction", data.max_bad_fraction, "must be between 0 and 1"
    )
    if data.limit_train is not None:
        at_least("data.limit_train", data.limit_train, 1)
    for key in [f.name for f in dataclasses.fields(train) if f.name == "lr" or f.name.startswith("lr_")]:
        value = getattr(train, key)
        if value is not None or key == "lr":  # lr_text / lr_image may be None (= train.lr)
            positive_number(f"train.{key}", value)
    at_least("train.weight_decay", train.weight_decay, 0.0)
    at_least("train.grad_clip", train.grad_clip, 0.0)
    _check(
        0.0 <= train.warmup_fraction < 1.0, "train.warmup_fraction", train.warmup_fraction, "must be in [0, 1)"
    )
    at_least("train.accumulate", train.accumulate, 1)
    _check(train.max_epochs >= 1 or train.max_epochs == -1, "train.max_epochs", train.max_epochs, "must be >= 1 or -1")
    _check(train.max_steps >= 1 or train.max_steps == -1, "train.max_steps", train.max_steps, "must be >= 1 or -1")
    at_least("train.num_nodes", train.num_nodes, 1)
    at_least("train.val_every_n_epochs", train.val_every_n_epochs, 1)
    at_least("train.log_every_n_steps", train.log_every_n_steps, 1)
    at_least("train.checkpoint_every_n_steps", train.checkpoint_every_n_steps, 0)
    check_optimizer(train)
    _check(train.precision in PRECISIONS, "train.precision", train.precision, f"must be one of {', '.join(PRECISIONS)}")
    _check(
        train.max_epochs >= 1 or train.max_steps >= 1,
        "train.max_steps",
        train.max_steps,
        "set train.max_epochs >= 1 or train.max_steps >= 1 (both are -1: the run would never end)",
    )
    if isinstance(train.devices, int):
        _check(train.devices >= 1 or train.devices == -1, "train.devices", train.devices, "must be >= 1, -1 or 'auto'")


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically."""
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


#: Keys that say where a run writes, how it reports or how it splits its work, not what it trains: a run
#: resumed, moved, run with another progress display or with the all-pairs matcher cut into other chunks
#: (the same scores up to float rounding, tests/test_align_matching.py) is the same recipe
#: (they are left out of :func:`recipe` and its fingerprint).
BOOKKEEPING_KEYS = (
    "train.resume",
    "train.progress",
    "train.runs_dir",
    "train.checkpoint_every_n_steps",
    "text_encoder.cache_file",
    "method.chunk_size",
    "method.checkpoint_chunks",
)


def recipe(cfg: Any) -> dict[str, Any]:
    """The resolved config as a plain mapping, without :data:`BOOKKEEPING_KEYS`: what a run's result depends on.

    ``cfg`` is a :class:`Config` or its mapping (a saved ``config.yaml``); stage markers key on this.
    """
    import copy

    data = copy.deepcopy(to_dict(cfg))
    for key in BOOKKEEPING_KEYS:
        section, _, name = key.partition(".")
        if isinstance(data.get(section), dict):
            data[section].pop(name, None)
    return data


def config_fingerprint(cfg: Any) -> str:
    """The stable hash of :func:`recipe` (equal configs, equal fingerprints, whatever the key order)."""
    from reclf.utils.markers import fingerprint

    return fingerprint(recipe(cfg))


def run_config_fingerprint(model_path: str | Path) -> str | None:
    """The recipe fingerprint of the run that produced the model at ``model_path``, when it can be found.

    A model exported by ``reclf pretrain`` sits in ``<run>/export`` beside the run's ``config.yaml``; a
    checkpoint in ``<run>/checkpoints``. ``None`` for a model without its run (a baseline, a copied folder).
    """
    path = Path(model_path)
    for folder in (path, path.parent, path.parent.parent):
        candidate = folder / "config.yaml"
        if candidate.is_file():
            try:
                data = load_yaml(candidate)
            except ConfigError:
                return None
            return config_fingerprint(data) if {"train", "method"} <= set(data) else None
    return None
