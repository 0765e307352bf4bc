"""What the watcher does with sidecars: is one current, move it, remove it.

Whether a sidecar is *current* is the core's one rule (:func:`dinoembed.results.sidecars.judge`:
the same model, preprocessing and normalisation, the image's size and mtime as they
are now); one written by a newer dinoembed is left alone. A current sidecar whose
``file_path`` names another place (the image or its folder was renamed) is rewritten,
not re-embedded.

Only files that parse as our result schema are ever moved or deleted, and
sidecars are only written inside the watched root.
"""

from __future__ import annotations

import enum
import logging
import os
from pathlib import Path

from dinoembed.images.pathfilter import ALL, PathFilter
from dinoembed.results.schema import EmbeddingResult, ModelInfo
from dinoembed.results.sidecars import (
    Recipe,
    Verdict,
    judge_file,
    read_sidecar,
    sidecar_path,
    write_sidecar,
)

log = logging.getLogger(__name__)


class State(enum.Enum):
    CURRENT = "current"
    FAILED = "failed"  # current, and it records an error: not retried, counted as an error
    RENAMED = "renamed"  # current, but its file_path names the old place
    NEEDED = "needed"


class Sidecars:
    def __init__(
        self,
        root: Path,
        suffix: str,
        model: ModelInfo,
        *,
        normalize: bool,
        select: PathFilter = ALL,
    ) -> None:
        self.root = root.absolute()
        self.select = select
        self.root_real = root.resolve()
        self.suffix = suffix
        self.model = model
        self.normalize = normalize
        self.recipe = Recipe(model, normalize)

    def selected(self, image: Path) -> bool:
        """Kept by ``--include``/``--exclude`` (matched against its path under the root)."""
        return self.select.accepts_path(image, self.root)

    def path_for(self, image: Path) -> Path:
        return sidecar_path(image, self.suffix)

    def inside_root(self, path: Path) -> bool:
        """The file and its folder both resolve inside the root (symlinks may not escape)."""
        try:
            return path.resolve().is_relative_to(self.root_real) and self.folder_inside_root(
                path.parent
            )
        except OSError:
            return False

    def folder_inside_root(self, folder: Path) -> bool:
        try:
            return folder.resolve(strict=True).is_relative_to(self.root_real)
        except OSError:
            return False

    def verdict(
        self, result: EmbeddingResult | None, image_stat: os.stat_result, sidecar: Path
    ) -> Verdict:
        """The core's currency rule for this sidecar and the image as it is now."""
        return judge_file(result, image_stat, sidecar, self.recipe)

    def matches(self, result: EmbeddingResult, image_stat: os.stat_result, sidecar: Path) -> bool:
        """Would embedding the image now give this result again?"""
        return self.verdict(result, image_stat, sidecar) is Verdict.CURRENT

    def state(self, image: Path, image_stat: os.stat_result) -> State:
        sidecar = self.path_for(image)
        result = read_sidecar(sidecar)
        verdict = self.verdict(result, image_stat, sidecar)
        if verdict is Verdict.NEWER:
            log.info("%s: sidecar written by a newer dinoembed; left alone", image)
            return State.CURRENT
        if result is None or verdict is not Verdict.CURRENT:
            return State.NEEDED
        if result.file_path != str(image.absolute()):
            return State.RENAMED
        return State.CURRENT if result.ok else State.FAILED

    def rename(self, image: Path) -> None:
        """Point the (current) sidecar's ``file_path`` at the image's present name."""
        sidecar = self.path_for(image)
        result = read_sidecar(sidecar)
        if result is not None:
            self.write(result.model_copy(update={"file_path": str(image.absolute())}), image)

    def move(self, old_image: Path, new_image: Path) -> None:
        """The image was renamed: carry its sidecar over when it still fits, else drop it."""
        if old_image.exists():
            return
        old_sidecar = self.path_for(old_image)
        result = read_sidecar(old_sidecar)
        if result is None:
            return
        try:
            new_stat = new_image.stat()
        except OSError:
            new_stat = None
        new_state = self.state(new_image, new_stat) if new_stat is not None else None
        if (
            new_stat is not None
            and new_state is State.NEEDED
            and self.matches(result, new_stat, old_sidecar)
            and self.inside_root(new_image)
        ):
            self.write(
                result.model_copy(update={"file_path": str(new_image.absolute())}), new_image
            )
            log.info("%s: sidecar moved from %s", new_image, old_image)
        old_sidecar.unlink(missing_ok=True)

    def remove_orphan(self, image: Path) -> bool:
        """Delete the sidecar of an image that no longer exists (only if it is ours)."""
        if image.exists() or image.is_symlink():
            return False
        sidecar = self.path_for(image)
        if read_sidecar(sidecar) is None:
            return False
        sidecar.unlink(missing_ok=True)
        log.info("%s: deleted, sidecar removed", image)
        return True

    def write(self, result: EmbeddingResult, image: Path) -> None:
        sidecar = self.path_for(image)
        if not self.folder_inside_root(sidecar.parent):
            log.warning("%s: not writing a sidecar outside %s", image, self.root)
            return
        write_sidecar(result, sidecar)
