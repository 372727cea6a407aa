"""The test-bed nodes and the demo graph run in a ComfyUI that has no scikit-learn.

scikit-learn is a test and training requirement only (requirements-test.txt): the held-out digits
ship inside models/testbed_digits.safetensors. A fresh Python process hides scikit-learn (``None``
in ``sys.modules``, as Python marks a module that cannot be imported), boots ComfyUI with the pack and runs both test-bed loaders, the text
encoder, the held-out digits, image <-> latent, stock KSampler and the demo's test-bed graph.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
RESULT_MARKER = "INVEDIT-NO-SKLEARN-RESULT "

WITHOUT_SKLEARN = r"""
import importlib.util, json, sys
from pathlib import Path

# As if scikit-learn were not installed: `import sklearn` (and any sklearn.*) raises ImportError and
# importlib.util.find_spec("sklearn") is None, which is how torch and others probe for it.
sys.modules["sklearn"] = None
scripts_dir, comfyui_path, base_dir, marker = sys.argv[1:5]
sys.path.insert(0, scripts_dir)
import torch

torch.set_num_threads(1)
from comfy_headless import boot_comfyui, import_pack_as_package, load_pack

nodes = boot_comfyui(Path(comfyui_path), Path(base_dir))
assert load_pack(nodes), "ComfyUI could not load the pack"
import comfy_graph
import demo

comfy_graph.register_capture_node(nodes)
node = nodes.NODE_CLASS_MAPPINGS
results = {}
try:
    import sklearn.datasets  # noqa: F401
    results["sklearn_importable"] = True
except ImportError:
    results["sklearn_importable"] = importlib.util.find_spec("sklearn") is not None
import_pack_as_package()
from invedit.testbed import data

try:
    data.load_digits_signed()
    results["training_digits_load"] = True
except ImportError:
    results["training_digits_load"] = False

with torch.inference_mode():
    for loader, sampler, scheduler in (("InvEditTestbedModelLoader", "ddim", "ddim_uniform"),
                                       ("InvEditTestbedFlowModelLoader", "euler", "simple")):
        model, text_encoder = node[loader].execute(verify=True).result
        images, prompts = node["InvEditTestbedHeldOutDigits"].execute(count=3, seed=0).result
        latent = node["InvEditTestbedImageToLatent"].execute(image=images).result[0]
        positive = node["InvEditTestbedTextEncode"].execute(text_encoder=text_encoder, text=prompts).result[0]
        negative = node["InvEditTestbedTextEncode"].execute(text_encoder=text_encoder, text="").result[0]
        sampled = node["KSampler"]().sample(model, 0, 5, 2.0, sampler, scheduler, positive, negative, latent, 1.0)[0]
        image = node["InvEditTestbedLatentToImage"].execute(latent=sampled, scale=2).result[0]
        results[loader] = {"image_shape": list(image.shape), "finite": bool(torch.isfinite(image).all()),
                           "prompts": prompts.split("\n")}

graph = comfy_graph.Graph()
for family in (demo.UNET, demo.FLOW):
    demo.build_graph(graph, demo.testbed_subject(graph, family, count=2, seed=0), steps=5)
result = comfy_graph.run_prompt(graph)
results["demo"] = {key: float(value) for key, value in result.items() if key.endswith("|psnr")}
results["sklearn_modules"] = sorted(name for name, module in sys.modules.items()
                                    if name.split(".")[0] == "sklearn" and module is not None)
print(marker + json.dumps(results))
"""


def test_testbed_nodes_and_demo_graph_run_without_scikit_learn(comfy_host, tmp_path):
    from invedit.testbed import data

    completed = subprocess.run(
        [sys.executable, "-c", WITHOUT_SKLEARN, str(REPO_ROOT / "scripts"), str(comfy_host.comfyui_path),
         str(tmp_path / "base"), RESULT_MARKER],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
        env={**os.environ, "PYTHONSAFEPATH": "1", "OMP_NUM_THREADS": "1"},
    )
    lines = [line for line in completed.stdout.splitlines() if line.startswith(RESULT_MARKER)]
    assert completed.returncode == 0 and lines, completed.stderr[-4000:]
    results = json.loads(lines[-1].removeprefix(RESULT_MARKER))
    # Controls: scikit-learn really was hidden, and the training path (which needs it) failed.
    assert results["sklearn_importable"] is False
    assert results["training_digits_load"] is False
    assert results["sklearn_modules"] == []
    _, expected_prompts, _ = data.heldout_canvases(3, seed=0)
    for loader in ("InvEditTestbedModelLoader", "InvEditTestbedFlowModelLoader"):
        assert results[loader] == {"image_shape": [3, 16, 32, 3], "finite": True, "prompts": expected_prompts}
    for family in ("unet", "flow"):
        assert results["demo"][f"{family}:ddim_1|psnr"] > results["demo"][f"{family}:ddim_gap|psnr"]
