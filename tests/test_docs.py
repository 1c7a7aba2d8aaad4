"""The documentation against its sources: docs/recipes.md's table against
hw1/reporting/reference.csv, and every relative link in README and docs/ against the files
and headings it points to. Plain text parsing, no training."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
REFERENCE = ROOT / "hw1" / "reporting" / "reference.csv"
RECIPES = ROOT / "docs" / "recipes.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]

COLUMNS = [
    "family",
    "ID",
    "backbone",
    "batch",
    "trainable",
    "weights",
    "head",
    "dropout",
    "LR schedule",
    "TTA",
    "report val (test)",
]


def table_rows(text: str, header: list[str]) -> list[dict[str, str]]:
    """The rows of the Markdown table whose header row has exactly these cells."""
    lines = text.splitlines()
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]
    starts = [i for i, row in enumerate(cells) if lines[i].startswith("|") and row == header]
    assert len(starts) == 1, (
        f"docs/recipes.md: expected one table headed {header}, found {len(starts)}"
    )
    rows = []
    for line, row in zip(lines[starts[0] + 2 :], cells[starts[0] + 2 :], strict=False):
        if not line.startswith("|"):
            break
        assert len(row) == len(header), (
            f"docs/recipes.md: {len(row)} cells, not {len(header)}: {line}"
        )
        rows.append(dict(zip(header, row, strict=True)))
    return rows


def expected_row(ref: dict[str, str]) -> dict[str, str]:
    """How docs/recipes.md shows one row of hw1/reporting/reference.csv."""
    if ref["sched"] == "cosine":
        schedule = f"cosine {ref['T_max']}, {ref['eta_min']}"
    else:
        schedule = ref["sched"]
    if not ref["val"]:
        report = "-"
    elif not ref["test"]:
        report = ref["val"]
    else:
        report = f"{ref['val']} ({ref['test']})"
    return {
        "family": ref["family"],
        "ID": f"`{ref['id']}`",
        "backbone": ref["arch"],
        "batch": ref["batch_size"],
        "trainable": f"last {ref['trainable_stages']}" if ref["trainable_stages"] else "all",
        "weights": ref["weights"] or "none",
        "head": ref["head"],
        "dropout": ref["dropout"].replace(";", "/"),
        "LR schedule": schedule,
        "TTA": ref["tta"],
        "report val (test)": report,
    }


def markdown_line(row: dict[str, str]) -> str:
    return "| " + " | ".join(row[c] for c in COLUMNS) + " |"


def test_recipes_table_is_reference_csv_row_for_row():
    with REFERENCE.open(newline="") as f:
        reference = list(csv.DictReader(f))
    shown = table_rows(RECIPES.read_text(), COLUMNS)
    want = [expected_row(ref) for ref in reference]
    assert [r["ID"] for r in shown] == [r["ID"] for r in want], (
        "docs/recipes.md's table lists other IDs (or another order) than "
        "hw1/reporting/reference.csv; "
        "its rows should be:\n" + "\n".join(markdown_line(r) for r in want)
    )
    for got, row in zip(shown, want, strict=True):
        assert got == row, (
            f"docs/recipes.md's row for {row['ID']} differs from hw1/reporting/reference.csv; "
            "write it as\n" + markdown_line(row)
        )


def without_code_blocks(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def without_code(text: str) -> str:
    """The text less fenced blocks and inline code, where brackets are not links."""
    return re.sub(r"`[^`\n]*`", "", without_code_blocks(text))


def anchors(path: Path) -> set[str]:
    """GitHub's anchors for the headings of a Markdown file."""
    found: set[str] = set()
    for line in without_code_blocks(path.read_text()).splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            n, candidate = 0, slug
            while candidate in found:
                n += 1
                candidate = f"{slug}-{n}"
            found.add(candidate)
    return found


def relative_links(path: Path) -> list[str]:
    targets = re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", without_code(path.read_text()))
    return [t for t in targets if not re.match(r"[a-z]+:", t)]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_existing_files_and_headings(doc):
    for target in relative_links(doc):
        file, _, anchor = target.partition("#")
        dest = (doc.parent / file).resolve() if file else doc
        where = f"{doc.relative_to(ROOT)}: link {target}"
        assert dest.exists(), f"{where}: no file {dest.relative_to(ROOT)}"
        if anchor:
            assert anchor in anchors(dest), f"{where}: no heading with anchor #{anchor}"


def test_docs_exist_and_are_linked_from_readme():
    names = {p.name for p in DOCS[1:]}
    assert {"configuration.md", "performance.md", "experiments.md"} <= names
    linked = {Path(t.partition("#")[0]).name for t in relative_links(README)}
    assert names <= linked, f"README.md links none of {sorted(names - linked)}"
