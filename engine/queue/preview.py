"""Cheap progress previews: a linear map from the 4 latent channels to RGB, no VAE call.

Why linear: decoding with the VAE costs more than a UNet step at full size; a 4×3 projection of the model's
current clean-image estimate is what A1111 calls "Approx cheap" and is enough to show composition and colour.
The starting coefficients are the widely used SD 1.x ones; every finished image then refines them by least
squares (its final latent against its decoded pixels), so a model with another VAE (the demo model) gets
faithful previews after its first few images.
"""

from __future__ import annotations

import threading

import numpy as np
import torch

# SD 1.x latents → RGB in [-1, 1] (rows: latent channels; columns: R, G, B).
SD1_COEFFICIENTS = np.array([
    [0.298, 0.207, 0.208],
    [0.187, 0.286, 0.173],
    [-0.158, 0.189, 0.264],
    [-0.184, -0.271, -0.473],
], dtype=np.float64)


class PreviewProjector:
    """latent (C, h, w) → uint8 (h, w, 3); learns its coefficients from finished images."""

    def __init__(self, channels: int = 4, ridge: float = 1e-3) -> None:
        self.channels = channels
        weights = SD1_COEFFICIENTS if channels == 4 else np.zeros((channels, 3))
        self.weights = np.vstack([weights, np.zeros((1, 3))])  # last row: bias
        self._xtx = np.zeros((channels + 1, channels + 1))
        self._xty = np.zeros((channels + 1, 3))
        self._ridge = ridge
        self._lock = threading.Lock()
        self.observed = 0

    def project(self, latents: torch.Tensor) -> np.ndarray:
        x = latents.detach().float().cpu().reshape(self.channels, -1).T.numpy()
        rgb = np.hstack([x, np.ones((len(x), 1))]) @ self.weights
        h, w = latents.shape[-2:]
        return ((rgb.reshape(h, w, 3) + 1.0) * 127.5).clip(0, 255).astype(np.uint8)

    def observe(self, latents: torch.Tensor, pixels: np.ndarray) -> None:
        """Refit from a finished image: its final latent (C, h, w) and decoded pixels (H, W, 3) in [0, 1]."""
        h, w = latents.shape[-2:]
        H, W = pixels.shape[:2]
        if H % h or W % w:
            return
        target = pixels.reshape(h, H // h, w, W // w, 3).mean(axis=(1, 3)).reshape(-1, 3) * 2.0 - 1.0
        x = latents.detach().float().cpu().reshape(self.channels, -1).T.numpy().astype(np.float64)
        x = np.hstack([x, np.ones((len(x), 1))])
        with self._lock:
            self._xtx += x.T @ x
            self._xty += x.T @ target
            self.observed += 1
            regulariser = self._ridge * np.eye(self.channels + 1) * max(1.0, np.trace(self._xtx) / len(self._xtx))
            self.weights = np.linalg.solve(self._xtx + regulariser, self._xty)
