from cxr_edge.assets import sample_image_path
from cxr_edge.pipeline import CxrEdge
from cxr_edge.render import finding_overlay
from cxr_edge.report import build_report

edge = CxrEdge.load()  # bundled demo model on ONNX Runtime (CPU); load once, share across threads
pred = edge.predict(sample_image_path(), steps=4)  # a path, or an (h, w) uint8 array; writes nothing
for f in sorted(pred.findings, key=lambda f: -f.probability)[:3]:
    print(f"{f.label:28s} p={f.probability:.3f} logit={f.logit:+.2f}")
label = max(pred.findings, key=lambda f: f.probability).label  # or pred.reported_labels()
rgb = finding_overlay(pred, label)  # uint8 RGB: the X-ray at full size, banner above, legend below
heat = pred.value_map(label, "scaled")  # (512, 512) float32 in logit units, the model's frame
report = build_report(pred)  # JSON-ready dict: findings, model, steps, timings
