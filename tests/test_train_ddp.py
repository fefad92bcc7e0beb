"""Distributed training on the CPU (gloo), in subprocesses with a clean environment.

1. The gathered global loss on 2 ranks equals the single-process loss on the combined batch, and
   the DDP-averaged gradients equal the single-process gradients (gather *with* gradients).
2. ``pretrain`` runs under Lightning DDP with 2 CPU processes: one run folder, both ranks train.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from helpers.train_stub import make_table

TESTS = Path(__file__).resolve().parent

GATHER_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import torch, torch.distributed as dist, torch.multiprocessing as mp
    from helpers.train_stub import StubModel
    from reclf.train.module import GatherFn

    WORLD, B = 2, 4

    def data():
        g = torch.Generator().manual_seed(1)
        images = torch.rand(WORLD * B, 1, 32, 32, generator=g)
        words = ["left", "right", "upper", "lower", "opacity", "effusion", "normal", "heart"]
        reports = [" ".join(words[(i * 3 + j) % 8] for j in range(i % 4 + 2)) for i in range(WORLD * B)]
        return images, reports

    def model():
        torch.manual_seed(0)
        return StubModel(dropout=0.0)

    def grads(m):
        return {k: p.grad.clone() for k, p in m.named_parameters()}

    def worker(rank, out):
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2])
        dist.init_process_group("gloo", rank=rank, world_size=WORLD)
        images, reports = data()
        m = model()
        sl = slice(rank * B, (rank + 1) * B)
        loss = m.loss({"images": images[sl], "reports": reports[sl]}, gather=GatherFn())["loss"]
        loss.backward()
        for p in m.parameters():  # what DDP does: average the gradients over ranks
            dist.all_reduce(p.grad)
            p.grad /= WORLD
        if rank == 0:
            torch.save({"loss": loss.detach(), "grads": grads(m)}, out)
        dist.destroy_process_group()

    if __name__ == "__main__":
        out = sys.argv[1]
        mp.spawn(worker, args=(out + ".ddp",), nprocs=WORLD)
        ddp = torch.load(out + ".ddp", weights_only=True)
        images, reports = data()
        m = model()
        loss = m.loss({"images": images, "reports": reports})["loss"]
        loss.backward()
        single = grads(m)
        result = {
            "ddp_loss": float(ddp["loss"]),
            "single_loss": float(loss),
            "max_grad_diff": max(float((ddp["grads"][k] - single[k]).abs().max()) for k in single),
            "max_grad": max(float(g.abs().max()) for g in single.values()),
        }
        json.dump(result, open(out, "w"))
    """
)

LIGHTNING_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    from helpers.train_stub import StubModel, tiny_config
    from reclf.train import pretrain
    from reclf.utils.seed import seed_everything

    if __name__ == "__main__":
        cfg = tiny_config(sys.argv[1], sys.argv[2], max_steps=2, max_epochs=1, devices=2, strategy="ddp")
        seed_everything(0)
        result = pretrain(cfg, model=StubModel(dropout=0.0))
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        if rank == 0:
            json.dump({"run_dir": str(result.run_dir), "summary": result.summary}, open(sys.argv[3], "w"))
    """
)


def _clean_env() -> dict[str, str]:
    drop = ("RECLF_", "PL_", "LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_", "NODE_RANK", "SLURM", "TORCHELASTIC")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


def _free_port() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def test_gathered_loss_and_gradients_equal_the_single_process_ones(tmp_path):
    script = tmp_path / "gather.py"
    script.write_text(GATHER_SCRIPT)
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, str(script), str(out), _free_port()],
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert abs(r["ddp_loss"] - r["single_loss"]) < 1e-5, r
    assert r["max_grad"] > 0 and r["max_grad_diff"] < 1e-5 * max(1.0, r["max_grad"]), r


@pytest.mark.slow
def test_pretrain_under_lightning_ddp_on_two_cpu_processes(tmp_path):
    make_table(tmp_path / "data", n_train=16, n_valid=4)
    script = tmp_path / "ddp_train.py"
    script.write_text(LIGHTNING_SCRIPT)
    out = tmp_path / "result.json"
    env = _clean_env()
    env["MASTER_PORT"] = _free_port()
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "data"), str(tmp_path / "runs"), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["summary"]["status"] == "completed" and r["summary"]["world_size"] == 2
    assert r["summary"]["steps"] == 2
    runs = list((tmp_path / "runs" / "stubrun").iterdir())
    assert len(runs) == 1, f"every rank must share one run folder, got {runs}"
    assert (runs[0] / "checkpoints" / "last.ckpt").is_file() and (runs[0] / "export" / "model.safetensors").is_file()
