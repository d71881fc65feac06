"""The project carries its own spec: code cites docs/model.md, never a file outside the clone."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL_DOC = ROOT / "docs" / "model.md"
#: The shared product spec beside a developer's checkout; a user's clone does not have it.
OUTSIDE_SPEC = "SPEC" + ".md"


def _project_text_files() -> list[Path]:
    files = [ROOT / "README.md"]
    for folder in ("cxr_edge", "tests", "tools", "docs", "calibration", "engines"):
        files += [
            p
            for p in (ROOT / folder).rglob("*")
            if p.suffix in (".py", ".md", ".cu", ".h", ".sh") and p.is_file()
        ]
    return files


def test_nothing_cites_a_spec_outside_the_clone() -> None:
    offenders = [str(p.relative_to(ROOT)) for p in _project_text_files() if OUTSIDE_SPEC in p.read_text()]
    assert offenders == []


def test_cited_sections_of_the_model_doc_exist() -> None:
    headings = [line[3:].strip() for line in MODEL_DOC.read_text().splitlines() if line.startswith("## ")]
    # a citation may wrap across a docstring's lines
    cited = {
        " ".join(name.split())
        for p in _project_text_files()
        for name in re.findall(r'docs/model\.md, "([^"]+)"', p.read_text())
    }
    assert cited, "no code cites a section of docs/model.md"
    missing = sorted(name for name in cited if not any(h.startswith(name) for h in headings))
    assert missing == [], f"cited sections not in docs/model.md: {missing}"
