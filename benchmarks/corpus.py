"""Deterministic benchmark corpora made from real sample photos (offline).

* ``large``: 12 MP phone-like JPEGs (4000x3000, some portrait, some with an EXIF
  rotation), real photos from scikit-image / scikit-learn upscaled with seeded
  noise so that no two files are alike and the decoder has real detail to chew on.
* ``small``: ~1 MP PNG / JPEG / WebP files made the same way.
* ``tiny``: 0.27 MP (600x450) PNG / JPEG / WebP files, as thumbnails and web images.

Files are regenerated only when the recipe changes (a manifest records it), so a
second benchmark run starts at once. The same recipe gives the same bytes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

RECIPE_VERSION = 1
EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True, slots=True)
class CorpusSpec:
    name: str
    count: int
    size: tuple[int, int]  # landscape (width, height); every 4th image is portrait
    formats: tuple[str, ...]
    noise: int  # uniform noise amplitude, in 8-bit levels
    exif_every: int = 0  # every n-th image stored rotated, with an EXIF orientation tag


LARGE = CorpusSpec("large", 64, (4000, 3000), ("JPEG",), noise=12, exif_every=5)
SMALL = CorpusSpec("small", 48, (1152, 864), ("PNG", "JPEG", "WEBP"), noise=4)
TINY = CorpusSpec("tiny", 96, (600, 450), ("PNG", "JPEG", "WEBP"), noise=4)  # 0.27 MP
EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp"}


def sample_photos() -> list[np.ndarray]:
    """Six real photographs that ship with scikit-image and scikit-learn."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    photos.extend(load_sample_images().images)
    return [np.ascontiguousarray(p[..., :3]) for p in photos]


def make_image(photo: np.ndarray, index: int, spec: CorpusSpec) -> Image.Image:
    """A random crop of ``photo`` scaled to the corpus size, plus seeded noise."""
    rng = np.random.default_rng([RECIPE_VERSION, index, spec.count])
    height, width = photo.shape[:2]
    crop_w = int(width * rng.uniform(0.75, 1.0))
    crop_h = int(height * rng.uniform(0.75, 1.0))
    left = int(rng.integers(0, width - crop_w + 1))
    top = int(rng.integers(0, height - crop_h + 1))
    size = spec.size if index % 4 != 3 else spec.size[::-1]
    img = Image.fromarray(photo[top : top + crop_h, left : left + crop_w])
    img = img.resize(size, Image.Resampling.BICUBIC)
    noise = rng.integers(-spec.noise, spec.noise + 1, (size[1], size[0], 3), dtype=np.int16)
    arr = np.asarray(img, dtype=np.int16) + noise
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _save(img: Image.Image, path: Path, fmt: str, rotated: bool) -> None:
    params: dict[str, object] = {}
    if fmt in ("JPEG", "WEBP"):
        params = {"quality": 90}
    elif fmt == "PNG":
        params = {"compress_level": 6}
    if rotated:
        # Store the pixels rotated, as phones do, and let the EXIF tag turn them back.
        img = img.transpose(Image.Transpose.ROTATE_90)
        exif = Image.Exif()
        exif[EXIF_ORIENTATION] = 6
        params["exif"] = exif.tobytes()
    tmp = path.with_name(path.name + ".part")
    img.save(tmp, format=fmt, **params)
    tmp.replace(path)


def generate(root: Path, spec: CorpusSpec, count: int | None = None) -> list[Path]:
    """The first ``count`` files of corpus ``spec`` under ``root/<name>``, made if missing."""
    count = spec.count if count is None else min(count, spec.count)
    folder = root / spec.name
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "manifest.json"
    recipe = json.loads(json.dumps({"version": RECIPE_VERSION, **asdict(spec)}))
    if not manifest.exists() or json.loads(manifest.read_text()) != recipe:
        for old in folder.iterdir():
            old.unlink()
        manifest.write_text(json.dumps(recipe, indent=1))
    photos: list[np.ndarray] | None = None
    paths = []
    for index in range(count):
        fmt = spec.formats[index % len(spec.formats)]
        path = folder / f"img{index:03d}{EXTENSIONS[fmt]}"
        paths.append(path)
        if path.exists():
            continue
        photos = photos if photos is not None else sample_photos()
        img = make_image(photos[index % len(photos)], index, spec)
        rotated = spec.exif_every > 0 and index % spec.exif_every == spec.exif_every - 1
        _save(img, path, fmt, rotated)
    return paths


def subset(paths: list[Path], folder: Path) -> Path:
    """A folder of symlinks to ``paths`` (so a run sees exactly these files)."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    for path in paths:
        (folder / path.name).symlink_to(path.resolve())
    return folder
