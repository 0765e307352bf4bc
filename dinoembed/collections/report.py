"""One self-contained HTML page of a collection: its duplicate groups, its clusters, the
images in no cluster and the files that failed to embed, so every image is on the page.

Everything is inline: CSS in a ``<style>``, thumbnails as ``data:image/jpeg`` URIs
(at most :data:`THUMB` px on the long side, JPEG quality 70: ~3-8 KB each), no
script, no link to anything outside the file. The page is written as it goes, in
chunks of :data:`CHUNK` tiles whose thumbnails are made on a small thread pool, to a
temp file renamed into place at the end: neither the page nor its thumbnails are ever
all in memory. Large clusters show their :data:`CLUSTER_TILES` most central images
and list the rest by name, as do the unclustered and failed sections. Images that are
gone or cannot be decoded get a labelled placeholder tile. Text wraps between words
(a file name too long for its tile breaks where it must). Paths are untrusted: every
one goes through :func:`html.escape`.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from dinoembed.collections.clustering import Clustering
from dinoembed.collections.collection import NOT_A_ROW, Collection, Entry, SidecarSource
from dinoembed.collections.dupes import DupeGroup, human_size
from dinoembed.common.atomic import atomic_path
from dinoembed.common.progress import Progress
from dinoembed.common.words import plural
from dinoembed.errors import DinoEmbedError, ImageError
from dinoembed.images.decode import DecodeLimits, DecodeTarget, decode

log = logging.getLogger(__name__)

THUMB = 160
QUALITY = 70
CHUNK = 64
WORKERS = 4
CLUSTER_TILES = 48
GROUP_TILES = 48
KEEP_COLOUR = "#00c853"

CSS = f"""
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 16px; background: #fafafa; color: #222; }}
h1 {{ font-size: 20px; margin: 0 0 4px; }} h2 {{ font-size: 17px; margin: 24px 0 8px; }}
.note {{ color: #555; }} .warn {{ background: #fff3cd; padding: 6px 10px; }}
section.group {{ background: #fff; border: 1px solid #ddd; margin: 10px 0; padding: 8px; }}
.head {{ margin-bottom: 6px; }} .kind {{ font-weight: 600; text-transform: uppercase; }}
.grid {{ display: flex; flex-wrap: wrap; gap: 10px; }}
figure.tile {{ margin: 0; width: {THUMB + 12}px; padding: 6px; background: #fff;
  border: 1px solid #ccc; }}
figure.tile img, .ph {{ display: block; margin: 0 auto; }}
.ph {{ width: {THUMB}px; height: {THUMB * 3 // 4}px; background: #e0e0e0; color: #666;
  display: flex; align-items: center; justify-content: center; text-align: center; }}
figure.keep {{ background: {KEEP_COLOUR}; border: 4px solid {KEEP_COLOUR}; padding: 4px; }}
figcaption {{ font-size: 11px; overflow-wrap: break-word; margin-top: 4px; }}
.why {{ font-weight: 600; }} details {{ font-size: 12px; color: #444; margin-top: 6px; }}
"""


@dataclass(frozen=True, slots=True)
class ReportSummary:
    path: Path
    groups: int
    clusters: int
    thumbnails: int
    placeholders: int


@dataclass(frozen=True, slots=True)
class _Tile:
    entry: Entry
    keep_reason: str | None = None


Thumbnailer = Callable[[Entry], str]


def thumbnail_uri(source: SidecarSource, entry: Entry, limits: DecodeLimits) -> str:
    """A small JPEG of the image as a data URI; :class:`ImageError` or
    :class:`~dinoembed.errors.SourceGoneError` when there is none to make."""
    with source.open_image(entry.sidecar) as fh:
        data = fh.read(limits.max_bytes + 1)
    img = decode(data, limits, DecodeTarget("squash", 2 * THUMB))
    img.thumbnail((THUMB, THUMB))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def write_report(
    out: Path,
    collection: Collection,
    groups: Sequence[DupeGroup],
    clusters: Clustering,
    thumbnail: Thumbnailer,
    *,
    threshold: float,
    stderr: TextIO | None = None,
) -> ReportSummary:
    rows = collection.rows
    failed = [e for e in collection.entries if e.row == NOT_A_ROW and e.path]
    sections = list(_plan(rows, groups, clusters, failed))
    total = sum(len(tiles) for _, tiles, _ in sections)
    counts = [0, 0]
    with (
        atomic_path(out) as tmp,  # a reader never sees half a page; a failure leaves none
        tmp.open("w", encoding="utf-8") as fh,
        Progress(total, stream=stderr) as progress,
        ThreadPoolExecutor(WORKERS, thread_name_prefix="dinoembed-thumb") as pool,
    ):
        _head(fh, collection, groups, clusters, threshold)
        for heading, tiles, tail in sections:
            fh.write(heading)
            for start in range(0, len(tiles), CHUNK):
                chunk = tiles[start : start + CHUNK]
                for tile, made in zip(chunk, pool.map(_safe(thumbnail), chunk), strict=True):
                    fh.write(_tile_html(tile, made))
                    counts[0 if made.uri else 1] += 1
                progress.advance(len(chunk))
            fh.write(tail)
        fh.write("</body></html>\n")
    return ReportSummary(out, len(groups), len(clusters.clusters), counts[0], counts[1])


@dataclass(frozen=True, slots=True)
class _Made:
    uri: str | None  # the thumbnail, or None and why not
    problem: str = ""


def _safe(thumbnail: Thumbnailer) -> Callable[[_Tile], _Made]:
    def make(tile: _Tile) -> _Made:
        try:
            return _Made(thumbnail(tile.entry))
        except ImageError as err:
            return _Made(None, f"cannot show this image: {err}")
        except (DinoEmbedError, OSError) as err:
            log.info("%s: no thumbnail (%s)", tile.entry.path, err)
            return _Made(None, "image gone")

    return make


def _plan(
    rows: Sequence[Entry],
    groups: Sequence[DupeGroup],
    clusters: Clustering,
    failed: Sequence[Entry] = (),
) -> Iterator[tuple[str, list[_Tile], str]]:
    """(opening HTML, tiles, closing HTML) for each group, cluster, the unclustered images
    and the failed files, in page order."""
    yield f'<h2 id="dupes">Duplicates: {plural(len(groups), "group")}</h2>\n', [], ""
    if not groups:
        yield '<p class="note">No duplicate groups at this threshold.</p>\n', [], ""
    for number, group in enumerate(groups, 1):
        head = (
            f'<section class="group dupes"><div class="head"><span class="kind">{group.kind}'
            f"</span> group {number}: {plural(len(group.members), 'image')}, cosine "
            f'{group.min_score:.4f}-{group.max_score:.4f}</div><div class="grid">\n'
        )
        ordered = [group.keep, *(m for m in group.members if m != group.keep)]
        tiles = [
            _Tile(rows[m], group.keep_reason if m == group.keep else None)
            for m in ordered[:GROUP_TILES]
        ]
        paths = [rows[m].path for m in group.members]
        tail = (
            "</div>" + _more(ordered[GROUP_TILES:], rows) + _decision_hint(paths) + "</section>\n"
        )
        yield head, tiles, tail
    yield (
        f'<h2 id="clusters">Clusters: {len(clusters.clusters)} ({clusters.method}), '
        f"{plural(len(clusters.unclustered), 'image')} unclustered</h2>\n",
        [],
        "",
    )
    for cluster in clusters.clusters:
        head = (
            f'<section class="group cluster"><div class="head">cluster {cluster.id}: '
            f"{plural(len(cluster.members), 'image')}, mean cosine to centre "
            f"{cluster.cohesion:.3f}"
            '</div><div class="grid">\n'
        )
        members = sorted(cluster.members, key=lambda m: m != cluster.representative)
        tiles = [_Tile(rows[m]) for m in members[:CLUSTER_TILES]]
        yield head, tiles, "</div>" + _more(members[CLUSTER_TILES:], rows) + "</section>\n"
    if clusters.unclustered:
        yield _rest_section(
            "unclustered",
            f"Unclustered: {plural(len(clusters.unclustered), 'image')} in no cluster",
            [rows[m] for m in clusters.unclustered],
        )
    if failed:
        yield _rest_section(
            "failed",
            f"Failed: {plural(len(failed), 'file')} without an embedding (error sidecars)",
            list(failed),
        )


def _rest_section(
    anchor: str, title: str, entries: Sequence[Entry]
) -> tuple[str, list[_Tile], str]:
    """A heading and the first :data:`CLUSTER_TILES` tiles; the rest listed by name."""
    head = (
        f'<h2 id="{anchor}">{html.escape(title)}</h2>\n'
        f'<section class="group {anchor}"><div class="grid">\n'
    )
    tiles = [_Tile(e) for e in entries[:CLUSTER_TILES]]
    rest = entries[CLUSTER_TILES:]
    more = ""
    if rest:
        items = "".join(f"<li>{html.escape(e.path)}</li>" for e in rest)
        more = f"<details><summary>{len(rest)} more</summary><ul>{items}</ul></details>"
    return head, tiles, "</div>" + more + "</section>\n"


def _more(rest: Sequence[int], rows: Sequence[Entry]) -> str:
    if not rest:
        return ""
    items = "".join(f"<li>{html.escape(rows[m].path)}</li>" for m in rest)
    return f"<details><summary>{len(rest)} more</summary><ul>{items}</ul></details>"


def _decision_hint(paths: Sequence[str]) -> str:
    line = html.escape(json.dumps(paths))
    return (
        "<details><summary>not duplicates?</summary>add this list to "
        f'<code>"not_duplicates"</code> in your decisions file: <code>{line}</code></details>'
    )


def _tile_html(tile: _Tile, made: _Made) -> str:
    entry = tile.entry
    path = html.escape(entry.path)
    name = html.escape(entry.path.rsplit("/", 1)[-1])
    if made.uri:
        picture = f'<img src="{made.uri}" alt="{name}">'
    else:
        picture = f'<div class="ph">{html.escape(made.problem)}</div>'
    meta = []
    if entry.width and entry.height:
        meta.append(f"{entry.width}x{entry.height}")
    if entry.size is not None:
        meta.append(human_size(entry.size))
    why = ""
    if tile.keep_reason:
        why = f'<br><span class="why">keep: {html.escape(tile.keep_reason)}</span>'
    classes = "tile keep" if tile.keep_reason else "tile"
    return (
        f'<figure class="{classes}" title="{path}">{picture}<figcaption>{name}'
        f"<br>{' · '.join(meta)}{why}</figcaption></figure>\n"
    )


def _head(
    fh: TextIO,
    collection: Collection,
    groups: Sequence[DupeGroup],
    clusters: Clustering,
    threshold: float,
) -> None:
    model = collection.model
    fh.write(
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>dinoembed report: {html.escape(collection.location)}</title>"
        f"<style>{CSS}</style></head><body>\n"
        f"<h1>{html.escape(collection.location)}</h1>\n"
        f'<p class="note">{plural(len(collection), "image")} · '
        f"{plural(len(groups), 'duplicate group')} (cosine &ge; {threshold}) · "
        f"{plural(len(clusters.clusters), 'cluster')} · model "
        f"{html.escape(model.name if model else '?')}. The highlighted tile of each group "
        "is the suggested keep.</p>\n"
    )
    if model is not None and model.name.startswith("standin:"):
        fh.write(
            '<p class="warn">Embedded by a stand-in model with random weights: the groups '
            "and clusters show the plumbing, not real visual similarity.</p>\n"
        )
