"""``dinoembed similar | dupes | cluster | report | backfill | export``: using a collection.

A collection is a local folder (recursive unless ``--no-recursive``) or an
``s3://bucket/prefix``; S3 support comes from ``dinoembed.handler`` (boto3), through
:mod:`dinoembed.cli.wiring`, only when an S3 location is named.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dinoembed.cli import output, wiring
from dinoembed.cli.use_args import DEFAULT_THRESHOLD, DEFAULT_TOP_K
from dinoembed.collections.clustering import MIN_SIZE, Clustering, density, kmeans
from dinoembed.collections.collection import (
    Collection,
    CollectionCache,
    Entry,
    MixedModelsError,
    SidecarSource,
    load_collection,
)
from dinoembed.collections.dupes import Decisions, DupeGroup, candidates, group_duplicates
from dinoembed.collections.export import export
from dinoembed.collections.facts import complete_facts
from dinoembed.collections.report import thumbnail_uri, write_report
from dinoembed.collections.similarity import top_k
from dinoembed.common.vectors import normalize_rows
from dinoembed.common.words import plural
from dinoembed.errors import ConfigError, ImageError
from dinoembed.images.decode import DecodeLimits
from dinoembed.results.schema import EmbeddingResult, ModelInfo
from dinoembed.results.sidecars import (
    Recipe,
    Verdict,
    judge_file,
    read_sidecar,
    same_space,
    sidecar_path,
)
from dinoembed.settings import Settings

if TYPE_CHECKING:
    from dinoembed.pipeline import ImageItem

log = logging.getLogger(__name__)


def _paths_end(args: argparse.Namespace) -> str | None:
    """How --paths/-0 end each path: None when neither was given."""
    if getattr(args, "null", False):
        return "\0"
    return "\n" if getattr(args, "paths", False) else None


def _print_paths(paths: Sequence[str], end: str) -> None:
    sys.stdout.write("".join(path + end for path in paths))


def run_use(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "similar":
        return run_similar(
            settings,
            args.query,
            args.collection,
            top=getattr(args, "top_k", DEFAULT_TOP_K),
            min_score=getattr(args, "min_score", None),
            as_json=getattr(args, "json", False),
            paths_end=_paths_end(args),
        )
    if args.command in ("dupes", "report"):
        threshold = getattr(args, "threshold", DEFAULT_THRESHOLD)
        decisions = getattr(args, "decisions", None)
        if args.command == "dupes":
            as_json = getattr(args, "json", False)
            return run_dupes(
                settings, args.collection, threshold, as_json, decisions, _paths_end(args)
            )
        options = ClusterOptions(getattr(args, "k", None), getattr(args, "min_size", MIN_SIZE))
        return run_report(settings, args.collection, args.out, threshold, decisions, options)
    if args.command == "cluster":
        options = ClusterOptions(getattr(args, "k", None), getattr(args, "min_size", MIN_SIZE))
        return run_cluster(settings, args.collection, options, getattr(args, "json", False))
    if args.command == "backfill":
        from dinoembed.cli.backfill import run_backfill

        return run_backfill(
            settings,
            args.collection,
            getattr(args, "queue_url", None),
            manifest=getattr(args, "manifest", None),
        )
    force = getattr(args, "force", False)
    return run_export(settings, args.collection, args.export_format, args.out, force=force)


def open_collection(location: str, settings: Settings) -> Collection:
    """The collection at ``location``, refreshed against its cache in the cache dir."""
    return open_collection_with_source(location, settings)[0]


def open_collection_with_source(
    location: str, settings: Settings
) -> tuple[Collection, SidecarSource, CollectionCache]:
    """The collection, the source it came from and its cache (to measure facts later)."""
    source = wiring.open_source(location, settings)
    cache = CollectionCache.for_location(
        settings.cache_dir, source.location, settings.output_suffix
    )
    collection, stats = load_collection(source, cache)
    log.info(
        "%s: %d sidecars (%d read, %d from cache, %d gone), %d embeddings, %d skipped",
        source.location,
        stats.listed,
        stats.read,
        stats.reused,
        stats.removed,
        len(collection),
        stats.skipped,
    )
    collection.require_vectors()
    if collection.model is not None and collection.model.name.startswith("standin:"):
        log.warning("%s was embedded by a stand-in model: similarities are meaningless", location)
    return collection, source, cache


def run_similar(
    settings: Settings,
    query: str,
    location: str,
    *,
    top: int = DEFAULT_TOP_K,
    min_score: float | None = None,
    as_json: bool = False,
    paths_end: str | None = None,
) -> int:
    """Text: ``score<TAB>path`` a line, best first; ``paths_end``: the paths only."""
    if top < 0:
        raise ConfigError(f"--top-k {top}: must be 0 or more")
    if not wiring.is_s3(query) and not Path(query).is_file():
        raise ConfigError(f"{query}: no such image or sidecar file")
    index = wiring.open_s3_index(location, settings)
    if index is not None:  # the bucket's vector index answers (SPEC section 10)
        from dinoembed.cli.use_index import similar_via_index

        doc = similar_via_index(settings, index, query, location, top=top, min_score=min_score)
        print_similar(doc, as_json=as_json, paths_end=paths_end, top=top)
        return 0
    collection = open_collection(location, settings)
    vector, query_path = query_vector(query, collection, settings)
    idx, scores = top_k(collection.matrix, vector, top + 1)
    found = [
        (collection.row(i), float(s)) for i, s in zip(idx.tolist(), scores.tolist(), strict=True)
    ]
    hits = [
        (entry, score)
        for entry, score in found
        if entry.path != query_path and (min_score is None or score >= min_score)
    ][:top]
    doc = {
        "query": query_path,
        "collection": collection.location,
        "model": _model_json(collection.model),
        "results": [{"path": e.path, "score": round(s, 6), "etag": e.etag} for e, s in hits],
    }
    print_similar(doc, as_json=as_json, paths_end=paths_end, top=top)
    return 0


def print_similar(doc: dict[str, Any], *, as_json: bool, paths_end: str | None, top: int) -> None:
    """``similar``'s answer, however it was found: the JSON document, the paths only, or
    ``score<TAB>path`` a line, best first."""
    results = doc["results"]
    if as_json:
        output.print_json(doc)
    elif paths_end is not None:
        _print_paths([r["path"] for r in results], paths_end)
    else:
        for r in results:
            print(f"{r['score']:.4f}\t{r['path']}")
        if not results:
            print(f"no similar images in {doc['collection']} (--top-k {top})")


def query_vector(query: str, collection: Collection, settings: Settings) -> tuple[Any, str]:
    """The query's unit vector and the path it stands for (left out of its own results)."""
    current = None if wiring.is_s3(query) else current_sidecar(Path(query), collection, settings)
    if current is not None:
        result = current  # the image's own up-to-date sidecar: no model needed
    elif query.endswith(settings.output_suffix):
        result = EmbeddingResult.read_json(wiring.read_location(query))
        _same_model(collection.model, result.model, f"the query sidecar {query}", "re-embed it")
    else:
        if collection.model is not None:
            settings = settings.or_defaults(preprocess=collection.model.preprocess)
        embedder = wiring.pipeline(settings)
        hint = "use the collection's model (--model or DINOEMBED_MODEL_PATH)"
        _same_model(collection.model, embedder.model, "the loaded model", hint)
        result = embedder.embed_one(_query_item(query, settings)).result
    if not result.ok or result.embedding is None:
        raise ImageError(f"{query}: cannot be used as a query: {result.error}")
    vector = normalize_rows(np.array([result.embedding.embedding], dtype=np.float32))[0]
    return vector, result.file_path


def current_sidecar(
    image: Path, collection: Collection, settings: Settings
) -> EmbeddingResult | None:
    """The query image's own sidecar when it still describes the image (the core's currency
    rule) and was made by the configured model, which is the collection's: the answer is
    then the one the model would give, without loading (or downloading) it."""
    from dinoembed.pipeline import expected_model

    if collection.model is None or image.name.endswith(settings.output_suffix):
        return None
    if expected_model(settings) != (collection.model.sha256, collection.model.preprocess):
        return None  # another model was asked for: the usual path explains the mismatch
    sidecar = sidecar_path(image, settings.output_suffix)
    existing = read_sidecar(sidecar)
    if existing is None or not existing.ok or existing.embedding is None:
        return None
    try:
        st = image.stat()
    except OSError:
        return None
    recipe = Recipe(collection.model, existing.embedding.normalized)  # cosine: either works
    if judge_file(existing, st, sidecar, recipe) is not Verdict.CURRENT:
        return None
    log.info("%s: using its sidecar %s (no model needed)", image, sidecar)
    return existing


def _same_model(expected: ModelInfo | None, got: ModelInfo, what: str, hint: str) -> None:
    if expected is None:
        return
    if not same_space(got, expected):
        raise MixedModelsError(
            f"the collection was embedded by {expected.name} (sha256 {expected.sha256[:12]}…, "
            f"{expected.preprocess}) but {what} is {got.name} (sha256 {got.sha256[:12]}…, "
            f"{got.preprocess}): {hint}"
        )


def _query_item(query: str, settings: Settings) -> ImageItem:
    from dinoembed.pipeline import ImageItem, local_item

    if wiring.is_s3(query):
        return ImageItem(file_path=query, load=lambda: wiring.read_location(query))
    if not Path(query).is_file():
        raise ConfigError(f"{query}: no such image file")
    return local_item(Path(query))


def run_dupes(
    settings: Settings,
    location: str,
    threshold: float,
    as_json: bool,
    decisions_file: Path | None = None,
    paths_end: str | None = None,
) -> int:
    index = wiring.open_s3_index(location, settings)
    if index is not None and threshold >= settings.dupes_threshold:
        from dinoembed.cli.use_index import dupes_via_index  # the recorded neighbours

        decisions = Decisions.load(decisions_file) if decisions_file else Decisions()
        found = dupes_via_index(index, location, threshold, decisions)
        rows, groups, images = found.rows, found.groups, found.images
    else:
        if index is not None:
            log.info(
                "%s: neighbours are recorded at cosine >= %s; --threshold %s reads every "
                "sidecar instead",
                index.name,
                settings.dupes_threshold,
                threshold,
            )
        collection, _, groups = find_dupes(settings, location, threshold, decisions_file)
        rows, images, location = collection.rows, len(collection), collection.location
    if paths_end is not None:
        _print_paths([rows[m].path for g in groups for m in g.members if m != g.keep], paths_end)
        return 0
    if as_json:
        doc = {
            "collection": location,
            "threshold": threshold,
            "images": images,
            "groups": [_group_json(g, rows) for g in groups],
        }
        output.print_json(doc)
        return 0
    exact = sum(1 for g in groups if g.kind == "exact")
    print(
        f"{plural(images, 'image')}: {plural(exact, 'group')} of identical files, "
        f"{plural(len(groups) - exact, 'group')} of similar images (cosine >= {threshold})"
    )
    for number, group in enumerate(groups, 1):
        print(
            f"group {number}: {plural(len(group.members), 'image')}, {group.kind}, "
            f"cosine {group.min_score:.4f}-{group.max_score:.4f}"
        )
        for member in group.members:
            mark = f"keep  ({group.keep_reason})" if member == group.keep else ""
            print(f"  {rows[member].path}  {mark}".rstrip())
    return 0


def find_dupes(
    settings: Settings, location: str, threshold: float, decisions_file: Path | None
) -> tuple[Collection, SidecarSource, list[DupeGroup]]:
    """The collection (facts measured where needed), its source and its duplicate groups."""
    if not -1.0 <= threshold <= 1.0:
        raise ConfigError(f"--threshold {threshold}: a cosine is between -1 and 1")
    decisions = Decisions.load(decisions_file) if decisions_file else Decisions()
    collection, source, cache = open_collection_with_source(location, settings)
    pairs, twins = candidates(collection.matrix, threshold, workers=settings.threads)
    in_pairs = {*pairs.left.tolist(), *pairs.right.tolist()}
    collection = complete_facts(collection, source, in_pairs, digest=twins, cache=cache)
    groups = group_duplicates(collection.rows, pairs, threshold, decisions)
    return collection, source, groups


def _group_json(group: DupeGroup, rows: list[Entry]) -> dict[str, Any]:
    return {
        "kind": group.kind,
        "size": len(group.members),
        "min_score": round(group.min_score, 6),
        "max_score": round(group.max_score, 6),
        "paths": [rows[m].path for m in group.members],
        "keep": rows[group.keep].path,
        "keep_reason": group.keep_reason,
        "images": [_image_json(rows[m]) for m in group.members],
    }


def _image_json(entry: Entry) -> dict[str, Any]:
    return {
        "path": entry.path,
        "width": entry.width,
        "height": entry.height,
        "size": entry.size,
        "sha256": entry.sha256,
    }


@dataclass(frozen=True, slots=True)
class ClusterOptions:
    k: int | None = None
    min_size: int = MIN_SIZE


def cluster_collection(collection: Collection, options: ClusterOptions) -> Clustering:
    if options.k is not None:
        return kmeans(collection.matrix, options.k)
    return density(collection.matrix, min_size=options.min_size)


def run_cluster(settings: Settings, location: str, options: ClusterOptions, as_json: bool) -> int:
    collection = open_collection(location, settings)
    result = cluster_collection(collection, options)
    rows = collection.rows
    if as_json:
        doc = {
            "collection": collection.location,
            "images": len(collection),
            "method": result.method,
            "k": options.k,
            "clusters": [
                {
                    "id": c.id,
                    "size": len(c.members),
                    "paths": [rows[m].path for m in c.members],
                    "representative": rows[c.representative].path,
                    "cohesion": round(c.cohesion, 6),
                }
                for c in result.clusters
            ],
            "unclustered": [rows[m].path for m in result.unclustered],
        }
        output.print_json(doc)
        return 0
    print(
        f"{plural(len(collection), 'image')}: {plural(len(result.clusters), 'cluster')} "
        f"({result.method}), {len(result.unclustered)} unclustered"
    )
    for c in result.clusters:
        print(f"cluster {c.id}: {plural(len(c.members), 'image')}, cohesion {c.cohesion:.4f}")
        for member in c.members:
            print(f"  {rows[member].path}")
    if result.unclustered:
        print("unclustered:")
        for member in result.unclustered:
            print(f"  {rows[member].path}")
    return 0


def run_report(
    settings: Settings,
    location: str,
    out: Path,
    threshold: float,
    decisions_file: Path | None,
    options: ClusterOptions,
) -> int:
    wiring.check_output(out, "--out")
    collection, source, groups = find_dupes(settings, location, threshold, decisions_file)
    clusters = cluster_collection(collection, options)
    limits = DecodeLimits(settings.max_pixels, settings.max_bytes)
    summary = write_report(
        out,
        collection,
        groups,
        clusters,
        lambda entry: thumbnail_uri(source, entry, limits),
        threshold=threshold,
    )
    output.print_json(
        {
            "report": str(out),
            "images": len(collection),
            "groups": summary.groups,
            "clusters": summary.clusters,
            "thumbnails": summary.thumbnails,
            "placeholders": summary.placeholders,
        }
    )
    return 0


def _model_json(model: ModelInfo | None) -> dict[str, Any] | None:
    return model.model_dump() if model else None


def run_export(
    settings: Settings, location: str, fmt: str, out: Path, *, force: bool = False
) -> int:
    wiring.check_output(out, "--out")
    if fmt == "npy":
        from dinoembed.collections.export import index_path, is_export_index

        index = index_path(out)
        wiring.check_output(index, "--out (its .json index)")
        if index.exists() and not force and not is_export_index(index):
            raise ConfigError(
                f"--out {out}: its index {index} exists and is no dinoembed export index; "
                "name another --out, or add --force to replace it"
            )
    collection = open_collection(location, settings)
    written = export(collection, "parquet" if fmt == "parquet" else "npy", out)
    summary = {
        "format": fmt,
        "files": [str(p) for p in written],
        "rows": len(collection),
        "dim": int(collection.matrix.shape[1]),
        "model": _model_json(collection.model),
    }
    output.print_json(summary)
    return 0
