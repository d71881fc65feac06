"""The JSON manifest beside every TensorRT plan, and the checks made before loading a plan.

A plan only runs with the TensorRT version and GPU it was built for; the manifest records both,
the profile, the precision and the sha256 of the ONNX and of the plan, so a stale or foreign plan
is refused with a one-line error that says how to rebuild it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxr_edge.atomic import write_text_atomic
from cxr_edge.digest import sha256_file
from cxr_edge.engine.profile import BatchProfile
from cxr_edge.errors import CxrEdgeError
from cxr_edge.metadata import PRECISIONS, ModelMetadata

MANIFEST_FORMAT = 1


def manifest_path(plan: str | Path) -> Path:
    """``engines/NAME.plan`` -> ``engines/NAME.json``."""
    return Path(plan).with_suffix(".json")


@dataclass(frozen=True)
class EngineManifest:
    """What a plan was built from and for. ``compute_capability`` is "major.minor"."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    profile: BatchProfile
    onnx_file: str
    onnx_sha256: str
    plan_sha256: str
    metadata: ModelMetadata
    input_name: str = "patches"
    output_name: str = "logits"
    dla_core: int | None = None
    strongly_typed: bool = True
    package_version: str = ""
    format: int = MANIFEST_FORMAT

    def to_json(self) -> str:
        raw: dict[str, Any] = {
            "format": self.format,
            "tensorrt_version": self.tensorrt_version,
            "gpu_name": self.gpu_name,
            "compute_capability": self.compute_capability,
            "precision": self.precision,
            "profile": self.profile.to_dict(),
            "onnx_file": self.onnx_file,
            "onnx_sha256": self.onnx_sha256,
            "plan_sha256": self.plan_sha256,
            "input_name": self.input_name,
            "output_name": self.output_name,
            "dla_core": self.dla_core,
            "strongly_typed": self.strongly_typed,
            "package_version": self.package_version,
            "metadata": json.loads(self.metadata.to_json()),
        }
        return json.dumps(raw, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str | Path | None = None) -> EngineManifest:
        try:
            raw = json.loads(text)
            if int(raw.get("format", 0)) != MANIFEST_FORMAT:
                raise ValueError(f"manifest format {raw.get('format')} is not {MANIFEST_FORMAT}")
            precision = str(raw["precision"])
            if precision not in PRECISIONS:
                raise ValueError(f"unknown precision {precision!r}")
            dla = raw.get("dla_core")
            return cls(
                tensorrt_version=str(raw["tensorrt_version"]),
                gpu_name=str(raw["gpu_name"]),
                compute_capability=str(raw["compute_capability"]),
                precision=precision,
                profile=BatchProfile.from_dict(raw["profile"]),
                onnx_file=str(raw["onnx_file"]),
                onnx_sha256=str(raw["onnx_sha256"]),
                plan_sha256=str(raw["plan_sha256"]),
                metadata=ModelMetadata.from_json(json.dumps(raw["metadata"]), source),
                input_name=str(raw.get("input_name", "patches")),
                output_name=str(raw.get("output_name", "logits")),
                dla_core=None if dla is None else int(dla),
                strongly_typed=bool(raw.get("strongly_typed", True)),
                package_version=str(raw.get("package_version", "")),
            )
        except CxrEdgeError:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            raise CxrEdgeError(source, f"invalid engine manifest ({exc})") from exc

    def rebuild_command(self, plan: str | Path) -> str:
        """The ``cxr-edge build-engine`` command line that rebuilds this plan on the current machine."""
        parts = ["cxr-edge build-engine", f"--onnx {self.onnx_file}", f"--precision {self.precision}"]
        if self.precision == "int8":
            parts.append("--calib CALIB_DIR")
        parts.append(f"--max-patches {self.profile.max}")
        if self.dla_core is not None:
            parts.append(f"--dla-core {self.dla_core}")
        parts.append(f"--out {plan}")
        return " ".join(parts)


def write_manifest(plan: str | Path, manifest: EngineManifest) -> Path:
    path = manifest_path(plan)
    write_text_atomic(path, manifest.to_json())
    return path


def read_manifest(plan: str | Path) -> EngineManifest:
    plan = Path(plan)
    path = manifest_path(plan)
    if not path.is_file():
        raise CxrEdgeError(
            plan,
            f"no manifest {path.name} beside the plan; rebuild it with 'cxr-edge build-engine ... --out {plan}'",
        )
    return EngineManifest.from_json(path.read_text(), path)


def _major_minor_patch(version: str) -> tuple[str, ...]:
    # A plan is tied to the TensorRT release; the 4th component is a build number.
    return tuple(version.split(".")[:3])


def verify_manifest(
    manifest: EngineManifest,
    plan: str | Path,
    *,
    tensorrt_version: str,
    gpu_name: str,
    compute_capability: str,
    check_plan_hash: bool = True,
) -> None:
    """Refuse a plan built for another TensorRT version or GPU, or whose bytes changed."""
    plan = Path(plan)
    how = f"rebuild it here with: {manifest.rebuild_command(plan)}"
    if _major_minor_patch(manifest.tensorrt_version) != _major_minor_patch(tensorrt_version):
        raise CxrEdgeError(
            plan,
            f"built with TensorRT {manifest.tensorrt_version}, this machine has {tensorrt_version}; {how}",
        )
    if manifest.compute_capability != compute_capability or manifest.gpu_name != gpu_name:
        raise CxrEdgeError(
            plan,
            f"built for GPU '{manifest.gpu_name}' (sm {manifest.compute_capability}), this is "
            f"'{gpu_name}' (sm {compute_capability}); {how}",
        )
    if check_plan_hash:
        if not plan.is_file():
            raise CxrEdgeError(plan, f"no such plan file; {how}")
        actual = sha256_file(plan)
        if actual != manifest.plan_sha256:
            raise CxrEdgeError(plan, f"plan sha256 {actual[:12]}... does not match its manifest; {how}")


def verify_onnx_source(manifest: EngineManifest, plan: str | Path, onnx: str | Path) -> None:
    """Refuse a plan whose recorded ONNX differs from ``onnx`` (the model was re-exported)."""
    actual = sha256_file(onnx)
    if actual != manifest.onnx_sha256:
        raise CxrEdgeError(
            plan,
            f"was built from another ONNX than {onnx}; rebuild it with: {manifest.rebuild_command(plan)}",
        )
