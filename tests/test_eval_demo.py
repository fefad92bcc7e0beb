"""The demo's wiring: valid configs for every method, and finished steps are skipped (resumable)."""

from pathlib import Path

from reclf import demo


def test_demo_configs_are_valid_for_every_method(tmp_path):
    for method in demo.METHODS:
        cfg = demo.demo_config(method, 1, demo.QUICK, tmp_path / "synth", tmp_path / "runs")
        assert cfg.method["name"] == demo.settings.base_method(method)
        assert cfg.seed == 1 and cfg.name == f"{method}@seed1"
        assert cfg.train.max_steps == demo.QUICK.pretrain_steps
        assert cfg.data.batch_size == demo.QUICK.pretrain_batch
        assert cfg.image_encoder.image_size == demo.QUICK.image_size
        assert Path(cfg.data.root) == tmp_path / "synth" / "pretrain"


def test_finished_evaluations_are_skipped(tmp_path):
    from reclf.demo.stages import EVAL_MARKER, eval_stage
    from reclf.utils.markers import write_marker

    model = tmp_path / "missing"
    for task in ("zeroshot", "linear"):
        out = tmp_path / "eval" / task / "reclf@seed0"
        out.mkdir(parents=True)
        (out / "results.json").write_text("{}")
        cfg = demo.settings.eval_config(task, demo.QUICK, tmp_path / "cache")
        write_marker(out / EVAL_MARKER, "evaluate", eval_stage(task, cfg, model), None)
    # the model path does not exist: loading it would fail, so passing proves nothing was re-run
    done = demo.evaluate_all({"reclf@seed0": model}, ["zeroshot", "linear"], demo.QUICK, tmp_path / "synth", tmp_path)
    assert len(done) == 2


def test_finished_pretraining_is_reused(tmp_path):
    from reclf.config import recipe
    from reclf.utils.markers import write_marker

    export = tmp_path / "export"
    export.mkdir()
    (export / "config.json").write_text("{}")
    asked = recipe(demo.demo_config("gloria", 0, demo.QUICK, tmp_path / "synth", tmp_path / "pretrain"))
    write_marker(tmp_path / "pretrain" / "gloria@seed0" / "done.json", "pretrain", asked, None, export_dir=str(export))
    assert demo.pretrain_one("gloria", 0, demo.QUICK, tmp_path / "synth", tmp_path) == export


def test_report_recipe_names_each_methods_learning_rate_when_they_differ(tmp_path):
    from reclf.evaluate.report import demo_sections

    def recipe(lr: float, lr_image: float | None = None) -> dict:
        train = {"lr": lr, "lr_image": lr_image, "max_steps": 500, "weight_decay": 0.05, "warmup_fraction": 0.1}
        return {"config": {"text_encoder": {"name": "minilm", "freeze": True, "pooling": "mean", "max_tokens": 128},
                           "train": train,
                           "image_encoder": {"name": "cnn-small", "image_size": 64}, "data": {"batch_size": 32}}}

    tuned = {"recipes": {"reclf@seed0": recipe(3e-3), "convirt@seed0": recipe(1e-3)}, "settings": {"seeds": 1}}
    text = "\n".join(demo_sections(tuned, [], tmp_path))
    assert "tuned learning rates (reclf 0.003; convirt 0.001" in text and "AdamW lr" not in text
    same = {"recipes": {"reclf@seed0": recipe(1e-3), "convirt@seed0": recipe(1e-3)}, "settings": {"seeds": 1}}
    assert "AdamW lr 0.001," in "\n".join(demo_sections(same, [], tmp_path))
    # per-part rates: the image encoder's is named too, never only the heads' rate as if it were everyone's
    parts = {"recipes": {"reclf@seed0": recipe(3e-4, 1e-2), "mgca@seed0": recipe(3e-4, 1e-2)}, "settings": {}}
    assert "AdamW lr heads 0.0003, image 0.01," in "\n".join(demo_sections(parts, [], tmp_path))
    mixed = {"recipes": {"reclf@seed0": recipe(3e-4, 1e-2), "convirt@seed0": recipe(3e-4, 3e-2)}, "settings": {}}
    assert "reclf heads 0.0003, image 0.01; convirt heads 0.0003, image 0.03" in "\n".join(
        demo_sections(mixed, [], tmp_path))
