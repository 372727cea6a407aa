"""The demo's graphs wire up: the photo graph validates against ComfyUI's real loader nodes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import execution
import folder_paths
from PIL import Image

import demo
from comfy_graph import Graph


def test_photo_graph_validates_with_comfyui_loaders(tmp_path: Path):
    """CheckpointLoaderSimple / LoadImage / CLIPTextEncode / VAEEncode / VAEDecode around the InvEdit nodes."""
    checkpoint = tmp_path / "checkpoints" / "any_sd15.safetensors"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"")  # validation only looks the name up; nothing is loaded
    folder_paths.add_model_folder_path("checkpoints", str(checkpoint.parent))
    image = Path(folder_paths.get_input_directory()) / "invedit_demo_test.png"
    image.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 64)).save(image)
    try:
        graph = Graph()
        demo.checkpoint_graph(graph, checkpoint.name, image.name, "a photo", steps=10)
        valid, error, outputs, node_errors = asyncio.run(execution.validate_prompt("demo", graph.prompt, None))
        assert valid and not node_errors, (error, node_errors)
        used = {node["class_type"] for node in graph.prompt.values()}
        assert {"CheckpointLoaderSimple", "LoadImage", "CLIPTextEncode", "VAEEncode", "VAEDecode",
                "InvEditDDIMInversion", "InvEditReconstruct", "InvEditReconstructionError"} <= used
        # Per method and guidance: three captures (image, PSNR, SSIM) and the error node's own UI
        # output; plus the source and the prompt captures. Every one of them validated.
        assert len(outputs) == len(demo.METHODS) * len(demo.GUIDANCES) * 4 + 2
    finally:
        image.unlink()


def test_testbed_graph_runs_and_reports_psnr(run_graph):
    graph = Graph()
    demo.testbed_graph(graph, count=2, seed=0, steps=10)
    result = run_graph(graph)
    assert result["DDIM inversion|1.0|psnr"] > result["DDIM inversion|7.5|psnr"]
    assert result["source"].shape == (2, 8, 16, 3)
