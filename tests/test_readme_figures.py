"""Every figure in a results table of README.md or docs/**/*.md comes from the artefact its row names.

`runs/` is not in the repository, so a figure that no committed artefact (`benchmarks/results/*.json`)
holds cannot be checked or reproduced. Each table says where its figures come from:

* `Artefacts: [x](benchmarks/results/x.json), ...` (or `<!-- artefacts: benchmarks/results/x.json -->`) as
  the nearest non-blank line above the table: these artefacts back every row;
* a column headed `artefact` or `artefacts`: the links in a row's cell back that row (on top of the above);
* a reference line directly above a `<!-- NAME:start -->` marker backs every table up to
  `<!-- NAME:end -->` (blocks that a script rewrites, such as `benchmarks/report.py`'s);
* `<!-- no-artefact: reason -->` above a table that measures nothing.

Links resolve relative to the markdown file, so a table keeps its references when it moves to docs/.

Every figure outside the first column (the row's label), outside code spans and outside ``` blocks is
looked up in its row's artefacts only (in the object or under the key named like the row where an
artefact has one: `speed.json`'s "MiniLM-L6 QAT IR", `training_cost.json`'s "qat", `layer_cost_*.json`'s
`table_predicts.selection`, report.json's line for that target):
as stored, rounded to the decimals written; a percentage also as 100 x a stored fraction; minutes also
as stored seconds / 60; "2 min 6 s" as seconds; "s/step" also as 1 / steps per second. Numbers in an
artefact's strings count (the wall times noted in a run's command), and so does the total of a dict
of timings (`{"fisher_s": ..., "refit_s": ...}`); a time figure matches only times (`*_runtime`,
`*_s`, `seconds`, or text). Long lists of numbers (kept neuron indices) are data, not figures.

A derived figure (a ratio `0.52x`; a cell of a "% of", "vs", "x FP32", "speed-up" or "share" column;
a signed difference; a "mean" column) is recomputed from exact artefact values: its numerator is a
figure of the same row (the one at the same position in the same cell when the cell has both, as in
`24.6 / 39.4 ms (0.52x / 0.52x)`), its reference the same column in another row, the value stored
under the same key in one of the row's artefacts (the FP32 run's `eval_openvino_f1`), or the
column's total (shares); a mean is that of another cell of the row. All the figures of one column
must be computed the same way against the same reference (the unpruned QAT IR's latency, in whichever
artefact the row names), and agree to the precision written. A derived figure that no computation
explains passes only if stored under a ratio-like key (`ratio_to_fp32`, `*_share`, `*_pct`, ...).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SEPARATOR = re.compile(r"^\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")
REFERENCE = re.compile(r"^(?:<!--\s*)?artefacts?\s*:", re.IGNORECASE)
EXEMPT = re.compile(r"^<!--\s*no-artefact\s*:\s*(\S.*?)\s*-->$", re.IGNORECASE)
BLOCK_START = re.compile(r"^<!--\s*([\w-]+):start\s*-->$")
LINK = re.compile(r"\[([^\]]*)\]\(([^)\s]+)\)")
BARE_JSON = re.compile(r"(?<![\w./(-])((?:\.\./|\./)?[\w./-]+\.json)\b")
CELL_SPLIT = re.compile(r"(?<!\\)\|")
# a figure is not part of a name (b1_s256, FP32, v1.1, batch-1); thousands separators; `x` = a ratio
NUMBER = re.compile(r"(?<![\w.])(?<![A-Za-z]-)(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?(x)?(?!\w|\.\d)")
DURATION = re.compile(r"(?<![\w.])(\d+) min (\d+) s\b")
CLOCK = re.compile(r"(?<![\w.:])(\d+):(\d\d)(?![\d:])")  # "wall 2:06" in a command's comment
# the unit after a figure; "18.4 + 12.5 min": both are minutes
UNIT_AFTER = re.compile(r"(?:\s*\+\s*\d+(?:\.\d+)?)*\s*(%|min\b|s/step\b|s\b)")
SCIENTIFIC = re.compile(r"(?<![\w.])\d+(?:\.\d+)?e[-+]?\d+")
DERIVED_HEADER = re.compile(r"% of|\bx FP32\b|speed-up|\bratio\b|\bvs\b|\bshare\b|\bminus\b", re.IGNORECASE)
MEAN_HEADER = re.compile(r"\bmean\b", re.IGNORECASE)
TIME_KEY = re.compile(r"runtime|second|_s$|_s\.|duration|time|wall", re.IGNORECASE)
# a paired difference and its interval (`f1_vs_reference.{diff,low,high}`) counts as derived too
RATIO_KEY = re.compile(r"ratio|share|speed|_over_|pct|percent|fraction|spread|mean|^targets$|_vs_", re.IGNORECASE)
MAX_FIGURE_LIST = 6  # longer lists of numbers are raw data (kept neuron indices), not quotable figures


# --- artefacts -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stored:
    value: float
    key: tuple[str, ...]  # the last two dict keys of its path: values under the same key are siblings
    path: str = ""  # every dict key of its path, dot-joined
    text: bool = False  # written inside a string
    entry: str = ""  # the `name` or `kind` of the object that holds it, else the artefact's file name
    source: str = ""  # the string it is written in
    keys: tuple[str, ...] = ()  # every dict key of its path

    @property
    def identity(self) -> tuple[str, str]:
        """The same for one measurement in every artefact that repeats it (the unpruned QAT IR's latency)."""
        return self.entry, self.path


@lru_cache(maxsize=None)
def stored_numbers(path: Path) -> tuple[Stored, ...]:
    """Every number in an artefact, with the numbers and durations written in its strings."""
    found: list[Stored] = []

    def add(value: float, keys: tuple[str, ...], entry: str, source: str = "") -> None:
        found.append(Stored(float(value), keys[-2:], ".".join(keys), bool(source), entry, source, keys))

    def walk(value, keys: tuple[str, ...], entry: str) -> None:
        if isinstance(value, dict):
            label = value.get("name", value.get("kind"))
            entry = label if isinstance(label, str) else entry
            for k, v in value.items():
                walk(v, keys + (str(k),), entry)
            timings = [v for k, v in value.items() if str(k).endswith("_s") and isinstance(v, (int, float))]
            if len(timings) >= 2 and len(timings) == len(value):
                add(sum(timings), keys + ("total_s",), entry)
        elif isinstance(value, list):
            if len(value) > MAX_FIGURE_LIST and all(isinstance(v, (int, float)) for v in value):
                return
            for n, v in enumerate(value):
                walk(v, keys, entry if isinstance(v, dict) else f"{entry}[{n}]")
        elif isinstance(value, bool) or value is None:
            return
        elif isinstance(value, (int, float)):
            add(value, keys, entry)
        elif isinstance(value, str):
            text = SCIENTIFIC.sub(" ", value)
            for minutes, seconds in DURATION.findall(text) + CLOCK.findall(text):
                add(60 * int(minutes) + int(seconds), keys + ("duration",), entry, value)
            for whole, decimals, _ in NUMBER.findall(text):
                add(float(whole.replace(",", "") + ("." + decimals if decimals else "")), keys, entry, value)

    walk(json.loads(path.read_text(encoding="utf-8")), (), path.stem)
    return tuple(found)


# --- markdown tables -------------------------------------------------------------------------------


@dataclass(eq=False)
class Figure:
    text: str
    value: float
    decimals: int
    unit: str = ""  # "%", "min", "s", "s/step", "min s" ("2 min 6 s", value in seconds)
    ratio: bool = False  # written with an `x`
    signed: bool = False
    position: int = 0  # its place among the cell's figures
    exact: list[Stored] = field(default_factory=list)  # the artefact values it matched or was computed from

    @property
    def tolerance(self) -> float:
        return 0.5 * 10.0 ** (-self.decimals) * (1 + 1e-9) + 1e-12

    @property
    def values(self) -> list[Stored]:
        """What it matched, numbers stored as numbers first (those in text are rounded)."""
        return [s for s in self.exact if not s.text] or self.exact

    @property
    def best(self) -> Stored:
        """The matched artefact value closest to the figure as written."""
        return min(self.values, key=lambda s: abs(s.value - self.value))

    def agrees(self, value: float) -> bool:
        return math.isfinite(value) and abs(value - self.value) <= self.tolerance


@dataclass
class Row:
    line: int
    label: str
    artefacts: list[Path]
    figures: dict[int, list[Figure]] = field(default_factory=dict)  # column -> figures, in order


@dataclass
class Table:
    path: Path
    line: int
    header: list[str]
    rows: list[Row]
    exempt: str | None
    problems: list[str]

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line} (| {' | '.join(self.header)[:70]} ...)"


def split_cells(line: str) -> list[str]:
    text = line.strip()
    text = text[1:] if text.startswith("|") else text
    text = text[:-1] if text.endswith("|") and not text.endswith("\\|") else text
    return [c.strip() for c in CELL_SPLIT.split(text)]


def references(text: str, source: Path) -> tuple[list[Path], list[str]]:
    """The artefacts that a reference line or cell names (links or bare paths), relative to its file."""
    targets = [url for _, url in LINK.findall(text)] + BARE_JSON.findall(LINK.sub(" ", text))
    paths, problems = [], []
    for target in targets:
        path = (source.parent / target.split("#")[0]).resolve()
        if not target.endswith(".json"):
            problems.append(f"names {target!r}, not a JSON artefact")
        elif not path.is_file():
            problems.append(f"names {target!r}, which does not exist (relative to {source.relative_to(REPO)})")
        else:
            paths.append(path)
    return paths, problems


def is_reference(line: str) -> bool:
    return bool(REFERENCE.match(line.strip()))


def figures_of(cell: str) -> list[Figure]:
    text = LINK.sub(r"\1", re.sub(r"`[^`]*`", " ", cell))
    text = SCIENTIFIC.sub(" ", text).replace("\\", "").replace("*", "")
    found: list[tuple[int, Figure]] = []
    durations = [m.span() for m in DURATION.finditer(text)]
    for m in DURATION.finditer(text):
        found.append((m.start(), Figure(m.group(0), 60 * int(m.group(1)) + int(m.group(2)), 0, unit="min s")))
    for m in NUMBER.finditer(text):
        if any(a <= m.start() < b for a, b in durations):
            continue
        whole, decimals, x = m.groups()
        value = float(whole.replace(",", "") + ("." + decimals if decimals else ""))
        before = text[: m.start()]
        signed = bool(re.search(r"(?:^|[\s(\[])[-+−±]$", before))  # "+0.10 [-0.19, +0.36]"
        if signed and before[-1] in "-−":
            value = -value
        unit = UNIT_AFTER.match(text, m.end())
        unit = unit.group(1) if unit else ""
        written = (before[-1] if signed else "") + m.group(0) + ("" if unit in ("", "%") else " ") + unit
        found.append((m.start(), Figure(written, value, len(decimals or ""), unit=unit, ratio=bool(x), signed=signed)))
    found.sort(key=lambda item: item[0])
    for n, (_, figure) in enumerate(found):
        figure.position = n
    return [figure for _, figure in found]


def tables_of(path: Path) -> list[Table]:
    lines = path.read_text(encoding="utf-8").splitlines()

    def line_above(i: int) -> str:
        j = i - 1
        while j >= 0 and not lines[j].strip():
            j -= 1
        return lines[j].strip() if j >= 0 else ""

    blocks = []  # (start, end, reference line) of the blocks that a script rewrites
    for i, line in enumerate(lines):
        m = BLOCK_START.match(line.strip())
        if m and is_reference(line_above(i)):
            end_marker = f"<!-- {m.group(1)}:end -->"
            end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == end_marker), len(lines))
            blocks.append((i, end, line_above(i)))

    fenced, inside = set(), False  # tables shown inside ``` blocks are examples, not results
    for i, line in enumerate(lines):
        if line.strip().startswith(("```", "~~~")):
            inside = not inside
        elif inside:
            fenced.add(i)

    tables = []
    for i, line in enumerate(lines[:-1]):
        if i in fenced or not (line.strip().startswith("|") and SEPARATOR.match(lines[i + 1].strip())):
            continue
        header = split_cells(line)
        above = line_above(i)
        exempt = EXEMPT.match(above)
        if not is_reference(above):
            above = next((ref for start, end, ref in blocks if start < i < end), above)
        artefacts, problems = references(above, path) if is_reference(above) else ([], [])
        artefact_columns = [c for c, name in enumerate(header) if name.strip().lower() in ("artefact", "artefacts")]
        rows = []
        for k in range(i + 2, len(lines)):
            if not lines[k].strip().startswith("|"):
                break
            cells = split_cells(lines[k])
            row = Row(k + 1, cells[0], list(artefacts))
            for c in artefact_columns:
                paths, cell_problems = references(cells[c] if c < len(cells) else "", path)
                row.artefacts += paths
                problems += [f"row at line {k + 1}: {p}" for p in cell_problems]
            for c, cell in enumerate(cells[: len(header)]):
                if c > 0 and c not in artefact_columns and (figures := figures_of(cell)):
                    row.figures[c] = figures
            rows.append(row)
        tables.append(Table(path, i + 1, header, rows, exempt.group(1) if exempt else None, problems))
    return tables


def markdown_files() -> list[Path]:
    docs = REPO / "docs"
    return [REPO / "README.md"] + (sorted(docs.rglob("*.md")) if docs.is_dir() else [])


@lru_cache(maxsize=1)
def all_tables() -> tuple[Table, ...]:
    return tuple(table for path in markdown_files() for table in tables_of(path))


# --- checking --------------------------------------------------------------------------------------


def is_derived(figure: Figure, header: str, column: list[Figure]) -> bool:
    """A ratio, share, difference or mean rather than a measurement as stored."""
    if figure.ratio or figure.signed or MEAN_HEADER.search(header):
        return True
    # "26.1 / 39.1 ms (0.50x / 0.48x)" under "... (vs unpruned QAT IR)": only the `x` figures are ratios
    return bool(DERIVED_HEADER.search(header)) and not any(f.ratio for f in column)


def as_stored(figure: Figure, stored: Stored, derived: bool) -> bool:
    x = stored.value
    if figure.unit in ("min", "s", "s/step", "min s") and not (stored.text or TIME_KEY.search(stored.path)):
        return False
    if derived and not RATIO_KEY.search(stored.path):
        return False
    if figure.unit == "min s":
        return abs(x - figure.value) <= 0.5 + 1e-9
    return (
        figure.agrees(x)
        or (figure.unit == "%" and figure.agrees(100 * x))
        or (figure.unit == "min" and figure.agrees(x / 60))
        or (figure.unit == "s/step" and x > 0 and figure.agrees(1 / x))
    )


def own_numbers(row: Row) -> list[Stored]:
    """The row's artefacts' numbers; only its own where they are named like the row: an entry (`speed.json`'s
    "MiniLM-L6 QAT IR", `training_cost.json`'s "qat"), a key on their path (`layer_cost_*.json`'s
    `table_predicts.selection`), the line of `report.json` that holds the label."""
    label = re.sub(r"[*`]", "", LINK.sub(r"\1", row.label)).strip()
    numbers = [s for p in row.artefacts for s in stored_numbers(p)]
    own = [s for s in numbers if s.entry == label or label in s.keys
           or (s.text and len(label) > 3 and f"| {label} |" in s.source)]  # fmt: skip
    return own or numbers


def check_table(table: Table) -> list[str]:
    """The figures of the table's rows that their artefacts do not hold; fills in each figure's `exact`."""
    pending: list[tuple[Row, int, Figure]] = []
    columns = {c: [f for row in table.rows for f in row.figures.get(c, [])] for c in range(len(table.header))}
    for row in table.rows:
        if not row.artefacts:
            continue  # reported by test_every_table_with_figures_names_its_artefacts
        for c, figures in row.figures.items():
            for figure in figures:
                if is_derived(figure, table.header[c], columns[c]):
                    pending.append((row, c, figure))
                else:
                    figure.exact = [s for s in own_numbers(row) if as_stored(figure, s, False)]

    def column(c: int, position: int, exclude: Row | None = None) -> list[Figure]:
        return [
            f
            for other in table.rows
            if other is not exclude
            for f in other.figures.get(c, [])
            if f.position == position and f.exact
        ]

    # a "mean" figure is the mean of another cell of its row that has several figures
    for row, c, figure in pending:
        if MEAN_HEADER.search(table.header[c]):
            for figures in row.figures.values():
                if len(figures) > 1 and all(f.exact for f in figures):
                    mean = sum(f.best.value for f in figures) / len(figures)
                    if figure.agrees(mean):
                        figure.exact = [Stored(mean, ("mean",), f"mean of line {row.line}", entry="README")]

    # every way a derived figure can be recomputed, as (how, value): `how` names the numerator's column
    # and place, the operation and the reference (which stored value, or the column's total)
    ways: dict[int, dict[tuple, float]] = {}
    groups: dict[tuple[int, int], list[Figure]] = {}  # (column, n-th derived figure of its cell)
    for row, c, figure in pending:
        if figure.exact:
            continue
        scale = 100.0 if figure.unit == "%" or "%" in table.header[c] else 1.0
        in_cell = [f for f in row.figures[c] if f.exact]
        derived = [f for f in row.figures[c] if not f.exact]
        k = next(n for n, f in enumerate(derived) if f is figure)
        groups.setdefault((c, k), []).append(figure)
        if in_cell:  # `24.6 / 39.4 ms (0.52x / 0.52x)`: the n-th ratio goes with the n-th measurement
            numerators = [(c, in_cell[k])] if len(in_cell) == len(derived) else [(c, f) for f in in_cell]
        else:
            numerators = [(col, f) for col, fs in row.figures.items() if col != c for f in fs if f.exact]
        found = ways.setdefault(id(figure), {})
        for col, numerator in numerators:
            others = column(col, numerator.position, exclude=row)
            references = [("total", sum(f.best.value for f in column(col, numerator.position)))]
            references += [(f.best.identity, f.best.value) for f in others]
            for stored in numerator.values:  # the same key in the row's artefacts: the FP32 run's F1
                same_key = [s for p in row.artefacts for s in stored_numbers(p) if s.key == stored.key]
                references += [(s.identity, s.value) for s in same_key]
            for a in {s.value for s in numerator.values}:
                for reference, b in references:
                    where = (col, numerator.position, reference)
                    if a and b and (figure.ratio or scale != 1.0 or not figure.signed):
                        for how, value in (("a/b", scale * a / b), ("b/a", scale * b / a)):
                            if figure.agrees(value):
                                found[(how, *where)] = value
                    if figure.signed and figure.agrees(a - b):
                        found[("a-b", *where)] = a - b
    # one column compares every row with the same reference, in the same way
    for figures in groups.values():
        counts: dict[tuple, int] = {}
        for figure in figures:
            for how in ways[id(figure)]:
                counts[how] = counts.get(how, 0) + 1
        if counts:
            chosen = min(counts, key=lambda how: (-counts[how], repr(how)))
            for figure in figures:
                if chosen in ways[id(figure)]:
                    figure.exact = [Stored(ways[id(figure)][chosen], ("derived",), repr(chosen), entry="README")]
    for row, c, figure in pending:
        if not figure.exact:  # stored as a ratio or share (ratio_to_fp32), or in text (report.json)
            figure.exact = [s for s in own_numbers(row) if as_stored(figure, s, True)]

    missing = []
    for row in table.rows:
        for c, figures in row.figures.items():
            for figure in figures:
                if row.artefacts and not figure.exact:
                    names = ", ".join(sorted({p.name for p in row.artefacts}))
                    missing.append(
                        f"{table.name}\n    row {row.label[:60]!r} (line {row.line}), column {table.header[c]!r}: "
                        f"{figure.text} is not in {names}"
                    )
    return missing


def test_every_table_with_figures_names_its_artefacts():
    tables = all_tables()
    assert len(tables) >= 10, "the markdown tables were not found"
    unreferenced, problems = [], []
    for table in tables:
        problems += [f"{table.name}: {p}" for p in table.problems]
        bare = [row for row in table.rows if row.figures and not row.artefacts]
        if bare and table.exempt is None:
            figures = [f.text for row in bare for fs in row.figures.values() for f in fs]
            labels = [r.label[:30] for r in bare[:3]]
            unreferenced.append(f"{table.name}: rows {labels} have figures ({', '.join(figures[:4])}, ...)")
        if table.exempt is not None and any(row.artefacts for row in table.rows):
            problems.append(f"{table.name}: marked no-artefact, yet names artefacts")
    assert not problems, "bad artefact references:\n" + "\n".join(problems)
    assert not unreferenced, (
        "tables with figures but no artefact: put `Artefacts: [x.json](benchmarks/results/x.json)` above the table, "
        "add an `artefact` column, or mark a table that measures nothing `<!-- no-artefact: reason -->`:\n"
        + "\n".join(unreferenced)
    )


def test_every_table_figure_is_in_its_rows_artefacts():
    tables = [table for table in all_tables() if table.exempt is None]
    checked = sum(len(fs) for t in tables for row in t.rows if row.artefacts for fs in row.figures.values())
    assert checked >= 300, f"only {checked} figures were checked: the tables or their references were not found"
    missing = [line for table in tables for line in check_table(table)]
    assert not missing, f"{len(missing)} figures are not in their row's artefacts:\n" + "\n".join(missing)
