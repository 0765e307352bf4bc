"""The ``dinoembed`` parser and dispatch: JSON results on stdout, logs on stderr."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from dinoembed.cli import wiring
from dinoembed.errors import DinoEmbedError
from dinoembed.logs import capture_library_warnings
from dinoembed.settings import Settings

log = logging.getLogger("dinoembed")

EXIT_OK, EXIT_FAILED, EXIT_ERROR = 0, 1, 2


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        dest="model_path",
        type=Path,
        help="a local ONNX model file (default: the pinned DINOv2 ViT-S/14)",
    )


def _add_embed_options(parser: argparse.ArgumentParser) -> None:
    _add_model_options(parser)
    parser.add_argument(
        "--no-normalize",
        dest="normalize",
        action="store_false",
        help="keep raw embeddings (default: L2-normalised)",
    )
    parser.add_argument(
        "--preprocess",
        choices=["center-crop", "squash"],
        help="center-crop (DINOv2 reference, default) or squash",
    )
    parser.add_argument("--batch-size", type=int, help="images per inference run (default 8)")
    parser.add_argument("--threads", type=int, help="ONNX Runtime threads (default: usable CPUs)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dinoembed",
        argument_default=argparse.SUPPRESS,
        description="DINOv2 image embeddings on the CPU. Every option also reads "
        "DINOEMBED_<NAME> from the environment; a flag wins.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = parser.add_subparsers(dest="command", required=True)

    embed = sub.add_parser(
        "embed",
        argument_default=argparse.SUPPRESS,
        help="embed images and print one JSON result per line",
    )
    embed.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    embed.add_argument("-r", "--recursive", action="store_true", help="descend into folders")
    embed.add_argument(
        "--write-sidecars",
        action="store_true",
        help="also write <image>.dinov2.json next to each image",
    )
    _add_embed_options(embed)

    watch = sub.add_parser(
        "watch", argument_default=argparse.SUPPRESS, help="embed images in a folder as they appear"
    )
    watch.add_argument("directory", type=Path, metavar="DIR")
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
        help="how long a file must stay unchanged before it is embedded",
    )
    _add_embed_options(watch)

    model = sub.add_parser("model", help="fetch, inspect or build model files")
    model_sub = model.add_subparsers(dest="model_command", required=True)
    fetch = model_sub.add_parser(
        "fetch",
        argument_default=argparse.SUPPRESS,
        help="download and verify the model into the cache",
    )
    _add_model_options(fetch)
    info = model_sub.add_parser(
        "info",
        argument_default=argparse.SUPPRESS,
        help="print the model's path, sha256, shapes and dimension",
    )
    _add_model_options(info)
    standin = model_sub.add_parser(
        "standin",
        argument_default=argparse.SUPPRESS,
        help="write a stand-in model with random weights",
    )
    standin.add_argument("out", type=Path, metavar="OUT")
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
    quantize.add_argument("source", type=Path, metavar="IN")
    quantize.add_argument("out", type=Path, metavar="OUT")
    from dinoembed.cli.use import add_use_commands

    add_use_commands(sub, _add_embed_options)
    return parser


SETTINGS_KEYS = frozenset(Settings.model_fields)


def make_settings(args: argparse.Namespace) -> Settings:
    explicit = {k: v for k, v in vars(args).items() if k in SETTINGS_KEYS}
    return Settings(**explicit)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    capture_library_warnings()  # Pillow's warnings: INFO log lines, shown with -v
    try:
        settings = make_settings(args)
        return _dispatch(args, settings)
    except ValidationError as err:
        for problem in err.errors():
            field = ".".join(str(p) for p in problem["loc"])
            print(f"dinoembed: error: {field}: {problem['msg']}", file=sys.stderr)
        return EXIT_ERROR
    except DinoEmbedError as err:
        print(f"dinoembed: error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "embed":
        from dinoembed.cli.embed import run_embed

        return run_embed(settings, args.paths)
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
    from dinoembed.cli.use import run_use

    return run_use(args, settings)
