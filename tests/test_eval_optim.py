"""reclf.evaluate.optim.AdamW (kept for its start-up time, see its docstring) follows torch.optim.AdamW step by step."""

import pytest
import torch

from reclf.evaluate.optim import AdamW


@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_adamw_matches_torch_adamw(weight_decay):
    torch.manual_seed(0)
    ours = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(3))]
    ref = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    start = [p.detach().clone() for p in ours]
    frozen = torch.nn.Parameter(torch.randn(2), requires_grad=False)  # skipped, as torch skips it (no grad)
    opt = AdamW([*ours, frozen], lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=weight_decay)
    opt_ref = torch.optim.AdamW(ref, lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=weight_decay)
    x = torch.randn(8, 5)
    for step in range(25):
        for params, o in ((ours, opt), (ref, opt_ref)):
            o.zero_grad()
            loss = ((x @ params[0] + params[1]).tanh() ** 2).mean() + (step % 3 == 0) * params[1].sum()
            loss.backward()
            o.step()
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert all((a - s0).abs().max() > 1e-2 for a, s0 in zip(ours, start))  # the parameters did move
