"""Nodes for ComfyUI's SamplerCustomAdvanced: the inversion SAMPLER, the replay SAMPLER and the INVERSION's GUIDER."""

from __future__ import annotations

from comfy_api.latest import io

from ..inversion.masks import DEFAULT_FEATHER
from ..inversion.null_text import REFERENCE_GUIDANCE
from ..inversion.record import InversionRecord
from ..inversion.solvers import SOLVER_EULER, SOLVER_FIREFLOW
from .checks import check_latent_shape, image_latent_samples
from .guiders import InversionGuider
from .masks import edit_mask, mask_inputs
from .options import inversion_config, inversion_option_inputs
from .sampling import PackSampler, SamplerRun, inversion_loop, replay_sampler
from .sockets import CATEGORY_SAMPLING, MAX_CFG, Inversion

class InversionSampler(io.ComfyNode):
    """DDIM inversion as a SAMPLER for SamplerCustomAdvanced."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InvEditInversionSampler",
            display_name="InvEdit Inversion Sampler",
            category=CATEGORY_SAMPLING,
            description=(
                "A SAMPLER that inverts instead of denoising (DDIM for UNets, Euler / FireFlow / fixed-point for "
                "flow models too). Use it in SamplerCustomAdvanced with Disable Noise, a CFGGuider (cfg 1) and the "
                "SIGMAS you will sample with (e.g. BasicScheduler ddim_uniform, or simple / normal for flow models); "
                "the output is the noise that those SIGMAS with InvEdit Replay Sampler (or stock ddim for UNets) "
                "turn back into the image."
            ),
            inputs=inversion_option_inputs(),
            outputs=[io.Sampler.Output()],
        )

    @classmethod
    def execute(cls, **options) -> io.NodeOutput:
        # The model is only known when sampling starts: its family, prediction type and lowest
        # sigma are read there.
        return io.NodeOutput(PackSampler(_invert_for_model, "The InvEdit inversion sampler", "The inversion",
                                         {"options": dict(options)}))


def _invert_for_model(run: SamplerRun, options: dict):
    """Pack loop that builds the inversion settings from the model being sampled, then inverts."""
    patcher = run.guider.model_patcher
    image_latent_samples(patcher, run.latent)
    check_latent_shape(patcher, run.latent.shape)
    return inversion_loop(run, inversion_config(patcher, **options))


class ReplaySampler(io.ComfyNode):
    """Deterministic DDIM replay as a SAMPLER (the exact inverse of the inversion)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InvEditReplaySampler",
            display_name="InvEdit Replay Sampler",
            category=CATEGORY_SAMPLING,
            description=(
                "Deterministic DDIM (eta 0) / rectified-flow Euler that walks the given SIGMAS down to their last "
                "level, also when that level is not 0 and, for flow models, from sigma 1 with the latent as it is "
                "(no noise scaling). With the SIGMAS output of InvEdit DDIM Inversion it is the exact inverse of the "
                "inversion; solver fireflow replays a FireFlow inversion. Use with Disable Noise."
            ),
            inputs=[
                io.Combo.Input("solver", options=[SOLVER_EULER, SOLVER_FIREFLOW], default=SOLVER_EULER, optional=True,
                               tooltip="euler: one model call per step (DDIM for UNets); reconstructs euler and "
                                       "fixed-point inversions. fireflow: FireFlow's midpoint step with velocity "
                                       "reuse (N + 1 calls); reconstructs a FireFlow inversion."),
            ],
            outputs=[io.Sampler.Output()],
        )

    @classmethod
    def execute(cls, solver: str = SOLVER_EULER) -> io.NodeOutput:
        return io.NodeOutput(replay_sampler(solver=solver))


class InversionGuiderNode(io.ComfyNode):
    """A GUIDER that samples an INVERSION with its own unconditioning (for SamplerCustomAdvanced)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InvEditInversionGuider",
            display_name="InvEdit Inversion Guider",
            category="InvEdit/sampling",
            description=(
                "CFG guider for SamplerCustomAdvanced that uses the inversion's null-text embeddings (step by step, "
                "matched by sigma) or negative-prompt unconditioning. Use the inversion's SIGMAS, Disable Noise, the "
                "inversion's noise as the latent, and a deterministic sampler (ddim, euler). The prompt may be the "
                "source (reconstruction) or an edited one (edit); both share the embeddings. With a mask, the edit "
                "changes only the masked region: outside it every step lands on the inversion's recorded trajectory."
            ),
            inputs=[
                io.Model.Input("model"),
                io.Conditioning.Input("positive", tooltip="Source prompt to reconstruct, or an edited prompt."),
                Inversion.Input("inversion"),
                io.Float.Input("cfg", default=REFERENCE_GUIDANCE, min=0.0, max=MAX_CFG, step=0.1, round=0.01,
                               tooltip="Guidance; use the one null-text was optimised for."),
                io.Conditioning.Input("negative", optional=True,
                                      tooltip="Only used when the inversion has no null-text / negative-prompt "
                                              "unconditioning, and cfg is not 1."),
                *mask_inputs(),
            ],
            outputs=[io.Guider.Output()],
        )

    @classmethod
    def execute(cls, model, positive, inversion: InversionRecord, cfg, negative=None, mask=None,
                mask_feather=DEFAULT_FEATHER) -> io.NodeOutput:
        noise = inversion.trajectory.noise
        latent_mask = edit_mask(mask, noise.shape, noise.shape[0], mask_feather, "InvEdit Inversion Guider")
        return io.NodeOutput(InversionGuider(model, inversion, positive, negative, cfg, latent_mask))


NODES = [InversionSampler, ReplaySampler, InversionGuiderNode]
