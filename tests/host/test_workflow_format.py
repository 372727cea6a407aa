"""UI-format workflows: node definitions as /object_info gives them, UI <-> API conversion checked
against workflows the ComfyUI frontend saved, and the shipped example workflows built, up to date,
valid and (the test-bed one) running."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import comfyui_workflow_templates
import execution
import folder_paths
import nodes
import pytest
import server
import torch
from aiohttp.test_utils import make_mocked_request
from PIL import Image

import build_workflows
import demo
import p2p_models
import workflow_layout
import workflow_specs
from comfy_graph import CAPTURE_NODE, SERVER, Graph, run_prompt
from invedit.inversion.flowedit import PRESET_FLUX, PRESET_SD3, PRESETS
from invedit.testbed import classifier, data, vocabulary
from workflow_format import (
    CONTROL_AFTER_GENERATE,
    NOTE_TYPES,
    UPLOAD_INPUT,
    WorkflowFormatError,
    api_prompt,
    node_definitions,
    node_layout,
    ui_workflow,
    with_widget_defaults,
)

TEMPLATES_DIR = Path(comfyui_workflow_templates.__file__).resolve().parent / "templates"
MIN_TESTBED_PSNR_DB = 30.0
PHOTO_CHECKPOINT = workflow_specs.SD15_CHECKPOINT


@pytest.fixture(scope="module")
def object_info():
    """``object_info()``: GET /object_info answered now by ComfyUI's own route handler, on a
    PromptServer that is built but not run (the executor's stub stays PromptServer.instance)."""
    loop = asyncio.new_event_loop()
    previous = server.PromptServer.instance
    try:
        prompt_server = server.PromptServer(loop)
    finally:
        server.PromptServer.instance = previous
    handler = next(route.handler for route in prompt_server.routes
                   if route.method == "GET" and getattr(route, "path", None) == "/object_info")

    def get() -> dict:
        response = loop.run_until_complete(handler(make_mocked_request("GET", "/object_info")))
        return json.loads(response.body)

    yield get
    loop.close()


@pytest.fixture(scope="module")
def definitions() -> dict:
    return node_definitions()


def load_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------
# Node definitions


def test_definitions_equal_comfyuis_object_info(object_info, pack_loaded):
    # Some combos list input files and folders, and describing Load3D creates input/3d: read once
    # to settle that, then compare two fresh answers.
    object_info()
    object_info, definitions = object_info(), node_definitions()
    assert server.PromptServer.instance is SERVER
    assert "InvEditDDIMInversion" in definitions and "KSampler" in definitions and "LoadImage" in definitions
    assert set(definitions) == set(object_info)
    different = [name for name in object_info if definitions[name] != object_info[name]]
    assert not different, different
    assert definitions["InvEditReconstructionError"]["output_name"] == ["report", "heatmap", "psnr", "ssim"]
    assert definitions["KSampler"]["input_order"]["required"][:2] == ["model", "seed"]


# ---------------------------------------------------------------------------------------------
# Widget order as the frontend builds it


def widget_names(definitions, class_type):
    return [widget.name for widget in node_layout(definitions[class_type]).widgets]


def test_widget_order_and_frontend_only_widgets(definitions):
    # INT "seed" of a V1 node: the frontend's legacy rule adds control_after_generate right after it.
    assert widget_names(definitions, "KSampler") == [
        "seed", CONTROL_AFTER_GENERATE, "steps", "cfg", "sampler_name", "scheduler", "denoise"]
    assert widget_names(definitions, "KSamplerAdvanced")[:5] == [
        "add_noise", "noise_seed", CONTROL_AFTER_GENERATE, "steps", "cfg"]
    # V3: control_after_generate=True adds it, an explicit False suppresses it, absent falls back to the name.
    assert widget_names(definitions, "PrimitiveInt") == ["value", CONTROL_AFTER_GENERATE]
    assert widget_names(definitions, "InvEditDDIMInversion")[-4:] == [
        "warm_start_seed", "solver", "fixed_point_iterations", "distilled_guidance"]
    assert widget_names(definitions, "InvEditTestbedHeldOutDigits") == ["count", "seed", CONTROL_AFTER_GENERATE]
    # Image upload combos get the upload button's value after them.
    assert widget_names(definitions, "LoadImage") == ["image", UPLOAD_INPUT]
    # Sockets first, then one socket per widget input, each in input_order.
    assert [(slot.name, slot.widget) for slot in node_layout(definitions["KSampler"]).inputs] == [
        ("model", False), ("positive", False), ("negative", False), ("latent_image", False), ("seed", True),
        ("steps", True), ("cfg", True), ("sampler_name", True), ("scheduler", True), ("denoise", True)]


def test_a_linked_widget_keeps_its_value_slot(definitions):
    graph = Graph()
    steps = graph.node("PrimitiveInt", value=12)
    loader = graph.node("InvEditTestbedModelLoader", verify=True)
    text = graph.node("InvEditTestbedTextEncode", text_encoder=loader.out(1), text="")
    latent = graph.node("InvEditTestLatent", arch="sd15", seed=0, batch=1, height=8, width=16)
    inversion = graph.node("InvEditDDIMInversion", model=loader.out(0), positive=text, negative=text, latent=latent,
                           steps=steps.out(0), warm_start_seed=3)
    prompt = with_widget_defaults(graph.prompt, definitions)
    workflow = json.loads(json.dumps(ui_workflow(prompt, definitions=definitions)))
    node = next(node for node in workflow["nodes"] if node["id"] == int(inversion.node_id))
    steps_input = next(entry for entry in node["inputs"] if entry["name"] == "steps")
    assert steps_input["widget"] == {"name": "steps"} and steps_input["type"] == "INT"
    link = next(link for link in workflow["links"] if link[0] == steps_input["link"])
    assert link[1:] == [int(steps.node_id), 0, int(inversion.node_id), node["inputs"].index(steps_input), "INT"]
    layout = node_layout(definitions["InvEditDDIMInversion"])
    assert len(node["widgets_values"]) == len(layout.widgets)
    steps_index = [widget.name for widget in layout.widgets].index("steps")
    # The page draws a linked widget greyed with its own value: it shows the Primitive's constant,
    # not the widget's default, which the run does not use.
    assert node["widgets_values"][steps_index] == 12
    primitive = next(node for node in workflow["nodes"] if node["type"] == "PrimitiveInt")
    assert primitive["widgets_values"] == [12, "fixed"]
    assert api_prompt(workflow, definitions) == prompt
    assert api_prompt(workflow, definitions)[inversion.node_id]["inputs"]["steps"] == [steps.node_id, 0]


@pytest.mark.parametrize("make_graph", [
    lambda graph: demo.build_graph(graph, demo.testbed_subject(graph, demo.UNET, count=2, seed=0), steps=10),
    lambda graph: demo.build_graph(graph, demo.checkpoint_subject(graph, "any.safetensors", "example.png", "a photo",
                                                                  "a cat", ""), steps=10),
], ids=["testbed_graph", "checkpoint_graph"])
def test_ui_round_trip_of_complete_graphs_is_exact(make_graph, definitions):
    graph = Graph()
    make_graph(graph)
    assert with_widget_defaults(graph.prompt, definitions) == graph.prompt  # every widget value given
    workflow = json.loads(json.dumps(ui_workflow(graph, title="t", notes="n", definitions=definitions)))
    assert api_prompt(workflow, definitions) == graph.prompt
    assert sum(node["type"] == "MarkdownNote" for node in workflow["nodes"]) == 1


def test_bad_graphs_are_refused_with_a_reason(definitions):
    graph = Graph()
    graph.node("InvEditReconstruct", cfg=1.0, colour="red")
    with pytest.raises(WorkflowFormatError, match="no input"):
        ui_workflow(graph, definitions=definitions)
    with pytest.raises(WorkflowFormatError, match="NoSuchNode"):
        node_definitions(["NoSuchNode"])
    stale = ui_workflow(with_widget_defaults({"1": {"class_type": "PrimitiveInt", "inputs": {}}}, definitions),
                        definitions=definitions)
    stale["nodes"][0]["widgets_values"].append(5)
    with pytest.raises(WorkflowFormatError, match="another version"):
        api_prompt(stale, definitions)
    assert api_prompt(stale, definitions, strict=False) == {"1": {"class_type": "PrimitiveInt", "inputs": {"value": 0}}}


# ---------------------------------------------------------------------------------------------
# Against workflows saved by the ComfyUI frontend (comfyui-workflow-templates, pinned by ComfyUI)

# Each covers: seed control (V1 legacy names, V3 flag), image upload, widgets fed by links,
# optional sockets, muted nodes (their links dropped).
FRONTEND_SAVED = [
    "image2image.json",
    "controlnet_example.json",
    "ltxv_image_to_video.json",
    "video_wan_vace_outpainting.json",
    "video_wan2_2_14B_fun_camera.json",
    "video_wan_ati.json",
    "video_wan2_2_5B_ti2v.json",  # a plain socket fed by a muted node
]


def live_nodes(workflow: dict) -> dict[int, dict]:
    return {node["id"]: node for node in workflow["nodes"]
            if node["type"] not in NOTE_TYPES and node.get("mode", 0) not in (2, 4)}


def saved_inputs(node: dict) -> list[tuple]:
    return [(entry["name"], entry["type"], entry.get("link") is not None, entry.get("widget"), entry.get("shape"))
            for entry in node.get("inputs", [])]


@pytest.mark.parametrize("name", FRONTEND_SAVED)
def test_frontend_saved_workflows_convert_both_ways(name, definitions):
    saved = load_json(TEMPLATES_DIR / name)
    prompt = api_prompt(saved, definitions)
    live = live_nodes(saved)
    link_origin = {link[0]: link[1] for link in saved["links"]}
    assert set(prompt) == {str(node_id) for node_id in live}
    rebuilt = ui_workflow(prompt, definitions=definitions)
    rebuilt_nodes = {node["id"]: node for node in rebuilt["nodes"]}
    for node_id, node in live.items():
        layout = node_layout(definitions[node["type"]])
        mine = rebuilt_nodes[node_id]
        linked = {entry["name"] for entry in node.get("inputs", []) if entry.get("link") is not None}
        sent = [widget.input_name is not None and widget.name not in linked for widget in layout.widgets]
        assert len(mine["widgets_values"]) == len(node["widgets_values"]) == len(layout.widgets)
        assert [value for value, keep in zip(mine["widgets_values"], sent) if keep] == \
               [value for value, keep in zip(node["widgets_values"], sent) if keep], node["type"]
        # Saved: every plain socket and the widget sockets a link feeds. Muted sources are left
        # out of the prompt, so links from them are not rebuilt.
        expected = []
        for entry in node.get("inputs", []):
            from_live = entry.get("link") is not None and link_origin[entry["link"]] in live
            if from_live or "widget" not in entry:
                expected.append({**entry, "link": entry["link"] if from_live else None})
        assert saved_inputs(mine) == saved_inputs({"inputs": expected}), node["type"]
    saved_links = {tuple(link[1:5]) for link in saved["links"] if link[1] in live and link[3] in live}
    assert {tuple(link[1:5]) for link in rebuilt["links"]} == saved_links


def test_frontend_saved_prompt_values():
    saved = load_json(TEMPLATES_DIR / "image2image.json")
    prompt = api_prompt(saved)
    assert prompt["3"] == {"class_type": "KSampler", "inputs": {
        "seed": 280823642470253, "steps": 20, "cfg": 8, "sampler_name": "dpmpp_2m", "scheduler": "normal",
        "denoise": 0.8700000000000001, "model": ["14", 0], "positive": ["6", 0], "negative": ["7", 0],
        "latent_image": ["12", 0]}}
    assert prompt["10"] == {"class_type": "LoadImage", "inputs": {"image": "example.png"}}


def test_bypassed_nodes_pass_their_matching_input_on():
    saved = load_json(TEMPLATES_DIR / "lora.json")  # LoraLoader 13 is bypassed (mode 4)
    prompt = api_prompt(saved)
    assert "13" not in prompt
    assert prompt["3"]["inputs"]["model"] == ["11", 0]
    assert prompt["6"]["inputs"]["clip"] == prompt["7"]["inputs"]["clip"] == ["11", 1]


# ---------------------------------------------------------------------------------------------
# The shipped examples


@pytest.mark.parametrize("name", sorted(workflow_specs.EXAMPLES))
def test_shipped_workflow_round_trips_to_its_graph(name, definitions):
    example = workflow_specs.build_example(name, definitions)
    path = build_workflows.workflow_file(name)
    shipped = load_json(path)
    assert shipped == json.loads(build_workflows.render(example.ui(definitions)))
    assert api_prompt(shipped, definitions) == example.graph.prompt
    assert shipped["version"] == 0.4 and shipped["last_node_id"] == max(node["id"] for node in shipped["nodes"])
    assert shipped["last_link_id"] == len(shipped["links"])
    assert workflow_layout.workflow_problems(path.stem, shipped) == []


def test_the_builder_refuses_a_workflow_that_breaks_a_rule(definitions, monkeypatch):
    """A spread-out layout (nodes too far apart to read when the workflow opens) is not written."""
    name = "testbed_ddim_reconstruction"
    monkeypatch.setattr(workflow_layout, "GROUP_GAP", 2000)
    with pytest.raises(workflow_layout.LayoutError, match="opens at zoom"):
        workflow_specs.checked_ui(name, definitions)


def test_a_linked_widget_shows_the_value_it_gets(definitions):
    """The P2P photo workflows feed one Primitive's prompt to CLIP and to P2P Edit: both show it; the
    test-bed's prompts come from Held-out Digits, whose value the page cannot know: nothing shown."""
    for name, expected in (("p2p_word_swap_photo", workflow_specs.EXAMPLE_IMAGE_PROMPT), ("testbed_p2p_word_swap", "")):
        shipped = load_json(build_workflows.workflow_file(name))
        edit = next(node for node in shipped["nodes"] if node["type"] == "InvEditP2PEdit")
        source_index = [widget.name for widget in node_layout(definitions["InvEditP2PEdit"]).widgets].index("source_prompt")
        assert edit["widgets_values"][source_index] == expected, name


def test_shipped_workflows_are_up_to_date():
    assert build_workflows.stale_workflows() == [], "run: python scripts/build_workflows.py"


# Reconstruction PSNR each shipped test-bed workflow must reach (measured: DDIM at cfg 1 about 38 dB,
# null-text and negative-prompt at cfg 7.5 about 28-38 dB, direct inversion exact; the P2P
# workflows score their source row, negative-prompt inversion's reconstruction at cfg 7.5: 37.2 dB).
FLOW_PSNR_DB = 18.0  # regression band: measured 21.3 dB (Euler reconstruction at cfg 2 of an inversion made at cfg 1)
TESTBED_WORKFLOW_PSNR_DB = {
    "testbed_ddim_reconstruction": MIN_TESTBED_PSNR_DB,
    "testbed_null_text": 25.0,
    "testbed_negative_prompt": MIN_TESTBED_PSNR_DB,
    "testbed_direct_inversion": 60.0,
    "testbed_p2p_word_swap": MIN_TESTBED_PSNR_DB,
    "testbed_p2p_local_blend": MIN_TESTBED_PSNR_DB,
    "testbed_p2p_reweight": MIN_TESTBED_PSNR_DB,
    # FlowEdit scores its edit against the source (one digit of two changed): measured 14.5 dB.
    "testbed_flowedit": 12.0,
    # Edit-friendly DDPM inversion reconstructs exactly (measured: identical pixels).
    "testbed_ddpm_noise_edit": 60.0,
    # The flow test-bed (benchmarks/solvers.py on 64 canvases: FireFlow 25 steps at cfg 1 60 dB, Euler 25 steps
    # 39 dB; the negative control below runs the same workflow with euler and fails the bound).
    "testbed_flow_reconstruction": 50.0,
    "testbed_flow_direct_inversion": 60.0,
    "testbed_flow_edit": 45.0,  # measured 61.6 dB on its one canvas (FireFlow, 25 steps)
    # the flow test-bed's Euler reconstruction at cfg 2 of an inversion made at cfg 1 (see FLOW_PSNR_DB)
    "testbed_flow_p2p_word_swap": FLOW_PSNR_DB,
    "testbed_flow_p2p_reweight": FLOW_PSNR_DB,
    "testbed_flow_p2p_masked": FLOW_PSNR_DB,
}
PHOTO_WORKFLOWS = sorted(name for name in workflow_specs.EXAMPLES if name.endswith("_photo"))
P2P_PHOTO_WORKFLOWS = [name for name in PHOTO_WORKFLOWS if name.startswith("p2p_")]
# What a test-bed workflow run hands back: output `slot` of the first node of `class_type`.
TESTBED_CAPTURES = {
    "canvas_image": ("InvEditTestbedHeldOutDigits", 0),
    "source_prompt": ("InvEditTestbedHeldOutDigits", 1),
    "edited": ("InvEditP2PSample", 1),
    "source_row": ("InvEditP2PSample", 0),
    "maps": ("InvEditP2PSample", 2),
    "guided_edit": ("SamplerCustomAdvanced", 0),  # the flow test-bed's edit through the Inversion Guider
}


def test_every_testbed_workflow_has_a_bound():
    assert sorted(TESTBED_WORKFLOW_PSNR_DB) == sorted(n for n in workflow_specs.EXAMPLES if n.startswith("testbed_"))


def first_node(prompt: dict, class_type: str) -> str | None:
    return next((node_id for node_id, node in prompt.items() if node["class_type"] == class_type), None)


def shipped_prompt(name: str, definitions) -> dict:
    """The API prompt the frontend queues for a shipped workflow."""
    return api_prompt(load_json(build_workflows.workflow_file(name)), definitions)


def score_nodes(prompt: dict) -> list[str]:
    """The Reconstruction Error nodes in id order: a guidance-gap workflow scores plain DDIM first,
    then the method; the others have one."""
    return sorted((node_id for node_id, node in prompt.items() if node["class_type"] == "InvEditReconstructionError"),
                  key=int)


def with_captures(prompt: dict) -> dict:
    """The prompt plus capture nodes: every TESTBED_CAPTURES entry whose node is in it; ``psnr`` and
    ``result``, the score and the image of the last Reconstruction Error (the workflow's method);
    ``plain_psnr``, the first one's score where there are two (plain DDIM)."""
    captures = {key: [first_node(prompt, class_type), slot] for key, (class_type, slot) in TESTBED_CAPTURES.items()
                if first_node(prompt, class_type) is not None}
    scores = score_nodes(prompt)
    captures["psnr"] = [scores[-1], 2]
    if len(scores) > 1:
        captures["plain_psnr"] = [scores[0], 2]
    captures["result"] = prompt[scores[-1]]["inputs"]["result"]
    for key, link in captures.items():
        prompt[f"capture_{key}"] = {"class_type": CAPTURE_NODE, "inputs": {"key": key, "value": link}}
    return prompt


@pytest.fixture(scope="module")
def testbed_workflow_results(definitions):
    """``results(name)``: the shipped test-bed workflow run once from its JSON by ComfyUI's executor
    (cached for the module), with the values of :func:`with_captures`."""
    cache = {}

    def results(name: str) -> dict:
        if name not in cache:
            cache[name] = run_prompt(with_captures(shipped_prompt(name, definitions)))
        return cache[name]

    return results


PLAIN_DDIM_GAP_PSNR_MAX_DB = 20.0  # plain DDIM at cfg 7.5 on the test-bed: measured 14.1 dB


@pytest.mark.parametrize("name", sorted(TESTBED_WORKFLOW_PSNR_DB))
def test_testbed_workflow_runs_and_reconstructs(testbed_workflow_results, name):
    result = testbed_workflow_results(name)
    image = result["result"]
    assert image.shape[1:] == (8, 16, 3) and image.shape[0] >= 1
    assert bool(image.isfinite().all())
    assert result["psnr"] > TESTBED_WORKFLOW_PSNR_DB[name]
    if "plain_psnr" in result:  # the guidance gap the workflow shows next to its method
        assert result["plain_psnr"] < PLAIN_DDIM_GAP_PSNR_MAX_DB < result["psnr"], (result["plain_psnr"], result["psnr"])


# ---------------------------------------------------------------------------------------------
# The test-bed Prompt-to-Prompt workflows do what their notes say (held-out canvas "a photo of
# eight and five", negative-prompt inversion, cfg 7.5). Measured figures in the comments.

P2P_TESTBED_WORKFLOWS = sorted(name for name in TESTBED_WORKFLOW_PSNR_DB if name.startswith("testbed_p2p_"))
P2P_SWAP_WORKFLOWS = ("testbed_p2p_word_swap", "testbed_p2p_local_blend")
KEPT_DIGIT_ERROR_MAX = {  # mean |error| of the digit whose word is kept, against the source image
    "testbed_p2p_word_swap": 0.30,  # measured 0.170 (left swapped), 0.175 (right swapped)
    "testbed_p2p_local_blend": 0.10,  # measured 0.043
}
BLEND_GAIN_MIN = 2.0  # the same swap keeps the other digit 4.0x closer with LocalBlend (0.170 / 0.043)
REWEIGHT_MASS_GAIN_MIN = 1.3  # "eight" x2: its attention mass 0.296 -> 0.527 (1.8x)
REWEIGHT_INK_GAIN_MIN = 1.05  # ink of the left digit 0.686 -> 0.787 (1.15x)


def p2p_edit_inputs(name: str, definitions) -> dict:
    """The widget values of a shipped workflow's P2P Edit node."""
    prompt = shipped_prompt(name, definitions)
    return prompt[first_node(prompt, "InvEditP2PEdit")]["inputs"]


def digit_labels(prompt: str) -> list[int]:
    """The (left, right) digits a test-bed prompt names."""
    words = prompt.split()
    return [vocabulary.DIGIT_WORDS.index(words[position])
            for position in (vocabulary.LEFT_WORD_POSITION, vocabulary.RIGHT_WORD_POSITION)]


def digit_half(canvases: torch.Tensor, side: int) -> torch.Tensor:
    return canvases[..., side * data.DIGIT_SIZE:(side + 1) * data.DIGIT_SIZE]


def kept_digit_errors(result: dict, edited_prompts: list[str]) -> list[float]:
    """Per edited row: mean |error| against the source image of the digit whose word it keeps."""
    image = data.image_to_canvas(result["canvas_image"])
    source = digit_labels(result["source_prompt"])
    errors = []
    for row, prompt in enumerate(edited_prompts):
        kept = [side for side, (old, new) in enumerate(zip(source, digit_labels(prompt))) if old == new]
        assert len(kept) == 1, f"{prompt!r} should swap exactly one digit of {result['source_prompt']!r}"
        edited_half = digit_half(result["edited"]["samples"][row:row + 1], kept[0])
        errors.append(float((edited_half - digit_half(image, kept[0])).abs().mean()))
    return errors


@pytest.mark.parametrize("name", P2P_TESTBED_WORKFLOWS)
def test_testbed_p2p_workflows_edit_the_canvas_their_notes_name(testbed_workflow_results, name):
    result = testbed_workflow_results(name)
    assert result["source_prompt"] == workflow_specs.P2P_TESTBED_SOURCE_PROMPT


@pytest.mark.parametrize("name", P2P_SWAP_WORKFLOWS)
def test_testbed_p2p_swap_redraws_the_named_digit_and_keeps_the_other(testbed_workflow_results, definitions, name):
    result = testbed_workflow_results(name)
    edited_prompts = p2p_edit_inputs(name, definitions)["edited_prompts"].splitlines()
    labels = classifier.training_split_classifier().predict_canvases(result["edited"]["samples"])
    errors = kept_digit_errors(result, edited_prompts)
    print(f"\n[{name}] edited rows read as {labels.tolist()}; kept digit mean |error| "
          + ", ".join(f"{error:.3f}" for error in errors))
    assert labels.tolist() == [digit_labels(prompt) for prompt in edited_prompts]
    assert max(errors) <= KEPT_DIGIT_ERROR_MAX[name]


NOISE_EDIT_WORKFLOWS = ("testbed_flowedit", "testbed_ddpm_noise_edit")
NOISE_EDIT_KEPT_ERROR_MAX = {  # mean |error| of the kept digit (the P2P word swap's band: 0.30, measured 0.170)
    "testbed_flowedit": 0.05,  # measured 0.010
    "testbed_ddpm_noise_edit": 0.15,  # measured 0.090 (16 held-out swaps: 0.054)
}


@pytest.mark.parametrize("name", NOISE_EDIT_WORKFLOWS)
def test_testbed_flowedit_and_ddpm_workflows_swap_the_named_digit_and_keep_the_other(testbed_workflow_results, name):
    result = testbed_workflow_results(name)
    assert result["source_prompt"] == workflow_specs.P2P_TESTBED_SOURCE_PROMPT
    target = workflow_specs.SWAP_TESTBED_TARGET
    edited = {"edited": {"samples": result["guided_edit"]["samples"]}, **result}
    labels = classifier.training_split_classifier().predict_canvases(result["guided_edit"]["samples"])
    errors = kept_digit_errors(edited, [target])
    print(f"\n[{name}] edit reads as {labels.tolist()}; kept digit mean |error| {errors[0]:.3f}; "
          f"PSNR {result['psnr']:.1f} dB")
    assert labels.tolist() == [digit_labels(target)]
    assert errors[0] <= NOISE_EDIT_KEPT_ERROR_MAX[name]


def test_testbed_local_blend_keeps_the_other_digit_closer_than_the_plain_swap(testbed_workflow_results,
                                                                              definitions):
    swap_prompts = p2p_edit_inputs("testbed_p2p_word_swap", definitions)["edited_prompts"].splitlines()
    blend_prompts = p2p_edit_inputs("testbed_p2p_local_blend", definitions)["edited_prompts"].splitlines()
    assert blend_prompts == swap_prompts[:1]  # the same edit, with and without LocalBlend
    swap_error = kept_digit_errors(testbed_workflow_results("testbed_p2p_word_swap"), swap_prompts)[0]
    blend_error = kept_digit_errors(testbed_workflow_results("testbed_p2p_local_blend"), blend_prompts)[0]
    print(f"\n[LocalBlend] kept digit mean |error| {swap_error:.3f} without, {blend_error:.3f} with "
          f"({swap_error / blend_error:.1f}x)")
    assert swap_error >= BLEND_GAIN_MIN * blend_error


def test_testbed_reweight_strengthens_the_word(testbed_workflow_results, definitions):
    result = testbed_workflow_results("testbed_p2p_reweight")
    inputs = p2p_edit_inputs("testbed_p2p_reweight", definitions)
    word, scale = (part.strip() for part in inputs["reweight"].split(":"))
    assert float(scale) > 1.0
    sides = (vocabulary.LEFT_WORD_POSITION, vocabulary.RIGHT_WORD_POSITION)
    side = sides.index(result["source_prompt"].split().index(word))
    maps = result["maps"]
    source_mass, edited_mass = (maps.word_mass(row, word, workflow_specs.P2P_TESTBED_DOWNSAMPLE) for row in (0, 1))
    source_row = data.image_to_canvas(result["result"])
    source_ink, edited_ink = (float((digit_half(canvas, side) + 1.0).mean())
                              for canvas in (source_row, result["edited"]["samples"]))
    print(f"\n[reweight {word} x{scale}] attention mass {source_mass:.3f} -> {edited_mass:.3f}, "
          f"ink {source_ink:.3f} -> {edited_ink:.3f}")
    assert edited_mass >= REWEIGHT_MASS_GAIN_MIN * source_mass
    assert edited_ink >= REWEIGHT_INK_GAIN_MIN * source_ink


# ---------------------------------------------------------------------------------------------
# The flow test-bed Prompt-to-Prompt workflows (joint attention; held-out "a photo of eight and five",
# Euler inversion at cfg 1, editing at cfg 2). Independent checks: the test-bed classifier reads the
# edited rows; the masked edit's right half equals the source row (the acceptance bound 1e-5).

FLOW_SWAP_WORKFLOWS = ("testbed_flow_p2p_word_swap", "testbed_flow_p2p_masked")
FLOW_MASK_MAX_ERROR = 1e-5


@pytest.mark.parametrize("name", FLOW_SWAP_WORKFLOWS)
def test_flow_p2p_swap_workflows_redraw_the_named_digit(testbed_workflow_results, definitions, name):
    result = testbed_workflow_results(name)
    assert result["source_prompt"] == workflow_specs.P2P_TESTBED_SOURCE_PROMPT
    edited_prompts = p2p_edit_inputs(name, definitions)["edited_prompts"].splitlines()
    labels = classifier.training_split_classifier().predict_canvases(result["edited"]["samples"])
    print(f"\n[{name}] edited rows read as {labels.tolist()}, PSNR of the source row {float(result['psnr']):.1f} dB")
    assert labels.tolist() == [digit_labels(prompt) for prompt in edited_prompts]


def test_the_flow_masked_workflow_keeps_the_right_digit_exactly(testbed_workflow_results):
    result = testbed_workflow_results("testbed_flow_p2p_masked")
    edited, source_row = result["edited"]["samples"], result["source_row"]["samples"]
    error = float((digit_half(edited, 1) - digit_half(source_row, 1)).abs().max())
    assert error <= FLOW_MASK_MAX_ERROR
    assert float((digit_half(edited, 0) - digit_half(source_row, 0)).abs().mean()) > 0.05  # the left digit changed


def test_the_flow_reweight_workflow_strengthens_the_word(testbed_workflow_results):
    result = testbed_workflow_results("testbed_flow_p2p_reweight")
    source_ink, edited_ink = (float((digit_half(canvas, 0) + 1.0).mean())
                              for canvas in (result["source_row"]["samples"], result["edited"]["samples"]))
    print(f"\n[flow reweight eight x2] ink of the left digit {source_ink:.3f} -> {edited_ink:.3f}")
    assert edited_ink > source_ink


# ---------------------------------------------------------------------------------------------
# The flow test-bed workflows (a tiny Flux, FireFlow inversion): what their notes claim.

FLOW_EULER_SAME_STEPS_PSNR_DB = 45.0  # the reconstruction workflow with solver euler: measured about 39 dB
FLOW_KEPT_DIGIT_ERROR_MAX = 0.05  # mean |error| of the unedited five, [-1, 1] units: measured 0.008
FLOW_FRESH_NOISE_KEPT_ERROR_MIN = 0.1  # the same prompt sampled from fresh noise: its five is another five


def test_flow_reconstruction_workflow_bound_tells_fireflow_from_euler(testbed_workflow_results, definitions):
    """Negative control of the flow reconstruction bound: the same workflow with the inversion's solver set to
    euler (same steps, so one call fewer) reconstructs below it, FireFlow above it."""
    name = "testbed_flow_reconstruction"
    prompt = shipped_prompt(name, definitions)
    inversion = prompt[first_node(prompt, "InvEditDDIMInversion")]["inputs"]
    assert inversion["solver"] == "fireflow"
    inversion["solver"] = "euler"
    euler = run_prompt(with_captures(prompt))
    fireflow = testbed_workflow_results(name)
    print(f"\n[flow reconstruction] FireFlow {fireflow['psnr']:.1f} dB, Euler {euler['psnr']:.1f} dB "
          f"({inversion['steps']} steps)")
    assert euler["psnr"] < FLOW_EULER_SAME_STEPS_PSNR_DB <= TESTBED_WORKFLOW_PSNR_DB[name] < fireflow["psnr"]


def test_flow_edit_workflow_redraws_the_named_digit_and_keeps_the_other(testbed_workflow_results, definitions,
                                                                         pack_nodes):
    """The edit reads as the edited prompt's digits (the training-split classifier), and the digit whose word is
    kept stays the source's; negative control: the same prompt sampled from fresh noise with stock KSampler
    (euler, the inversion's scheduler and steps) reads right too but draws another five."""
    name = "testbed_flow_edit"
    result = testbed_workflow_results(name)
    prompt = shipped_prompt(name, definitions)
    edited_prompt = prompt[first_node(prompt, "InvEditInversionGuider")]["inputs"]["positive"]
    edited_text = prompt[edited_prompt[0]]["inputs"]["text"]
    assert result["source_prompt"] == workflow_specs.FLOW_TESTBED_SOURCE_PROMPT
    assert edited_text == workflow_specs.FLOW_TESTBED_EDIT_PROMPT
    edited = result["guided_edit"]["samples"]
    labels = classifier.training_split_classifier().predict_canvases(edited)
    kept_error = kept_digit_errors({**result, "edited": {"samples": edited}}, [edited_text])[0]
    model, text_encoder = pack_nodes["InvEditTestbedFlowModelLoader"].execute(verify=True).result
    encode = pack_nodes["InvEditTestbedTextEncode"]
    inversion = prompt[first_node(prompt, "InvEditDDIMInversion")]["inputs"]
    with torch.inference_mode():
        fresh = nodes.KSampler().sample(
            model, seed=0, steps=inversion["steps"], cfg=workflow_specs.FLOW_EDIT_GUIDANCE, sampler_name="euler",
            scheduler="simple", positive=encode.execute(text_encoder=text_encoder, text=edited_text).result[0],
            negative=encode.execute(text_encoder=text_encoder, text="").result[0],
            latent_image={"samples": torch.zeros_like(edited)})[0]["samples"]
    fresh_error = kept_digit_errors({**result, "edited": {"samples": fresh}}, [edited_text])[0]
    print(f"\n[flow edit] reads {labels.tolist()}; kept digit mean |error| {kept_error:.3f}, from fresh noise "
          f"{fresh_error:.3f}")
    assert labels.tolist() == [digit_labels(edited_text)]
    assert kept_error <= FLOW_KEPT_DIGIT_ERROR_MAX < FLOW_FRESH_NOISE_KEPT_ERROR_MIN <= fresh_error


def validated_prompt(tmp_path: Path, definitions, name: str, files: list[tuple[str, str]]) -> dict:
    """The API prompt of shipped workflow ``name``, validated by ComfyUI with empty files ``(models/ folder, file
    name)`` under ``tmp_path`` (validation only looks the names up; nothing is loaded) and the example photo."""
    for directory, file_name in files:
        path = tmp_path / directory / file_name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"")
        folder_paths.add_model_folder_path(directory, str(path.parent))
    image = Path(folder_paths.get_input_directory()) / workflow_specs.EXAMPLE_IMAGE
    image.parent.mkdir(parents=True, exist_ok=True)
    created = not image.exists()
    if created:
        Image.new("RGB", (64, 64)).save(image)
    try:
        prompt = api_prompt(load_json(build_workflows.workflow_file(name)), definitions)
        valid, error, outputs, node_errors = asyncio.run(execution.validate_prompt(name, prompt, None))
    finally:
        if created:
            image.unlink()
    assert valid and not node_errors, (error, node_errors)
    return prompt


@pytest.mark.parametrize("name", PHOTO_WORKFLOWS)
def test_photo_workflow_validates_with_comfyui_loaders(tmp_path: Path, definitions, name):
    prompt = validated_prompt(tmp_path, definitions, name, [("checkpoints", PHOTO_CHECKPOINT)])
    used = {node["class_type"] for node in prompt.values()}
    assert {"CheckpointLoaderSimple", "LoadImage", "VAEEncode", "CLIPTextEncode", "VAEDecode"} <= used
    assert {"InvEditDDIMInversion", "InvEditDDPMNoiseInversion"} & used
    assert {"InvEditReconstruct", "InvEditP2PEdit"} & used


# Flux dev and SD3.5 photo workflows: random-weight files of those architectures (Flux dev 12 B parameters, 24 GB
# in bf16; SD3.5 Medium 2.5 B plus a 4.7 B T5-XXL) do not fit the suite's time and memory, so ComfyUI validates them
# with its real loaders over empty files of the names they load (validation only looks the names up).
FLOW_PHOTO_WORKFLOWS = {"flux_dev_flow_edit": {"UNETLoader", "DualCLIPLoader", "VAELoader", "ModelSamplingFlux",
                                               "FluxGuidance"},
                        "sd35_flow_edit": {"CheckpointLoaderSimple", "TripleCLIPLoader"}}
FLOW_PHOTO_NODES = {"LoadImage", "VAEEncode", "CLIPTextEncode", "InvEditDDIMInversion", "InvEditReconstruct",
                    "InvEditInversionGuider", "DisableNoise", "InvEditReplaySampler", "SamplerCustomAdvanced",
                    "VAEDecode", "InvEditReconstructionError"}


def test_flow_photo_workflows_are_the_flow_examples():
    assert sorted(FLOW_PHOTO_WORKFLOWS) == sorted(name for name in workflow_specs.EXAMPLES
                                                  if name.endswith("_flow_edit") and not name.startswith("testbed_"))


@pytest.mark.parametrize("name", sorted(FLOW_PHOTO_WORKFLOWS))
def test_flow_photo_workflow_validates_with_comfyui_loaders(tmp_path: Path, definitions, name):
    files = [(model["directory"], model["name"]) for node in load_json(build_workflows.workflow_file(name))["nodes"]
             for model in node.get("properties", {}).get("models", [])]
    assert files, "the loaders list their files with download links"
    prompt = validated_prompt(tmp_path, definitions, name, files)
    used = {node["class_type"] for node in prompt.values()}
    assert FLOW_PHOTO_WORKFLOWS[name] | FLOW_PHOTO_NODES <= used
    inversion = prompt[first_node(prompt, "InvEditDDIMInversion")]["inputs"]
    assert (inversion["solver"], inversion["scheduler"], inversion["inversion_cfg"]) == ("fireflow", "auto", 1.0)
    assert prompt[first_node(prompt, "InvEditReplaySampler")]["inputs"]["solver"] == "fireflow"


# FlowEdit on Flux dev and SD3.5 photos (issue 16): validated like the flow photo workflows above (their files are
# too large to run here); the numbers of the FlowEdit loop on these two families are tested against the official
# loop in tests/host/test_flowedit.py, on the schedulers named here.
FLOWEDIT_PHOTO_WORKFLOWS = {  # id: (loaders, preset, scheduler the FlowEdit oracle test matches)
    "flux_dev_flowedit": ({"UNETLoader", "DualCLIPLoader", "VAELoader", "ModelSamplingFlux"}, PRESET_FLUX, "simple"),
    "sd35_flowedit": ({"CheckpointLoaderSimple", "TripleCLIPLoader"}, PRESET_SD3, "normal"),
}
FLOWEDIT_PHOTO_NODES = {"LoadImage", "VAEEncode", "CLIPTextEncode", "InvEditFlowEditGuider", "InvEditFlowEditSampler",
                        "BasicScheduler", "DisableNoise", "SamplerCustomAdvanced", "VAEDecode", "SaveImage"}


def model_files(name: str) -> list[tuple[str, str]]:
    """(models/ folder, file name) of every file the loaders of shipped workflow ``name`` list with a link."""
    return [(model["directory"], model["name"]) for node in load_json(build_workflows.workflow_file(name))["nodes"]
            for model in node.get("properties", {}).get("models", [])]


def test_flowedit_photo_workflows_are_the_photo_flowedit_examples():
    assert sorted(FLOWEDIT_PHOTO_WORKFLOWS) == sorted(name for name in workflow_specs.EXAMPLES
                                                      if name.endswith("_flowedit") and not name.startswith("testbed_"))


@pytest.mark.parametrize("name", sorted(FLOWEDIT_PHOTO_WORKFLOWS))
def test_flowedit_photo_workflow_validates_with_comfyui_loaders(tmp_path: Path, definitions, name):
    """ComfyUI's prompt validation passes with the real loaders; the edit is wired as FlowEdit needs it: the
    preset of the model on guider and sampler, the preset's step count on the oracle-tested scheduler, no noise,
    the encoded photo as the latent, yellow -> red hair."""
    loaders, preset, scheduler = FLOWEDIT_PHOTO_WORKFLOWS[name]
    files = model_files(name)
    assert files, "the loaders list their files with download links"
    prompt = validated_prompt(tmp_path, definitions, name, files)
    used = {node["class_type"] for node in prompt.values()}
    assert loaders | FLOWEDIT_PHOTO_NODES <= used
    assert "FluxGuidance" not in used  # the Flux preset writes the distilled guidance into both prompts itself
    guider = prompt[first_node(prompt, "InvEditFlowEditGuider")]["inputs"]
    sampler = prompt[first_node(prompt, "InvEditFlowEditSampler")]["inputs"]
    sigmas = prompt[first_node(prompt, "BasicScheduler")]["inputs"]
    sample = prompt[first_node(prompt, "SamplerCustomAdvanced")]["inputs"]
    assert guider["preset"] == sampler["preset"] == preset
    assert (sigmas["scheduler"], sigmas["steps"], sigmas["denoise"]) == (scheduler, PRESETS[preset].steps, 1.0)
    assert sigmas["model"] == guider["model"]
    assert prompt[sample["noise"][0]]["class_type"] == "DisableNoise"
    assert prompt[sample["latent_image"][0]]["class_type"] == "VAEEncode"
    assert (prompt[guider["source"][0]]["inputs"]["text"], prompt[guider["target"][0]]["inputs"]["text"]) == (
        workflow_specs.EXAMPLE_IMAGE_PROMPT, workflow_specs.EXAMPLE_EDIT_PROMPT)


@pytest.mark.parametrize("name", sorted(FLOWEDIT_PHOTO_WORKFLOWS))
def test_flowedit_photo_validation_refuses_a_missing_model_file(tmp_path: Path, tmp_path_factory, monkeypatch,
                                                               definitions, name):
    """Negative control of the validation above: without the diffusion model's file ComfyUI refuses the prompt
    (the model folders other tests added under pytest's temporary directory are left out, the file lists rebuilt)."""
    earlier = str(tmp_path_factory.getbasetemp())
    monkeypatch.setattr(folder_paths, "folder_names_and_paths", {
        folder: ([path for path in paths if not path.startswith(earlier)], extensions)
        for folder, (paths, extensions) in folder_paths.folder_names_and_paths.items()})
    monkeypatch.setattr(folder_paths, "filename_list_cache", {})
    files = model_files(name)
    with pytest.raises(AssertionError) as refusal:
        validated_prompt(tmp_path, definitions, name, files[1:])
    assert files[0][1] in str(refusal.value)


# Prompt-to-Prompt on Flux dev and SD3.5 photos (issue 15): validated like the flow photo workflows above, and P2P
# Edit runs on the workflow's own prompts under ComfyUI's real Flux and SD3 tokenizers (p2p_models.family_clip).
FLOW_P2P_PHOTO_WORKFLOWS = {  # id: (loaders, the text encoder's family in p2p_models.PROBES)
    "flux_dev_p2p_word_swap": ({"UNETLoader", "DualCLIPLoader", "VAELoader", "ModelSamplingFlux", "FluxGuidance"},
                               "flux"),
    "sd35_p2p_word_swap": ({"CheckpointLoaderSimple", "TripleCLIPLoader"}, "sd35"),
}
FLOW_P2P_PHOTO_NODES = {"PrimitiveStringMultiline", "LoadImage", "VAEEncode", "CLIPTextEncode", "InvEditDDIMInversion",
                        "InvEditP2PEdit", "InvEditP2PSample", "InvEditP2PAttentionMaps", "VAEDecode",
                        "InvEditReconstructionError", "SaveImage"}


def test_flow_p2p_photo_workflows_are_the_photo_p2p_examples():
    assert sorted(FLOW_P2P_PHOTO_WORKFLOWS) == sorted(
        name for name in workflow_specs.EXAMPLES if "_p2p_" in name and name.split("_")[0] in ("flux", "sd35"))


@pytest.mark.parametrize("name", sorted(FLOW_P2P_PHOTO_WORKFLOWS))
def test_flow_p2p_photo_workflow_validates_with_comfyui_loaders(tmp_path: Path, definitions, name):
    """ComfyUI's validation passes with the real loaders, and the edit is wired as P2P on joint attention needs it:
    a fixed-point inversion at guidance 1 (P2P refuses FireFlow), P2P Sample on that inversion at cfg 1, one source
    text for the inversion's prompt and P2P Edit."""
    loaders, _ = FLOW_P2P_PHOTO_WORKFLOWS[name]
    files = model_files(name)
    assert files, "the loaders list their files with download links"
    prompt = validated_prompt(tmp_path, definitions, name, files)
    used = {node["class_type"] for node in prompt.values()}
    assert loaders | FLOW_P2P_PHOTO_NODES <= used
    inversion_id = first_node(prompt, "InvEditDDIMInversion")
    inversion = prompt[inversion_id]["inputs"]
    assert (inversion["solver"], inversion["fixed_point_iterations"], inversion["inversion_cfg"]) == ("fixed-point", 3,
                                                                                                      1.0)
    sample = prompt[first_node(prompt, "InvEditP2PSample")]["inputs"]
    assert sample["inversion"] == [inversion_id, 1] and sample["cfg"] == 1.0
    edit = prompt[first_node(prompt, "InvEditP2PEdit")]["inputs"]
    text = edit["source_prompt"]
    assert prompt[text[0]]["class_type"] == "PrimitiveStringMultiline"
    assert [text] == [node["inputs"]["text"] for node in prompt.values()
                      if node["class_type"] == "CLIPTextEncode" and node["inputs"]["text"] != ""]


@pytest.mark.parametrize("name", sorted(FLOW_P2P_PHOTO_WORKFLOWS))
def test_flow_p2p_photo_edit_finds_its_words_in_the_models_text_keys(pack_nodes, definitions, name):
    """P2P Edit with the workflow's inputs under the model's real tokenizers: the swapped word sits in the text keys
    the model reads (Flux: 256 T5 keys; SD3: 77 CLIP-L/G keys, then 77 T5 keys: the word in both)."""
    _, family = FLOW_P2P_PHOTO_WORKFLOWS[name]
    prompt = shipped_prompt(name, definitions)
    inputs = dict(prompt[first_node(prompt, "InvEditP2PEdit")]["inputs"])
    inputs["source_prompt"] = prompt[inputs["source_prompt"][0]]["inputs"]["value"]
    inputs["text_encoder"] = p2p_models.family_clip(family)
    with torch.inference_mode():
        plan = pack_nodes["InvEditP2PEdit"].execute(**inputs).result[0]
    source, edited = plan.prompts
    assert (source.text, edited.text) == (workflow_specs.EXAMPLE_IMAGE_PROMPT, inputs["edited_prompts"])
    keys = plan.conditioning[0][0].shape[1]
    girl = source.positions_of("girl")
    if family == "flux":
        assert keys == 256 and len(girl) == 1
    else:
        assert keys == 154 and len(girl) == 2 and girl[0] < 77 <= girl[1]


@pytest.mark.parametrize("name", P2P_PHOTO_WORKFLOWS)
def test_photo_p2p_edit_builds_with_the_sd1_tokenizer(pack_nodes, definitions, name):
    """The edit's prompts and words fit each other under ComfyUI's SD1 tokenizer (the real CLIP
    vocabulary; a tiny text model stands in for the weights)."""
    prompt = shipped_prompt(name, definitions)
    inputs = dict(prompt[first_node(prompt, "InvEditP2PEdit")]["inputs"])
    origin, _ = inputs["source_prompt"]
    inputs["source_prompt"] = prompt[origin]["inputs"]["value"]
    assert inputs["source_prompt"] == workflow_specs.EXAMPLE_IMAGE_PROMPT
    assert all(prompt[node_id]["inputs"]["text"] == [origin, 0] for node_id, node in prompt.items()
               if node["class_type"] == "CLIPTextEncode" and node["inputs"]["text"] != "")  # one source prompt
    inputs["text_encoder"] = p2p_models.tiny_clip()
    with torch.inference_mode():
        plan = pack_nodes["InvEditP2PEdit"].execute(**inputs).result[0]
    assert [p.text for p in plan.prompts] == [inputs["source_prompt"], *inputs["edited_prompts"].splitlines()]
    assert (plan.blend is not None) == bool(inputs["blend_words"].strip())
