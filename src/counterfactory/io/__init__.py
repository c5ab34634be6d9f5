"""Reading and writing images, masks and manifests (the bottom layer: imports nothing of ours but errors)."""
