"""`genretagger classify`: a model bundle's top-3 genres for some files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from daemon.cli.base import cli, echo_json
from daemon.core.errors import FileError, ModelMismatch

# Each command imports what it works with inside its body: `genretagger --help` or
# `status` takes about 0.3 s that way, against about 2 s with every command's modules
# (onnxruntime, numpy, Flask, the trainer plumbing) imported up front.


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--model", "model_path", required=True,
              type=click.Path(path_type=Path, dir_okay=False), help="a model bundle (.onnx)")
@click.option("--json", "as_json", is_flag=True, help="JSON: {model, files: [...]}")
def classify(files: tuple[Path, ...], model_path: Path, as_json: bool) -> int:
    """Top-3 genres with calibrated confidences for each FILE (exit 1 if any file failed)."""
    import numpy as np

    from daemon.audio.extract import ExtractPool
    from daemon.audio.features import BACKBONE_SPEC, DEFAULT_SPEC, BackboneSpec, FeatureSpec
    from daemon.suggest.classifier import Classifier, read_metadata

    try:
        # The bundle's own specs: the command computes whatever features the model wants.
        metadata = read_metadata(model_path)
        spec = (FeatureSpec.from_json(json.dumps(metadata["feature_spec"]))
                if "feature_spec" in metadata else DEFAULT_SPEC)
        backbone_spec = (BackboneSpec.from_json(json.dumps(metadata["backbone_spec"]))
                         if "backbone_spec" in metadata else BACKBONE_SPEC)
        classifier = Classifier.load(model_path, spec, backbone_spec)
    except (ModelMismatch, KeyError, TypeError, ValueError) as err:
        raise click.BadParameter(str(err), param_hint="--model") from None
    results: dict[str, dict] = {}
    features: dict[str, dict[str, np.ndarray]] = {}
    # Child processes: a decoder that crashes or hangs on one file fails only that file.
    # One decode pass gives every kind the model's genres are computed from.
    with ExtractPool(min(len(files), os.cpu_count() or 1), spec, backbone_spec=backbone_spec,
                     kinds=classifier.bundle.member_needs) as pool:
        for path, result in pool.map([str(f) for f in files]):
            if isinstance(result, FileError):
                results[str(path)] = {"path": str(path), "genres": [], "error": result.reason}
            else:
                features[str(path)] = result.by_kind()
    decoded = list(features)
    for start in range(0, len(decoded), 32):  # clips of 32 songs per onnxruntime run
        batch = decoded[start:start + 32]
        for path, row in zip(batch, classifier.predict_songs([features[p] for p in batch]),
                             strict=True):
            results[path] = {"path": path, "error": None, "genres": [
                {"genre": g, "confidence": round(c, 4)} for g, c in classifier.top(row)]}
    rows = [results[str(f)] for f in files]
    if as_json:
        echo_json({"model": {"path": str(model_path), "sha256": classifier.sha256,
                             "classes": list(classifier.classes),
                             "temperature": classifier.temperature,
                             "family": classifier.family,
                             "unverified": classifier.unverified},
                   "files": rows})
    else:
        for row in rows:
            if row["error"]:
                click.echo(f"{row['path']}: error: {row['error']}", err=True)
            else:
                click.echo(f"{row['path']}: " + ", ".join(
                    f"{g['genre']} {g['confidence']:.1%}" for g in row["genres"]))
    return 1 if any(row["error"] for row in rows) else 0
