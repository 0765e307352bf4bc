"""The vector index (SPEC section 10): its name per recipe, what a vector carries, its limits.

The sidecars are the record; an index (S3 Vectors, in the AWS adapter) is a view of
them, kept in step and rebuilt from them. This module is the part every front end
shares and that needs no AWS library:

- :func:`index_name`: one index per recipe (model name, first 8 hex of the model's
  sha256, preprocessing, normalisation), so two models' vectors are never mixed;
- :class:`VectorRecord` / :func:`record_of`: what is put for a success result: the
  image's key, its vector, and metadata enough for ``similar`` and ``dupes`` to answer
  without reading sidecars (ETag, version id, sha256, size, pixels, the key's folders
  for prefix filters, and the recorded neighbours);
- the service's limits, checked before a request is sent (:func:`check_key`,
  :func:`check_vector`, :data:`MAX_TOP_K`, ...);
- :func:`neighbours_of_hits`: the duplicates recorded as an image lands;
- :func:`index_duplicates`: duplicate groups from the recorded neighbours plus the exact
  tier, read from the index's listing, by the same grouping as the all-pairs path.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from dinoembed.errors import PermanentError
from dinoembed.results.schema import EmbeddingResult, Neighbour
from dinoembed.results.sidecars import Recipe

if TYPE_CHECKING:  # imported by index_duplicates: the Lambda's put path needs none of them
    from dinoembed.collections.collection import Entry
    from dinoembed.collections.dupes import Decisions, DupeGroup

# S3 Vectors' documented limits (docs: "Limitations and restrictions").
MAX_TOP_K = 100  # QueryVectors topK
MAX_PUT = 500  # vectors per PutVectors
MAX_DELETE = 500  # keys per DeleteVectors
MAX_GET = 100  # keys per GetVectors
MAX_LIST = 1000  # vectors per ListVectors page
MAX_KEY_BYTES = 1024
# The folders of a key, for prefix filters, get this much of the 2 KB of filterable
# metadata (S3 Vectors' limit per vector); a deeper folder is not filterable and is
# matched by the caller instead.
PREFIXES_BUDGET = 1200
NAME_MAX = 63  # index names are 3 to 63 characters
# Metadata keys. "neighbours" must be declared non-filterable when the index is created
# (template.yaml does): it can exceed the 2 KB of filterable metadata.
META_PREFIXES = "prefixes"
META_NEIGHBOURS = "neighbours"
NON_FILTERABLE_KEYS = (META_NEIGHBOURS,)

_PREPROCESS = {"center-crop": "crop", "squash": "squash"}


class VectorIndexError(PermanentError):
    """A request the index would refuse (a limit), or an index that cannot be used."""


class IndexLimitError(VectorIndexError):
    """A key, vector or request outside S3 Vectors' limits: refused before it is sent."""


class RecipeMismatchError(VectorIndexError):
    """The index was made for another recipe: writing to it would mix two models' vectors."""


@dataclass(frozen=True, slots=True)
class Hit:
    key: str  # the image's S3 key (decoded)
    score: float  # cosine (1 - distance), not a distance


class VectorIndex(Protocol):
    """What the commands and the HTTP API ask of an index (the reading half)."""

    @property
    def name(self) -> str: ...  # "s3vectors://VECTOR_BUCKET/INDEX"

    def query(self, vector: Sequence[float], *, top_k: int, prefix: str = "") -> list[Hit]: ...

    def vector_of(self, key: str) -> list[float] | None: ...  # None: key not indexed

    def neighbours_of(self, key: str) -> list[Hit] | None: ...  # None: not indexed


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def index_name(recipe: Recipe) -> str:
    """``dinov2-vits14-4df36ef0-crop-l2``: the index a recipe's vectors belong in.

    Model name, first 8 hex of the model's sha256, preprocessing, normalisation; lower
    case, 3-63 characters (a long model name is shortened, the rest always fits).
    """
    model = recipe.model
    tail = "-".join(
        [
            model.sha256[:8].lower(),
            _PREPROCESS.get(model.preprocess, _slug(model.preprocess)),
            "l2" if recipe.normalize else "raw",
        ]
    )
    head = _slug(model.name)[: NAME_MAX - len(tail) - 1].strip("-") or "model"
    return f"{head}-{tail}"


def needed_index(index: str, recipe: Recipe) -> str | None:
    """The index name ``recipe``'s vectors need, when ``index`` (an index's name, or its
    ``VECTOR_BUCKET/INDEX`` path) is not it; None when it is. Writers, ``serve`` and the
    Function URL each refuse a mismatch in their own way (an error, exit 2, a 503)."""
    needed = index_name(recipe)
    return None if index.rsplit("/", 1)[-1] == needed else needed


def check_index_recipe(index: str, recipe: Recipe) -> None:
    """Refuse to write ``recipe``'s vectors into an index named for another recipe."""
    needed = needed_index(index, recipe)
    if needed is not None:
        raise RecipeMismatchError(
            f"vector index {index!r} was not made for this model: its recipe needs an index "
            f"named {needed!r} (model {recipe.model.name}, sha256 {recipe.model.sha256[:8]}, "
            f"{recipe.model.preprocess}, {'l2' if recipe.normalize else 'raw'}); "
            "refusing to write to it"
        )


def check_key(key: str) -> None:
    size = len(key.encode())
    if not key or size > MAX_KEY_BYTES:
        raise IndexLimitError(
            f"key {key[:80]!r}...: {size} bytes; S3 Vectors keys are 1 to {MAX_KEY_BYTES} bytes"
        )


def check_vector(values: Sequence[float], *, what: str = "vector") -> list[float]:
    """The vector as float32-representable floats; refuses an all-zero or non-finite one."""
    array = np.asarray(values, dtype=np.float32)
    if array.ndim != 1 or array.size == 0:
        raise IndexLimitError(f"{what}: not a vector")
    if not np.isfinite(array).all():
        raise IndexLimitError(f"{what}: has non-finite values (NaN or infinity)")
    if not array.any():
        raise IndexLimitError(f"{what}: is all zeros (no direction for a cosine)")
    return [float(v) for v in array]


def check_top_k(top_k: int) -> int:
    if not 1 <= top_k <= MAX_TOP_K:
        raise IndexLimitError(f"top_k {top_k}: the vector index answers 1 to {MAX_TOP_K}")
    return top_k


def folder_prefixes(key: str, budget: int = PREFIXES_BUDGET) -> list[str]:
    """``a/b/c.jpg`` -> ``["a/", "a/b/"]``: the folders a prefix filter can name, shallowest
    first, as many as fit ``budget`` bytes."""
    parts = key.split("/")[:-1]
    prefixes, used = [], 0
    for depth in range(1, len(parts) + 1):
        prefix = "/".join(parts[:depth]) + "/"
        used += len(prefix.encode()) + 4
        if used > budget:
            break
        prefixes.append(prefix)
    return prefixes


def prefix_filter(prefix: str) -> tuple[dict[str, Any] | None, bool]:
    """The metadata filter restricting a query to keys under ``prefix``, and whether the
    caller must still check each hit's key (a prefix that is no whole folder, or a folder
    too deep to be recorded: the filter names its deepest recorded ancestor)."""
    if not prefix:
        return None, False
    folder = prefix[: prefix.rfind("/") + 1]
    recorded = folder_prefixes(folder + "x") if folder else []
    if not recorded:
        return None, True
    deepest = recorded[-1]
    return {META_PREFIXES: {"$eq": deepest}}, deepest != prefix


@dataclass(frozen=True, slots=True)
class VectorRecord:
    """One vector as it is put: the image's key, its values, its metadata."""

    key: str
    vector: list[float]
    metadata: dict[str, Any] = field(default_factory=dict)


def record_of(key: str, result: EmbeddingResult) -> VectorRecord:
    """The vector a success result puts in the index (checked against the limits)."""
    if not result.ok or result.embedding is None:
        raise IndexLimitError(f"{key}: error results are not indexed")
    check_key(key)
    vector = check_vector(result.embedding.embedding, what=key)
    source = result.source
    metadata: dict[str, Any] = {META_PREFIXES: folder_prefixes(key)}
    for name in ("etag", "version_id", "sha256", "size", "width", "height"):
        value = getattr(source, name)
        if value is not None:
            metadata[name] = value
    if result.neighbours:
        metadata[META_NEIGHBOURS] = encode_neighbours(result.neighbours)
    return VectorRecord(key, vector, metadata)


def encode_neighbours(neighbours: Iterable[Neighbour]) -> str:
    """Compact JSON ``[["photos/dog.jpg", 0.981], ...]`` (non-filterable metadata)."""
    return json.dumps([[n.key, round(n.score, 6)] for n in neighbours], separators=(",", ":"))


def decode_neighbours(value: Any) -> list[Hit]:
    """The neighbours recorded in a vector's metadata (tolerant: junk gives none)."""
    try:
        items = json.loads(value) if isinstance(value, str) else []
        return [Hit(str(k), float(s)) for k, s in items]
    except (ValueError, TypeError):
        return []


def neighbours_of_hits(hits: Iterable[Hit], own_key: str, threshold: float) -> list[Neighbour]:
    """The hits at or above ``threshold``, other than the image itself, best first."""
    chosen = [h for h in hits if h.key != own_key and h.score >= threshold]
    chosen.sort(key=lambda h: (-h.score, h.key))
    return [Neighbour(key=h.key, score=round(h.score, 6)) for h in chosen]


def cosine_of(distance: float) -> float:
    """S3 Vectors' cosine distance as the cosine users see (clamped to [-1, 1])."""
    return max(-1.0, min(1.0, 1.0 - float(distance)))


@dataclass(frozen=True, slots=True)
class Listed:
    """One vector of an index listing: its key and metadata (values only when asked)."""

    key: str
    metadata: Mapping[str, Any]
    vector: list[float] | None = None

    @property
    def etag(self) -> str | None:
        value = self.metadata.get("etag")
        return str(value) if value is not None else None

    @property
    def neighbours(self) -> list[Hit]:
        return decode_neighbours(self.metadata.get(META_NEIGHBOURS))


def _int(value: Any) -> int | None:
    try:
        return int(value) if value is not None and math.isfinite(float(value)) else None
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class _Facts:
    etag: str | None
    identity: str | None
    size: int | None
    width: int | None
    height: int | None


def _facts(listed: Listed) -> _Facts:
    """What ``dupes`` needs of one image, from its vector's metadata. The exact tier's
    identity: ``source.sha256`` when recorded, else a single-part ETag (an MD5 of the
    bytes; a multipart ETag ``…-N`` identifies no content)."""
    md = listed.metadata
    sha = md.get("sha256")
    etag = listed.etag
    if not sha and etag and "-" not in etag:
        sha = f"etag:{etag.strip(chr(34))}"
    return _Facts(
        etag,
        str(sha) if sha else None,
        _int(md.get("size")),
        _int(md.get("width")),
        _int(md.get("height")),
    )


@dataclass(frozen=True)
class IndexDupes:
    """Duplicate groups from an index listing. ``rows`` holds only the images that are in a
    recorded pair or share an identity (the others cannot be in a group), sorted by path;
    ``images`` counts every image listed."""

    images: int
    rows: list[Entry]
    groups: list[DupeGroup]


def index_duplicates(
    listing: Iterable[Listed],
    threshold: float,
    *,
    path_of: Callable[[str], str] | None = None,
    decisions: Decisions | None = None,
) -> IndexDupes:
    """Duplicate groups of the images in ``listing``: the recorded neighbour pairs at or
    above ``threshold`` whose images are both still listed (a neighbour whose image is gone
    is dropped), plus the exact tier; grouped by
    :func:`~dinoembed.collections.dupes.group_duplicates`, as the all-pairs path groups.

    One pass over the listing, keeping a few facts per image (not its vector), so a
    million-image index fits in a few hundred MB. ``path_of`` maps a key to the path shown.
    """
    from dinoembed.collections.collection import Entry
    from dinoembed.collections.dupes import Decisions, group_duplicates
    from dinoembed.collections.similarity import Pairs

    show = path_of or (lambda key: key)
    facts: dict[str, _Facts] = {}
    first_of: dict[tuple[str, int | None], str] = {}
    twins: set[str] = set()
    best: dict[tuple[str, str], float] = {}
    for item in listing:
        fact = _facts(item)
        facts[item.key] = fact
        if fact.identity is not None:
            first = first_of.setdefault((fact.identity, fact.size), item.key)
            if first != item.key:
                twins.update((first, item.key))
        for hit in item.neighbours:
            if hit.key == item.key or hit.score < threshold:
                continue
            pair = (min(item.key, hit.key), max(item.key, hit.key))
            best[pair] = max(best.get(pair, -1.0), hit.score)
    pairs_kept = {p: s for p, s in best.items() if p[0] in facts and p[1] in facts}
    involved = twins | {k for pair in pairs_kept for k in pair}
    keys = sorted(involved, key=show)
    row_of = {key: row for row, key in enumerate(keys)}
    rows = [
        Entry(
            sidecar=key,
            stamp=facts[key].etag or "",
            path=show(key),
            etag=facts[key].etag,
            row=row,
            size=facts[key].size,
            sha256=facts[key].identity,
            width=facts[key].width,
            height=facts[key].height,
        )
        for row, key in enumerate(keys)
    ]
    ordered = sorted((sorted((row_of[a], row_of[b])), s) for (a, b), s in pairs_kept.items())
    pairs = Pairs(
        left=np.array([p[0] for p, _ in ordered], dtype=np.int64),
        right=np.array([p[1] for p, _ in ordered], dtype=np.int64),
        score=np.array([s for _, s in ordered], dtype=np.float32),
    )
    groups = group_duplicates(rows, pairs, threshold, decisions or Decisions())
    return IndexDupes(len(facts), rows, groups)
