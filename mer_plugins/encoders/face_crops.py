"""Eye-aligned grayscale face crops, the input the FER2013 classifier was trained on.

The crop is a square in the face's own frame (see :func:`faces.eye_axes`): rotated so the eyes are
level, centred ``CROP_CENTRE_BELOW_EYES`` inter-ocular distances below the point between the
eyes, ``CROP_SIDE`` inter-ocular distances wide. That spans brows to chin and cheek to cheek, the
tight framing of FER2013's face images. Pixels are sampled with bilinear interpolation at an integer
multiple of the output size and then area-averaged, so that a large face is not aliased; the
frame's outside reads as black.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch.nn import functional as F

from mer_plugins.encoders.faces import eye_axes

CROP_SIDE = 2.6
CROP_CENTRE_BELOW_EYES = 0.55
MAX_SUPERSAMPLING = 4
#: ITU-R BT.601 luma, the weights OpenCV's RGB-to-gray conversion uses (as in the ``fer`` package).
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def aligned_gray_crop(frame: np.ndarray, landmarks: np.ndarray, size: int) -> torch.Tensor:
    """The ``(size, size)`` float32 gray crop in [0, 1] of the face with ``landmarks`` (pixels)."""
    return aligned_crop(frame, landmarks, size, lambda region: region.astype(np.float32) @ LUMA / 255.0)[0]


def aligned_rgb_crop(frame: np.ndarray, landmarks: np.ndarray, size: int) -> np.ndarray:
    """The ``(size, size, 3)`` uint8 RGB crop of the face, framed as the gray one (for image models,
    whose processors take pixels as a camera gives them)."""
    crop = aligned_crop(frame, landmarks, size, lambda region: region.astype(np.float32))
    return crop.permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def aligned_crop(frame: np.ndarray, landmarks: np.ndarray, size: int,
                 values: Callable[[np.ndarray], np.ndarray]) -> torch.Tensor:
    """The ``(channels, size, size)`` crop of ``values(region)``, the frame region around the face
    turned into ``(h, w)`` or ``(h, w, channels)`` float32 (converted before sampling: less work)."""
    origin, across, eye_distance = eye_axes(landmarks)
    down = np.array([-across[1], across[0]])
    side = CROP_SIDE * eye_distance
    centre = origin + CROP_CENTRE_BELOW_EYES * eye_distance * down
    supersampling = int(np.clip(side // size, 1, MAX_SUPERSAMPLING))
    samples = size * supersampling
    # Sample positions (pixel centres of the output) in frame coordinates.
    steps = ((np.arange(samples) + 0.5) / samples - 0.5) * side
    points = centre + steps[None, :, None] * across + steps[:, None, None] * down  # (rows, cols, 2)

    height, width = frame.shape[:2]
    low = np.clip(np.floor(points.reshape(-1, 2).min(axis=0)).astype(int) - 1, 0, [width, height])
    high = np.clip(np.ceil(points.reshape(-1, 2).max(axis=0)).astype(int) + 2, 0, [width, height])
    if np.any(high <= low):  # the whole crop lies outside the frame
        channels = values(frame[:1, :1]).reshape(1, 1, -1).shape[-1]
        return torch.zeros(channels, size, size)
    region = values(frame[low[1] : high[1], low[0] : high[0]])
    region = region[..., None] if region.ndim == 2 else region
    region_size = np.array([region.shape[1], region.shape[0]])
    # grid_sample's normalised coordinates (align_corners=False): -1 and 1 are the region's edges.
    grid = torch.from_numpy(((points - low) / region_size * 2 - 1).astype(np.float32))[None]
    image = torch.from_numpy(np.ascontiguousarray(region.transpose(2, 0, 1)))[None]
    crop = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return F.avg_pool2d(crop, supersampling)[0] if supersampling > 1 else crop[0]
