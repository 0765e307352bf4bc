"""One exception hierarchy for dinoembed.

Permanent failures (the input itself is bad) and transient failures (the
network, throttling, a model that could not be fetched this time) are separate
types, because the Lambda adapter must retry the second kind and not the first.
"""

from __future__ import annotations


class DinoEmbedError(Exception):
    """Base class of every error dinoembed raises on purpose."""


class TransientError(DinoEmbedError):
    """A failure that may succeed when retried (network, throttling, 5xx)."""


class PermanentError(DinoEmbedError):
    """A failure that will happen again with the same input."""


class ConfigError(PermanentError):
    """Settings that cannot work (a missing file, a bad checksum format, ...)."""


class ModelError(DinoEmbedError):
    """Base for everything about obtaining or loading the model."""


class ModelUnavailableError(ModelError, TransientError):
    """The model could not be downloaded now (offline, 5xx, timeout)."""


class ModelIntegrityError(ModelError, PermanentError):
    """The bytes obtained are not the expected model (sha256 or size mismatch)."""


class ModelFormatError(ModelError, PermanentError):
    """The ONNX file does not have the image-in, embedding-out contract."""


class ImageError(PermanentError):
    """The input is not an image dinoembed can embed. Its message goes into the result."""


class NotAnImageError(ImageError):
    pass


class UnsupportedFormatError(ImageError):
    pass


class ImageTooLargeError(ImageError):
    pass


class CorruptImageError(ImageError):
    pass


class SourceGoneError(DinoEmbedError):
    """The input vanished between being announced and being read."""
