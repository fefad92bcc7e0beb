"""Config resolution: defaults <- YAML <- overrides, with clear errors."""

import pytest

from reclf.config import Config, ConfigError, load_config, parse_override, resolve, save_config, to_dict


def test_defaults_yaml_and_overrides(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("name: x\ntrain:\n  lr: 3e-4\n  max_steps: 10\nmethod:\n  name: gloria\n")
    cfg = load_config(preset, ["train.max_steps=20", "image_encoder.name=resnet18", "method.lse_gamma=4"])
    assert cfg.name == "x"
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.train.max_steps == 20
    assert cfg.image_encoder.name == "resnet18"
    assert cfg.method == {"name": "gloria", "lse_gamma": 4}
    assert cfg.text_encoder.sections == ["findings", "impression"]


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError, match=r"unknown config key train\.lrr.*train\.lr"):
        load_config(None, ["train.lrr=1"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.max_steps=abc", "train.max_steps: expected an integer"),
        ("train.lr=fast", "train.lr: expected a number"),
        ("train.deterministic=3", "expected true or false"),
        ("text_encoder.sections=findings", "expected a list"),
        ("train", "not of the form key=value"),
    ],
)
def test_wrong_types_are_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_override_values_are_data_not_code():
    keys, value = parse_override("name=__import__('os').system('true')")
    assert keys == ["name"] and isinstance(value, str)


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(None, ["seed=7", "method.name=reclf", "method.aggregator=irm"])
    save_config(cfg, tmp_path / "config.yaml")
    again = resolve(Config, tmp_path / "config.yaml")
    assert to_dict(again) == to_dict(cfg)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
