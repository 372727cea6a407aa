"""Joint-attention Prompt-to-Prompt on small in-process models of every flow family ComfyUI builds (Flux dev,
Flux schnell, SD3.5 MMDiT-X, Qwen-Image, Chroma; tests/host/tiny_flow_models.py): every joint-attention
block is hooked (SD3.5's extra image-only attention passes through), the source row is untouched (bit for
bit the same with and without the edit, and equal to the plain reconstruction to 1e-5), conditional and
unconditional rows batched together or alone, long prompts, and a mask keeps the other half exactly.
"""

from __future__ import annotations

import pytest
import torch
import tiny_flow_models as tfm

from invedit.attention import CrossSchedule, PromptEdit, StepWindow
from invedit.attention.joint import LAYOUT_RULES, JointPromptToPrompt, LayoutInjection
from invedit.nodes.attention_patches import P2PGuider
from invedit.nodes.dit_patches import joint_blocks
from invedit.nodes.options import option_defaults
from invedit.nodes.sampling import inversion_noise_latent, replay_sampler, sample_with_guider

STEPS = 4
SOURCE_ROW_MAX_ERROR = 1e-5
KEPT_MAX_ERROR = 1e-5
LONG_PROMPT_TOKENS = 300  # longer than one 256-token T5 chunk
EDIT_REACHES = 1e-6  # random-weight models: the injection moves the edited row by 4e-5 (SD3.5) or more
FAMILIES = (tfm.FLUX_DEV, tfm.FLUX_SCHNELL, tfm.SD35, tfm.QWEN_IMAGE, tfm.CHROMA)


class RecordingController(JointPromptToPrompt):
    """The controller, noting each call's block, token layout, row chunks and sequence length."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[tuple] = []

    def __call__(self, q, k, v, context, attend):
        self.calls.append((context.rows.site.block, context.layout, context.rows.chunks, q.shape[2]))
        return super().__call__(q, k, v, context, attend)


def rows_conditioning(family: str, tokens: int) -> list:
    """CONDITIONING with two rows, the source prompt (seed 1) then the edited one (seed 5)."""
    (source, source_options), = tfm.tiny_flow_conditioning(family, 1, tokens)
    (edited, edited_options), = tfm.tiny_flow_conditioning(family, 5, tokens)
    pooled = source_options["pooled_output"]
    options = {"pooled_output": None if pooled is None else torch.cat([pooled, edited_options["pooled_output"]])}
    return [[torch.cat([source, edited]), options]]


@pytest.fixture(scope="module", params=FAMILIES)
def inverted(request, pack_nodes):
    family = request.param
    model = tfm.cached_tiny_flow_model(family)
    with torch.inference_mode():
        _, record, _ = pack_nodes["InvEditDDIMInversion"].execute(
            model=model, positive=tfm.tiny_flow_conditioning(family, 1), negative=tfm.tiny_flow_conditioning(family, 2),
            latent=tfm.tiny_flow_latent(family, 3), steps=STEPS, inversion_cfg=1.0, scheduler="auto",
            clean_level="zero", **option_defaults()).result
    return family, model, record


def edit_batch(model, record, family, *, layout=True, rule=LAYOUT_RULES[0], cfg=1.0, tokens=8, mask=None):
    controller = RecordingController(
        [PromptEdit(None, CrossSchedule())],
        layout=LayoutInjection(rule, StepWindow(0.0, 1.0)) if layout else None)
    negative = tfm.tiny_flow_conditioning(family, 2, tokens) if cfg != 1.0 else None
    guider = P2PGuider(model, record, rows_conditioning(family, tokens), controller, negative, cfg, mask)
    with torch.inference_mode():
        samples = sample_with_guider(guider, inversion_noise_latent(model, record), replay_sampler(),
                                     record.sampling_sigmas, preview=False)
    return samples, controller


@pytest.mark.parametrize("rule", LAYOUT_RULES)
def test_every_block_is_hooked_and_the_source_row_is_untouched(pack_nodes, inverted, rule):
    family, model, record = inverted
    edited, controller = edit_batch(model, record, family, rule=rule)
    plain, _ = edit_batch(model, record, family, layout=False)
    blocks = joint_blocks(model)
    assert {call[0] for call in controller.calls} == set(blocks)
    assert len(controller.calls) == STEPS * len(blocks)  # one joint call per block and step; image-only ones pass
    with torch.inference_mode():
        reconstruction = pack_nodes["InvEditReconstruct"].execute(  # the prompt as inverted (Flux dev: guidance 1)
            model=model, positive=record.positive, inversion=record, cfg=1.0).result[0]["samples"]
    error = float((edited[:1] - reconstruction).abs().max())
    print(f"\n[p2p families] {family} {rule}: {len(blocks)} blocks, source row vs reconstruction {error:.1e}, "
          f"edited row moved {float((edited[1:] - plain[1:]).abs().max()):.3f}")
    assert torch.equal(edited[:1], plain[:1])
    assert error <= SOURCE_ROW_MAX_ERROR
    assert float((edited[1:] - plain[1:]).abs().max()) > EDIT_REACHES  # control: the edit reaches the edited row


def test_conditional_and_unconditional_rows_and_long_prompts(pack_nodes, inverted):
    family, model, record = inverted
    guided, controller = edit_batch(model, record, family, cfg=2.0, tokens=LONG_PROMPT_TOKENS)
    plain, _ = edit_batch(model, record, family, layout=False, cfg=2.0, tokens=LONG_PROMPT_TOKENS)
    chunks = {call[2] for call in controller.calls}
    layout = controller.calls[0][1]
    assert any(len(c) == 2 for c in chunks) or chunks >= {(0,), (1,)}  # cond and uncond rows both seen
    assert layout.prompt_tokens == LONG_PROMPT_TOKENS
    assert torch.equal(guided[:1], plain[:1])
    assert bool(torch.isfinite(guided).all())


def test_a_mask_keeps_the_other_half_of_the_edited_row(inverted):
    family, model, record = inverted
    noise = record.trajectory.noise
    mask = torch.zeros(1, 1, *noise.shape[-2:])
    mask[..., : noise.shape[-1] // 2] = 1.0
    masked, _ = edit_batch(model, record, family, mask=mask)
    right = noise.shape[-1] // 2
    error = float((masked[1:, ..., right:] - masked[:1, ..., right:]).abs().max())
    assert error <= KEPT_MAX_ERROR
    assert float((masked[1:, ..., :right] - masked[:1, ..., :right]).abs().max()) > EDIT_REACHES
