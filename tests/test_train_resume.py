"""Resume is exact: N steps straight == k steps, SIGKILL, resume to N (same final weights).

The killed run really dies (SIGKILL, no clean-up) mid-epoch, after its step-k checkpoint is on
disk; the stub model has dropout and the images are augmented, so RNG and data-order restoration
are both exercised.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from helpers.train_stub import make_table
from reclf.methods.loading import model_state_dict
from reclf.train.runs import load_checkpoint

TESTS = Path(__file__).resolve().parent
N_STEPS, KILL_AFTER = 7, 5  # 11 usable rows / batch 4 -> 2 steps per epoch: killed in the middle of epoch 2

SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from helpers.train_stub import StubModel, tiny_config
    from reclf.train import pretrain
    from reclf.utils.seed import seed_everything

    mode, data, runs = sys.argv[1], sys.argv[2], sys.argv[3]
    kill_after = int(sys.argv[4])

    class Pausing(StubModel):
        def loss(self, batch, gather=None):
            if mode == "kill" and self.training and self.train_calls == kill_after:
                Path(runs, "paused").write_text("step %d checkpointed" % kill_after)
                time.sleep(600)  # the test SIGKILLs us here, inside step kill_after + 1
            return super().loss(batch, gather)

    cfg = tiny_config(data, runs, max_steps=int(sys.argv[5]), max_epochs=100)
    cfg.data.max_bad_fraction = 0.2
    if mode == "resume":
        cfg.train.resume = "auto"
    seed_everything(0)  # a model passed to pretrain() is built (and seeded) by the caller
    pretrain(cfg, model=Pausing(dropout=0.3), checkpoint_every_n_steps=1)
    """
)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECLF_", "PL_", "LOCAL_RANK", "RANK"))}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


def _start(script: Path, mode: str, data: Path, runs: Path, steps: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(script), mode, str(data), str(runs), str(KILL_AFTER), str(steps)],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _final_state(runs: Path) -> dict[str, torch.Tensor]:
    (run,) = list((runs / "stubrun").iterdir())
    ckpt = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == N_STEPS
    return model_state_dict(ckpt)


@pytest.mark.slow
def test_killed_and_resumed_run_matches_the_straight_run(tmp_path):
    data = make_table(tmp_path / "data", n_train=12, n_valid=4, missing=1)
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    straight = _start(script, "straight", data, tmp_path / "straight", N_STEPS)
    killed = _start(script, "kill", data, tmp_path / "resumed", N_STEPS)
    try:
        _kill_and_resume(script, data, tmp_path, straight, killed)
    finally:
        for proc in (straight, killed):
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def _kill_and_resume(script, data, tmp_path, straight, killed):
    marker = tmp_path / "resumed" / "paused"
    deadline = time.time() + 120
    while not marker.exists():
        assert killed.poll() is None, killed.communicate()[0][-3000:]
        assert time.time() < deadline, "the run never reached the kill point"
        time.sleep(0.2)
    killed.send_signal(signal.SIGKILL)
    killed.wait(30)
    assert killed.returncode == -signal.SIGKILL
    (run,) = list((tmp_path / "resumed" / "stubrun").iterdir())
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == KILL_AFTER
    assert not (run / "summary.json").exists()  # it really died

    resumed = _start(script, "resume", data, tmp_path / "resumed", N_STEPS)
    out_r, _ = resumed.communicate(timeout=180)
    out_s, _ = straight.communicate(timeout=180)
    assert straight.returncode == 0, out_s[-3000:]
    assert resumed.returncode == 0, out_r[-3000:]
    assert "resuming from" in out_r

    import csv

    with open(run / "metrics.csv", newline="") as fh:
        keys = [(r["step"], r["metric"]) for r in csv.DictReader(fh)]
    assert len(keys) == len(set(keys)), "metrics.csv repeats steps after the resume"

    a, b = _final_state(tmp_path / "straight"), _final_state(tmp_path / "resumed")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume (max |diff| {(a[k] - b[k]).abs().max():.3g})"
