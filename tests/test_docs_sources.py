"""Where the docs' words come from (issue 44, item 6): every paper a page cites is linked on that page (to arXiv,
where it is there), every piece of code a page quotes is in the file it names, and every measured number in the
prose of a textbook page is in a results file, a generated table, a config, or the paper the line cites.

The lab notes (docs/lab/) keep the tuning histories as they were measured, each table beside the command that
made it; the results of those runs were not kept, so their numbers are not checked here."""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
TEXTBOOK = [ROOT / "README.md", *sorted(p for p in DOCS.glob("*.md") if p.name != "references.md"),
            ROOT / "weights" / "README.md", ROOT / "notebooks" / "README.md"]
LAB = sorted((DOCS / "lab").glob("*.md"))


def rel(page: Path) -> str:
    return str(page.relative_to(ROOT)) if page.is_relative_to(ROOT) else page.name


def prose(text: str):
    """(line number, line) outside fenced code and outside blocks generated from results files."""
    fenced = generated = False
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        elif line.startswith("<!-- generated from"):
            generated = True
        elif line.startswith("<!-- end of generated"):
            generated = False
        elif not (fenced or generated):
            yield number, line


# --- citations --------------------------------------------------------------------------------------------------
# "Ho et al. 2020", "Ho & Salimans 2022", "Song, Meng & Ermon 2021", "Kynkaanniemi et al. (2024)"
NAME = r"[A-Z][A-Za-z\-]+"
CITATION = re.compile(rf"\b({NAME}(?: et al\.|(?:, {NAME})* & {NAME}))[ ,]*\(?((?:19|20)\d\d)\b")
REFERENCE_ROW = re.compile(r"^\| ([^|]+?) \| [^|]+ \| \[[^\]]+\]\(([^)]+)\) \|$")


def references() -> dict:
    """'cited as' -> link, from docs/references.md."""
    rows = {}
    for line in (DOCS / "references.md").read_text().splitlines():
        found = REFERENCE_ROW.match(line)
        if found and found.group(1) != "cited as":
            rows[found.group(1)] = found.group(2)
    return rows


def citations(text: str) -> set:
    return {f"{who} {year}" for _, line in prose(text) for who, year in CITATION.findall(line)}


def unlinked_citations(page: Path, refs: dict) -> list:
    text = page.read_text()
    problems = []
    for cited in sorted(citations(text)):
        if cited not in refs:
            problems.append(f"{cited}: not in docs/references.md")
        elif refs[cited] not in text:
            problems.append(f"{cited}: cited without a link to {refs[cited]}")
    return problems


def test_the_citation_pattern_finds_the_ways_the_docs_cite():
    text = ("DDPM (Ho et al. 2020, Eq. 14), Ho & Salimans 2022, Song, Meng & Ermon 2021 and "
            "Kynkaanniemi et al. (2024); not 'in 2020' nor 'SD3 2024'.")
    assert citations(text) == {"Ho et al. 2020", "Ho & Salimans 2022", "Song, Meng & Ermon 2021",
                               "Kynkaanniemi et al. 2024"}


def test_the_references_table_is_read():
    refs = references()
    assert refs["Ho et al. 2020"] == "https://arxiv.org/abs/2006.11239"
    assert len(refs) >= 40 and all(link.startswith("https://") for link in refs.values())


def test_an_unlinked_citation_is_found(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("As Ho et al. 2020 showed ([arXiv 2006.11239](https://arxiv.org/abs/2006.11239)); "
                    "Ho & Salimans 2022 too; Nobody et al. 2019.\n")
    refs = {"Ho et al. 2020": "https://arxiv.org/abs/2006.11239",
            "Ho & Salimans 2022": "https://arxiv.org/abs/2207.12598"}
    assert unlinked_citations(page, refs) == [
        "Ho & Salimans 2022: cited without a link to https://arxiv.org/abs/2207.12598",
        "Nobody et al. 2019: not in docs/references.md"]


@pytest.mark.parametrize("page", TEXTBOOK + LAB, ids=rel)
def test_every_paper_a_page_cites_is_linked_on_it(page):
    problems = unlinked_citations(page, references())
    assert not problems, f"{rel(page)}: " + "; ".join(problems)


# --- quoted code ------------------------------------------------------------------------------------------------
# A ```python block whose lead-in (the three lines above it) names a source file quotes that file: each of its lines
# is a line of the file (indentation aside), or the line with its trailing comment dropped. "..." marks a cut.
SOURCE_NAME = re.compile(r"([\w/]+\.py)\b")


def source_file(name: str) -> Path | None:
    for candidate in (ROOT / name, ROOT / "src" / "difflab" / name, ROOT / "src" / name):
        if candidate.is_file():
            return candidate
    found = sorted((ROOT / "src" / "difflab").rglob(Path(name).name))
    return found[0] if len(found) == 1 else None


def quoted_code(page: Path):
    """(line number, source file, the block's lines) for each python block whose lead-in names a source file."""
    lines = page.read_text().splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("```")]
    for open_, close in zip(starts[::2], starts[1::2]):
        if lines[open_].strip() != "```python":
            continue
        lead_in = " ".join(lines[max(0, open_ - 3):open_])
        names = [n for n in SOURCE_NAME.findall(lead_in) if source_file(n)]
        if names:
            yield open_ + 1, source_file(names[-1]), lines[open_ + 1:close]


def is_line_of(quote: str, source_lines: set) -> bool:
    quote = quote.strip()
    if not quote or quote.startswith("#") or quote in ("...", "# ..."):
        return True
    if quote in source_lines:
        return True
    code = quote.split("  #")[0].rstrip()  # the line with its comment dropped, or with a comment of the page's own
    return any(line == code or line.split("  #")[0].rstrip() == code for line in source_lines)


def stale_quotes(page: Path) -> list:
    problems = []
    for number, source, block in quoted_code(page):
        have = {line.strip() for line in source.read_text().splitlines()}
        missing = [q.strip() for q in block if not is_line_of(q, have)]
        if missing:
            problems.append(f"{rel(page)}:{number} quotes {rel(source)}, which has no line "
                            + " | ".join(repr(m) for m in missing[:3]))
    return problems


QUOTING = [p for p in TEXTBOOK + LAB if list(quoted_code(p))]


def test_the_pages_that_quote_code_are_found():
    assert len(QUOTING) >= 6  # the objective pages, samplers, prompts, latent diffusion; none found: the parser broke


def test_a_stale_quote_is_found(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("In `src/difflab/objectives.py`:\n\n```python\nclass EpsilonObjective(Objective):\n"
                    "    ...\n    return 'not in the file'\n```\n")
    problems = stale_quotes(page)
    assert len(problems) == 1 and "not in the file" in problems[0] and "EpsilonObjective" not in problems[0]


@pytest.mark.parametrize("page", QUOTING, ids=rel)
def test_quoted_code_is_in_the_file_it_names(page):
    problems = stale_quotes(page)
    assert not problems, "; ".join(problems)


# --- numbers in prose -------------------------------------------------------------------------------------------
# A number with a decimal point or a percent sign, in prose: a measurement or a setting. Not checked: inline code
# (commands, settings written as code), link targets, arXiv ids, version strings, and ratios ("2.7x": derived from
# two numbers that are checked).
NUMBER = re.compile(r"(?<![\w.\-])(\d+(?:\.\d+)?)(%?)(?![\w.]*\d)(?!x\b|\s?×)")
DROPPED = [re.compile(r"`[^`]*`"), re.compile(r"\]\([^)]*\)"), re.compile(r"https?://\S+"),
           re.compile(r"\b\d{4}\.\d{4,5}\b"), re.compile(r"\bv?\d+\.\d+\.\d+\b")]
CITES = re.compile(r"arxiv\.org|doi\.org|et al\.|& [A-Z][a-z]+,? \(?(?:19|20)\d\d")


def numbers_in(line: str) -> list:
    for pattern in DROPPED:
        line = pattern.sub(" ", line)
    return [(n, pct) for n, pct in NUMBER.findall(line) if "." in n or pct]


def formatted(value: float, decimals: int) -> set:
    return {f"{value:.{decimals}f}", f"{value * 100:.{decimals}f}"}


def backing() -> tuple[set, set]:
    """(numbers as results files hold them: each value at 0-3 decimals and as a percentage, numbers that appear
    in generated blocks, configs or the source as written)."""
    values: set = set()

    def walk(obj):
        if isinstance(obj, dict):
            for v in obj.values():
                walk(v)
        elif isinstance(obj, list):
            for v in obj:
                walk(v)
        elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
            for d in range(4):
                values.update(formatted(float(obj), d))

    for path in sorted((DOCS / "results").glob("*.json")):
        walk(json.loads(path.read_text()))
    written: set = set()
    for page in TEXTBOOK + LAB:
        lines = page.read_text().splitlines()
        inside = False
        for line in lines:
            inside = (inside or line.startswith("<!-- generated from")) and not line.startswith("<!-- end of gen")
            if inside:
                written.update(re.findall(r"\d+(?:\.\d+)?", line))
    for path in [*ROOT.glob("configs/**/*.yaml"), *ROOT.glob("src/**/*.py")]:
        written.update(re.findall(r"\d+\.\d+", path.read_text()))
    return values, written


def unbacked_numbers(page: Path, values: set, written: set) -> list:
    found = []
    for number, line in prose(page.read_text()):
        if CITES.search(line):
            continue  # a paper's own numbers, on the line that cites it
        for n, pct in numbers_in(line):
            if n not in values and n not in written:
                found.append(f"{number}:{n}{pct}")
    return found


def test_numbers_in_prose_are_told_apart():
    assert numbers_in("FID 4.52 (96%) at 2 steps, `lr: 0.0003`, 2.7x faster, "
                      "[x](https://a.org/1.5) arXiv 2006.11239, torch 2.13.0, 1,000 images") == [
        ("4.52", ""), ("96", "%")]


def test_an_unbacked_number_is_found(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("Measured: FID 4.52 and 12.34.\nHo et al. 2020 report 3.17.\n"
                    "<!-- generated from x.json: t -->\n| 7.77 |\n<!-- end of generated block -->\n")
    assert unbacked_numbers(page, formatted(4.52, 2), set()) == ["1:12.34"]


VALUES, WRITTEN = backing()


@pytest.mark.parametrize("page", TEXTBOOK, ids=rel)
def test_every_number_in_a_textbook_pages_prose_has_a_source(page):
    unbacked = unbacked_numbers(page, VALUES, WRITTEN)
    assert not unbacked, (f"{rel(page)}: numbers in no results file, generated block, config or cited line "
                          f"(line:number): {', '.join(unbacked)}; publish the measurement (compare_models.py "
                          f"--evaluations ...), move the passage to docs/lab/, or drop the number")
