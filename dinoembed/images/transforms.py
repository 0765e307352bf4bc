"""Pure preprocessing functions: the DINOv2 reference eval transform, step by step.

``center-crop`` reproduces torchvision's ``Resize(256, BICUBIC)`` +
``CenterCrop(224)`` + ``ToTensor`` + ``Normalize(ImageNet)`` on PIL images,
including torchvision's rounding. ``squash`` is the seed plugin's transform
(cl_ml_tools ``dino_embedding``): resize straight to S x S with **bilinear**
resampling, then the same normalisation, so its users keep their vectors.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from PIL import Image

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
# y = x * _SCALE - _SHIFT  ==  (x / 255 - mean) / std, folded into one multiply-add.
_SCALE = (1.0 / (255.0 * IMAGENET_STD)).astype(np.float32)
_SHIFT = (IMAGENET_MEAN / IMAGENET_STD).astype(np.float32)


def resize_size(input_size: int) -> int:
    """Short side before the crop: 256 for 224 (the 8/7 ratio of the reference)."""
    return int(input_size * 256 / 224)


def short_side_size(width: int, height: int, short: int) -> tuple[int, int]:
    """torchvision's ``Resize(int)`` output size: short side = ``short``, long truncated."""
    if width <= height:
        return short, int(short * height / width)
    return int(short * width / height), short


def center_crop_box(width: int, height: int, crop: int) -> tuple[int, int, int, int]:
    """torchvision's ``CenterCrop`` box (it rounds the offsets with Python's round)."""
    left = round((width - crop) / 2.0)
    top = round((height - crop) / 2.0)
    return left, top, left + crop, top + crop


def resize_center_crop(img: Image.Image, input_size: int) -> Image.Image:
    width, height = short_side_size(img.width, img.height, resize_size(input_size))
    resized = img.resize((width, height), Image.Resampling.BICUBIC)
    return resized.crop(center_crop_box(width, height, input_size))


def squash(img: Image.Image, input_size: int) -> Image.Image:
    """The seed plugin's resize: the whole image to S x S, bilinear (aspect not kept)."""
    return img.resize((input_size, input_size), Image.Resampling.BILINEAR)


def normalize_into(img: Image.Image, out: NDArray[np.float32]) -> None:
    """Write the ImageNet-normalised CHW tensor of an RGB image into ``out`` [3, S, S]."""
    hwc = np.asarray(img, dtype=np.float32)
    chw = hwc.transpose(2, 0, 1)
    np.multiply(chw, _SCALE[:, None, None], out=out)
    out -= _SHIFT[:, None, None]


def to_tensor(img: Image.Image) -> NDArray[np.float32]:
    out = np.empty((3, img.height, img.width), dtype=np.float32)
    normalize_into(img, out)
    return out


def preprocess(img: Image.Image, mode: str, input_size: int) -> NDArray[np.float32]:
    """An RGB image -> the [3, S, S] float32 tensor the model expects."""
    if mode == "center-crop":
        return to_tensor(resize_center_crop(img, input_size))
    if mode == "squash":
        return to_tensor(squash(img, input_size))
    raise ValueError(f"unknown preprocess mode {mode!r}")


def min_decode_size(width: int, height: int, mode: str, input_size: int) -> tuple[int, int]:
    """The smallest decoded size that loses nothing for ``mode`` (used with JPEG draft)."""
    if mode == "squash":
        return min(width, input_size), min(height, input_size)
    short = resize_size(input_size)
    scale = short / min(width, height)
    if scale >= 1.0:
        return width, height
    return max(1, int(np.ceil(width * scale))), max(1, int(np.ceil(height * scale)))
