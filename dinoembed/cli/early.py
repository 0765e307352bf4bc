"""The session of ``dinoembed embed FILE``'s model, started before the settings exist.

One image is the command's latency case, and most of its cold start was waiting: the
ONNX Runtime session (~0.2 s for ViT-S/14 on two cores, the GIL released) could only
start once the settings had been read, and with them pydantic and pydantic-settings
imported (~0.1 s, the GIL held). So the console script first reads just what names
that session, ``embed``'s ``--model``, ``--cache-dir``, ``--threads`` and ``--streams``
and their ``DINOEMBED_*`` variables, and starts creating it on a background thread;
the parser, the settings and the pipeline's modules import meanwhile.

Nothing is trusted from this reading. The settings resolve and verify the model as
always, and the loader uses this session only when it is for that same file (path,
size, mtime, ctime, inode) and thread count (:meth:`~dinoembed.model.engine.PendingSession.serves`);
otherwise it is left to finish unused, as the Lambda's bundled-model session is
(:mod:`dinoembed.handler.preload`). A wrong reading therefore costs a second session
(~0.2 s of one core), never a wrong result, and only the plainest command lines are
read at all: ``embed``, one existing file, and no option but those four,
``--write-sidecars`` and ``--no-normalize``. Anything else, ``--help`` included, starts
nothing.
"""

from __future__ import annotations

import argparse
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from dinoembed.common.defaults import DEFAULT_MODEL_SHA256, cached_model_path, default_cache_dir

if TYPE_CHECKING:
    from dinoembed.model.engine import PendingSession

_lock = threading.Lock()
_started: PendingSession | None = None


class _Refuse(argparse.ArgumentParser):
    """A parser that raises instead of printing a usage error and exiting: a command line
    it cannot read is the real parser's to report."""

    def error(self, message: str) -> NoReturn:
        raise ValueError(message)


def _reader() -> argparse.ArgumentParser:
    # The real parser's spellings of these four options (dinoembed.cli.commands), and two
    # flags that take no value and do not change the session; abbreviations and every
    # other option are left unknown, so such a command line is not read (--skip-current,
    # for one, may load no model at all).
    parser = _Refuse(add_help=False, allow_abbrev=False)
    parser.add_argument("inputs", nargs="*", type=Path)
    parser.add_argument("--model", type=Path)
    parser.add_argument("--cache-dir", type=Path)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--streams", type=int)
    parser.add_argument("--write-sidecars", action="store_true")
    parser.add_argument("--no-normalize", action="store_true")
    return parser


def _count(flag: int | None, environ: Mapping[str, str], name: str) -> int | None:
    """The flag, else the variable (an empty one is unset); ValueError when not >= 1."""
    value = flag if flag is not None else int(environ.get(name) or 0) or None
    if value is not None and value < 1:
        raise ValueError(f"{name}: {value}")
    return value


def embed_model(argv: Sequence[str], environ: Mapping[str, str]) -> tuple[Path, int] | None:
    """(model file, ONNX Runtime threads) that ``dinoembed ARGV`` will load, when ARGV is
    ``embed`` of one existing file with no option but ``--model``, ``--cache-dir``,
    ``--threads``, ``--streams``, ``--write-sidecars`` and ``--no-normalize``, and the model
    is a local file; else None."""
    if not argv or argv[0] != "embed" or environ.get("DINOEMBED_BUNDLE_DIR"):
        return None
    try:
        args, unknown = _reader().parse_known_args(argv[1:])
        threads = _count(args.threads, environ, "DINOEMBED_THREADS")
        streams = _count(args.streams, environ, "DINOEMBED_STREAMS") or 1  # one image
    except ValueError:
        return None
    if unknown or len(args.inputs) != 1 or not args.inputs[0].is_file():
        return None
    model = args.model or _path(environ.get("DINOEMBED_MODEL_PATH"))
    if model is None:
        cache_dir = args.cache_dir or _path(environ.get("DINOEMBED_CACHE_DIR"))
        sha256 = (environ.get("DINOEMBED_MODEL_SHA256") or DEFAULT_MODEL_SHA256).strip().lower()
        model = cached_model_path(cache_dir or default_cache_dir(), sha256)
    if not model.is_file():
        return None  # to be downloaded, or an error the settings will report
    from dinoembed.model.engine import inference_threads

    return model, inference_threads(threads, streams)[1]


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def start(argv: Sequence[str], environ: Mapping[str, str] = os.environ) -> PendingSession | None:
    """Start the session :func:`embed_model` names, if any; :func:`take` hands it over."""
    global _started
    found = embed_model(argv, environ)
    if found is None:
        return None
    from dinoembed.common.allocator import keep_freed_buffers
    from dinoembed.model.engine import start_session

    keep_freed_buffers()  # dinoembed's own process: see wiring.pipeline
    try:
        pending = start_session(*found)
    except OSError:
        return None
    with _lock:
        _started = pending
    return pending


def take() -> PendingSession | None:
    """The session :func:`start` started, once; None when there is none (or it was taken)."""
    global _started
    with _lock:
        pending, _started = _started, None
    return pending
