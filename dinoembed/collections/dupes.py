"""Duplicate groups in two tiers, a suggested keep for each, and a person's decisions.

- **exact**: images with identical bytes (the same sha256). Identical bytes give the
  same embedding, so only images whose vectors are near-identical
  (cosine >= :data:`EXACT_CANDIDATE`) need hashing when the sidecars did not record
  a sha256: :func:`candidates` says which.
- **similar**: connected components of the graph of pairs with cosine >= the
  threshold, where each exact group takes part through its keep only (its other
  members are already accounted for as identical copies).
- **keep**: the likely original: most pixels, then the oldest file, then a lossless
  format, then the largest file, then the first path by name (:func:`choose_keep`);
  ``keep_reason`` says which rule decided.
- **decisions** (:class:`Decisions`): pairs a person marked "not duplicates" are
  never in the same group. Edges are joined strongest first (Kruskal's order) and
  a join that would put a marked pair into one group is skipped, so marking A/B
  also splits A~C~B; marking every pair of a group ("keep all") dissolves it.

Pure over row indices, scores and :class:`~dinoembed.collections.collection.Entry` facts.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import combinations
from pathlib import Path
from typing import Literal

from dinoembed.collections.collection import Entry
from dinoembed.collections.similarity import Pairs, linked_components, similar_pairs
from dinoembed.common.vectors import Matrix
from dinoembed.errors import ConfigError

log = logging.getLogger(__name__)

# Identical bytes give bit-identical vectors on one machine, and within ~1e-6 across
# ONNX Runtime builds; 0.999 leaves room for that and nothing else.
EXACT_CANDIDATE = 0.999

Kind = Literal["exact", "similar"]


@dataclass(frozen=True, slots=True)
class DupeGroup:
    kind: Kind
    members: tuple[int, ...]  # rows, ascending by path
    keep: int
    keep_reason: str
    min_score: float
    max_score: float


@dataclass(frozen=True)
class Decisions:
    """Pairs of image paths marked "not duplicates" (each pair stored in sorted order)."""

    not_duplicates: frozenset[tuple[str, str]] = frozenset()

    @classmethod
    def load(cls, path: Path) -> Decisions:
        """``{"not_duplicates": [[path, path, ...], ...]}``: every pair within each list is
        marked. Relative local paths are relative to the decisions file's folder."""
        try:
            doc = json.loads(path.read_bytes())
        except FileNotFoundError as err:
            raise ConfigError(f"{path}: no such decisions file") from err
        except (OSError, ValueError) as err:
            raise ConfigError(f"{path}: not a JSON decisions file ({err})") from err
        unknown = sorted(set(doc) - {"not_duplicates"}) if isinstance(doc, dict) else []
        if unknown:  # a misspelt key would silently decide nothing
            raise ConfigError(
                f"{path}: unknown key {', '.join(map(repr, unknown))} "
                '(the only key is "not_duplicates")'
            )
        lists = doc.get("not_duplicates", []) if isinstance(doc, dict) else None
        if not isinstance(lists, list) or not all(
            isinstance(item, list) and all(isinstance(p, str) for p in item) for item in lists
        ):
            raise ConfigError(
                f'{path}: expected {{"not_duplicates": [["a.jpg", "b.jpg"], ...]}} '
                "(lists of image paths)"
            )
        base = path.absolute().parent
        pairs: set[tuple[str, str]] = set()
        for item in lists:
            resolved = sorted({_resolve(p, base) for p in item})
            pairs.update(combinations(resolved, 2))
        return cls(frozenset(pairs))

    def forbids(self, a: str, b: str) -> bool:
        return (min(a, b), max(a, b)) in self.not_duplicates


def _resolve(path: str, base: Path) -> str:
    if path.startswith("s3://") or Path(path).is_absolute():
        return path
    return str(base / path)


def candidates(
    matrix: Matrix, threshold: float, *, workers: int | None = None
) -> tuple[Pairs, list[int]]:
    """Every pair at or above ``min(threshold, EXACT_CANDIDATE)``, and the rows that may
    have an identical twin (worth hashing)."""
    pairs = similar_pairs(matrix, min(threshold, EXACT_CANDIDATE), workers=workers)
    near = pairs.score >= EXACT_CANDIDATE
    twins = sorted({*pairs.left[near].tolist(), *pairs.right[near].tolist()})
    return pairs, twins


def group_duplicates(
    entries: Sequence[Entry],
    pairs: Pairs,
    threshold: float,
    decisions: Decisions = Decisions(),
) -> list[DupeGroup]:
    """Exact groups, then similar groups, each largest first. ``entries[i]`` is row i."""
    paths = [e.path for e in entries]
    forbidden = _forbidden_rows(paths, decisions)
    scores = {
        (a, b): s
        for a, b, s in zip(
            pairs.left.tolist(), pairs.right.tolist(), pairs.score.tolist(), strict=True
        )
    }
    exact = _exact_groups(entries, forbidden, scores)
    # A copy in an exact group takes part through its keep only: it has the keep's vector,
    # so the keep has the same edges.
    copies = {m for g in exact for m in g.members if m != g.keep}
    edges = [
        (s, a, b)
        for (a, b), s in scores.items()
        if s >= threshold and a not in copies and b not in copies
    ]
    components = linked_components(len(entries), edges, forbidden)
    similar = []
    for members, low, high in components:
        keep, reason = choose_keep([entries[m] for m in members])
        similar.append(DupeGroup("similar", members, members[keep], reason, low, high))
    similar.sort(key=lambda g: (-len(g.members), paths[g.members[0]]))
    return exact + similar


def _forbidden_rows(paths: Sequence[str], decisions: Decisions) -> dict[int, set[int]]:
    if not decisions.not_duplicates:
        return {}
    row_of = {p: i for i, p in enumerate(paths)}
    forbidden: dict[int, set[int]] = {}
    unknown = 0
    for a, b in decisions.not_duplicates:
        if a in row_of and b in row_of:
            forbidden.setdefault(row_of[a], set()).add(row_of[b])
            forbidden.setdefault(row_of[b], set()).add(row_of[a])
        else:
            unknown += 1
    if unknown:
        log.info("%d decisions name images that are not in this collection", unknown)
    return forbidden


def _exact_groups(
    entries: Sequence[Entry], forbidden: dict[int, set[int]], scores: dict[tuple[int, int], float]
) -> list[DupeGroup]:
    by_hash: dict[tuple[str, int | None], list[int]] = {}
    for row, entry in enumerate(entries):
        if entry.sha256:
            by_hash.setdefault((entry.sha256, entry.size), []).append(row)
    groups = []
    for rows in by_hash.values():
        if len(rows) < 2:
            continue
        rows.sort(key=lambda r: entries[r].path)
        # Greedy in path order: each image joins the first subgroup holding no image it
        # was marked "not a duplicate" of.
        subgroups: list[list[int]] = []
        for row in rows:
            for sub in subgroups:
                if not forbidden.get(row, set()).intersection(sub):
                    sub.append(row)
                    break
            else:
                subgroups.append([row])
        for sub in subgroups:
            if len(sub) < 2:
                continue
            linked = [scores[p] for p in combinations(sorted(sub), 2) if p in scores]
            keep, reason = choose_keep([entries[m] for m in sub])
            low, high = (min(linked), max(linked)) if linked else (1.0, 1.0)
            groups.append(DupeGroup("exact", tuple(sub), sub[keep], reason, low, high))
    groups.sort(key=lambda g: (-len(g.members), entries[g.members[0]].path))
    return groups


# File name endings of lossless formats: a lossless copy holds every pixel it was given.
LOSSLESS = {"png": "PNG", "tif": "TIFF", "tiff": "TIFF", "bmp": "BMP"}


def _lossless(entry: Entry) -> str | None:
    return LOSSLESS.get(entry.path.rsplit(".", 1)[-1].lower()) if "." in entry.path else None


def choose_keep(entries: Sequence[Entry]) -> tuple[int, str]:
    """Index of the entry to keep, the one most likely the original, and why in words.

    The rule, in order: the most pixels (a smaller copy lost detail); then the oldest file
    (a re-encode, a converted or flattened copy is made after its original; known for
    local files, whose sidecars record the mtime); then a lossless format (PNG, TIFF,
    BMP) over a lossy one; then the largest file; then the first path by name.
    """

    def rank(i: int) -> tuple[float, float, int, int, str]:
        e = entries[i]
        age = e.mtime if e.mtime is not None else float("inf")
        return (-(e.pixels or 0), age, 0 if _lossless(e) else 1, -(e.size or 0), e.path)

    order = sorted(range(len(entries)), key=rank)
    best, runner = entries[order[0]], entries[order[1]] if len(order) > 1 else None
    dims = f"{best.width}x{best.height}" if best.pixels else None
    if runner is None:
        return order[0], "only image"
    if best.pixels and best.pixels != runner.pixels:
        return order[0], f"most pixels ({dims})"
    same = f"same pixel size ({dims})" if dims else "pixel size unknown"
    identical = bool(best.sha256) and best.sha256 == runner.sha256
    if best.mtime is not None and best.mtime != runner.mtime:
        day = datetime.fromtimestamp(best.mtime, tz=UTC).strftime("%Y-%m-%d %H:%M")
        if identical:
            return order[0], f"identical files: the oldest ({day} UTC)"
        return order[0], f"{same}, oldest file ({day} UTC)"
    if _lossless(best) and not _lossless(runner):
        return order[0], f"{same}, lossless format ({_lossless(best)})"
    if best.size and best.size != runner.size:
        return order[0], f"{same}, largest file ({human_size(best.size)})"
    if identical:
        return order[0], "identical files: first by name"
    return order[0], f"{same}, same file size: first by name"


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")
