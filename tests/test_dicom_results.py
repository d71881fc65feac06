"""DICOM results (issue 14): Secondary Captures of overlays and the TID 1500 Structured Report.

Every object is re-read with pydicom (and highdicom's SR reader) and compared with the
prediction it was made from; ``dciodvfy`` (dicom3tools) must report zero errors where installed.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from ci_tools import require
from dicom_samples import PATIENT, has_tool, require_dicom_stack, synthetic_cr, write_part10

require_dicom_stack()

import highdicom as hd
from pydicom.sr.codedict import codes as dicom_codes

from cxr_edge.dicom_results import codes
from cxr_edge.dicom_results.identity import NOT_FOR_CLINICAL_USE, series_description
from cxr_edge.dicom_results.uids import derived_uid
from cxr_edge.io import load_xray
from cxr_edge.metadata import CHEXPERT_LABELS
from cxr_edge.outputs import write_dicom_results
from cxr_edge.pipeline import CxrEdge
from cxr_edge.render import finding_overlay
from cxr_edge.report import evidence_summary

STEPS = 1
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
COMPREHENSIVE_SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"
COPIED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyID",
    "ReferringPhysicianName",
)


@pytest.fixture(scope="module")
def edge() -> CxrEdge:
    return CxrEdge.load()


@pytest.fixture(scope="module")
def sample_dicom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cxr_edge.assets import sample_image_path

    gray = load_xray(sample_image_path()).pixels
    return write_part10(synthetic_cr(gray), tmp_path_factory.mktemp("cr") / "sample.dcm")


def dciodvfy_errors(path: Path) -> list[str]:
    """dciodvfy's error lines for one file (it reports on stderr)."""
    run = subprocess.run(["dciodvfy", str(path)], check=False, capture_output=True, text=True, timeout=60)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def check_results(edge: CxrEdge, source_path: Path, out: Path) -> None:
    """Write the results of one DICOM and check every object against the prediction."""
    source = pydicom.dcmread(source_path, force=True)
    pred = edge.predict(source_path, steps=STEPS)
    shown = pred.reported_labels() or [max(pred.findings, key=lambda f: f.probability).label]
    overlays = {label: finding_overlay(pred, label) for label in shown}
    paths = write_dicom_results(pred, source_path, out, overlays)
    assert len(paths) == len(shown) + 1 and all(p.is_file() for p in paths)
    objects = [pydicom.dcmread(p) for p in paths]
    scs = [o for o in objects if o.SOPClassUID == SC_CLASS]
    (sr,) = [o for o in objects if o.SOPClassUID == COMPREHENSIVE_SR_CLASS]
    assert len(scs) == len(shown)

    result_series = {o.SeriesInstanceUID for o in objects}
    assert source.get("SeriesInstanceUID") not in result_series
    assert len({o.SOPInstanceUID for o in objects} | {source.SOPInstanceUID}) == len(objects) + 1
    for obj in objects:
        for keyword in COPIED:
            assert str(obj.get(keyword, "")) == str(source.get(keyword, "")), keyword
        assert "NOT FOR CLINICAL USE" in obj.SeriesDescription  # the demo model says so
        assert len(obj.SeriesDescription) <= 64
    for sc, label in zip(scs, sorted(shown, key=pred.labels.index)):
        assert sc.BurnedInAnnotation == "YES"
        assert sc.PhotometricInterpretation == "RGB" and sc.SamplesPerPixel == 3
        # The overlay frame: the X-ray at full resolution between banner and legend strips.
        assert sc.Columns >= source.Columns and sc.Rows > source.Rows
        np.testing.assert_array_equal(sc.pixel_array, overlays[label])
        (ref,) = sc.SourceImageSequence
        assert (ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID) == (
            source.SOPClassUID,
            source.SOPInstanceUID,
        )
        assert sc.ReferencedImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert label in sc.DerivationDescription
        assert pred.model["sha256"][:12] in sc.ManufacturerModelName

    # The SR: every finding with its concept, probability, threshold, presence, algorithm and peak.
    report = hd.sr.srread(paths[-1])
    assert report.SOPInstanceUID == sr.SOPInstanceUID
    evidence = (
        sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    )
    assert evidence.ReferencedSOPInstanceUID == source.SOPInstanceUID
    image_groups = report.content.get_image_measurement_groups()
    roi_groups = report.content.get_planar_roi_measurement_groups()
    assert len(image_groups) == len(roi_groups) == len(pred.findings)
    for finding, group, roi in zip(pred.findings, image_groups, roi_groups):
        concept = codes.label_concept(finding.label).concept
        assert (
            group.finding_type.value == concept.value
            and group.finding_type.scheme_designator == concept.scheme_designator
        )
        assert group.tracking_uid == roi.tracking_uid
        values = {m.name.value: m.value for m in group.get_measurements()}
        assert values[codes.PROBABILITY.value] == pytest.approx(finding.probability, abs=1e-12)
        assert values[codes.THRESHOLD.value] == pytest.approx(finding.threshold, abs=1e-12)
        (presence,) = group.get_qualitative_evaluations()
        assert presence.value.value == (codes.PRESENT if finding.positive else codes.ABSENT).value
        (source_image,) = group.source_images
        assert source_image.referenced_sop_instance_uid == source.SOPInstanceUID
        peak = evidence_summary(pred, finding.label)["peak"]
        assert roi.roi.graphic_type == hd.sr.GraphicTypeValues.POINT
        np.testing.assert_allclose(roi.roi.value[0], [peak["x"] + 0.5, peak["y"] + 0.5], atol=1e-4)
        assert (
            roi.roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
            == source.SOPInstanceUID
        )
        (saliency,) = roi.get_measurements()
        assert saliency.value == pytest.approx(peak["value"], rel=1e-6)
    algorithm_texts = [str(e.value) for e in sr.iterall() if e.keyword == "TextValue"]
    assert any(pred.model["sha256"] in t for t in algorithm_texts)  # full model hash in the version
    assert any(NOT_FOR_CLINICAL_USE.lower() in t.lower() for t in algorithm_texts)

    if has_tool("dciodvfy"):
        for path in paths:
            assert dciodvfy_errors(path) == [], path.name


def test_results_of_a_synthetic_cr(edge: CxrEdge, sample_dicom: Path, tmp_path: Path) -> None:
    check_results(edge, sample_dicom, tmp_path)
    sc = pydicom.dcmread(next(tmp_path.glob("*.sc.dcm")))
    assert {k: str(sc.get(k)) for k in PATIENT} == PATIENT
    assert list(sc.PatientOrientation) == ["L", "F"]


@pytest.mark.parametrize("name", ["CR-MONO1-10-chest.dcm", "RG1_J2KI.dcm", "siim"])
def test_results_of_real_chest_dicoms(edge: CxrEdge, shared_cxr: Path, tmp_path: Path, name: str) -> None:
    (path,) = [p for p in (shared_cxr / "dicom").glob("*.dcm") if p.name.startswith(name)]
    check_results(edge, path, tmp_path)


def test_dciodvfy_catches_a_broken_object(edge: CxrEdge, sample_dicom: Path, tmp_path: Path) -> None:
    """The zero-errors checks above mean something: the same SC without a type 1 attribute fails."""
    require("dciodvfy (Debian dicom3tools)", has_tool("dciodvfy"))
    pred = edge.predict(sample_dicom, steps=STEPS)
    label = pred.labels[0]
    (sc_path, _) = write_dicom_results(pred, sample_dicom, tmp_path, {label: finding_overlay(pred, label)})
    broken = pydicom.dcmread(sc_path)
    del broken.ConversionType  # SC Equipment module, type 1
    broken.save_as(tmp_path / "broken.dcm")
    assert any(
        "ConversionType" in line or "Conversion Type" in line
        for line in dciodvfy_errors(tmp_path / "broken.dcm")
    )


def test_uids_are_deterministic_and_distinct(edge: CxrEdge, sample_dicom: Path, tmp_path: Path) -> None:
    pred = edge.predict(sample_dicom, steps=STEPS)
    label = pred.labels[0]
    first = write_dicom_results(pred, sample_dicom, tmp_path / "a", {label: finding_overlay(pred, label)})
    again = write_dicom_results(pred, sample_dicom, tmp_path / "b", {label: finding_overlay(pred, label)})
    uid = [(pydicom.dcmread(p).SOPInstanceUID, pydicom.dcmread(p).SeriesInstanceUID) for p in first]
    assert uid == [(pydicom.dcmread(p).SOPInstanceUID, pydicom.dcmread(p).SeriesInstanceUID) for p in again]
    other = edge.predict(sample_dicom, steps=2)
    moved = write_dicom_results(other, sample_dicom, tmp_path / "c", {label: finding_overlay(other, label)})
    assert not {u for u, _ in uid} & {pydicom.dcmread(p).SOPInstanceUID for p in moved}
    for u, _ in uid:
        assert re.fullmatch(r"2\.25\.[1-9][0-9]*", u) and len(u) <= 64
    assert derived_uid("ab", "c") != derived_uid("a", "bc")


def test_non_dicom_source_is_refused(edge: CxrEdge, tmp_path: Path) -> None:
    from cxr_edge.assets import sample_image_path
    from cxr_edge.errors import CxrEdgeError

    pred = edge.predict(sample_image_path(), steps=STEPS)
    with pytest.raises(CxrEdgeError, match="not a readable DICOM|not an image"):
        write_dicom_results(pred, sample_image_path(), tmp_path, {})
    assert not list(tmp_path.iterdir())


def test_codes_from_dicom_match_the_standard_tables() -> None:
    """Codes taken from DICOM PS3.16 equal pydicom's tables generated from the standard."""
    expected = {
        "No Finding": dicom_codes.SCT.Normal,
        "Lung Opacity": dicom_codes.DCM.Opacity,
        "Lung Lesion": dicom_codes.SCT.Lesion,
        "Edema": dicom_codes.SCT.PulmonaryEdema,
        "Pneumothorax": dicom_codes.SCT.Pneumothorax,
        "Pleural Effusion": dicom_codes.SCT.PleuralEffusion,
    }
    for label, code in expected.items():
        assert codes.LABEL_CONCEPTS[label].concept == code, label
    for ours, theirs in [
        (codes.LUNG, dicom_codes.SCT.Lung),
        (codes.MEDIASTINUM, dicom_codes.SCT.Mediastinum),
        (codes.PLEURA, dicom_codes.SCT.PleuralStructure),
        (codes.PRESENT, dicom_codes.SCT.Present),
        (codes.ABSENT, dicom_codes.SCT.Absent),
        (codes.PROBABILITY, dicom_codes.DCM.Probability),
        (codes.THRESHOLD, dicom_codes.DCM.ThresholdValue),
        (codes.SALIENCY, dicom_codes.DCM.Saliency),
        (codes.NO_UNITS, dicom_codes.UCUM.NoUnits),
        (codes.PROCEDURE_XR, dicom_codes.LN.XRUnspecifiedBodyRegion),
    ]:
        assert ours == theirs


def test_every_chexpert_label_has_a_concept_documented() -> None:
    table = (Path(__file__).resolve().parents[1] / "docs" / "dicom.md").read_text()
    for label in CHEXPERT_LABELS:
        coded = codes.LABEL_CONCEPTS[label]
        assert len(coded.concept.value) <= 16 and len(coded.concept.meaning) <= 64
        assert f"| {label} | {coded.concept.scheme_designator} {coded.concept.value} " in table, label
    unknown = codes.label_concept("Some Other Finding")
    assert (
        unknown.concept.scheme_designator == codes.LOCAL_SCHEME
        and unknown.concept.meaning == "Some Other Finding"
    )


def test_series_description_says_not_for_clinical_use_unless_cleared(
    edge: CxrEdge, sample_dicom: Path
) -> None:
    import dataclasses

    pred = edge.predict(sample_dicom, steps=STEPS)
    assert series_description(pred, "findings").endswith(NOT_FOR_CLINICAL_USE)  # the demo model
    cleared = dataclasses.replace(
        pred, metadata=pred.metadata.with_(intended_use="Clinical use: adult frontal CXR triage")
    )
    text = series_description(cleared, "findings")
    assert NOT_FOR_CLINICAL_USE not in text and pred.model["sha256"][:8] in text and len(text) <= 64


def test_infer_dicom_out_writes_the_results_and_refuses_other_inputs(
    sample_dicom: Path, tmp_path: Path
) -> None:
    import json

    from typer.testing import CliRunner

    from cxr_edge.assets import sample_image_path
    from cxr_edge.cli import app

    out = tmp_path / "out"
    run = CliRunner().invoke(
        app,
        ["infer", str(sample_dicom), "--dicom-out", "--steps", str(STEPS), "--out", str(out)],
        catch_exceptions=False,
    )
    assert run.exit_code == 0, run.output
    report = json.loads((out / "sample.json").read_text())
    assert set(report["dicom"]) == {p.name for p in out.glob("*.dcm")}
    assert "sample.sr.dcm" in report["dicom"]
    assert len(report["dicom"]) == len(report["reported"]) + 1
    for name in report["dicom"]:
        assert pydicom.dcmread(out / name).StudyInstanceUID == pydicom.dcmread(sample_dicom).StudyInstanceUID

    png_out = tmp_path / "png"
    run = CliRunner().invoke(app, ["infer", str(sample_image_path()), "--dicom-out", "--out", str(png_out)])
    assert run.exit_code == 2
    assert "--dicom-out needs a DICOM input" in run.output
    assert not [p for p in png_out.glob("sample_chest*")]  # no result files of the refused image
