"""A quiet console: loading models draws no third-party progress bars and prints no library warnings."""

from __future__ import annotations

import logging
import warnings

import pytest

from reclf.utils.console import library_quiet

#: what transformers' weight-loading bar (tqdm) writes
BAR_MARKS = ("Loading weights", "it/s]", "%|")


def _no_bars(text: str) -> None:
    found = [m for m in BAR_MARKS if m in text]
    assert not found, f"third-party progress output on the console: {found}: {text[-500:]!r}"


def test_loading_a_pretrained_text_encoder_draws_no_bar(capfd):
    from reclf.config import TextEncoderConfig
    from reclf.models.text import build_text_encoder

    build_text_encoder(TextEncoderConfig(name="minilm"))  # transformers' from_pretrained: a tqdm bar per load
    out, err = capfd.readouterr()
    _no_bars(out + err)


def test_evaluating_a_saved_model_prints_only_reclf_lines(tmp_path, capfd):
    """The demo's evaluate and report stages load exported models: no bar, no warning on the console."""
    from reclf.evaluate.loading import load_model
    from reclf.methods import create_model

    create_model("convirt", image_encoder={"name": "cnn-small", "image_size": 64},
                 text_encoder={"name": "minilm"}).save_pretrained(tmp_path / "model")
    capfd.readouterr()
    loaded = load_model(tmp_path / "model")
    loaded.model.encode_text(["small left effusion"])
    out, err = capfd.readouterr()
    _no_bars(out + err)
    assert "Warning" not in err, err[-500:]


def test_library_quiet_restores_the_callers_settings_and_logs_warnings(capfd, caplog):
    import transformers.utils.logging as hf_logging

    hf_logging.enable_progress_bar()
    before = hf_logging.get_verbosity()
    with caplog.at_level(logging.WARNING, logger="py.warnings"), warnings.catch_warnings():
        warnings.simplefilter("always")  # pyproject's filterwarnings ignores UserWarning in tests
        with library_quiet():
            assert not hf_logging.is_progress_bar_enabled()
            warnings.warn("a library complains", UserWarning, stacklevel=1)
    assert hf_logging.is_progress_bar_enabled() and hf_logging.get_verbosity() == before
    assert "a library complains" in caplog.text  # to logging (a log file under quiet()), not to stderr
    assert "a library complains" not in capfd.readouterr().err
    with pytest.warns(UserWarning):  # outside the block warnings behave as before
        warnings.warn("after", UserWarning, stacklevel=1)
