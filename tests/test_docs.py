"""The docs cannot quote a config that no longer exists: every config diff quoted in docs/ and the README
matches the config files it names, line for line."""

import json
import re
from pathlib import Path

import pytest

from difflab.study import report

ROOT = Path(__file__).resolve().parent.parent
DIFF = re.compile(r"diff (\S+\.yaml) (\S+\.yaml)")


def quoted_diffs():
    """(page, line number, old config, new config, the quoted '-' and '+' lines) for each diff block."""
    for page in report.pages(ROOT):
        lines = page.read_text().splitlines()
        starts = [i for i, line in enumerate(lines) if line.startswith("```")]
        for open_, close in zip(starts[::2], starts[1::2]):
            block = lines[open_ + 1 : close]
            context = " ".join(lines[max(0, open_ - 3) : open_] + block[:1])  # `diff A B` just above or in the block
            found = DIFF.search(context)
            quoted = [line for line in block if line[:1] in "-+" and not line.startswith(("---", "+++"))]
            if found and quoted:
                yield page.name, open_ + 1, found.group(1), found.group(2), quoted


def is_quote_of(quote: str, line: str) -> bool:
    """The line itself, or the line abridged: its comment dropped, or cut short inside the comment."""
    return line == quote or line.startswith(quote + " ") or ("#" in quote and line.startswith(quote))


CASES = list(quoted_diffs())


def test_the_docs_quote_config_diffs():
    assert len(CASES) >= 3  # the milestone pages do; if none is found, the parser above broke


@pytest.mark.parametrize("page, line, old, new, quoted", CASES, ids=[f"{c[0]}:{c[1]}" for c in CASES])
def test_a_quoted_config_diff_matches_the_configs(page, line, old, new, quoted):
    files = {"-": ROOT / old, "+": ROOT / new}
    stale = []
    for text in quoted:
        source = files[text[0]]
        have = [raw.rstrip() for raw in source.read_text().splitlines()] if source.is_file() else []
        if not any(is_quote_of(text[1:].rstrip(), line) for line in have):
            stale.append(f"{text!r} is not a line of {source.relative_to(ROOT)}")
    assert not stale, f"{page}:{line}: " + "; ".join(stale)


# The study's numbers (issue 25, item 5): blocks generated from docs/results/*.json by
# `python compare_models.py --publish ...` (src/difflab/study/report.py).
from difflab.config import load_config  # noqa: E402
from difflab.commands.dryrun import describe  # noqa: E402

PAGES = report.pages(ROOT)
BLOCKS = [(page, source, kind, body) for page in PAGES for source, kind, body in report.blocks(page.read_text())]
PUBLISHED = sorted((ROOT / "docs" / "results").glob("*.json"))
# A study's rows describe configs as they are now; a page's own measurements (kind "evaluations") are
# evaluate.py outputs with sampling changed on purpose, and keep their checkpoint and settings instead.
# Results that measure something other than configs' models: a page's own evaluations, encoders, data, costs
NOT_STUDIES = ("evaluations", "text encoders", "framing data", "framing requests", "video attention", "flops")
STUDIES = [p for p in PUBLISHED if json.loads(p.read_text()).get("kind") not in NOT_STUDIES]


@pytest.mark.parametrize("page, source, kind, body", BLOCKS,
                         ids=[f"{b[0].relative_to(ROOT)}:{b[2]}" for b in BLOCKS])
def test_a_generated_block_is_what_its_results_json_renders(page, source, kind, body):
    results = json.loads((ROOT / source).read_text())
    assert body == report.render(kind, results), (
        f"{page.name}: the block '{kind}' no longer matches {source}; rerun "
        f"`python compare_models.py --publish <results.json> --as {Path(source).stem}` instead of editing it")


@pytest.mark.parametrize("published", STUDIES, ids=[p.name for p in STUDIES])
def test_published_results_describe_the_configs_as_they_are(published):
    """A config changed after its study was measured makes its published numbers stale: measure again."""
    for r in json.loads(published.read_text())["rows"]:
        found = sorted(ROOT.glob(f"configs/**/{r['model']}.yaml"))
        assert found, f"{published.name}: no config named {r['model']}"
        cfg = load_config(found[0])
        s = cfg.sampling
        assert (r["sampler"], r["steps"]) == (s.sampler, s.steps), f"{r['model']}: sampled otherwise than its config"
        if r["accuracy"] is not None:  # unconditional rows sample at scale 1 whatever the config says
            assert r["cfg_scale"] == s.cfg_scale, f"{r['model']}: guidance {r['cfg_scale']}, config {s.cfg_scale}"
        # --dry-run's count: a latent model's network is built on the VAE's latents
        assert r["params"] == describe(cfg)["params"], f"{r['model']}: the network has changed"


# Anchor links (issue 44, item 7): a `](#heading)` or `](page.md#heading)` link in docs/ or the README must name a
# heading that exists, by GitHub's rule for heading ids (below); five such links to renamed headings had broken.
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")
ANCHOR_LINK = re.compile(r"\]\(([^)\s#]*)#([^)\s]+)\)")


def outside_code(text: str):
    """(line number, line) of the lines not inside a fenced code block."""
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced:
            yield number, line


def heading_id(heading: str) -> str:
    """GitHub's id for a heading: its text (links and tags reduced to their words) in lower case, every character
    but letters, digits, '_', '-' and spaces dropped, spaces made '-'.
    "Flux's rotary positions" -> "fluxs-rotary-positions"."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # [words](url) -> words
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def heading_ids(text: str) -> set:
    """Every heading id of a page; a repeated heading gets -1, -2, ... as on GitHub."""
    seen: dict = {}
    ids = set()
    for _, line in outside_code(text):
        found = HEADING.match(line)
        if found:
            base = heading_id(found.group(1))
            ids.add(base if base not in seen else f"{base}-{seen[base]}")
            seen[base] = seen.get(base, 0) + 1
    return ids


def broken_anchors(page: Path) -> list:
    """'page:line: target#anchor' for each anchor link of a markdown page that names no heading of its target."""
    broken = []
    for number, line in outside_code(page.read_text()):
        for target, anchor in ANCHOR_LINK.findall(line):
            if "://" in target:
                continue  # another site's page: not ours to check
            dest = (page.parent / target).resolve() if target else page
            if dest.suffix != ".md" or not dest.is_file():
                broken.append(f"{page.name}:{number}: {target}#{anchor} (no such markdown file)")
            elif anchor not in heading_ids(dest.read_text()):
                broken.append(f"{page.name}:{number}: {target}#{anchor}")
    return broken


def test_heading_ids_follow_githubs_rule():
    assert heading_id("Where a token is: Flux's rotary positions") == "where-a-token-is-fluxs-rotary-positions"
    assert heading_id("Fresh noise at every step: the sampler that closed most of the gap (floor 5.21)") == (
        "fresh-noise-at-every-step-the-sampler-that-closed-most-of-the-gap-floor-521")
    assert heading_id("`training.lr`, [linked](x.md) and <b>tagged</b>") == "traininglr-linked-and-tagged"
    assert heading_ids("# A\n## A\n```\n# not a heading\n```\n") == {"a", "a-1"}


def test_a_broken_anchor_is_found(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## Flux's blocks\n")
    page = tmp_path / "page.md"
    page.write_text("# Top\n\n[ok](#top) [ok](other.md#fluxs-blocks) [old](other.md#flux-s-blocks) [gone](#nowhere)\n"
                    "```\n[in code](#not-checked)\n```\n")
    assert broken_anchors(page) == ["page.md:3: other.md#flux-s-blocks", "page.md:3: #nowhere"]


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_anchor_link_names_a_heading(page):
    assert not broken_anchors(page), "links to headings that do not exist: " + "; ".join(broken_anchors(page))
