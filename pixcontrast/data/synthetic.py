"""``synthetic``: procedurally generated textured scenes, no files, deterministic by seed.

Each image is a random partition of the plane (a Voronoi diagram of 4–8 cells with warped,
curved borders); every cell gets a class, and a class is a *texture kind*:

    0 smooth gradient   1 horizontal stripes   2 vertical stripes   3 checkerboard
    4 dots              5 diagonal stripes     6 speckle noise      7 anti-diagonal stripes

The appearance of a class changes from image to image: its two colours, its period
(4–9 px), phase and orientation jitter are drawn per image, and colours are drawn without
regard to class. Colour therefore says nothing about the class; only the texture does,
and the same class looks different in every image, which is what cross-image pixel
contrast is for. Sample ``i`` of split ``s`` is a pure function of ``(seed, s, i)``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

__all__ = ["SYNTHETIC_KINDS", "SyntheticScenes", "make_scene"]

SYNTHETIC_KINDS = ("smooth", "stripes-h", "stripes-v", "checker", "dots", "diagonal",
                   "speckle", "anti-diagonal")
_SPLITS = {"train": 1, "val": 2, "test": 3}


def _texture(kind: int, yy: np.ndarray, xx: np.ndarray, rng: np.random.Generator
             ) -> np.ndarray:
    """Texture intensity in [0, 1], ``[S, S]`` float32, random period / phase per call."""
    period = rng.uniform(4.0, 9.0)
    phase = rng.uniform(0, 2 * np.pi)
    tilt = rng.uniform(-0.15, 0.15)                     # orientation jitter (radians)
    w = 2 * np.pi / period
    if kind == 0:                                       # smooth gradient
        a = rng.uniform(0, 2 * np.pi)
        s = yy.shape[0]
        return 0.5 + 0.5 * np.sin((np.cos(a) * xx + np.sin(a) * yy) * np.pi / s + phase)
    if kind == 6:                                       # speckle: i.i.d. binary noise
        return (rng.random(yy.shape) < 0.5).astype(np.float32)
    if kind in (1, 2, 5, 7):
        angle = {1: np.pi / 2, 2: 0.0, 5: np.pi / 4, 7: -np.pi / 4}[kind] + tilt
        u = np.cos(angle) * xx + np.sin(angle) * yy
        return (np.sin(w * u + phase) > 0).astype(np.float32)
    # checker (3) and dots (4) live on a rotated lattice
    c, s_ = np.cos(tilt), np.sin(tilt)
    u, v = c * xx + s_ * yy, -s_ * xx + c * yy
    if kind == 3:
        return ((np.sin(w * u + phase) > 0) ^ (np.sin(w * v + phase) > 0)).astype(np.float32)
    fu = (u / period + phase) % 1.0 - 0.5
    fv = (v / period + phase) % 1.0 - 0.5
    return (fu ** 2 + fv ** 2 < 0.09).astype(np.float32)   # dot radius 0.3 period


def make_scene(rng: np.random.Generator, size: int = 64, num_classes: int = 5
               ) -> tuple[np.ndarray, np.ndarray]:
    """One scene: ``(image uint8 [size, size, 3], label int64 [size, size])``."""
    if not 2 <= num_classes <= len(SYNTHETIC_KINDS):
        raise ValueError(f"synthetic num_classes must be in [2, {len(SYNTHETIC_KINDS)}], "
                         f"got {num_classes}")
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    # Voronoi cells on warped coordinates: curved borders
    n = int(rng.integers(4, 9))
    centres = rng.uniform(0, size, (n, 2))
    amp, freq = rng.uniform(2, 6, 2), rng.uniform(0.05, 0.15, 2)
    wy = yy + amp[0] * np.sin(freq[0] * xx + rng.uniform(0, 6.3))
    wx = xx + amp[1] * np.sin(freq[1] * yy + rng.uniform(0, 6.3))
    d = (wy[None] - centres[:, 0, None, None]) ** 2 + (wx[None] - centres[:, 1, None, None]) ** 2
    cell = d.argmin(0)
    cell_class = rng.integers(0, num_classes, n)
    if np.unique(cell_class).size < 2:                  # at least two classes per scene
        cell_class[0] = (cell_class[1] + 1 + rng.integers(0, num_classes - 1)) % num_classes
    label = cell_class[cell].astype(np.int64)

    image = np.zeros((size, size, 3), np.float32)
    for k in np.unique(label):
        tex = _texture(int(k), yy, xx, rng)[..., None]
        while True:                                     # two colours with visible contrast
            c1, c2 = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
            if np.abs(c1 - c2).sum() > 0.6:
                break
        m = label == k
        image[m] = (c1 * (1 - tex) + c2 * tex)[m]
    image += rng.normal(0, 0.04, image.shape)
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8), label


class SyntheticScenes(torch.utils.data.Dataset):
    """``length`` scenes of split ``split`` (train / val / test streams never overlap).

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        length: number of distinct scenes.
        transform: ``(image, label, rng) -> (image [3, H, W], label [H, W])``.
        image_size, num_classes: scene size and number of texture classes (2–8).
        seed: data seed; scene ``i`` depends on ``(seed, split, i)`` only.
        aug_seed: base seed of the augmentation RNG ``(aug_seed, epoch, i)``.
    """

    def __init__(self, split: str, length: int, transform: Callable, image_size: int = 64,
                 num_classes: int = 5, seed: int = 0, aug_seed: int = 0,
                 ignore_index: int = 255) -> None:
        if split not in _SPLITS:
            raise ValueError(f"synthetic split must be one of {sorted(_SPLITS)}, got {split!r}")
        if length <= 0:
            raise ValueError(f"synthetic length must be positive, got {length}")
        if not 2 <= num_classes <= len(SYNTHETIC_KINDS):
            raise ValueError(f"synthetic num_classes must be in [2, {len(SYNTHETIC_KINDS)}], "
                             f"got {num_classes}")
        self.split, self.length, self.transform = split, length, transform
        self.image_size, self.num_classes, self.seed = image_size, num_classes, seed
        self.aug_seed, self.epoch, self.ignore_index = aug_seed, 0, ignore_index
        self.class_names = list(SYNTHETIC_KINDS[:num_classes])
        self.name = "synthetic"

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} scenes")
        rng = np.random.default_rng([self.seed, _SPLITS[self.split], index])
        return make_scene(rng, self.image_size, self.num_classes)

    def __getitem__(self, index: int):
        image, label = self.load(index)
        rng = np.random.default_rng([self.aug_seed, self.epoch, index])
        return self.transform(image, label, rng)
