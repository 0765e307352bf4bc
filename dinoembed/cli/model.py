"""``dinoembed model fetch | info | standin | quantize``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from dinoembed.cli import output, wiring
from dinoembed.errors import ConfigError
from dinoembed.settings import Settings

EXIT_OK = 0


def run_model(args: argparse.Namespace, settings: Settings) -> int:
    if args.model_command == "quantize":
        if args.out.is_dir():  # (quantize makes a missing parent folder itself)
            raise ConfigError(f"OUT {args.out}: is a folder; name the file to write")
        return _quantize(args.source, args.out)
    if args.model_command == "standin":
        wiring.check_output(args.out, "OUT")
        from dinoembed.model.standin import VitConfig, build_tiny, build_vit

        seed = getattr(args, "seed", 0)
        batch = None if getattr(args, "dynamic_batch", False) else 1
        if getattr(args, "tiny", False):
            build_tiny(args.out, seed=seed, batch=batch)
        else:
            build_vit(args.out, VitConfig(seed=seed), batch=batch)
        output.print_json(
            {
                "path": str(args.out),
                "standin": True,
                "note": "random weights: not real DINOv2 embeddings",
            }
        )
        return EXIT_OK
    from dinoembed.model.store import ModelSource

    resolved = wiring.model_store(settings).resolve(ModelSource.from_settings(settings))
    report: dict[str, Any] = {
        "path": str(resolved.path),
        "sha256": resolved.sha256,
        "name": resolved.name,
        "origin": resolved.origin,
    }
    if args.model_command == "info":
        report.update(_describe(resolved.path, settings))
    output.print_json(report)
    return EXIT_OK


def _quantize(source: Path, out: Path) -> int:
    from dinoembed.model.quantize import quantize_model

    report = quantize_model(source, out)
    output.print_json(
        {
            "path": str(report.output),
            "source": str(report.source),
            "bytes": report.output_bytes,
            "source_bytes": report.source_bytes,
            "dim": report.dim,
            "note": "int8: check its agreement with the float32 model on your images",
        }
    )
    return EXIT_OK


def _describe(path: Path, settings: Settings) -> dict[str, Any]:
    from dinoembed.model.engine import create_session, inspect_session, is_standin

    session = create_session(path, settings.threads)
    spec = inspect_session(session)
    return {
        "inputs": [
            {"name": i.name, "shape": list(i.shape), "type": i.type} for i in session.get_inputs()
        ],
        "outputs": [
            {"name": o.name, "shape": list(o.shape), "type": o.type} for o in session.get_outputs()
        ],
        "input_size": spec.input_size,
        "dim": spec.dim,
        "batch": spec.batch_mode,
        "standin": is_standin(session),
    }
