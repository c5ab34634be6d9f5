"""Denoising-step pieces shared by every inpainting pipeline."""
