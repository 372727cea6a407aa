"""The P2P nodes in a ComfyUI graph: validated and executed by ComfyUI's own executor on the test-bed.

From a held-out canvas to an edit, through both routes (InvEdit P2P Sample and InvEdit P2P Guider
in SamplerCustomAdvanced), and the word-map grid. The test-bed's text encoder goes into the edit
node's text_encoder input, which also takes a CLIP (a multi-type socket).
"""

from __future__ import annotations

import torch

from invedit.nodes.options import option_defaults
from invedit.testbed import data

STEPS = 20
CFG = 4.0
P2P_NODE_IDS = ("InvEditP2PEdit", "InvEditP2PSample", "InvEditP2PGuider", "InvEditP2PAttentionMaps")


def test_the_p2p_nodes_are_registered(pack_nodes):
    """A P2P node missing from nodes/__init__.py fails here (the graph test below would then fail too)."""
    missing = [node_id for node_id in P2P_NODE_IDS if node_id not in pack_nodes]
    assert not missing, f"the P2P nodes are not registered in nodes/__init__.py: {missing}"


def test_edit_graph_runs_both_routes(graph, run_graph):
    _, prompts, _ = data.heldout_canvases(1, seed=0)
    source = prompts[0]
    words = source.split()
    words[3] = "one" if words[3] != "one" else "two"
    target = " ".join(words)
    loader = graph.node("InvEditTestbedModelLoader", verify=False)
    model, text_encoder = loader.out(0), loader.out(1)
    image = graph.node("InvEditTestbedHeldOutDigits", count=1, seed=0)
    latent = graph.node("InvEditTestbedImageToLatent", image=image.out(0))
    positive = graph.node("InvEditTestbedTextEncode", text_encoder=text_encoder, text=source)
    negative = graph.node("InvEditTestbedTextEncode", text_encoder=text_encoder, text="")
    inversion = graph.node("InvEditDDIMInversion", model=model, positive=positive, negative=negative, latent=latent,
                           steps=STEPS, inversion_cfg=1.0, scheduler="ddim_uniform", clean_level="zero",
                           **option_defaults())
    unconditioned = graph.node("InvEditNegativePromptInversion", inversion=inversion.out(1), empty_prompt_weight=0.0)
    edit = graph.node("InvEditP2PEdit", text_encoder=text_encoder, source_prompt=source, edited_prompts=target,
                      mode="word swap", cross_replace=0.8, self_replace=0.5, self_max_pixels=1024, word_windows="",
                      reweight="", blend_words="", blend_start=0.2, blend_threshold=0.3, blend_layer_downsample=2)
    sample = graph.node("InvEditP2PSample", model=model, inversion=unconditioned, edit=edit, cfg=CFG,
                        map_budget_mib=16)
    guider = graph.node("InvEditP2PGuider", model=model, inversion=unconditioned, edit=edit, cfg=CFG)
    custom = graph.node("SamplerCustomAdvanced", noise=graph.node("DisableNoise"), guider=guider,
                        sampler=graph.node("KSamplerSelect", sampler_name="ddim"), sigmas=inversion.out(2),
                        latent_image=inversion.out(0))
    grid = graph.node("InvEditP2PAttentionMaps", maps=sample.out(2), layer_downsample=2, cell_height=32, labels=True)
    graph.capture("source", sample.out(0))
    graph.capture("edited", sample.out(1))
    graph.capture("custom", custom.out(0))
    graph.capture("grid", grid)
    result = run_graph(graph)
    both = torch.cat([result["source"]["samples"], result["edited"]["samples"]])
    custom_samples = result["custom"]["samples"]
    assert custom_samples.shape == both.shape == (2, 1, 8, 16)
    assert float((custom_samples - both).abs().max()) < 1e-5
    assert result["grid"].shape[0] == 1 and result["grid"].shape[-1] == 3
