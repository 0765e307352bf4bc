"""The Python API (SPEC section 5a): embed images from your own code.

    import dinoembed

    embedder = dinoembed.Embedder(model_path="dinov2_vits14.onnx")
    results = embedder.embed(["photos/cat.jpg", Path("dog.png"), jpeg_bytes, pil_image])

Inputs are paths (``str`` or :class:`~pathlib.Path`), encoded image bytes, or PIL
images; results come back as :class:`~dinoembed.results.schema.EmbeddingResult`, in input
order, bad inputs as error results. Keyword options are the settings' names; those
left out come from ``DINOEMBED_*`` as on the command line.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from dinoembed.errors import ConfigError, NotAnImageError
from dinoembed.model.store import ModelStore
from dinoembed.pipeline import ImageItem, build_pipeline, local_item
from dinoembed.results.schema import EmbeddingResult, ModelInfo
from dinoembed.settings import Settings

Input = str | Path | bytes | Image.Image

# The settings a caller may pass (SPEC 5a); the rest belong to the front ends.
OPTIONS = frozenset(
    {
        "model_path",
        "model_url",
        "model_sha256",
        "cache_dir",
        "normalize",
        "preprocess",
        "batch_size",
        "threads",
        "streams",
        "decode_workers",
        "max_pixels",
        "max_bytes",
    }
)


def _settings(options: dict[str, Any]) -> Settings:
    unknown = sorted(set(options) - OPTIONS)
    if unknown:
        raise TypeError(
            f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(OPTIONS))}"
        )
    return Settings(**{k: v for k, v in options.items() if v is not None})


class Embedder:
    """Loads the model once (downloading and verifying it if need be); thread-safe.

    ``Embedder(model_path=None, normalize=True, preprocess="center-crop", ...)``:
    an option given here beats its ``DINOEMBED_*`` variable; ``None`` means unset.

    Each image runs on every thread by default (``streams=1``), the shortest wait for
    one image, as code calling ``embed([image])`` one image at a time needs. For bulk
    work, ``streams=N`` runs N images at once on threads / N threads each (one per
    thread is ~10% more images per second on two cores, and ~1.7x the wait for one).
    """

    def __init__(self, model_path: str | Path | None = None, **options: Any) -> None:
        self.settings = _settings({"model_path": model_path, **options}).or_defaults(streams=1)
        self._pipeline = build_pipeline(self.settings, _store(self.settings))

    @property
    def model(self) -> ModelInfo:
        """The model and preprocessing recorded in every result."""
        return self._pipeline.model

    @property
    def dim(self) -> int:
        return self._pipeline.engine.spec.dim

    def embed(self, inputs: Iterable[Input]) -> list[EmbeddingResult]:
        """One result per input, in order; a bad input gets an error result."""
        return list(self.iter_embed(inputs))

    def iter_embed(self, inputs: Iterable[Input]) -> Iterator[EmbeddingResult]:
        """As :meth:`embed`, streaming: results arrive while later inputs are decoded."""
        items = (_item(value, n) for n, value in enumerate(inputs))
        for outcome in self._pipeline.embed(items):
            yield outcome.result


def embed(inputs: Sequence[Input], **options: Any) -> list[EmbeddingResult]:
    """One-shot convenience: ``Embedder(**options).embed(inputs)``."""
    return Embedder(**options).embed(inputs)


def _store(settings: Settings) -> ModelStore:
    if settings.model_url.startswith("s3://"):
        # The core never imports boto3 (SPEC section 1); s3:// models are for the front ends.
        raise ConfigError(
            "the Python API downloads models over http(s) only; fetch an s3:// model with "
            "`dinoembed model fetch` and pass model_path"
        )
    return ModelStore(settings.cache_dir)


def _item(value: Input, position: int) -> ImageItem:
    if isinstance(value, str | Path):
        return local_item(Path(value))
    name = f"<input {position}>"
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        return ImageItem(file_path=name, load=lambda: data)
    if isinstance(value, Image.Image):
        return ImageItem(file_path=name, load=lambda: value)
    kind = type(value).__name__

    def refuse() -> bytes:
        raise NotAnImageError(f"not an image: expected a path, bytes or a PIL image, got {kind}")

    return ImageItem(file_path=name, load=refuse)
