"""Stand-in for the parts of ComfyUI's `comfy` package that kdiff_ztsnr's node pack uses (see README.md)."""
