"""The demo (scripts/demo.py, the README's main command): its photo graph validates against
ComfyUI's real loader nodes; on both test-bed models its graph runs, closes the guidance gap and
edits the named digit, and it writes a figure with a header over every column."""

from __future__ import annotations

import asyncio
from pathlib import Path

import execution
import folder_paths
import numpy as np
import pytest
from PIL import Image

import demo
from comfy_graph import Graph

GAP_PSNR_MAX_DB = 20.0  # plain inversion at cfg 7.5 on the test-beds (measured about 14-15 dB at 50 steps)
CLOSED_PSNR_MIN_DB = 25.0  # negative-prompt inversion at cfg 7.5 (measured 38 dB UNet, 45 dB flow)


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
        subject = demo.checkpoint_subject(graph, checkpoint.name, image.name, "a cat on a sofa", "a dog on a sofa",
                                          "cat; dog")
        chosen = demo.build_graph(graph, subject, steps=10)
        valid, error, outputs, node_errors = asyncio.run(execution.validate_prompt("demo", graph.prompt, None))
        assert valid and not node_errors, (error, node_errors)
        used = {node["class_type"] for node in graph.prompt.values()}
        assert {"CheckpointLoaderSimple", "LoadImage", "CLIPTextEncode", "VAEEncode", "VAEDecode",
                "InvEditDDIMInversion", "InvEditReconstruct", "InvEditReconstructionError",
                "InvEditNegativePromptInversion", "InvEditP2PEdit", "InvEditP2PSample"} <= used
        # Captures: per reconstruction the image, its PSNR and the error node's own UI output;
        # the source; per edit (swap, blend) the image and its latent. Every one of them validated.
        assert len(outputs) == 3 * len(chosen) + 1 + 2 * len(demo.P2P_EDITS)
    finally:
        image.unlink()


@pytest.mark.parametrize("family", [demo.UNET, demo.FLOW], ids=lambda family: family.key)
def test_testbed_demo_closes_the_gap_and_edits_the_named_digit(run_graph, tmp_path, family):
    graph = Graph()
    subject = demo.testbed_subject(graph, family, count=2, seed=0)
    assert subject.edits[0].split()[3] != subject.prompts[0].split()[3]  # the left digit's word is swapped
    assert subject.edits[0].split()[5] == subject.prompts[0].split()[5]
    chosen = demo.build_graph(graph, subject, steps=demo.STEPS)
    result = run_graph(graph)
    assert result[subject.key("prompts")].splitlines() == subject.prompts
    assert result[subject.key("source")].shape == (2, 8, 16, 3)
    psnr = {item.key: result[subject.key(f"{item.key}|psnr")] for item in chosen}
    print(f"\n[demo {family.key}] PSNR {psnr}")
    assert psnr["ddim_gap"] < GAP_PSNR_MAX_DB < CLOSED_PSNR_MIN_DB < min(psnr["ddim_1"], psnr["negative_prompt"])
    print(demo.testbed_edit_report(result, subject))
    # The edit redraws the named (left) digit as the edited prompt's: with LocalBlend on the UNet,
    # plainly on the flow model.
    from invedit.testbed import classifier, vocabulary

    reader = classifier.training_split_classifier()
    last = subject.edit_columns()[-1].key
    for index, edited in enumerate(subject.edits):
        left = reader.predict_canvases(result[subject.key(f"{last}_latent|{index}")]["samples"])[0].tolist()[0]
        assert vocabulary.digit_word(left) == edited.split()[vocabulary.LEFT_WORD_POSITION], (index, edited)
    columns = demo.figure_columns(subject, chosen, result)
    edit_keys = [column.key for column in subject.edit_columns()]
    assert [column.key for column in columns] == ["source", *(item.key for item in chosen), *edit_keys]
    path = tmp_path / "demo.png"
    labels = [demo.testbed_row_label(prompt, edited) for prompt, edited in zip(subject.prompts, subject.edits)]
    width, height = demo.save_figure(result, [demo.Section(subject, columns, labels)], path,
                                     demo.TESTBED_TILE_SCALE, None)
    tile_w, tile_h = 16 * demo.TESTBED_TILE_SCALE, 8 * demo.TESTBED_TILE_SCALE
    assert width == demo.ROW_LABEL_WIDTH + len(columns) * (tile_w + demo.FIGURE_GAP)
    header = Image.open(path).convert("L").crop((demo.ROW_LABEL_WIDTH, demo.LINE_HEIGHT, width, 3 * demo.LINE_HEIGHT))
    assert np.asarray(header).min() < 128  # text over the columns
    assert height > 2 * (tile_h + demo.FIGURE_GAP)
