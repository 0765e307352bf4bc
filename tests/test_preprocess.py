"""Preprocessing fidelity: the tensors and embeddings match independent references."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dinoembed.images.decode import DecodeLimits, DecodeTarget, decode
from dinoembed.images.transforms import preprocess
from dinoembed.model.engine import Engine, create_session
from tests.helpers import cosine, encode, make_probe, reference_eval_transform

LIMITS = DecodeLimits(max_pixels=200_000_000, max_bytes=1 << 30)


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    path = make_probe(tmp_path_factory.mktemp("probe") / "probe.onnx")
    return Engine(create_session(path, threads=1), normalize=False)


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea", "rocket", "china", "flower"])
def test_center_crop_matches_reference_transform(photos: dict[str, Image.Image], name: str) -> None:
    # GIVEN a real photo  WHEN preprocessed in the default mode
    tensor = preprocess(photos[name], "center-crop", 224)
    # THEN it equals the independently written DINOv2 eval transform
    expected = reference_eval_transform(photos[name])
    assert tensor.shape == (3, 224, 224)
    assert tensor.dtype == np.float32
    np.testing.assert_allclose(tensor, expected, atol=2e-6)


@pytest.mark.parametrize(
    "size", [(300, 300), (257, 1000), (1000, 257), (225, 225), (100, 60), (641, 479)]
)
def test_center_crop_rounding_matches_reference_on_odd_sizes(size: tuple[int, int]) -> None:
    # GIVEN an image whose sides make the resize truncate and the crop offsets round
    rng = np.random.default_rng(sum(size))
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    # THEN the tensor is the reference one, exactly where the crop lands
    np.testing.assert_allclose(
        preprocess(img, "center-crop", 224), reference_eval_transform(img), atol=2e-6
    )


def seed_plugin_preprocess(path: Path) -> np.ndarray:
    """The seed plugin's (cl_ml_tools ``dino_embedding``) preprocessing, written out
    independently of dinoembed: open, RGB, bilinear squash to 224, /255, ImageNet, CHW."""
    with Image.open(path) as img:
        rgb = img.convert("RGB").resize((224, 224), Image.Resampling.BILINEAR)
    x = np.asarray(rgb, dtype=np.float64) / 255.0
    x = (x - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    return x.transpose(2, 0, 1)


@pytest.mark.parametrize("name", ["astronaut", "coffee", "rocket"])
def test_squash_reproduces_the_seed_plugin_tensor(
    photos: dict[str, Image.Image], tmp_path: Path, name: str
) -> None:
    # GIVEN a real photo saved as a PNG (no EXIF rotation)
    path = tmp_path / f"{name}.png"
    photos[name].save(path)
    # WHEN dinoembed decodes and preprocesses it in squash mode
    tensor = preprocess(decode(path, LIMITS, DecodeTarget("squash", 224)), "squash", 224)
    # THEN the tensor is the seed plugin's
    assert tensor.shape == (3, 224, 224) and tensor.dtype == np.float32
    np.testing.assert_allclose(tensor, seed_plugin_preprocess(path), rtol=0, atol=1e-6)


def test_squash_keeps_the_whole_image_unlike_center_crop(photos: dict[str, Image.Image]) -> None:
    img = photos["astronaut"].resize((640, 360))  # wide: cropping drops the sides
    squashed = preprocess(img, "squash", 224)
    cropped = preprocess(img, "center-crop", 224)
    assert np.abs(squashed - cropped).mean() > 0.1


def test_input_size_follows_the_model(photos: dict[str, Image.Image]) -> None:
    tensor = preprocess(photos["coffee"], "center-crop", 112)
    np.testing.assert_allclose(tensor, reference_eval_transform(photos["coffee"], 112), atol=2e-6)


def _twelve_megapixel(photo: Image.Image) -> Image.Image:
    big = photo.resize((4000, 3000), Image.Resampling.BICUBIC)
    noise = np.random.default_rng(0).normal(0, 6, (3000, 4000, 3))
    arr = np.clip(np.asarray(big, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


@pytest.mark.parametrize("mode", ["center-crop", "squash"])
@pytest.mark.parametrize("name", ["chelsea", "china"])
def test_reduced_scale_jpeg_decode_stays_faithful(
    photos: dict[str, Image.Image], probe: Engine, tmp_path: Path, name: str, mode: str
) -> None:
    # GIVEN a 12 MP JPEG
    path = tmp_path / "big.jpg"
    path.write_bytes(encode(_twelve_megapixel(photos[name]), "JPEG", quality=90))
    # WHEN decoded at reduced scale (DCT scaling) and at full size
    reduced = decode(path, LIMITS, DecodeTarget(mode, 224, reduce=True))
    full = decode(path, LIMITS, DecodeTarget(mode, 224, reduce=False))
    assert full.size == (4000, 3000)
    assert reduced.width < full.width  # the draft really did reduce
    # THEN the position-sensitive probe embeddings agree (SPEC §3: cosine >= 0.97)
    emb = probe.embed(np.stack([preprocess(reduced, mode, 224), preprocess(full, mode, 224)]))
    assert cosine(emb[0], emb[1]) >= 0.97


@pytest.mark.parametrize("mode", ["center-crop", "squash"])
def test_small_jpeg_is_decoded_identically_with_and_without_reduction(
    photos: dict[str, Image.Image], tmp_path: Path, mode: str
) -> None:
    # GIVEN a JPEG so small that halving it would undershoot what the resize needs
    path = tmp_path / "small.jpg"
    path.write_bytes(encode(photos["astronaut"].resize((400, 400)), "JPEG", quality=90))
    reduced = decode(path, LIMITS, DecodeTarget(mode, 224, reduce=True))
    full = decode(path, LIMITS, DecodeTarget(mode, 224, reduce=False))
    assert full.size == (400, 400)
    assert np.array_equal(np.asarray(reduced), np.asarray(full))
    if mode == "squash":  # AND squash still gives exactly the seed plugin's tensor
        np.testing.assert_allclose(
            preprocess(reduced, mode, 224), seed_plugin_preprocess(path), rtol=0, atol=1e-6
        )


def test_probe_is_position_sensitive(photos: dict[str, Image.Image], probe: Engine) -> None:
    # A probe that could not tell a mirrored image apart would prove nothing above.
    img = photos["chelsea"]
    mirrored = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    emb = probe.embed(
        np.stack([preprocess(img, "center-crop", 224), preprocess(mirrored, "center-crop", 224)])
    )
    assert cosine(emb[0], emb[1]) < 0.9
