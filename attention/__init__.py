"""Pure-torch attention controllers of InvEdit (Prompt-to-Prompt; no ComfyUI imports)."""
