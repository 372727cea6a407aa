"""Null-text optimisation of a model that computes in float16 runs in float32 and converges."""

from __future__ import annotations

import torch

from invedit.nodes.options import option_defaults
from tiny_models import ModelSnapshot, tiny_conditioning, tiny_latent

STEPS = 6
SETTINGS = dict(guidance=7.5, inner_steps=3, learning_rate=0.01, learning_rate_decay=0.01, early_stop=1e-5,
                early_stop_growth=2e-5, stop_check="before step", start_from="empty prompt")


def test_float16_model_is_optimised_in_float32(tiny_model, pack_nodes):
    base = tiny_model("sd15")
    half = base.clone()
    half.set_model_compute_dtype(torch.float16)
    seen_dtypes: list[torch.dtype] = []

    def record_dtype(q, k, v, extra_options):
        seen_dtypes.append(q.dtype)
        return torch.nn.functional.scaled_dot_product_attention(
            *(t.reshape(t.shape[0], t.shape[1], extra_options["n_heads"], -1).transpose(1, 2) for t in (q, k, v))
        ).transpose(1, 2).reshape(q.shape)

    half.set_model_attn2_replace(record_dtype, "middle", 0, 0)
    snapshot = ModelSnapshot.take(half)
    positive, negative = tiny_conditioning("sd15", 1, 8), tiny_conditioning("sd15", 2, 8)
    with torch.inference_mode():
        _, record, _ = pack_nodes["InvEditDDIMInversion"].execute(
            model=half, positive=positive, negative=negative, latent=tiny_latent("sd15", 3, 1, 16, 16), steps=STEPS,
            inversion_cfg=1.0, scheduler="ddim_uniform", clean_level="zero", **option_defaults()).result
        assert set(seen_dtypes) == {torch.float16}
        seen_dtypes.clear()
        optimised = pack_nodes["InvEditNullTextInversion"].execute(model=half, inversion=record, negative=negative,
                                                                   **SETTINGS).result[0]
    assert set(seen_dtypes) == {torch.float32}  # the optimisation computes in float32
    uncond = optimised.unconditioning
    assert uncond.step_contexts.dtype == torch.float32
    assert bool(torch.isfinite(uncond.step_contexts).all())
    losses = uncond.report["losses"]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(uncond.report["gradient_steps"]) > 0
    # The optimisation moved the contexts away from the empty prompt (float16 Adam steps of
    # 1e-2 on values near 1 would round away; float32 keeps them).
    assert float((uncond.step_contexts[-1, 0] - negative[0][0][0].float()).abs().max()) > 1e-3
    snapshot.assert_unchanged(half)
