"""Projection heads: shapes, L2 normalisation, padding kept out of BatchNorm, gradients."""

from __future__ import annotations

import pytest
import torch

from reclf.models.projection import GlobalProjection, LocalProjection, build_projection


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_shapes_and_normalisation(kind):
    torch.manual_seed(0)
    g = GlobalProjection(12, 8, kind)
    out = g(torch.randn(5, 12))
    assert out.shape == (5, 8)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(5))
    loc = LocalProjection(12, 8, kind)
    fmap = loc(torch.randn(2, 12, 3, 4))
    assert fmap.shape == (2, 12, 8)
    torch.testing.assert_close(fmap.norm(dim=-1), torch.ones(2, 12))
    raw = LocalProjection(12, 8, kind, normalize=False)(torch.randn(2, 5, 12))
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(2, 5))


def test_feature_map_is_flattened_row_major():
    torch.manual_seed(0)
    loc = LocalProjection(4, 4, "linear", normalize=False)
    x = torch.randn(1, 4, 2, 3)
    out = loc(x)
    torch.testing.assert_close(out[0, 1 * 3 + 2], loc.net(x[0, :, 1, 2]))


def test_linear_local_head_is_bias_free():
    assert LocalProjection(4, 4, "linear").net.bias is None


def test_masked_tokens_do_not_change_valid_ones_in_batchnorm():
    torch.manual_seed(0)
    loc = LocalProjection(6, 4, "mlp").train()
    x = torch.randn(2, 5, 6)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool)
    a = loc(x, mask)
    x2 = x.clone()
    x2[~mask] = 100 * torch.randn(int((~mask).sum()), 6)
    loc2 = LocalProjection(6, 4, "mlp").train()
    loc2.load_state_dict(loc.state_dict())
    b = loc2(x2, mask)
    torch.testing.assert_close(a[mask], b[mask])
    assert torch.all(a[~mask] == 0)


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_projections_receive_gradients(kind):
    torch.manual_seed(0)
    g = build_projection("global", 6, 4, kind)
    loc = build_projection("local", 6, 4, kind)
    (g(torch.randn(4, 6)).sum() + (loc(torch.randn(4, 3, 6)) * torch.randn(4, 3, 4)).sum()).backward()
    for p in list(g.parameters()) + list(loc.parameters()):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_errors():
    with pytest.raises(ValueError, match="kind"):
        GlobalProjection(4, 4, "conv")
    with pytest.raises(ValueError, match="expects"):
        GlobalProjection(4, 4)(torch.randn(2, 5))
    with pytest.raises(ValueError, match="mask"):
        LocalProjection(4, 4)(torch.randn(2, 3, 4), torch.ones(2, 2, dtype=torch.bool))
