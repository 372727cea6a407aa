"""The shipped flow test-bed (ComfyUI's own Flux, built small) inside ComfyUI: the file is intact, the
model is a FLUX-type model with rectified-flow sampling, stock samplers draw the named digits, its
joint attention is word-selective, and the pack's nodes run on it or refuse it clearly. Each bound
comes with a control that must fail it (README, "The test-bed model")."""

from __future__ import annotations

import json
import shutil
import struct

import pytest
import torch

from comfy_graph import Graph
from invedit.testbed import classifier, data, flow, selectivity, vocabulary
from invedit.testbed.weights import FLOW_FORMAT_NAME, FLOW_MODEL_PATH, IntegrityError, load_testbed

SAMPLE_STEPS = 25
SAMPLE_CFG = 2.0
AGREEMENT_THRESHOLD = 0.9
CONTROL_PAIR_STRIDE = 5
# The README's table: every block carries the digit words (share of the image tokens' attention on
# the two words >= WORD_SHARE_THRESHOLD) and keeps a clear majority of each word's attention on its
# own digit's half (selectivity >= SELECTIVITY_THRESHOLD).
SELECTIVITY_THRESHOLD = 0.9
WORD_SHARE_THRESHOLD = 0.03
PROBE_SIGMAS = (0.25, 0.5, 0.8)
MAX_FILE_BYTES = 10 * 2**20
WORDS = (vocabulary.LEFT_WORD_POSITION, vocabulary.RIGHT_WORD_POSITION)


@pytest.fixture(scope="module")
def flow_testbed(pack_nodes):
    with torch.inference_mode():
        return pack_nodes["InvEditTestbedFlowModelLoader"].execute(verify=True).result


def encode(pack_nodes, text_encoder, prompts: list[str]):
    with torch.inference_mode():
        return pack_nodes["InvEditTestbedTextEncode"].execute(text_encoder=text_encoder, text="\n".join(prompts)).result[0]


def all_pairs() -> tuple[torch.Tensor, list[str]]:
    pairs = torch.tensor([(left, right) for left in range(10) for right in range(10)])
    return pairs, [vocabulary.prompt_for(int(left), int(right)) for left, right in pairs]


def agreement(samples: torch.Tensor, pairs: torch.Tensor) -> float:
    predicted = classifier.training_split_classifier().predict_canvases(samples)
    return float((predicted == pairs).float().mean())


# ---------------------------------------------------------------------------------------------
# The file and the model ComfyUI builds from it


def test_the_shipped_file_is_intact_and_describes_itself(tmp_path):
    testbed_file = load_testbed(FLOW_MODEL_PATH, verify=True)
    metadata = testbed_file.metadata
    assert FLOW_MODEL_PATH.stat().st_size <= MAX_FILE_BYTES
    assert metadata["format"]["name"] == FLOW_FORMAT_NAME
    assert metadata["unet_config"] == flow.flux_config()
    assert metadata["model"]["model_sampling"]["class"] == "ModelSamplingFlux"
    assert metadata["model"]["model_sampling"]["shift"] == flow.SHIFT
    assert metadata["text"]["vocabulary"] == list(vocabulary.VOCABULARY)
    assert metadata["text"]["pooling"] == "mean"
    assert metadata["data_split"]["heldout_indices"] == data.split_indices()[1].tolist()
    assert metadata["evaluation"]["sample_agreement"]
    # Control: one changed weight byte is caught by the content hash.
    damaged = tmp_path / "damaged.safetensors"
    shutil.copy(FLOW_MODEL_PATH, damaged)
    with damaged.open("r+b") as handle:
        header_size = struct.unpack("<Q", handle.read(8))[0]
        header = json.loads(handle.read(header_size))
        start = 8 + header_size + header["diffusion_model.img_in.weight"]["data_offsets"][0]
        handle.seek(start)
        byte = handle.read(1)
        handle.seek(start)
        handle.write(bytes([byte[0] ^ 0x40]))
    with pytest.raises(IntegrityError, match="corrupt"):
        load_testbed(damaged, verify=True)


def test_comfyui_builds_a_flux_model_with_rectified_flow_sampling(flow_testbed, pack_nodes):
    import comfy.ldm.flux.model
    import comfy.model_base
    import comfy.model_sampling
    import comfy.samplers

    model, text_encoder = flow_testbed
    assert isinstance(model.model, comfy.model_base.Flux)
    assert model.model.model_type == comfy.model_base.ModelType.FLUX
    assert isinstance(model.model.diffusion_model, comfy.ldm.flux.model.Flux)
    assert not model.model.diffusion_model.params.guidance_embed
    sampling = model.get_model_object("model_sampling")
    assert isinstance(sampling, comfy.model_sampling.CONST) and isinstance(sampling, comfy.model_sampling.ModelSamplingFlux)
    assert sampling.shift == flow.SHIFT
    assert model.get_model_object("latent_format").latent_channels == 1
    # x = (1 - sigma) x0 + sigma noise, and the model output is the velocity noise - x0.
    x0, noise, sigma = torch.randn(2, 1, 8, 16), torch.randn(2, 1, 8, 16), torch.tensor([0.3, 0.8])
    x = sampling.noise_scaling(sigma, noise, x0)
    assert torch.allclose(x, flow.noised(x0, noise, sigma), atol=1e-6)
    assert torch.allclose(sampling.calculate_denoised(sigma, flow.velocity_target(x0, noise), x), x0, atol=1e-5)
    # The model's own "simple" scheduler is the shifted schedule testbed.flow describes.
    assert torch.allclose(comfy.samplers.calculate_sigmas(sampling, "simple", SAMPLE_STEPS),
                          flow.simple_sigmas(SAMPLE_STEPS), atol=1e-6)
    assert not torch.allclose(flow.simple_sigmas(SAMPLE_STEPS), flow.simple_sigmas(SAMPLE_STEPS, shift=0.0))
    # Its text encoder gives the context and the pooled vector Flux takes.
    (context, extras), = encode(pack_nodes, text_encoder, ["a photo of three and seven", ""])
    assert context.shape == (2, flow.TEXT_TOKENS, 64) and extras["pooled_output"].shape == (2, flow.POOLED_DIM)
    assert torch.equal(extras["pooled_output"], context.mean(dim=1))


# ---------------------------------------------------------------------------------------------
# Sampling with stock ComfyUI nodes


def ksampler_samples(model, positive, negative, count: int, cfg: float) -> torch.Tensor:
    import nodes

    latent = {"samples": torch.zeros(count, *data.CANVAS_SHAPE)}
    with torch.inference_mode():
        return nodes.NODE_CLASS_MAPPINGS["KSampler"]().sample(
            model, 0, SAMPLE_STEPS, cfg, "euler", "simple", positive, negative, latent, 1.0)[0]["samples"]


def test_guided_samples_of_every_prompt_pair_show_the_named_digits(pack_nodes, flow_testbed):
    model, text_encoder = flow_testbed
    pairs, prompts = all_pairs()
    positive, negative = encode(pack_nodes, text_encoder, prompts), encode(pack_nodes, text_encoder, [""])
    samples = ksampler_samples(model, positive, negative, len(prompts), SAMPLE_CFG)
    score = agreement(samples, pairs)
    assert score >= AGREEMENT_THRESHOLD, f"only {score:.2%} of the halves show the named digit"

    # Control: the same transformer with its trained weights shuffled (a model that learned nothing)
    # fails the bound through the same sampler (on every fifth pair, to save time).
    import comfy.model_patcher

    pairs, prompts = pairs[::CONTROL_PAIR_STRIDE], prompts[::CONTROL_PAIR_STRIDE]
    positive = encode(pack_nodes, text_encoder, prompts)

    untrained = model.model.model_config.get_model({})
    generator = torch.Generator().manual_seed(0)
    shuffled = {key: value.flatten()[torch.randperm(value.numel(), generator=generator)].view_as(value)
                for key, value in model.model.diffusion_model.state_dict().items()}
    untrained.diffusion_model.load_state_dict(shuffled)
    untrained_patcher = comfy.model_patcher.ModelPatcher(untrained, load_device=model.load_device,
                                                         offload_device=model.offload_device)
    control = agreement(ksampler_samples(untrained_patcher, positive, negative, len(prompts), SAMPLE_CFG), pairs)
    assert control < AGREEMENT_THRESHOLD - 0.3, f"an untrained model scores {control:.2%}"


def test_stock_sampler_custom_advanced_draws_the_digits(run_graph, pack_loaded):
    """Only stock sampling nodes around the test-bed loader, text encoder and latent nodes."""
    pairs = torch.tensor([(3, 7), (0, 5), (8, 1), (6, 2), (9, 4), (2, 2)])
    prompts = [vocabulary.prompt_for(int(left), int(right)) for left, right in pairs]
    graph = Graph()
    loader = graph.node("InvEditTestbedFlowModelLoader", verify=True)
    positive = graph.node("InvEditTestbedTextEncode", text_encoder=loader.out(1), text="\n".join(prompts))
    negative = graph.node("InvEditTestbedTextEncode", text_encoder=loader.out(1), text="")
    digits = graph.node("InvEditTestbedHeldOutDigits", count=len(prompts), seed=0)
    latent = graph.node("InvEditTestbedImageToLatent", image=digits.out(0))
    guider = graph.node("CFGGuider", model=loader.out(0), positive=positive, negative=negative, cfg=SAMPLE_CFG)
    sampler = graph.node("KSamplerSelect", sampler_name="euler")
    sigmas = graph.node("BasicScheduler", model=loader.out(0), scheduler="simple", steps=SAMPLE_STEPS, denoise=1.0)
    noise = graph.node("RandomNoise", noise_seed=7)
    sampled = graph.node("SamplerCustomAdvanced", noise=noise, guider=guider, sampler=sampler, sigmas=sigmas,
                         latent_image=latent)
    image = graph.node("InvEditTestbedLatentToImage", latent=sampled.out(0), scale=1)
    graph.capture("image", image)
    result = run_graph(graph)
    canvases = data.image_to_canvas(result["image"])
    assert agreement(canvases, pairs) >= AGREEMENT_THRESHOLD


# ---------------------------------------------------------------------------------------------
# Word-selective joint attention


def attention_probe(model, recorder: flow.JointAttentionRecorder):
    """A clone of ``model`` whose blocks are tagged and whose joint attention ``recorder`` computes."""
    probe = model.clone()
    for block_name, index in flow.attention_blocks(model.model.model_config.unet_config):
        probe.set_model_patch_replace(flow.block_tagging_patch((block_name, index)), "dit", block_name, index)
    probe.model_options["transformer_options"]["optimized_attention_override"] = recorder
    return probe


def measure_selectivity(pack_nodes, model, text_encoder, recorder) -> selectivity.SelectivityAccumulator:
    """Word selectivity per block on noised held-out canvases with their own prompts."""
    canvases, prompts, _ = data.heldout_canvases(32, seed=5)
    (context, extras), = encode(pack_nodes, text_encoder, prompts)
    probe = attention_probe(model, recorder)
    accumulator = selectivity.SelectivityAccumulator()
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for level in PROBE_SIGMAS:
            sigma = torch.full((len(prompts),), level)
            noisy = flow.noised(canvases, torch.randn(canvases.shape, generator=generator), sigma)
            probe.model.apply_model(noisy, sigma, c_crossattn=context, y=extras["pooled_output"],
                                    transformer_options=probe.model_options["transformer_options"])
            for block, probs in recorder.probs.items():
                accumulator.add(block, flow.image_query_attention(probs), *flow.IMAGE_GRID)
    return accumulator


def test_joint_attention_is_word_selective_in_every_block_on_held_out_prompts(pack_nodes, flow_testbed):
    model, text_encoder = flow_testbed
    blocks = flow.attention_blocks(model.model.model_config.unet_config)
    measured = measure_selectivity(pack_nodes, model, text_encoder, flow.JointAttentionRecorder())
    scores, shares = measured.table(), measured.word_share_table()
    assert sorted(scores) == sorted(blocks) and {name for name, _ in blocks} == {"double_block", "single_block"}
    for block in blocks:
        assert shares[block] >= WORD_SHARE_THRESHOLD, f"{block}: the digit words get {shares[block]:.3f} of the attention"
        assert scores[block] >= SELECTIVITY_THRESHOLD, f"{block}: selectivity {scores[block]:.3f}"

    # Control: the same model with the image tokens' attention to the digit words made uniform
    # across the canvas fails the bound in every block.
    uniform = measure_selectivity(pack_nodes, model, text_encoder,
                                  flow.JointAttentionRecorder(uniform_words=True, word_positions=WORDS)).table()
    assert all(uniform[block] < SELECTIVITY_THRESHOLD - 0.3 for block in blocks), uniform


# ---------------------------------------------------------------------------------------------
# The training path: ComfyUI's forward unchanged, exact gradients


def test_training_gradients_through_comfyuis_flux_match_finite_differences():
    import train_flow_testbed as training

    import comfy.ldm.flux.model
    import comfy.ops

    config = flow.flux_config(hidden_size=16, num_heads=2, axes_dim=(2, 2, 4), depth=1, depth_single_blocks=1,
                              mlp_ratio=2.0)
    torch.manual_seed(0)
    model = training.build_flux(comfy.ldm.flux.model.Flux, comfy.ops.disable_weight_init, config).double()
    training.init_flux(model)
    with torch.no_grad():
        for parameter in model.parameters():  # leave adaLN-zero: every path carries gradient
            parameter.add_(0.3 * torch.randn_like(parameter))
    x, sigma = torch.randn(2, 1, 4, 8, dtype=torch.float64), torch.tensor([0.3, 0.7], dtype=torch.float64)
    context, pooled = torch.randn(2, 3, 64, dtype=torch.float64), torch.randn(2, 64, dtype=torch.float64)
    parameters = list(model.parameters())
    direction = [torch.randn_like(parameter) for parameter in parameters]

    def loss() -> torch.Tensor:
        return (model(x, sigma, context, y=pooled) ** 2).sum()

    def directional_gradient(hooks) -> float:
        for parameter in parameters:
            parameter.grad = None
        with hooks():
            value = loss()
        value.backward()
        return float(sum((parameter.grad * step).sum() for parameter, step in zip(parameters, direction)))

    eps = 1e-4
    with torch.no_grad():
        for parameter, step in zip(parameters, direction):
            parameter.add_(eps * step)
        up = float(loss())
        for parameter, step in zip(parameters, direction):
            parameter.sub_(2 * eps * step)
        down = float(loss())
        for parameter, step in zip(parameters, direction):
            parameter.add_(eps * step)
    numeric = (up - down) / (2 * eps)
    analytic = directional_gradient(training.copy_saved_tensors)
    # RoPE runs in float32 inside ComfyUI's attention, hence not float64 precision.
    assert abs(analytic - numeric) <= 1e-4 * abs(numeric)

    # Controls: as shipped, backward refuses ComfyUI's in-place adds; hooks that keep the saved
    # tensors themselves (no copy) run but give a wrong gradient.
    with pytest.raises(RuntimeError, match="inplace"):
        directional_gradient(torch.enable_grad)
    keep = lambda: torch.autograd.graph.saved_tensors_hooks(lambda tensor: tensor, lambda tensor: tensor)  # noqa: E731
    assert abs(directional_gradient(keep) - numeric) > 1e-2 * abs(numeric)


# ---------------------------------------------------------------------------------------------
# The pack's nodes on the flow model


def widget_defaults(node) -> dict:
    """The node's widget inputs at their defaults."""
    return {widget.id: widget.default for widget in node.GET_SCHEMA().inputs
            if getattr(widget, "default", None) is not None}


def inversion_inputs(pack_nodes, model, text_encoder, scheduler: str, file_name: str) -> dict:
    """Inputs, by socket type or name, for the nodes that take a MODEL: a real INVERSION of one held-out
    canvas made with ``model`` (3 steps of ``scheduler``), its latent and prompts, a P2P edit of it, and
    the inversion saved under ``file_name``."""
    with torch.inference_mode():
        images, prompt = pack_nodes["InvEditTestbedHeldOutDigits"].execute(count=1, seed=0).result
        latent = pack_nodes["InvEditTestbedImageToLatent"].execute(image=images).result[0]
        positive, negative = encode(pack_nodes, text_encoder, [prompt]), encode(pack_nodes, text_encoder, [""])
        _, record, _ = pack_nodes["InvEditDDIMInversion"].execute(**{
            **widget_defaults(pack_nodes["InvEditDDIMInversion"]), "model": model, "positive": positive,
            "negative": negative, "latent": latent, "steps": 3, "scheduler": scheduler}).result
        edit = pack_nodes["InvEditP2PEdit"].execute(**{
            **widget_defaults(pack_nodes["InvEditP2PEdit"]), "text_encoder": text_encoder, "source_prompt": prompt,
            "edited_prompts": vocabulary.shift_digit_word(prompt, vocabulary.RIGHT_WORD_POSITION, 5)}).result[0]
        pack_nodes["InvEditSaveInversion"].execute(inversion=record, file_name=file_name, overwrite=True)
    return {"CONDITIONING": positive, "negative": negative, "LATENT": latent, "INVERSION": record,
            "INVEDIT_P2P_EDIT": edit, "file_name": file_name}


def widget_defaults(node) -> dict:
    """The node's widget inputs at their defaults."""
    return {widget.id: widget.default for widget in node.GET_SCHEMA().inputs
            if getattr(widget, "default", None) is not None}


def nodes_taking_a_model(pack_nodes) -> list[str]:
    return [node_id for node_id, node in pack_nodes.items()
            if any(widget.get_io_type() == "MODEL" for widget in node.GET_SCHEMA().inputs)]


def node_inputs(node, model, by_type: dict) -> dict:
    inputs = widget_defaults(node)
    for widget in node.GET_SCHEMA().inputs:
        if widget.get_io_type() == "MODEL":
            inputs[widget.id] = model
        elif widget.id in by_type:
            inputs[widget.id] = by_type[widget.id]
        elif widget.get_io_type() in by_type:
            inputs[widget.id] = by_type[widget.get_io_type()]
    return inputs


def finite(value) -> bool:
    """Every tensor in a node's outputs (latents, images, an INVERSION's trajectory) is finite."""
    if isinstance(value, torch.Tensor):
        return bool(torch.isfinite(value.float()).all()) if value.is_floating_point() else True
    if isinstance(value, dict):
        return all(finite(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return all(finite(item) for item in value)
    trajectory = getattr(value, "trajectory", None)
    return finite(trajectory.noise) if trajectory is not None else True


def test_every_pack_node_that_takes_a_model_runs_on_the_flow_model_or_refuses_it_clearly(pack_nodes, flow_testbed):
    model, text_encoder = flow_testbed
    by_type = inversion_inputs(pack_nodes, model, text_encoder, "simple", "invedit-tests/flow_testbed_inversion")
    outcomes = {}
    for node_id in nodes_taking_a_model(pack_nodes):
        try:
            with torch.inference_mode():
                result = pack_nodes[node_id].execute(**node_inputs(pack_nodes[node_id], model, by_type)).result
        except ValueError as error:  # InvEditInputError, of either copy of the pack
            # A refusal says what to do instead, e.g. P2P: "Prompt-to-Prompt edits the attention of a
            # UNet ...; this model's Flux has no input/middle/output blocks. Use a UNet checkpoint."
            assert type(error).__name__ == "InvEditInputError", (node_id, repr(error))
            outcomes[node_id] = f"refused: {error}"
            continue
        assert finite(result), node_id
        outcomes[node_id] = "ran"
    assert {"InvEditDDIMInversion", "InvEditReconstruct", "InvEditP2PSample"} <= set(outcomes), outcomes
    assert outcomes["InvEditDDIMInversion"] == outcomes["InvEditReconstruct"] == "ran", outcomes


def test_an_inversion_made_with_the_unet_is_refused_with_the_flow_model(pack_nodes, flow_testbed):
    """Control for the test above: every node that takes a MODEL and an INVERSION (or a saved one)
    refuses an inversion of the digits UNet when given the flow model, naming the cause."""
    with torch.inference_mode():
        unet, unet_encoder = pack_nodes["InvEditTestbedModelLoader"].execute(verify=True).result
    by_type = inversion_inputs(pack_nodes, unet, unet_encoder, "ddim_uniform", "invedit-tests/unet_testbed_inversion")
    model, text_encoder = flow_testbed
    by_type["CONDITIONING"] = encode(pack_nodes, text_encoder, ["a photo of three and seven"])
    by_type["negative"] = encode(pack_nodes, text_encoder, [""])
    taking_an_inversion = [node_id for node_id in nodes_taking_a_model(pack_nodes)
                           if {"INVERSION", "STRING"} & {w.get_io_type() for w in pack_nodes[node_id].GET_SCHEMA().inputs}
                           and node_id != "InvEditDDIMInversion"]
    assert {"InvEditReconstruct", "InvEditNullTextInversion", "InvEditLoadInversion"} <= set(taking_an_inversion)
    for node_id in taking_an_inversion:
        with torch.inference_mode(), pytest.raises(ValueError) as refused:
            pack_nodes[node_id].execute(**node_inputs(pack_nodes[node_id], model, by_type))
        assert type(refused.value).__name__ == "InvEditInputError", (node_id, repr(refused.value))
        assert "another" in str(refused.value) or "UNet" in str(refused.value), (node_id, str(refused.value))
