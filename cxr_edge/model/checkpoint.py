"""Load and save MedicalPatchNet checkpoints.

Two formats, both read with ``torch.load(weights_only=True)`` (no arbitrary code from a file):

* **official**: a plain state dict, keys ``baseBackbone.*``, possibly prefixed ``_orig_mod.``
  (saved from a ``torch.compile``d model). Always the ``full`` variant with the CheXpert labels.
* **cxr-edge**: ``{"format": "cxr-edge-checkpoint", "format_version": 1, "state_dict": {...},
  "metadata": {...}}`` where ``metadata`` is the JSON object of a ``ModelMetadata`` (labels,
  variant, thresholds, intended use, training data), so labels travel with the weights.

Every problem is one ``CxrEdgeError(path, problem)``.
"""

from __future__ import annotations

import json
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxr_edge.atomic import atomic_path
from cxr_edge.digest import sha256_file
from cxr_edge.errors import CxrEdgeError
from cxr_edge.metadata import CHEXPERT_LABELS, ModelMetadata, ModelVariant

CHECKPOINT_FORMAT = "cxr-edge-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1
#: Prefix torch.compile adds to every key of a compiled model's state dict.
COMPILED_PREFIX = "_orig_mod."
#: Fields of ModelMetadata that describe an export, not the weights; never stored in a checkpoint.
_EXPORT_ONLY_FIELDS = ("checkpoint_sha256", "package_version", "precision")


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model (eval mode, CPU), its metadata, file hash and format."""

    model: Any  # MedicalPatchNet; typed loosely so importing this module needs no torch
    metadata: ModelMetadata
    sha256: str
    format: str  # "official" | "cxr-edge"

    @property
    def variant(self) -> ModelVariant:
        return self.metadata.variant


def _torch_load(path: Path) -> Any:
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "pickle protocol 4" notes on foreign pickles
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights only" in str(exc).lower() or "unsupported global" in str(exc).lower():
            raise CxrEdgeError(
                path,
                "not a state dict: the file pickles Python objects, not just tensors (refused to run it)",
            ) from exc
        raise CxrEdgeError(path, f"not a readable PyTorch checkpoint ({first[:100]})") from exc
    except Exception as exc:  # torch.load raises many types (RuntimeError, EOFError, KeyError, ...)
        first = str(exc).strip().splitlines()[0].split(". ")[0] if str(exc).strip() else ""
        text = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
        hint = "truncated or corrupt" if path.stat().st_size > 0 else "empty file"
        raise CxrEdgeError(path, f"not a readable PyTorch checkpoint ({hint}: {text[:100]})") from exc


def _as_state_dict(path: Path, obj: Any, where: str) -> dict[str, Any]:
    import torch

    if not isinstance(obj, dict) or not obj:
        raise CxrEdgeError(
            path, f"not a state dict: {where} is {type(obj).__name__}, expected a dict of tensors"
        )
    not_tensors = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if not_tensors or not all(isinstance(k, str) for k in obj):
        raise CxrEdgeError(
            path,
            f"not a state dict: {where} has non-tensor entries (e.g. {str(not_tensors[:1])[1:-1] or 'keys'})",
        )
    state: dict[str, Any] = obj
    if all(k.startswith(COMPILED_PREFIX) for k in state):
        state = {k[len(COMPILED_PREFIX) :]: v for k, v in state.items()}
    return state


def _metadata_from(path: Path, raw: Any) -> ModelMetadata:
    if not isinstance(raw, dict):
        raise CxrEdgeError(path, "cxr-edge checkpoint metadata is not a dict")
    return ModelMetadata.from_json(json.dumps(raw), path)


def _short(keys: list[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... (+{len(keys) - limit})" if len(keys) > limit else "")


def build_model(path: Path, state: dict[str, Any], metadata: ModelMetadata) -> Any:
    """A MedicalPatchNet for ``metadata`` with ``state`` loaded strictly; one clear error on mismatch."""
    import torch

    from cxr_edge.model.patchnet import MedicalPatchNet

    head = state.get("baseBackbone.classifier.1.weight")
    if isinstance(head, torch.Tensor) and head.ndim == 2 and head.shape[0] != metadata.num_classes:
        raise CxrEdgeError(
            path,
            f"wrong class count: the head has {head.shape[0]} outputs but the model needs "
            f"{metadata.num_classes} ({len(metadata.labels)} labels)",
        )
    model = MedicalPatchNet(metadata.variant, metadata.num_classes)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    arch = f"MedicalPatchNet '{metadata.variant.name}' (width {metadata.variant.width_mult}, depth {metadata.variant.depth_mult})"
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys ({_short(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({_short(unexpected)})")
        raise CxrEdgeError(path, f"wrong architecture for {arch}: " + "; ".join(parts))
    for key, tensor in expected.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise CxrEdgeError(
                path,
                f"wrong architecture for {arch}: {key} has shape {tuple(state[key].shape)}, "
                f"expected {tuple(tensor.shape)}",
            )
    for key, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CxrEdgeError(path, f"non-finite values (NaN/inf) in {key}")
    model.load_state_dict(state, strict=True)
    return model.eval()


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Load an official or cxr-edge checkpoint into an eval-mode CPU MedicalPatchNet."""
    path = Path(path)
    if not path.is_file():
        raise CxrEdgeError(path, "no such checkpoint file")
    sha256 = sha256_file(path)
    obj = _torch_load(path)
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        version = obj.get("format_version")
        if version != CHECKPOINT_FORMAT_VERSION:
            raise CxrEdgeError(path, f"unsupported cxr-edge checkpoint version {version!r}")
        metadata = _metadata_from(path, obj.get("metadata"))
        state = _as_state_dict(path, obj.get("state_dict"), "its 'state_dict'")
        fmt = "cxr-edge"
    else:
        state = _as_state_dict(path, obj, "the file")
        metadata = ModelMetadata(labels=CHEXPERT_LABELS, variant=ModelVariant())
        fmt = "official"
    model = build_model(path, state, metadata)
    return Checkpoint(model=model, metadata=metadata, sha256=sha256, format=fmt)


def load_checkpoint(path: str | Path) -> tuple[Any, ModelVariant]:
    """``(MedicalPatchNet in eval mode, ModelVariant)`` from an official or cxr-edge checkpoint."""
    checkpoint = read_checkpoint(path)
    return checkpoint.model, checkpoint.variant


def save_checkpoint(
    model: Any, path: str | Path, metadata: ModelMetadata | None = None, *, official: bool = False
) -> Path:
    """Write ``model`` atomically.

    ``official=False`` (default): the cxr-edge format, metadata included (labels, thresholds,
    intended use, training data; the variant is taken from ``model.variant``). Without
    ``metadata`` the model must have 14 classes and gets the CheXpert labels.
    ``official=True``: a plain state dict with the ``_orig_mod.`` prefix, as the official
    checkpoints are saved (full variant, 14 CheXpert classes only).
    """
    import torch

    path = Path(path)
    variant: ModelVariant = model.variant
    if metadata is None:
        metadata = ModelMetadata(labels=CHEXPERT_LABELS)
    if len(metadata.labels) != model.num_classes:
        raise ValueError(f"{len(metadata.labels)} labels for a model with {model.num_classes} classes")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if official:
        if variant != ModelVariant() or tuple(metadata.labels) != CHEXPERT_LABELS:
            raise ValueError("the official format holds only the full variant with the 14 CheXpert labels")
        payload: Any = {COMPILED_PREFIX + k: v for k, v in state.items()}
    else:
        meta = json.loads(metadata.with_(variant=variant).to_json())
        for key in _EXPORT_ONLY_FIELDS:
            meta.pop(key, None)
        payload = {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_FORMAT_VERSION,
            "state_dict": state,
            "metadata": meta,
        }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path
