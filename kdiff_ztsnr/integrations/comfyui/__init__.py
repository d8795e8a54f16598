"""kdiff-ztsnr's ComfyUI node pack: the exact first step from σ = ∞ for v-prediction ZTSNR models.

Install: ``pip install kdiff-ztsnr`` into ComfyUI's Python, then copy or symlink this folder into
``ComfyUI/custom_nodes/`` (README: "Using the exact step in ComfyUI"). ComfyUI reads the two mappings below.
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ['NODE_CLASS_MAPPINGS', 'NODE_DISPLAY_NAME_MAPPINGS']
