"""The pipeline: batches, order, and bad inputs that never sink the good ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dinoembed.errors import ModelFormatError, PermanentError, SourceGoneError, TransientError
from dinoembed.images.transforms import preprocess
from dinoembed.model import loader
from dinoembed.model.loader import inference_layout
from dinoembed.model.standin import build_tiny
from dinoembed.pipeline import (
    Disposition,
    ImageItem,
    Pipeline,
    build_pipeline,
    start_pipeline,
)
from dinoembed.settings import Settings
from tests.helpers import encode
from tests.test_imaging import BAD_INPUTS, bad_input_bytes


def _item(name: str, data: bytes) -> ImageItem:
    return ImageItem(name, lambda: data)


def test_bad_inputs_get_error_results_and_good_ones_still_succeed(
    photos: dict[str, Image.Image], embedder: Pipeline, tmp_path: Path
) -> None:
    # GIVEN good photos interleaved with every kind of bad input, in one call
    good = {f"{n}.jpg": encode(img, "JPEG") for n, img in photos.items()}
    bad = {name: bad_input_bytes(name, photos["coffee"]) for name in BAD_INPUTS}
    names = [n for pair in zip(sorted(good), sorted(bad), strict=False) for n in pair]
    names += sorted(bad)[len(good) :]
    data = good | bad
    # WHEN embedded
    outcomes = list(embedder.embed(_item(n, data[n]) for n in names))
    # THEN every input has exactly one result, in input order
    assert [o.item.file_path for o in outcomes] == names
    for outcome in outcomes:
        result = outcome.result
        if outcome.item.file_path in good:
            assert outcome.disposition is Disposition.EMBEDDED
            assert result.status == "success" and result.embedding is not None
            assert result.embedding.embedding_dim == 32
        else:
            assert outcome.disposition is Disposition.ERROR and outcome.disposition.writes
            assert result.status == "error" and result.embedding is None
            assert result.error is not None
            assert result.error.startswith(BAD_INPUTS[outcome.item.file_path][0])
            assert "\n" not in result.error and str(tmp_path) not in result.error


def test_odd_but_valid_images_succeed(photos: dict[str, Image.Image], embedder: Pipeline) -> None:
    photo = photos["coffee"]
    ramp = np.linspace(0, 65535, 300 * 200).reshape(200, 300).astype(np.uint16)
    frames = [photo, photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    inputs = {
        "cmyk.jpg": encode(photo.convert("CMYK"), "JPEG"),
        "sixteen.png": encode(Image.fromarray(ramp), "PNG"),
        "palette.png": encode(photo.convert("P"), "PNG", transparency=0),
        "animated.gif": encode(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "gray.webp": encode(photo.convert("L"), "WEBP"),
        "tiny.bmp": encode(photo.resize((3, 2)), "BMP"),
        "photo.tiff": encode(photo, "TIFF"),
    }
    outcomes = list(embedder.embed(_item(n, d) for n, d in inputs.items()))
    assert [(o.item.file_path, o.result and o.result.status) for o in outcomes] == [
        (n, "success") for n in inputs
    ]


@pytest.mark.parametrize("model", ["tiny_model", "tiny_dynamic_model"])
def test_batches_agree_with_one_by_one(
    photos: dict[str, Image.Image], model: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    # GIVEN the production (static batch 1) shape, or the dynamic-batch variant
    path: Path = request.getfixturevalue(model)
    embedder = build_pipeline(Settings(model_path=path, cache_dir=tmp_path, batch_size=4))
    assert embedder.engine.spec.static_batch is (model == "tiny_model")
    items = [_item(n, encode(p, "PNG")) for n, p in photos.items()]
    together = [o.result for o in embedder.embed(items)]
    alone = [embedder.embed_one(item).result for item in items]
    for a, b in zip(together, alone, strict=True):
        assert a is not None and b is not None and a.embedding and b.embedding
        np.testing.assert_allclose(a.embedding.embedding, b.embedding.embedding, atol=1e-6)


def test_embedding_is_the_engine_output_of_the_reference_tensor(
    photos: dict[str, Image.Image], embedder: Pipeline
) -> None:
    # The JSON round trip keeps float32 precision and the vector is L2-normalised.
    img = photos["rocket"]
    result = embedder.embed_one(_item("rocket.png", encode(img, "PNG"))).result
    assert result is not None and result.embedding is not None
    raw = embedder.engine.session.run(
        None, {embedder.engine.spec.input_name: preprocess(img, "center-crop", 224)[None]}
    )[0][0]
    expected = raw / np.linalg.norm(raw)
    got = np.array(result.embedding.embedding, dtype=np.float32)
    assert np.array_equal(got, expected.astype(np.float32))
    assert result.embedding.normalized is True
    assert abs(np.linalg.norm(got) - 1.0) < 1e-5


@pytest.mark.parametrize(
    ("error", "disposition"),
    [
        (SourceGoneError("gone"), Disposition.GONE),
        (TransientError("throttled"), Disposition.RETRY),
        (PermanentError("AccessDenied"), Disposition.ERROR),
    ],
)
def test_non_image_failures_are_handed_back_to_the_adapter(
    photos: dict[str, Image.Image], embedder: Pipeline, error: Exception, disposition: Disposition
) -> None:
    def load() -> bytes:
        raise error

    good = encode(photos["coffee"], "PNG")
    outcomes = list(embedder.embed([ImageItem("x", load), _item("ok.png", good)]))
    # THEN the adapter is told what to do, with a one-line reason in an error result
    assert outcomes[0].disposition is disposition
    assert outcomes[0].result.status == "error" and str(error) in outcomes[0].reason
    assert outcomes[0].disposition.writes is (disposition is Disposition.ERROR)
    assert outcomes[1].disposition is Disposition.EMBEDDED and outcomes[1].result.ok


def test_more_items_than_the_window_keep_order(embedder: Pipeline) -> None:
    colors = [(i * 7 % 256, i * 13 % 256, i * 29 % 256) for i in range(70)]
    items = [
        _item(str(i), encode(Image.new("RGB", (40, 40), c), "PNG")) for i, c in enumerate(colors)
    ]
    outcomes = list(embedder.embed(items))
    assert [o.item.file_path for o in outcomes] == [str(i) for i in range(70)]
    first = embedder.embed_one(items[0]).result
    assert first is not None and outcomes[0].result is not None
    assert first.embedding == outcomes[0].result.embedding


@pytest.mark.parametrize("streams", [1, 3])
def test_streams_keep_order_and_match_the_reference(
    photos: dict[str, Image.Image], tiny_model: Path, tmp_path: Path, streams: int
) -> None:
    # GIVEN a pipeline running several images at once (or one), bad inputs among good ones
    settings = Settings(model_path=tiny_model, cache_dir=tmp_path, streams=streams, threads=3)
    pipeline = build_pipeline(settings)
    assert pipeline.streams == streams
    good = {f"{n}-{i}.png": img.rotate(30 * i) for i in range(3) for n, img in photos.items()}
    names = sorted(good)
    names[3:3] = ["broken.jpg"]
    data = {n: encode(img, "PNG") for n, img in good.items()} | {"broken.jpg": b"\xff\xd8junk"}
    # WHEN embedded
    outcomes = list(pipeline.embed(_item(n, data[n]) for n in names))
    # THEN in input order, the bad one an error, each vector ONNX Runtime's own output
    assert [o.item.file_path for o in outcomes] == names
    assert outcomes[3].disposition is Disposition.ERROR
    engine = pipeline.engine
    for outcome in outcomes[:3] + outcomes[4:]:
        img = good[outcome.item.file_path]
        raw = engine.session.run(
            None, {engine.spec.input_name: preprocess(img, "center-crop", 224)[None]}
        )[0][0]
        assert outcome.result.embedding is not None
        got = np.array(outcome.result.embedding.embedding, dtype=np.float32)
        np.testing.assert_allclose(got, raw / np.linalg.norm(raw), atol=1e-6)


@pytest.mark.parametrize(
    ("threads", "streams", "layout"),
    [(4, None, (4, 1)), (4, 1, (1, 4)), (4, 2, (2, 2)), (3, 2, (2, 1)), (2, 5, (5, 1))],
)
def test_streams_share_the_threads(
    threads: int, streams: int | None, layout: tuple[int, int]
) -> None:
    # (streams, ONNX Runtime threads per stream): one stream per thread by default
    assert inference_layout(Settings(threads=threads, streams=streams)) == layout


def test_the_session_gets_each_streams_share_of_the_threads(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[int | None] = []
    real = loader.create_session

    def recording(path: Path, threads: int | None = None) -> object:
        made.append(threads)
        return real(path, threads)

    monkeypatch.setattr(loader, "create_session", recording)
    build_pipeline(Settings(model_path=tiny_model, cache_dir=tmp_path, threads=4, streams=2))
    build_pipeline(Settings(model_path=tiny_model, cache_dir=tmp_path, threads=4, streams=1))
    assert made == [2, 4]


def test_a_pipeline_started_while_its_model_loads_embeds_as_the_reference(
    photos: dict[str, Image.Image], tiny_model: Path, tmp_path: Path
) -> None:
    # GIVEN a pipeline returned at once, its session still being created
    pipeline = start_pipeline(Settings(model_path=tiny_model, cache_dir=tmp_path))
    names = [*sorted(photos), "broken.jpg"]
    data = {n: encode(img, "PNG") for n, img in photos.items()} | {"broken.jpg": b"\xff\xd8x"}
    # WHEN inputs are embedded right away
    outcomes = list(pipeline.embed(_item(n, data[n]) for n in names))
    # THEN each vector is ONNX Runtime's output for the reference tensor, the bad one an error
    assert [o.item.file_path for o in outcomes] == names
    assert outcomes[-1].disposition is Disposition.ERROR
    engine = pipeline.engine
    for outcome in outcomes[:-1]:
        reference = preprocess(photos[outcome.item.file_path], "center-crop", 224)[None]
        raw = engine.session.run(None, {engine.spec.input_name: reference})[0][0]
        assert outcome.result.embedding is not None
        got = np.array(outcome.result.embedding.embedding, dtype=np.float32)
        np.testing.assert_allclose(got, raw / np.linalg.norm(raw), atol=1e-6)
    assert outcomes[0].result.model == pipeline.model and pipeline.model.input_size == 224


def test_inputs_decoded_for_the_expected_size_are_made_again_for_the_models(
    photos: dict[str, Image.Image], tmp_path: Path
) -> None:
    # GIVEN a model whose input is 112 px, not the 224 expected while it loads
    small = build_tiny(tmp_path / "small.onnx", image_size=112)
    pipeline = start_pipeline(Settings(model_path=small, cache_dir=tmp_path, streams=2))
    items = [_item(n, encode(img, "JPEG")) for n, img in sorted(photos.items())]
    # WHEN embedded THEN every image is preprocessed for 112 px, as a built pipeline does
    started = [o.result.embedding for o in pipeline.embed(items)]
    built = build_pipeline(Settings(model_path=small, cache_dir=tmp_path, streams=2))
    assert built.model.input_size == pipeline.model.input_size == 112
    for got, item in zip(started, items, strict=True):
        expected = built.embed_one(item).result.embedding
        assert got is not None and expected is not None
        np.testing.assert_allclose(got.embedding, expected.embedding, atol=1e-6)


def test_a_model_that_fails_to_load_in_the_background_fails_the_embedding(
    photos: dict[str, Image.Image], tmp_path: Path
) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx file")
    pipeline = start_pipeline(Settings(model_path=broken, cache_dir=tmp_path))
    good = _item("coffee.png", encode(photos["coffee"], "PNG"))
    with pytest.raises(ModelFormatError, match=r"cannot load ONNX model broken\.onnx"):
        list(pipeline.embed([good, _item("bad.jpg", b"junk")]))
