"""Evaluation defaults live in the task config dataclasses only: the command line defaults to "not given"."""

import argparse

import pytest

from reclf.evaluate import cli as eval_cli
from reclf.evaluate.tasks.linear import LinearConfig
from reclf.evaluate.tasks.retrieve import RetrieveConfig
from reclf.evaluate.tasks.segment import SegmentConfig, segment_preset

REQUIRED = {"model", "data", "out", "task", "kind", "overrides"}  # overrides: the key=value list


def parse(*argv):
    parser = argparse.ArgumentParser()
    eval_cli.add_arguments(parser)
    return parser.parse_args([str(a) for a in argv])


@pytest.mark.parametrize("task", [*eval_cli.TASKS, "baseline"])
def test_every_option_defaults_to_not_given(task):
    extra = ["--kind", "random", "--out", "o"] if task == "baseline" else ["--data", "d"]
    args = vars(parse(task, "--model", "m", *extra))
    assert {k: v for k, v in args.items() if k not in REQUIRED and v is not None} == {}


def test_not_given_options_keep_the_config_defaults_and_given_ones_win():
    assert LinearConfig(**eval_cli.given(LinearConfig, vars(parse("linear", "--model", "m", "--data", "d")))) \
        == LinearConfig()
    args = vars(parse("linear", "--model", "m", "--data", "d", "--fractions", "1,100", "--recipe", "mgca",
                      "--uncertain", "zeros"))
    cfg = LinearConfig(**eval_cli.given(LinearConfig, args, cache_dir="c"))
    assert (cfg.fractions, cfg.recipe, cfg.uncertain, cfg.cache_dir, cfg.max_steps) == \
        ([0.01, 1.0], "mgca", "zeros", "c", LinearConfig().max_steps)
    cfg = RetrieveConfig(**eval_cli.given(RetrieveConfig, vars(parse("retrieve", "--model", "m", "--data", "d",
                                                                       "--modes", "global,local"))))
    assert cfg.modes == ["global", "local"] and cfg.chunk == RetrieveConfig().chunk


def test_segment_flags_over_the_preset():
    values = eval_cli.given(SegmentConfig, vars(parse("segment", "--model", "m", "--data", "d", "--preset", "mgca",
                                                      "--finetune", "--epochs", "2")))
    cfg = segment_preset(values.pop("preset"), **values)
    assert cfg.preset == "mgca" and cfg.freeze_encoder is False and cfg.epochs == 2
    assert cfg.loss == segment_preset("mgca").loss  # not given: the preset's
    values = eval_cli.given(SegmentConfig, vars(parse("segment", "--model", "m", "--data", "d")))
    assert segment_preset(values.pop("preset", None), **values) == SegmentConfig()
