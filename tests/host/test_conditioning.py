"""The ComfyUI glue of CONDITIONING values: unconditional rows of a model call (pure tensors, host tier)."""

from __future__ import annotations

import pytest
import torch

from invedit.nodes.conditioning import substitute_uncond_context


def test_substitute_uncond_context_fills_only_uncond_chunks():
    batch_context = torch.arange(4 * 6 * 2, dtype=torch.float32).reshape(4, 6, 2)
    uncond = torch.tensor([[[-1.0, -2.0], [-3.0, -4.0], [-5.0, -6.0]]])
    out = substitute_uncond_context(batch_context, [1, 0], uncond)
    assert torch.equal(out[2:], batch_context[2:])
    expected_rows = uncond.repeat(1, 2, 1).expand(2, 6, 2)
    assert torch.equal(out[:2], expected_rows)
    leaf = uncond.clone().requires_grad_(True)
    substitute_uncond_context(batch_context, [0, 1], leaf).sum().backward()
    assert torch.equal(leaf.grad, torch.full_like(uncond, 4.0))  # 2 rows x 2 repeats


@pytest.mark.parametrize("context, message", [
    (torch.zeros(1, 4, 2), "does not fit"),
    (torch.zeros(1, 3, 3), "does not fit"),
    (torch.zeros(3, 3, 2), "rows per chunk"),
])
def test_substitute_uncond_context_refuses_mismatches(context, message):
    with pytest.raises(ValueError, match=message):
        substitute_uncond_context(torch.zeros(4, 6, 2), [1, 0], context)
