"""The ``dinoembed`` parser and dispatch: JSON results on stdout, logs on stderr."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from dinoembed.cli import output, wiring
from dinoembed.common.logs import capture_library_warnings, configure_logging, logs_json, use_json
from dinoembed.errors import DinoEmbedError
from dinoembed.settings import Settings

log = logging.getLogger("dinoembed")

EXIT_OK, EXIT_FAILED, EXIT_ERROR = 0, 1, 2
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for `yes | head -1`
EXIT_INTERRUPTED = 130  # 128 + SIGINT


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        dest="model_path",
        type=Path,
        help="a local ONNX model file (default: the pinned DINOv2 ViT-S/14)",
    )


def add_cache_dir_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cache-dir",
        type=Path,
        metavar="DIR",
        help="where downloaded models and collection indexes are kept "
        "(default: $XDG_CACHE_HOME/dinoembed or ~/.cache/dinoembed)",
    )


def add_suffix_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--output-suffix",
        metavar="SUFFIX",
        help="sidecar name = image name + SUFFIX (default .dinov2.json)",
    )


def add_filter_options(parser: argparse.ArgumentParser) -> None:
    """Globs for folder walks (see :class:`dinoembed.images.files.PathFilter`)."""
    parser.add_argument(
        "--include",
        action="append",
        metavar="GLOB",
        help="only images whose path relative to the folder matches (fnmatch; repeatable; "
        "'*' matches '/' too, so '*.png' is every PNG)",
    )
    parser.add_argument(
        "--exclude",
        action="append",
        metavar="GLOB",
        help="leave out images whose relative path matches (repeatable; e.g. 'raw/*')",
    )


def _add_recipe_options(parser: argparse.ArgumentParser) -> None:
    """What an embedding is made by: the model, its preprocessing and the normalisation."""
    _add_model_options(parser)
    parser.add_argument(
        "--no-normalize",
        dest="normalize",
        action="store_false",
        help="keep raw embeddings (default: L2-normalised)",
    )
    _add_preprocess_option(parser)


def _add_preprocess_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--preprocess",
        choices=["center-crop", "squash"],
        help="center-crop (DINOv2 reference, default) or squash",
    )


def _add_threads_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, help="ONNX Runtime threads (default: usable CPUs)")


def _add_embed_options(parser: argparse.ArgumentParser) -> None:
    _add_recipe_options(parser)
    add_cache_dir_option(parser)
    parser.add_argument("--batch-size", type=int, help="images per inference run (default 8)")
    _add_threads_option(parser)
    parser.add_argument(
        "--streams",
        type=int,
        metavar="N",
        help="images in the model at once, sharing the threads (default: one per thread, "
        "or 1 for a single image)",
    )
    _add_limit_options(parser)


def _default(field: str) -> object:
    """A setting's default, for the help text (the one place it is written)."""
    return Settings.model_fields[field].default


def _add_limit_options(parser: argparse.ArgumentParser) -> None:
    """Decoding limits and workers: the same settings as DINOEMBED_MAX_PIXELS etc."""
    parser.add_argument(
        "--max-pixels",
        type=int,
        metavar="N",
        help=f"refuse images of more pixels than this (default {_default('max_pixels')})",
    )
    parser.add_argument(
        "--max-bytes",
        type=int,
        metavar="N",
        help=f"refuse files larger than this many bytes (default {_default('max_bytes')})",
    )
    parser.add_argument(
        "--decode-workers",
        type=int,
        metavar="N",
        help="threads that read and decode images (default: usable CPUs)",
    )


def _add_query_options(parser: argparse.ArgumentParser) -> None:
    """``similar`` embeds at most one query image, and compares by cosine: no batch size,
    and normalisation changes nothing there (the query vector is normalised either way)."""
    _add_model_options(parser)
    _add_preprocess_option(parser)
    add_cache_dir_option(parser)
    _add_threads_option(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dinoembed",
        argument_default=argparse.SUPPRESS,
        description="DINOv2 image embeddings on the CPU. Every option also reads "
        "DINOEMBED_<NAME> from the environment; a flag wins.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    add_log_format_option(parser)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    embed = sub.add_parser(
        "embed",
        argument_default=argparse.SUPPRESS,
        help="embed images and print one JSON result per line",
    )
    embed.add_argument(
        "paths",
        nargs="*",
        type=Path,
        metavar="PATH",
        help="image files and folders of images; '-' reads paths from standard input",
    )
    embed.add_argument(
        "--files-from",
        type=Path,
        metavar="FILE",
        help="also embed the paths listed in FILE, one a line ('-': standard input)",
    )
    embed.add_argument(
        "--null",
        action="store_true",
        help="(or -0) path lists ('-', --files-from) are NUL-separated, as `find -print0` "
        "writes them",
    )
    embed.add_argument("-r", "--recursive", action="store_true", help="descend into folders")
    embed.add_argument(
        "--write-sidecars",
        action="store_true",
        help="also write <image>.dinov2.json next to each image",
    )
    embed.add_argument(
        "--skip-current",
        action="store_true",
        help="do not embed images whose sidecar is current: print the sidecar's result instead",
    )
    _add_embed_options(embed)
    add_suffix_option(embed)
    add_filter_options(embed)

    watch = sub.add_parser(
        "watch", argument_default=argparse.SUPPRESS, help="embed images in a folder as they appear"
    )
    watch.add_argument("directory", type=Path, metavar="DIR", help="the folder to watch")
    watch.add_argument("--once", action="store_true", help="embed what is there, then exit")
    watch.add_argument(
        "--polling", action="store_true", help="poll instead of inotify (NFS, SMB, SSHFS)"
    )
    watch.add_argument(
        "--no-recursive", dest="recursive", action="store_false", help="watch only the top folder"
    )
    watch.add_argument(
        "--settle-seconds",
        type=float,
        help="how long a file must stay unchanged before it is embedded "
        f"(default {_default('settle_seconds')})",
    )
    watch.add_argument(
        "--rescan-seconds",
        type=float,
        help="walk the whole folder again this often, for changes no event reported; "
        f"0: never (default {_default('rescan_seconds')})",
    )
    _add_embed_options(watch)
    add_suffix_option(watch)
    add_filter_options(watch)

    model = sub.add_parser("model", help="fetch, inspect or build model files")
    model_sub = model.add_subparsers(dest="model_command", required=True)
    fetch = model_sub.add_parser(
        "fetch",
        argument_default=argparse.SUPPRESS,
        help="download and verify the model into the cache",
    )
    _add_model_options(fetch)
    add_cache_dir_option(fetch)
    info = model_sub.add_parser(
        "info",
        argument_default=argparse.SUPPRESS,
        help="print the model's path, sha256, shapes and dimension",
    )
    _add_model_options(info)
    add_cache_dir_option(info)
    standin = model_sub.add_parser(
        "standin",
        argument_default=argparse.SUPPRESS,
        help="write a stand-in model with random weights",
    )
    standin.add_argument("out", type=Path, metavar="OUT", help="the .onnx file to write")
    standin.add_argument("--tiny", action="store_true", help="a few-KB model for unit tests")
    standin.add_argument(
        "--dynamic-batch",
        action="store_true",
        help="a symbolic batch dimension (default: static [1,3,224,224] like the real model)",
    )
    standin.add_argument("--seed", type=int, help="random seed (default 0)")
    quantize = model_sub.add_parser(
        "quantize",
        argument_default=argparse.SUPPRESS,
        help="write a dynamically quantised int8 copy of a model (opt-in, faster)",
    )
    quantize.add_argument("source", type=Path, metavar="IN", help="the float32 .onnx model")
    quantize.add_argument("out", type=Path, metavar="OUT", help="the int8 .onnx file to write")
    from dinoembed.cli.use_args import USE_COMMANDS, add_use_commands

    add_use_commands(sub, _add_embed_options, _add_query_options)
    for name in sorted(USE_COMMANDS):
        command = sub.choices[name]
        if not any("--cache-dir" in a.option_strings for a in command._actions):
            add_cache_dir_option(command)  # the collection index lives in the cache
        add_suffix_option(command)
        add_filter_options(command)
    status = sub.add_parser(
        "status",
        argument_default=argparse.SUPPRESS,
        help="how many images of a folder or prefix have a current sidecar",
        description="Counts images, current/error/missing/stale/orphaned sidecars and error "
        "reasons. A sidecar is current when it was made for this very image (S3: ETag; "
        "folders: size and mtime) by the configured model (--model or DINOEMBED_MODEL_PATH, "
        "else DINOEMBED_MODEL_SHA256; never loaded), preprocessing and normalisation. "
        "Exit status 0: all current; 1: something missing, stale or failed; 2: cannot run.",
    )
    status.add_argument("location", metavar="DIR_OR_S3", help="a folder or s3://bucket/prefix")
    status.add_argument("--json", action="store_true", help="one JSON document")
    status.add_argument(
        "--list",
        dest="list_kinds",
        action="append",
        choices=["missing", "stale", "errors"],
        help="print the paths (or s3:// URIs) of these images instead, one a line "
        "(repeatable; with --json: a 'files' object beside the counts)",
    )
    status.add_argument(
        "--null", action="store_true", help="(or -0) with --list: end each path with NUL"
    )
    status.add_argument(
        "--no-recursive", dest="recursive", action="store_false", help="top folder only"
    )
    _add_recipe_options(status)
    add_suffix_option(status)
    add_filter_options(status)
    serve = sub.add_parser(
        "serve",
        argument_default=argparse.SUPPRESS,
        help="answer embed and search requests over HTTP (needs dinoembed[serve])",
        description="The HTTP API: POST /embed, POST /jobs/dino_embedding (the seed plugin's "
        "route), POST /search, GET /duplicates, GET /health, and a page at GET /. With "
        "DINOEMBED_SERVE_TOKEN set, every route but /health and the page needs "
        "'Authorization: Bearer <token>'. Stops cleanly on SIGTERM or Ctrl-C.",
    )
    serve.add_argument(
        "location",
        nargs="?",
        metavar="DIR_OR_S3",
        help="the collection to search: a folder of sidecars or s3://bucket/prefix",
    )
    serve.add_argument("--host", help="the address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="the port (default 8000)")
    _add_recipe_options(serve)
    add_cache_dir_option(serve)
    _add_threads_option(serve)
    add_suffix_option(serve)
    add_filter_options(serve)
    from dinoembed.cli.index import add_index_command, add_index_option

    index_sync = add_index_command(sub)
    add_suffix_option(index_sync)
    for name in ("similar", "dupes"):  # answered through the index for an s3:// location
        add_index_option(sub.choices[name])
    completion = sub.add_parser(
        "completion",
        argument_default=argparse.SUPPRESS,
        help='print a shell completion script: eval "$(dinoembed completion bash)"',
    )
    completion.add_argument("shell", choices=["bash"], help="the shell (bash only)")
    for command in _all_subparsers(sub):  # `dinoembed embed -v x` as well as `dinoembed -v embed x`
        command.add_argument(
            "-v", "--verbose", action="count", default=argparse.SUPPRESS, help="more logging"
        )
        if command is not completion:
            add_log_format_option(command)
    return parser


def add_log_format_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-format",
        choices=["text", "json"],
        default=argparse.SUPPRESS,
        help="stderr log lines as text (default) or one JSON object per line",
    )


def _all_subparsers(sub: Any) -> list[argparse.ArgumentParser]:
    """Every (sub)command parser, the model commands' included."""
    found: list[argparse.ArgumentParser] = []
    for parser in dict.fromkeys(sub.choices.values()):
        nested = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if nested:
            found += _all_subparsers(nested[0])
        else:
            found.append(parser)
    return found


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dinoembed")
    except PackageNotFoundError:
        return "unknown (not installed)"


SETTINGS_KEYS = frozenset(Settings.model_fields)


def make_settings(args: argparse.Namespace) -> Settings:
    explicit = {k: v for k, v in vars(args).items() if k in SETTINGS_KEYS}
    return Settings(**explicit)


NULL_FLAG = "-0"  # short for --null, as xargs -0 and du -0 spell it


def expand_null_flag(parser: argparse.ArgumentParser, argv: Sequence[str]) -> list[str]:
    """``-0`` -> ``--null``, except as the value of an option (``--threshold -0``).

    Registered with argparse, an option that looks like a negative number makes it read
    every negative number as an option: ``--top-k -1`` would stop being a value and
    ``--threshold -0.5`` a usage error, not the one-line range error. So ``-0`` is
    spelt out here, before parsing."""
    takes_value = {
        flag
        for command in [parser, *_all_subparsers(_subcommands(parser))]
        for action in command._actions
        if action.nargs != 0
        for flag in action.option_strings
    }
    out: list[str] = []
    for n, arg in enumerate(argv):
        if arg == "--":
            return out + list(argv[n:])
        value = n > 0 and argv[n - 1] in takes_value
        out.append("--null" if arg == NULL_FLAG and not value else arg)
    return out


def _subcommands(parser: argparse.ArgumentParser) -> Any:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(expand_null_flag(parser, sys.argv[1:] if argv is None else list(argv)))
    output.use_utf8_stdout()
    level = logging.WARNING - 10 * min(args.verbose, 2)
    handler = configure_logging(level, sys.stderr)
    capture_library_warnings()  # Pillow's warnings: INFO log lines, shown with -v
    try:
        if args.command == "completion":
            from dinoembed.cli.completion import run_completion

            return run_completion(build_parser(), args.shell)
        if "model_path" in vars(args):  # the flag, not DINOEMBED_MODEL_PATH: name the flag
            wiring.check_input_file(args.model_path, "--model")
        settings = make_settings(args)
        if settings.log_format == "json":
            use_json(handler)
        return _dispatch(args, settings)
    except ValidationError as err:
        for problem in err.errors():
            field = ".".join(str(p) for p in problem["loc"])
            print(f"dinoembed: error: {_origin(field, args)}: {problem['msg']}", file=sys.stderr)
        return EXIT_ERROR
    except DinoEmbedError as err:
        return _error(str(err))
    except BrokenPipeError:
        # The reader went away (`dinoembed embed -r photos | head -1`). As the Python docs
        # advise, point stdout at /dev/null so the interpreter's final flush stays quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        _error("output closed early (broken pipe): results after that were not printed")
        return EXIT_BROKEN_PIPE
    except OSError as err:
        # A path named on the command line (or derived from one) could not be used.
        return _error(describe_os_error(err))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _origin(field: str, args: argparse.Namespace) -> str:
    """Where a setting's bad value came from: its flag when given, else its variable."""
    if field in vars(args):
        flag = "--model" if field == "model_path" else f"--{field.replace('_', '-')}"
        return f"{flag} (the flag)"
    return f"DINOEMBED_{field.upper()} (the environment)"


def describe_os_error(err: OSError) -> str:
    """``<path>: <reason>`` for an OSError, naming the file when it has one."""
    reason = err.strerror or str(err)
    names = [str(n) for n in (err.filename, err.filename2) if n is not None]
    return f"{' -> '.join(names)}: {reason}" if names else reason


def _error(message: str) -> int:
    """The one line a user sees for a command that could not run; exit status 2."""
    with contextlib.suppress(OSError):  # stderr gone too: the exit status is all that is left
        if logs_json():  # --log-format json: every stderr line is a JSON object
            log.error("%s", message, extra={"exit_status": EXIT_ERROR})
        else:
            print(f"dinoembed: error: {message}", file=sys.stderr)
    return EXIT_ERROR


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "embed":
        from dinoembed.cli.embed import run_embed

        return run_embed(
            settings,
            getattr(args, "paths", []),
            files_from=getattr(args, "files_from", None),
            null=getattr(args, "null", False),
            skip_current=getattr(args, "skip_current", False),
        )
    if args.command == "watch":
        with wiring.needs_extra("dinoembed watch"):
            from dinoembed.watcher.daemon import run_watch
        return run_watch(
            settings,
            args.directory,
            once=getattr(args, "once", False),
            embedder=lambda: wiring.pipeline(settings),
        )
    if args.command == "model":
        from dinoembed.cli.model import run_model

        return run_model(args, settings)
    if args.command == "status":
        from dinoembed.cli.status import run_status

        return run_status(
            settings,
            args.location,
            as_json=getattr(args, "json", False),
            listed=getattr(args, "list_kinds", []),
            null=getattr(args, "null", False),
        )
    if args.command == "index":
        from dinoembed.cli.index import run_index

        return run_index(args, settings)
    if args.command == "serve":
        from dinoembed.cli.serve import run_serve

        return run_serve(settings, getattr(args, "location", None))
    from dinoembed.cli.use import run_use

    return run_use(args, settings)
