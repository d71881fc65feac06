"""Checkpoints: official and cxr-edge formats load strictly; every bad file is one clear error."""

from __future__ import annotations

import hashlib
import pickle

import pytest

torch = pytest.importorskip("torch")

from cxr_edge.errors import CxrEdgeError
from cxr_edge.metadata import CHEXPERT_LABELS, ModelMetadata, ModelVariant
from cxr_edge.model.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from cxr_edge.model.patchnet import VARIANTS, MedicalPatchNet


def _same_state(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_cxr_edge_format_round_trip_keeps_weights_and_metadata(tiny_model, tmp_path):
    path = tmp_path / "tiny.pt"
    meta = ModelMetadata(
        labels=CHEXPERT_LABELS,
        thresholds=tuple(0.1 + 0.05 * i for i in range(14)),
        intended_use="research only",
        training_data="synthetic phantoms",
    )
    save_checkpoint(tiny_model, path, metadata=meta)
    raw = torch.load(path, weights_only=True)  # loadable without trusting pickled code
    assert raw["format"] == "cxr-edge-checkpoint" and raw["metadata"]["variant"]["name"] == "tiny"

    loaded = read_checkpoint(path)
    assert loaded.format == "cxr-edge"
    assert loaded.metadata.variant == ModelVariant("tiny", 0.25, 0.25)
    assert loaded.metadata.thresholds == meta.thresholds
    assert loaded.metadata.intended_use == "research only"
    assert loaded.metadata.training_data == "synthetic phantoms"
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert _same_state(loaded.model, tiny_model)
    assert not loaded.model.training

    model, variant = load_checkpoint(path)
    assert variant.name == "tiny" and _same_state(model, tiny_model)


def test_cxr_edge_format_custom_labels(tmp_path):
    model = MedicalPatchNet(VARIANTS["tiny"], num_classes=2)
    path = save_checkpoint(model, tmp_path / "two.pt", metadata=ModelMetadata(labels=("Effusion", "Other")))
    loaded = read_checkpoint(path)
    assert loaded.metadata.labels == ("Effusion", "Other") and loaded.model.num_classes == 2
    with pytest.raises(ValueError, match="3 labels"):
        save_checkpoint(model, tmp_path / "bad.pt", metadata=ModelMetadata(labels=("a", "b", "c")))
    assert not (tmp_path / "bad.pt").exists()


@pytest.mark.parametrize("prefix", ["_orig_mod.", ""])
def test_official_plain_state_dict_loads_as_full_chexpert(tmp_path, prefix):
    model = MedicalPatchNet(VARIANTS["full"], num_classes=14)
    with torch.no_grad():
        model.baseBackbone.classifier[1].bias.copy_(torch.arange(14.0))  # a recognisable value
    path = tmp_path / "official.pt"
    torch.save({prefix + k: v for k, v in model.state_dict().items()}, path)
    loaded = read_checkpoint(path)
    assert loaded.format == "official"
    assert loaded.metadata.labels == CHEXPERT_LABELS
    assert loaded.metadata.variant == ModelVariant()
    assert torch.equal(loaded.model.baseBackbone.classifier[1].bias, torch.arange(14.0))
    assert _same_state(loaded.model, model)


def test_save_official_format_has_compiled_prefix(tmp_path):
    model = MedicalPatchNet(VARIANTS["full"], num_classes=14)
    path = save_checkpoint(model, tmp_path / "official.pt", official=True)
    raw = torch.load(path, weights_only=True)
    assert all(k.startswith("_orig_mod.baseBackbone.") for k in raw)
    with pytest.raises(ValueError, match="official format"):
        save_checkpoint(MedicalPatchNet(VARIANTS["tiny"]), tmp_path / "x.pt", official=True)


class NotWeights:
    """A pickled object that is not a state dict (weights_only loading must refuse it)."""

    def __init__(self) -> None:
        self.value = 3


def _error(path) -> str:
    with pytest.raises(CxrEdgeError) as info:
        read_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path) + ": ")
    return message


def test_missing_file(tmp_path):
    assert "no such checkpoint file" in _error(tmp_path / "absent.pt")


def test_truncated_file(tiny_model, tmp_path):
    whole = save_checkpoint(tiny_model, tmp_path / "whole.pt").read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(whole[: len(whole) // 2])
    assert "not a readable PyTorch checkpoint" in _error(cut)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    assert "not a readable PyTorch checkpoint" in _error(empty)
    text = tmp_path / "notes.pt"
    text.write_text("these are not weights")
    assert "not a readable PyTorch checkpoint" in _error(text)


def test_pickle_of_an_object_is_refused(tmp_path):
    path = tmp_path / "object.pt"
    with open(path, "wb") as handle:
        pickle.dump(NotWeights(), handle)
    assert "not a state dict" in _error(path)


@pytest.mark.parametrize("payload", [[1, 2, 3], {"epoch": 3, "lr": 0.1}, {}])
def test_loadable_pickle_that_is_not_a_state_dict(tmp_path, payload):
    path = tmp_path / "notsd.pt"
    torch.save(payload, path)
    assert "not a state dict" in _error(path)


def test_wrong_architecture_lists_missing_and_unexpected_keys(tiny_model, tmp_path):
    path = tmp_path / "tiny_plain.pt"
    torch.save(tiny_model.state_dict(), path)  # a tiny model in the official (full) format
    message = _error(path)
    assert "wrong architecture" in message and "missing keys" in message


def test_wrong_architecture_names_first_shape_conflict(tmp_path):
    state = MedicalPatchNet(VARIANTS["full"], num_classes=14).state_dict()
    state["baseBackbone.features.0.0.weight"] = torch.zeros(24, 3, 3, 3)  # an RGB stem
    path = tmp_path / "rgb.pt"
    torch.save(state, path)
    message = _error(path)
    assert "baseBackbone.features.0.0.weight" in message and "(24, 3, 3, 3)" in message


def test_unexpected_keys_are_named(tmp_path):
    state = MedicalPatchNet(VARIANTS["full"], num_classes=14).state_dict()
    state["baseBackbone.extra.weight"] = torch.zeros(1)
    path = tmp_path / "extra.pt"
    torch.save(state, path)
    assert "1 unexpected keys (baseBackbone.extra.weight)" in _error(path)


def test_wrong_class_count(tmp_path):
    path = tmp_path / "five.pt"
    torch.save(MedicalPatchNet(VARIANTS["full"], num_classes=5).state_dict(), path)
    message = _error(path)
    assert "wrong class count" in message and "5 outputs" in message and "14" in message


def test_metadata_variant_that_does_not_fit_the_weights(tiny_model, tmp_path):
    path = save_checkpoint(tiny_model, tmp_path / "tiny.pt")
    raw = torch.load(path, weights_only=True)
    raw["metadata"]["variant"] = {"name": "small", "width_mult": 0.5, "depth_mult": 0.5}
    torch.save(raw, path)
    assert "wrong architecture for MedicalPatchNet 'small'" in _error(path)


def test_non_finite_weights(tiny_model, tmp_path):
    path = save_checkpoint(tiny_model, tmp_path / "nan.pt")
    raw = torch.load(path, weights_only=True)
    raw["state_dict"]["baseBackbone.classifier.1.bias"][0] = float("nan")
    torch.save(raw, path)
    assert "non-finite" in _error(path)
