"""Build a TensorRT plan from a patch-model ONNX (TensorRT 10.3 ... 11.x, feature-detected).

Precision comes from the ONNX when the network is strongly typed (TensorRT >= 10 always offers
it; 11 has nothing else): fp32 from the exported ONNX, fp16 from the typed fp16 ONNX, int8 from
the symmetric Q/DQ ONNX (``cxr_edge.quantize``). The FP16/INT8 builder flags are used only for a
weakly typed network, i.e. only for DLA builds on a TensorRT that still has those flags.

Before a plan is written it can be checked (``PlanCheck``, see ``engine/plan_check.py``): a plan
that fails is not written. Versions: TensorRT 10.3 (JetPack 6.1/6.2) through 11.x; DLA is feature-detected
(TensorRT 11.0 to 11.3 have none; 11.4.1 has it again on Jetson AGX Orin).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from cxr_edge import __version__
from cxr_edge.atomic import atomic_path, write_bytes_atomic
from cxr_edge.compare import Comparison
from cxr_edge.digest import sha256_file
from cxr_edge.engine.manifest import EngineManifest, write_manifest
from cxr_edge.engine.profile import DEFAULT_PROFILE_MAX_PATCHES, BatchProfile, size_profile
from cxr_edge.errors import CxrEdgeError
from cxr_edge.metadata import PRECISIONS, ModelMetadata

if TYPE_CHECKING:
    import tensorrt as trt

# Functions below run only after import_tensorrt() succeeded; they import tensorrt locally so
# mypy checks every call against tensorrt-stubs while CPU-only imports of this module stay light.
TENSORRT_MISSING = (
    "TensorRT is not installed (Python module 'tensorrt' not found): on Jetson use JetPack 6 and a venv "
    "made with --system-site-packages; on x86 + NVIDIA GPU run \"pip install 'cxr-edge[gpu]'\" (docs/gpu.md)"
)


#: Oldest TensorRT this code is written for (JetPack 6.1 and 6.2 ship 10.3; JetPack 6.0 ships 8.6).
MIN_TENSORRT = (10, 3)


def version_tuple(version: str) -> tuple[int, ...]:
    """``"10.3.0.30"`` -> ``(10, 3, 0, 30)`` (non-numeric parts end the tuple)."""
    parts = []
    for part in version.split("."):
        if not part.isdigit():
            break
        parts.append(int(part))
    return tuple(parts)


def import_tensorrt() -> ModuleType:
    """The ``tensorrt`` module, or CxrEdgeError(TENSORRT_MISSING), or one line when it is older
    than ``MIN_TENSORRT``. The stubs package alone does not count."""
    try:
        import tensorrt
    except ImportError as exc:
        raise CxrEdgeError(None, TENSORRT_MISSING) from exc
    if not hasattr(tensorrt, "Builder"):
        raise CxrEdgeError(None, TENSORRT_MISSING)
    version = str(getattr(tensorrt, "__version__", "0"))
    if version_tuple(version)[:2] < MIN_TENSORRT:
        raise CxrEdgeError(
            None,
            f"TensorRT {version} is too old: cxr-edge needs 10.3 or newer (JetPack 6.0 ships 8.6; "
            "JetPack 6.1 and 6.2 ship 10.3; on x86 run \"pip install 'cxr-edge[gpu]'\")",
        )
    module: ModuleType = tensorrt
    return module


@dataclass(frozen=True)
class BuildOptions:
    """``onnx`` must already carry the requested precision (see ``cxr_edge.quantize``)."""

    onnx: Path
    precision: str
    out: Path
    max_patches: int = DEFAULT_PROFILE_MAX_PATCHES
    workspace_mb: int = 4096
    dla_core: int | None = None
    timing_cache: Path | None = None
    device: int = 0


#: Checks a built plan before it is written: (plan file, its manifest) -> comparison with a reference.
PlanCheck = Callable[[Path, EngineManifest], Comparison]


class PlanCheckFailed(CxrEdgeError):
    """The built plan does not reproduce the reference ONNX within tolerance; nothing was written."""

    def __init__(self, path: Path, comparison: Comparison) -> None:
        self.comparison = comparison
        super().__init__(path, f"plan vs ONNX check failed, plan not written: {comparison.summary()}")


def timing_cache_path(engines_dir: Path, tensorrt_version: str, compute_capability: str) -> Path:
    """One timing cache per TensorRT version and GPU architecture, kept under ``engines/``."""
    return engines_dir / f"timing-trt{tensorrt_version}-sm{compute_capability.replace('.', '')}.cache"


def make_logger() -> trt.ILogger:
    """A TensorRT logger that forwards warnings and errors to stderr (info is too chatty for a CLI)."""
    import tensorrt as trt

    class StderrLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
            if int(severity) <= int(trt.ILogger.Severity.WARNING):
                print(f"tensorrt: {msg}", file=sys.stderr)

    return StderrLogger()


def use_strong_typing(trt_module: ModuleType, dla: bool) -> bool:
    """Strongly typed unless this TensorRT has weak typing (FP16/INT8 builder flags) and either no
    strongly typed flag or a DLA build (TensorRT 10.x DLA builds use the precision flags)."""
    has_strong = hasattr(trt_module.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
    has_flags = hasattr(trt_module.BuilderFlag, "FP16") and hasattr(trt_module.BuilderFlag, "INT8")
    if not has_flags:
        return True  # TensorRT 11.x: every network is strongly typed, the flags are gone
    return has_strong and not dla


def network_flags(trt_module: ModuleType, strongly_typed: bool) -> int:
    """``create_network`` flags: the STRONGLY_TYPED bit where that flag exists (11.x may drop it)."""
    flag = getattr(trt_module.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 1 << int(flag) if strongly_typed and flag is not None else 0


def check_dla(trt_module: ModuleType, builder: trt.Builder, dla_core: int) -> None:
    """One line when this TensorRT or device offers no DLA, or not core ``dla_core``."""
    version = str(getattr(trt_module, "__version__", "?"))
    cores = int(getattr(builder, "num_DLA_cores", 0)) if hasattr(trt_module.DeviceType, "DLA") else 0
    if cores == 0:
        raise CxrEdgeError(
            None,
            f"--dla-core {dla_core}: TensorRT {version} on this device offers no DLA (DLA exists on Jetson "
            "Orin AGX/NX with TensorRT 10.x of JetPack 6.1/6.2, or 11.4.1+ on JetPack 7.2.2+; 11.0-11.3 have none)",
        )
    if cores <= dla_core:
        raise CxrEdgeError(None, f"--dla-core {dla_core}: this device has {cores} DLA core(s)")


def _parse_onnx(network: trt.INetworkDefinition, logger: trt.ILogger, onnx: Path) -> trt.OnnxParser:
    """Parse ``onnx`` into ``network``; the returned parser owns the weights, keep it until built."""
    import tensorrt as trt

    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise CxrEdgeError(
            onnx, "TensorRT cannot parse this ONNX: " + " | ".join(errors or ["unknown error"])
        )
    return parser


def _configure(
    builder: trt.Builder,
    config: trt.IBuilderConfig,
    network: trt.INetworkDefinition,
    options: BuildOptions,
    profile: BatchProfile,
    strongly_typed: bool,
) -> None:
    import tensorrt as trt

    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mb << 20)
    shape_profile = builder.create_optimization_profile()
    tensor = network.get_input(0)
    shape = tensor.shape
    if len(shape) != 4:
        raise CxrEdgeError(options.onnx, f"expected a (N, 1, P, P) input, found {shape}")
    channels, height, width = shape[1], shape[2], shape[3]
    shape_profile.set_shape(
        tensor.name,
        trt.Dims([profile.min, channels, height, width]),
        trt.Dims([profile.opt, channels, height, width]),
        trt.Dims([profile.max, channels, height, width]),
    )
    if config.add_optimization_profile(shape_profile) < 0:
        raise CxrEdgeError(options.onnx, f"TensorRT rejected the optimization profile {profile.to_dict()}")
    if not strongly_typed:
        flag_name = {"fp16": "FP16", "int8": "INT8"}.get(options.precision)
        if flag_name is not None:
            config.set_flag(getattr(trt.BuilderFlag, flag_name))
            if flag_name == "INT8" and hasattr(trt.BuilderFlag, "FP16"):
                config.set_flag(trt.BuilderFlag.FP16)  # layers left unquantized run in fp16
    if options.dla_core is not None:
        if options.precision == "fp32":
            raise CxrEdgeError(
                None, "DLA runs fp16 or int8 only; use --precision fp16 or int8 with --dla-core"
            )
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = options.dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)


def _load_timing_cache(config: trt.IBuilderConfig, path: Path) -> trt.ITimingCache:
    blob = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(blob)
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        raise CxrEdgeError(path, "TensorRT could not use this timing cache; delete it and build again")
    return cache


def int8_activation_type(onnx_path: Path) -> str:
    """ "int8", "uint8" or "none": the zero-point type of the Q/DQ ONNX's QuantizeLinear nodes."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    types = {t.name: t.data_type for t in model.graph.initializer}
    found = {
        types.get(n.input[2]) for n in model.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2
    }
    if not found:
        return "none"
    return "uint8" if onnx.TensorProto.UINT8 in found else "int8"


def precision_of_onnx(metadata: ModelMetadata) -> str:
    return metadata.precision if metadata.precision in PRECISIONS else "fp32"


def build_engine(options: BuildOptions, check: PlanCheck) -> tuple[EngineManifest, Comparison]:
    """Build ``options.out`` (plan), ``check`` it, then write it, its manifest and the timing cache;
    return the manifest and the check's comparison. PlanCheckFailed: nothing written."""
    trt_module = import_tensorrt()
    import tensorrt as trt

    from cxr_edge.gpu import device_info, set_device

    if options.precision not in PRECISIONS:
        raise CxrEdgeError(
            None, f"unknown precision {options.precision!r}; use one of {', '.join(PRECISIONS)}"
        )
    metadata = ModelMetadata.from_onnx(options.onnx)
    if precision_of_onnx(metadata) != options.precision:
        raise CxrEdgeError(
            options.onnx,
            f"this ONNX is {metadata.precision}, not {options.precision}; make it with "
            f"'cxr-edge quantize --precision {options.precision} --target tensorrt' first",
        )
    if options.precision == "int8" and int8_activation_type(options.onnx) != "int8":
        raise CxrEdgeError(
            options.onnx,
            "this INT8 ONNX has uint8 activations (made for --target cpu); TensorRT needs symmetric int8: "
            "make it with 'cxr-edge quantize --precision int8 --target tensorrt'",
        )
    dla = options.dla_core is not None
    profile = size_profile(options.max_patches, metadata.patches_per_image, dla=dla)
    set_device(options.device)
    gpu = device_info(options.device)
    version = str(trt_module.__version__)

    logger = make_logger()
    builder = trt.Builder(logger)
    if options.dla_core is not None:
        check_dla(trt_module, builder, options.dla_core)
    strongly_typed = use_strong_typing(trt_module, dla)
    network = builder.create_network(network_flags(trt_module, strongly_typed))
    parser = _parse_onnx(network, logger, options.onnx)
    if network.num_inputs != 1 or network.num_outputs != 1:
        raise CxrEdgeError(
            options.onnx,
            f"expected 1 input and 1 output, found {network.num_inputs} and {network.num_outputs}",
        )
    config = builder.create_builder_config()
    _configure(builder, config, network, options, profile, strongly_typed)
    cache_path = options.timing_cache or timing_cache_path(
        options.out.parent, version, gpu.compute_capability
    )
    cache = _load_timing_cache(config, cache_path)

    serialized = builder.build_serialized_network(network, config)
    del parser  # weights were needed until here
    if serialized is None:
        raise CxrEdgeError(
            options.onnx, "TensorRT failed to build an engine (see the tensorrt: messages above)"
        )
    with atomic_path(options.out) as tmp:
        tmp.write_bytes(bytes(memoryview(serialized)))
        manifest = EngineManifest(
            tensorrt_version=version,
            gpu_name=gpu.name,
            compute_capability=gpu.compute_capability,
            precision=options.precision,
            profile=profile,
            onnx_file=str(options.onnx),
            onnx_sha256=sha256_file(options.onnx),
            plan_sha256=sha256_file(tmp),
            metadata=metadata,
            input_name=network.get_input(0).name,
            output_name=network.get_output(0).name,
            dla_core=options.dla_core,
            strongly_typed=strongly_typed,
            package_version=__version__,
        )
        comparison = check(tmp, manifest)
        if not comparison.passed:
            raise PlanCheckFailed(options.out, comparison)
    write_bytes_atomic(cache_path, bytes(memoryview(cache.serialize())))
    write_manifest(options.out, manifest)
    return manifest, comparison
