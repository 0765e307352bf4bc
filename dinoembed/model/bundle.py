"""A model bundled in a deployment package: ``<folder>/bundle.json`` and the file it names.

Kept apart from the model store (which reads the settings, and so imports
pydantic-settings) so that a Lambda cold start can find its bundled model and start
creating the session before those imports (:mod:`dinoembed.handler.preload`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from dinoembed.errors import ConfigError, ModelIntegrityError

BUNDLE_MANIFEST = "bundle.json"


@dataclass(frozen=True, slots=True)
class BundledModel:
    """A model file shipped inside a deployment package, with the sha256 it was built with."""

    path: Path
    sha256: str


def find_bundled(folder: Path) -> BundledModel | None:
    """The model bundled in ``folder``, or None when there is none.

    ``infra/build_lambda.sh`` copies the model there and writes ``bundle.json``
    (``{"file", "sha256", "size"}``) after checking the sha256, so a cold start need
    not hash 87 MB again: the package is immutable once built. A manifest that names
    a missing file or the wrong size is refused rather than trusted.
    """
    manifest = folder / BUNDLE_MANIFEST
    try:
        data = json.loads(manifest.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise ConfigError(f"bundled model manifest {manifest} is unreadable: {err}") from err
    try:
        path = folder / Path(str(data["file"])).name
        sha256, size = str(data["sha256"]), int(data["size"])
    except (KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"bundled model manifest {manifest} lacks {err}") from err
    try:
        actual = path.stat().st_size
    except OSError as err:
        raise ConfigError(f"bundled model {path} is missing: rebuild the package") from err
    if actual != size:
        raise ModelIntegrityError(f"bundled model {path} has {actual} bytes, expected {size}")
    return BundledModel(path, sha256)
