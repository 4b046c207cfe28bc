"""Every EM/F1 figure in a README table comes from a committed artefact (`benchmarks/results/*.json`):
`runs/` is not in the repository, so a score that no artefact holds cannot be checked or reproduced."""

from __future__ import annotations

import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCORE_HEADER = re.compile(r"\b(EM|F1)\b")
FIGURE = re.compile(r"(?<![\w.])\d+\.\d{2}(?![\d.])")


def artefact_figures() -> set[str]:
    """Every number in the artefacts, as written with two decimals (and as a percentage, for fractions)."""
    found: set[str] = set()

    def walk(value) -> None:
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            found.update({f"{value:.2f}", f"{100 * value:.2f}"})
        elif isinstance(value, str):
            found.update(FIGURE.findall(value))

    for path in sorted((REPO / "benchmarks" / "results").glob("*.json")):
        walk(json.loads(path.read_text(encoding="utf-8")))
    return found


def score_cells(markdown: str) -> list[tuple[str, str, str]]:
    """(table header, column, cell) for every cell of an EM or F1 column of the README's tables."""
    cells = []
    lines = markdown.splitlines()
    for i, line in enumerate(lines[:-1]):
        if not (line.startswith("|") and re.match(r"^\|\s*:?-{3,}", lines[i + 1])):
            continue
        header = [c.strip() for c in line.strip().strip("|").split("|")]
        columns = [j for j, name in enumerate(header) if SCORE_HEADER.search(name) and "ms" not in name]
        for row in lines[i + 2 :]:
            if not row.startswith("|"):
                break
            values = [c.strip() for c in row.strip().strip("|").split("|")]
            cells += [(line, header[j], values[j]) for j in columns if j < len(values)]
    return cells


def test_every_em_f1_figure_in_a_readme_table_has_an_artefact():
    cells = score_cells((REPO / "README.md").read_text(encoding="utf-8"))
    figures = [(header, column, f) for header, column, cell in cells for f in FIGURE.findall(cell)]
    assert len(figures) >= 10, "the README's result tables were not found"
    known = artefact_figures()
    missing = [f"{column} = {figure}  (table: {header[:60]})" for header, column, figure in figures if figure not in known]
    assert not missing, "figures with no artefact in benchmarks/results:\n" + "\n".join(missing)
