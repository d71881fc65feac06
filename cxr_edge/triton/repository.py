"""Write a Triton Inference Server model repository for a cxr-edge model.

Layouts (``protocol.LAYOUTS``):

- ``whole``: one Python-backend model ``cxr_edge`` wrapping ``CxrEdge`` (ONNX Runtime for an
  ONNX file, TensorRT for a plan): one X-ray in, logits, probabilities and maps out.
- ``split``: ``patchnet`` serves the patch backbone with dynamic batching over patches, so the
  patch batches of many images (and carts) merge into one engine call; ``cxr_edge`` (Python
  backend) tiles, sends the patches to ``patchnet`` through BLS and runs the postprocess.
  ``patchnet`` runs on Triton's own backend (``native``: ``onnxruntime_onnx`` for an ONNX,
  ``tensorrt_plan`` for a plan) or on a Python-backend model running cxr-edge's own backend
  (``python``; what a server with only the Python backend, like the ``nvidia-pytriton`` wheel's,
  can serve).

The image model's ``model.py`` (and the Python ``patchnet``'s) are ``model_cxr_edge.py`` and
``model_patchnet.py`` of this package, copied as they are; they import ``cxr_edge``, so the
server's Python must have cxr-edge installed. Model metadata goes into every config's
parameters from one source, the ONNX metadata (a plan's manifest carries the same JSON).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cxr_edge.backends.base import PLAN_SUFFIXES
from cxr_edge.digest import sha256_file
from cxr_edge.errors import CxrEdgeError
from cxr_edge.metadata import ModelMetadata
from cxr_edge.triton import protocol

#: Where the ``patchnet`` model runs: Triton's own ONNX Runtime / TensorRT backend, or cxr-edge's
#: backend inside a Python-backend model.
PATCHNET_BACKENDS = ("native", "python")

DEFAULT_INSTANCES = 1
#: Images per dynamic batch of the image model.
DEFAULT_MAX_BATCH = 8
#: Patches per dynamic batch of ``patchnet`` (16 shifted copies of 64 patches).
DEFAULT_MAX_PATCHES = 1024
#: Longest an image request or a patch batch waits for others to join it. 0: no added latency;
#: requests queued while every instance is busy are still merged.
DEFAULT_QUEUE_DELAY_US = 0

_MODEL_FILES = Path(__file__).parent


@dataclass(frozen=True)
class Network:
    """The patch network to serve: its file, kind, metadata and tensor names.

    ``max_patches``: the most patches it takes at once (a plan's profile), or None (any).
    ``companion``: a file that must travel with it (a plan's manifest), or None.
    """

    path: Path
    is_plan: bool
    metadata: ModelMetadata
    input_name: str
    output_name: str
    max_patches: int | None
    companion: Path | None

    @property
    def file_name(self) -> str:
        return "model.plan" if self.is_plan else "model.onnx"


def read_network(model: str | Path) -> Network:
    """Inspect an ONNX file (metadata, I/O names, dynamic batch) or a plan (through its manifest)."""
    path = Path(model)
    if not path.is_file():
        raise CxrEdgeError(path, "no such model file")
    if path.suffix.lower() in PLAN_SUFFIXES:
        from cxr_edge.engine.manifest import manifest_path, read_manifest

        manifest = read_manifest(path)
        return Network(
            path=path,
            is_plan=True,
            metadata=manifest.metadata,
            input_name=manifest.input_name,
            output_name=manifest.output_name,
            max_patches=manifest.profile.max,
            companion=manifest_path(path),
        )
    import onnx

    try:  # parsed once, for the metadata and the graph (ModelMetadata.from_onnx's wording)
        model_proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and friends
        raise CxrEdgeError(path, f"not a readable ONNX model ({type(exc).__name__})") from exc
    metadata = ModelMetadata.from_props({p.key: p.value for p in model_proto.metadata_props}, path)
    graph = model_proto.graph
    initializers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1 or not graph.output:
        raise CxrEdgeError(
            path, f"expected 1 input and >= 1 output, got {len(inputs)} and {len(graph.output)}"
        )
    batch = inputs[0].type.tensor_type.shape.dim[0] if inputs[0].type.tensor_type.shape.dim else None
    fixed = batch is not None and batch.HasField("dim_value") and batch.dim_value > 0
    return Network(
        path=path,
        is_plan=False,
        metadata=metadata,
        input_name=inputs[0].name,
        output_name=graph.output[0].name,
        max_patches=int(batch.dim_value) if fixed and batch is not None else None,
        companion=None,
    )


def _quote(text: str) -> str:
    """A protobuf text-format string literal (UTF-8 bytes beyond ASCII as octal escapes)."""
    out = []
    for byte in text.encode("utf-8"):
        char = chr(byte)
        if char in '\\"':
            out.append("\\" + char)
        elif 32 <= byte < 127:
            out.append(char)
        else:
            out.append(f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def _tensor(name: str, data_type: str, dims: list[int]) -> str:
    return f"  {{ name: {_quote(name)} data_type: {data_type} dims: [ {', '.join(map(str, dims))} ] }}"


def _config(
    *,
    name: str,
    engine: str,
    max_batch: int,
    inputs: list[str],
    outputs: list[str],
    instances: int,
    kind: str,
    parameters: dict[str, str],
    default_file: str | None = None,
) -> str:
    """The config.pbtxt text of one model. ``engine``: ``backend: "python"`` or ``platform: ...``."""
    lines = [f"name: {_quote(name)}", engine, f"max_batch_size: {max_batch}"]
    if default_file:
        lines.append(f"default_model_filename: {_quote(default_file)}")
    lines += ["input [", ",\n".join(inputs), "]", "output [", ",\n".join(outputs), "]"]
    lines.append(f"dynamic_batching {{ max_queue_delay_microseconds: {DEFAULT_QUEUE_DELAY_US} }}")
    lines.append(f"instance_group [ {{ count: {instances} kind: {kind} }} ]")
    lines.append("parameters [")
    lines.append(
        ",\n".join(
            f"  {{ key: {_quote(k)} value: {{ string_value: {_quote(v)} }} }}" for k, v in parameters.items()
        )
    )
    lines.append("]")
    return "\n".join(lines) + "\n"


def _image_config(net: Network, layout: str, instances: int, max_batch: int, extra: dict[str, str]) -> str:
    md = net.metadata
    c, n = md.num_classes, md.image_size
    fp32 = "TYPE_FP32"
    # A plan in the whole layout runs inside the Python model: one instance group per GPU.
    kind = "KIND_GPU" if layout == "whole" and net.is_plan else "KIND_CPU"
    return _config(
        name=protocol.IMAGE_MODEL,
        engine='backend: "python"',
        max_batch=max_batch,
        inputs=[
            _tensor(protocol.IMAGE_INPUT, "TYPE_UINT8", [-1, -1]),
            _tensor(protocol.STEPS_INPUT, "TYPE_INT32", [1]),
        ],
        outputs=[
            _tensor(protocol.LOGITS_OUTPUT, fp32, [c]),
            _tensor(protocol.PROBABILITIES_OUTPUT, fp32, [c]),
            _tensor(protocol.RAW_OUTPUT, fp32, [c, n, n]),
            _tensor(protocol.SCALED_OUTPUT, fp32, [c, n, n]),
            _tensor(protocol.PATCH_LOGITS_OUTPUT, fp32, [c, md.grid, md.grid]),
            _tensor(protocol.INFO_OUTPUT, "TYPE_STRING", [1]),
        ],
        instances=instances,
        kind=kind,
        parameters={protocol.LAYOUT_PARAM: layout, **extra, **protocol.metadata_parameters(md)},
    )


def _patch_config(net: Network, patchnet: str, max_patches: int, extra: dict[str, str]) -> str:
    md = net.metadata
    if patchnet == "python":
        engine, default_file = 'backend: "python"', None
    elif net.is_plan:
        engine, default_file = 'platform: "tensorrt_plan"', net.file_name
    else:
        engine, default_file = 'platform: "onnxruntime_onnx"', net.file_name
    return _config(
        name=protocol.PATCH_MODEL,
        engine=engine,
        max_batch=max_patches,
        inputs=[_tensor(net.input_name, "TYPE_FP32", [1, md.patch_size, md.patch_size])],
        outputs=[_tensor(net.output_name, "TYPE_FP32", [md.num_classes])],
        instances=1,
        kind="KIND_GPU" if net.is_plan else "KIND_CPU",
        parameters={**extra, **protocol.metadata_parameters(md)},
        default_file=default_file,
    )


def _check_options(
    net: Network, layout: str, instances: int, max_batch: int, max_patches: int, patchnet: str
) -> None:
    if layout not in protocol.LAYOUTS:
        raise CxrEdgeError(None, f"--layout must be one of {', '.join(protocol.LAYOUTS)}, got {layout!r}")
    if patchnet not in PATCHNET_BACKENDS:
        raise CxrEdgeError(
            None, f"--patchnet must be one of {', '.join(PATCHNET_BACKENDS)}, got {patchnet!r}"
        )
    if instances < 1:
        raise CxrEdgeError(None, f"--instances must be >= 1, got {instances}")
    if max_batch < 1:
        raise CxrEdgeError(None, f"--max-batch must be >= 1, got {max_batch}")
    if layout != "split":
        return
    per_image = net.metadata.patches_per_image
    if max_patches < per_image:
        raise CxrEdgeError(
            None, f"--max-patches {max_patches} is smaller than one image's {per_image} patches"
        )
    if net.is_plan and net.max_patches is not None and max_patches > net.max_patches:
        raise CxrEdgeError(
            net.path,
            f"--max-patches {max_patches} exceeds its optimization profile's maximum of {net.max_patches}",
        )
    if not net.is_plan and patchnet == "native" and net.max_patches is not None:
        raise CxrEdgeError(
            net.path,
            f"has a fixed batch of {net.max_patches}; Triton's ONNX Runtime backend needs a dynamic batch "
            "dimension (re-export it, or pass --patchnet python)",
        )


@contextlib.contextmanager
def _staged_folder(out: Path, force: bool) -> Iterator[Path]:
    """Yield an empty folder beside ``out``; on success it replaces ``out`` (which must be absent
    or empty unless ``force``). On failure nothing at ``out`` changes."""
    if out.exists() and not out.is_dir():
        raise CxrEdgeError(out, "exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise CxrEdgeError(out, "exists and is not empty; choose another folder or pass --force")
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent))
    try:
        yield stage
        old = None
        if out.is_dir():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old / "previous")
        os.replace(stage, out)
        if old is not None:
            shutil.rmtree(old)
    finally:
        if stage.exists():
            shutil.rmtree(stage)


def export_repository(
    model: str | Path,
    out: str | Path,
    layout: str = "whole",
    instances: int = DEFAULT_INSTANCES,
    max_batch: int = DEFAULT_MAX_BATCH,
    max_patches: int = DEFAULT_MAX_PATCHES,
    patchnet: str = "native",
    force: bool = False,
) -> list[Path]:
    """Write a model repository for ``model`` (ONNX file or TensorRT plan with its manifest) at ``out``.

    layout: "whole" or "split". instances: instances of the image model (CPU processes; in
    "whole" each runs the network). max_batch: images per dynamic batch of the image model.
    max_patches: patches per dynamic batch of ``patchnet`` ("split"), at most a plan's profile
    maximum. patchnet: "native" (Triton's ONNX Runtime / TensorRT backend) or "python".
    force: replace a non-empty ``out``. Returns the config files written, repository-relative.
    The repository appears complete or not at all.
    """
    net = read_network(model)
    _check_options(net, layout, instances, max_batch, max_patches, patchnet)
    out = Path(out)
    sha256 = sha256_file(net.path)
    serving = protocol.IMAGE_MODEL if layout == "whole" else protocol.PATCH_MODEL
    source = {
        # The exported model's own file name: what reports and overlays name the model by.
        protocol.SOURCE_FILE_PARAM: net.path.name,
        protocol.SOURCE_SHA256_PARAM: sha256,
    }
    files: dict[str, str] = {}  # repository-relative path -> text
    copies: dict[str, Path] = {}  # repository-relative path -> file to copy
    image_extra = dict(source)
    if layout == "whole":
        image_extra[protocol.MODEL_FILE_PARAM] = net.file_name
    else:
        image_extra.update(
            {
                protocol.PATCH_MODEL_PARAM: protocol.PATCH_MODEL,
                protocol.PATCH_INPUT_PARAM: net.input_name,
                protocol.PATCH_OUTPUT_PARAM: net.output_name,
                protocol.MAX_PATCHES_PARAM: str(max_patches),
            }
        )
        patch_extra = {protocol.MODEL_FILE_PARAM: net.file_name, **source}
        files[f"{protocol.PATCH_MODEL}/config.pbtxt"] = _patch_config(net, patchnet, max_patches, patch_extra)
        if patchnet == "python":
            copies[f"{protocol.PATCH_MODEL}/1/model.py"] = _MODEL_FILES / "model_patchnet.py"
    files[f"{protocol.IMAGE_MODEL}/config.pbtxt"] = _image_config(
        net, layout, instances, max_batch, image_extra
    )
    copies[f"{protocol.IMAGE_MODEL}/1/model.py"] = _MODEL_FILES / "model_cxr_edge.py"
    copies[f"{serving}/1/{net.file_name}"] = net.path
    if net.companion is not None:  # the plan's manifest, under the name the TensorRT backend looks for
        copies[f"{serving}/1/{Path(net.file_name).with_suffix('.json')}"] = net.companion

    with _staged_folder(out, force) as stage:
        for rel, text in files.items():
            target = stage / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        for rel, src in copies.items():
            target = stage / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, target)
    return sorted(Path(rel) for rel in files)
