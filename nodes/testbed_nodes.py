"""Nodes for InvEdit's test-bed models: small trained text-to-digits models of ComfyUI's own classes.

The test-bed turns every method of the pack into a measured number without downloading Stable
Diffusion or Flux: it draws two handwritten digits side by side on an 8x16 canvas from prompts like
"a photo of three and seven". Two models ship, trained on the same data: an SD1.x-layout UNet (eps
prediction, discrete schedule) and a Flux transformer (rectified flow, ModelSamplingFlux). Neither
has a VAE: the latent is the canvas itself (1 channel, [-1, 1]).
"""

from __future__ import annotations

import comfy.latent_formats
import comfy.model_management
import comfy.model_patcher
import comfy.supported_models
import torch
from comfy_api.latest import io

from ..testbed import data as testbed_data
from ..testbed.vocabulary import UnknownWordError
from ..testbed.weights import DEFAULT_MODEL_PATH, FLOW_MODEL_PATH, IntegrityError, load_testbed
from .errors import InvEditInputError
from .sockets import CATEGORY_TESTBED as CATEGORY
from .sockets import TestbedText

MAX_HELDOUT = 359  # size of the held-out split (20 % of the 1797 digits)
MAX_VIEW_SCALE = 64


class TestbedLatentFormat(comfy.latent_formats.LatentFormat):
    """The test-bed's latent is the canvas itself: one channel, no scaling."""

    latent_channels = 1
    scale_factor = 1.0


def testbed_model_config(unet_config: dict) -> comfy.supported_models.SD15:
    """An SD1.x model config (eps, SD1.x schedule) with the test-bed's UNet and latent format."""

    class TestbedConfig(comfy.supported_models.SD15):
        unet_extra_config = {}
        latent_format = TestbedLatentFormat

    TestbedConfig.unet_config = dict(unet_config)
    return TestbedConfig(dict(unet_config))


def testbed_flow_model_config(unet_config: dict, shift: float) -> comfy.supported_models.Flux:
    """A Flux model config (ModelType.FLUX: CONST + ModelSamplingFlux at ``shift``) with the test-bed's
    transformer and latent format."""

    class TestbedFlowConfig(comfy.supported_models.Flux):
        unet_extra_config = {}
        sampling_settings = {"shift": shift}
        latent_format = TestbedLatentFormat

    TestbedFlowConfig.unet_config = dict(unet_config)
    return TestbedFlowConfig(dict(unet_config))


def _load_model_file(path, make_config, verify: bool):
    """``(MODEL, text encoder)`` from a test-bed file; ``make_config(testbed_file)`` gives its model config."""
    try:
        testbed_file = load_testbed(path, verify=verify)
    except (FileNotFoundError, IntegrityError) as error:
        raise InvEditInputError(str(error)) from error
    config = make_config(testbed_file)
    config.set_inference_dtype(torch.float32, None)
    offload_device = comfy.model_management.unet_offload_device()
    model = config.get_model({}, device=offload_device)
    model.diffusion_model.load_state_dict(testbed_file.unet_state_dict(), strict=True)
    model.eval()
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                               offload_device=offload_device)
    return patcher, testbed_file.text_encoder().eval()


def load_testbed_model(verify: bool = True):
    """Return ``(MODEL, text encoder)`` of the digits UNet built from its shipped safetensors file."""
    return _load_model_file(DEFAULT_MODEL_PATH, lambda file: testbed_model_config(file.unet_config), verify)


def load_testbed_flow_model(verify: bool = True):
    """Return ``(MODEL, text encoder)`` of the flow test-bed (Flux) built from its shipped safetensors file."""
    return _load_model_file(
        FLOW_MODEL_PATH,
        lambda file: testbed_flow_model_config(file.unet_config, file.metadata["model"]["model_sampling"]["shift"]),
        verify)


def loader_schema(node_id: str, display_name: str, description: str) -> io.Schema:
    """The schema both test-bed loaders share: ``verify`` in, ``(MODEL, text_encoder)`` out."""
    return io.Schema(
        node_id=node_id,
        display_name=display_name,
        category=CATEGORY,
        description=description,
        inputs=[io.Boolean.Input("verify", default=True, tooltip="Check the file's content hash before loading.")],
        outputs=[io.Model.Output(), TestbedText.Output(display_name="text_encoder")],
    )


class TestbedModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return loader_schema(
            "InvEditTestbedModelLoader", "InvEdit Test-bed Model (digits)",
            "Loads InvEdit's shipped test-bed: a 1M-parameter SD1.x-layout UNet trained on handwritten digits (8x16 "
            "canvases, two digits, prompts like 'a photo of three and seven'). A real ComfyUI MODEL, so every InvEdit "
            "node runs on it; no download needed.")

    @classmethod
    def execute(cls, verify) -> io.NodeOutput:
        return io.NodeOutput(*load_testbed_model(verify))


class TestbedFlowModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return loader_schema(
            "InvEditTestbedFlowModelLoader", "InvEdit Test-bed Flow Model (digits)",
            "Loads InvEdit's shipped flow test-bed: a 0.47M-parameter Flux transformer (ComfyUI's own Flux class: "
            "double- and single-stream blocks, rectified flow, ModelSamplingFlux, real CFG) trained on the same "
            "handwritten-digit canvases and prompts as the digits UNet. Sample it with KSampler (euler, simple) and "
            "encode prompts with its own text encoder; no download needed.")

    @classmethod
    def execute(cls, verify) -> io.NodeOutput:
        return io.NodeOutput(*load_testbed_flow_model(verify))


class TestbedTextEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InvEditTestbedTextEncode",
            display_name="InvEdit Test-bed Text Encode",
            category=CATEGORY,
            description=(
                "Prompts for a test-bed model, one per line (several lines give a batch). Connect the text encoder "
                "of the loader whose MODEL you sample: it gives the conditioning that model takes (the flow "
                "model's includes a pooled vector)."
            ),
            inputs=[
                TestbedText.Input("text_encoder"),
                io.String.Input("text", multiline=True, default="a photo of three and seven",
                                tooltip="'a photo of LEFT and RIGHT' with digit words zero..nine; an empty "
                                        "line is the unconditional prompt. One prompt per line."),
            ],
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def execute(cls, text_encoder, text) -> io.NodeOutput:
        prompts = text.split("\n") if text.strip() else [""]
        try:
            with torch.no_grad():
                context, extras = text_encoder.encode_conditioning([line.strip() for line in prompts])
        except UnknownWordError as error:
            raise InvEditInputError(str(error)) from error
        return io.NodeOutput([[context, extras]])


class TestbedImageToLatent(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InvEditTestbedImageToLatent",
            display_name="InvEdit Test-bed Image To Latent",
            category=CATEGORY,
            description="The test-bed's 'VAE encode': an 8x16 IMAGE becomes its 1-channel latent in [-1, 1].",
            inputs=[io.Image.Input("image")],
            outputs=[io.Latent.Output()],
        )

    @classmethod
    def execute(cls, image) -> io.NodeOutput:
        height, width = image.shape[1:3]
        if (height, width) != testbed_data.CANVAS_SHAPE[1:]:
            raise InvEditInputError(
                f"The test-bed model works on {testbed_data.CANVAS_SHAPE[1]}x{testbed_data.CANVAS_SHAPE[2]} "
                f"canvases; this image is {height}x{width}. Resize it (e.g. ImageScale to width "
                f"{testbed_data.CANVAS_SHAPE[2]}, height {testbed_data.CANVAS_SHAPE[1]})."
            )
        return io.NodeOutput({"samples": testbed_data.image_to_canvas(image)})


class TestbedLatentToImage(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InvEditTestbedLatentToImage",
            display_name="InvEdit Test-bed Latent To Image",
            category=CATEGORY,
            description="The test-bed's 'VAE decode': the 1-channel latent becomes a grey IMAGE.",
            inputs=[
                io.Latent.Input("latent"),
                io.Int.Input("scale", default=1, min=1, max=MAX_VIEW_SCALE,
                             tooltip="Nearest-neighbour enlargement for viewing (keep 1 for metrics)."),
            ],
            outputs=[io.Image.Output()],
        )

    @classmethod
    def execute(cls, latent, scale) -> io.NodeOutput:
        samples = latent["samples"]
        if samples.ndim != 4 or samples.shape[1] != TestbedLatentFormat.latent_channels:
            raise InvEditInputError(
                f"Expected a 1-channel test-bed latent, got shape {tuple(samples.shape)}: decode other "
                "models' latents with their VAE."
            )
        image = testbed_data.canvas_to_image(samples)
        if scale > 1:
            image = image.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
        return io.NodeOutput(image)


class TestbedHeldOutDigits(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InvEditTestbedHeldOutDigits",
            display_name="InvEdit Test-bed Held-out Digits",
            category=CATEGORY,
            description=(
                "Real handwritten digits the test-bed models never saw in training (scikit-learn's digits, "
                "held-out split, shipped inside the pack), paired on 8x16 canvases, with their prompts: real "
                "images to invert."
            ),
            inputs=[
                io.Int.Input("count", default=4, min=1, max=MAX_HELDOUT, tooltip="How many canvases."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, tooltip="Which held-out pairs."),
            ],
            outputs=[io.Image.Output(), io.String.Output(display_name="prompts")],
        )

    @classmethod
    def execute(cls, count, seed) -> io.NodeOutput:
        try:
            canvases, prompts, _ = testbed_data.heldout_canvases(count, seed)
        except (FileNotFoundError, IntegrityError, ImportError) as error:
            raise InvEditInputError(f"Could not read the held-out digits: {error}") from error
        return io.NodeOutput(testbed_data.canvas_to_image(canvases), "\n".join(prompts))


NODES = [TestbedModelLoader, TestbedFlowModelLoader, TestbedTextEncode, TestbedImageToLatent, TestbedLatentToImage, TestbedHeldOutDigits]
