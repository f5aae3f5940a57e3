"""The study's numbers in the docs, generated: tables and sentences rendered from a results.json.

`make compare` writes results/results.json. Publishing it,

    python compare_models.py --publish results/results.json --as study

copies it to docs/results/study.json and rewrites every block of README.md and docs/*.md
that is marked as generated from it:

    <!-- generated from docs/results/study.json: table -->
    ...(rendered here; never edited by hand)...
    <!-- end of generated block -->

Kinds of block: `table` (one row per model), `orderings` (one sentence per step of the history
present, saying whether the two models' seed spreads overlap and naming every setting in which
their configs differ), `effect <config name>` (a milestone page's measured effect against the step
before it), `sweeps` (FID and accuracy against
the guidance scale and the number of steps, first seed), `timing` (where the study's time went),
and a page's own measurements, `evaluations`, `evaluations over seeds`, `curves` (few-step curves), `curves over
seeds`, `learning curves`, `adherence`, `adherence over seeds` and `framing over seeds`
(src/difflab/study/page_tables.py).
tests/test_docs.py renders every block again from the committed json and checks it against the page, and checks
each row's sampler, steps, guidance and parameter count
against the config of the same name: a page cannot quote a number the json does not hold,
and the json cannot describe a config that has changed since it was measured.

Publishing is all or nothing: every block that would change is rendered in memory first, so a
malformed or incomplete results.json is refused with one line before any file is touched; then
each file is written to a temporary beside it, and only when all are written are they renamed
over the old ones, with Ctrl-C held back until the last rename (write_together).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

from ..infra.outputs import write_error, write_together
from .config_diff import config_changes  # every setting two configs differ in
from .page_tables import (  # a page's own measurements
    adherence, adherence_over_seeds, clips, curves, curves_over_seeds, evaluations, evaluations_over_seeds,
    floor_text, framing_over_seeds, learning_curves, spread_text)
from ..infra.untrusted import StructureError, check_structure, one_line, shown

# The story's order, and the name each config goes by in a table.
HISTORY = {
    "ddpm_original": "DDPM (2020) U-Net eps, 1000 steps, unconditional",
    "unet_x0_prediction": "U-Net x0",
    "unified_sd1_unet_eps": "SD1 U-Net eps",
    "unified_sd2_unet_v": "SD2 U-Net v",
    "unet_flow": "U-Net rectified flow",
    "dit_transformer": "DiT rectified flow",
    "unified_sd3_mmdit_flow": "SD3 MMDiT rectified flow",
    "ldm_latent": "latent U-Net eps (VAE latents)",
    "sd2_consistency_distill": "SD2 consistency distillation",
    "sd2_consistency_training": "SD2 consistency training",
    "sd3_shortcut": "SD3 MMDiT shortcut model",
}
# For `orderings`: the steps of the history that change one idea each (from, to, what changed).
STEPS = [
    ("ddpm_original", "unified_sd1_unet_eps", "labels and guidance, DDIM's 50 steps"),
    ("unet_x0_prediction", "unified_sd1_unet_eps", "predicting x0 -> predicting eps"),
    ("unified_sd1_unet_eps", "unified_sd2_unet_v", "eps -> v"),
    ("unified_sd2_unet_v", "unet_flow", "v on SD's betas -> rectified flow"),
    ("unet_flow", "dit_transformer", "U-Net -> DiT"),
    ("dit_transformer", "unified_sd3_mmdit_flow", "DiT -> MMDiT"),
    ("unified_sd2_unet_v", "unified_sd3_mmdit_flow", "SD2 -> SD3: backbone and objective"),
    ("unified_sd1_unet_eps", "ldm_latent", "pixels -> a VAE's latents"),
]
# For `fewstep`: the many-step model each few-step model is measured against (its teacher, or its family's milestone).
FEW_STEP_BASELINE = {
    "sd2_consistency_distill": "unified_sd2_unet_v",
    "sd2_consistency_training": "unified_sd2_unet_v",
    "sd3_shortcut": "unified_sd3_mmdit_flow",
}
MILESTONES = ("unified_sd1_unet_eps", "unified_sd2_unet_v", "unified_sd3_mmdit_flow")
GOAL = 2.0  # issue 25: FID at most 2x the floor, mean over seeds
TARGET = 3.0  # the study's bar: FID at most 3x the floor, accuracy at least 95%

BLOCK = re.compile(
    r"(<!-- generated from (?P<source>\S+\.json): (?P<kind>[^>]*?) -->\n)(?P<body>.*?)"
    r"(<!-- end of generated block -->)",
    re.S,
)


def title(row: dict) -> str:
    return HISTORY.get(row["model"], row["model"])


def mean_spread(row: dict, key: str) -> tuple[Optional[float], float, int]:
    """(mean, spread, seeds) of `fid` or `accuracy` over the row's training seeds (spread 0 for one)."""
    seeds = row.get(f"{key}_seeds") or [row[key]]
    if None in seeds:
        return None, 0.0, len(seeds)
    return row.get(f"{key}_mean", seeds[0]), row.get(f"{key}_spread", 0.0), len(seeds)


def fid_text(row: dict) -> str:
    return spread_text(*mean_spread(row, "fid"))


def accuracy_text(row: dict) -> str:
    mean, spread, k = mean_spread(row, "accuracy")
    return "n/a (unconditional)" if mean is None else spread_text(mean, spread, k, percent=True)


def overlap(a: dict, b: dict) -> bool:
    """Do the intervals mean +- spread of the two rows' FIDs overlap? With one seed each: never."""
    (ma, sa, _), (mb, sb, _) = mean_spread(a, "fid"), mean_spread(b, "fid")
    return abs(ma - mb) <= sa + sb


def training_images(row: dict) -> str:
    text = f"{row['images_seen']:,}"
    if row.get("vae_images_seen"):  # latent diffusion: the VAE trained first, on images of its own
        text += f" (+ {row['vae_images_seen']:,} for the VAE)"
    return text


def table(rows: list[dict]) -> str:
    """The study's table: mean +- spread over seeds where there are several."""
    seeds = max(mean_spread(r, "fid")[2] for r in rows)
    head = (f"| model | params | training images | train img/s | FID{' (mean +- spread)' if seeds > 1 else ''} "
            f"| floor | x floor | accuracy | precision / recall | sampler | steps | CFG | s / 1000 samples |\n"
            + "|---" * 13 + "|\n")
    lines = []
    for r in sorted(rows, key=order):
        ips = f"{r['train_images_per_s']:.0f}" if r.get("train_images_per_s") else "?"
        pr = "n/a" if r.get("precision") is None else f"{r['precision']:.3f} / {r['recall']:.3f}"
        lines.append(f"| {title(r)} | {r['params']:,} | {training_images(r)} | {ips} | {fid_text(r)} "
                     f"| {r['fid_floor']:.2f} | {mean_spread(r, 'fid')[0] / r['fid_floor']:.1f} | {accuracy_text(r)} "
                     f"| {pr} | {r['sampler']} | {r['steps']} | {r['cfg_scale']} | {r['seconds_per_1000']:.0f} |")
    fewer = [title(r) for r in rows if mean_spread(r, "fid")[2] == 1]
    note = (f"\nFID and accuracy: mean +- sample standard deviation over {seeds} training seeds"
            + (f" (one seed, no spread: {', '.join(fewer)})" if fewer else "")
            + "; precision, recall and the speeds: the first seed's.\n") if seeds > 1 else ""
    return head + "\n".join(lines) + "\n" + note


def order(row: dict) -> int:
    names = list(HISTORY)
    return names.index(row["model"]) if row["model"] in names else len(names)


def compare_sentence(a: dict, b: dict, change: str) -> str:
    """One step of the history: which FID is lower, and whether that ordering is more than seed noise."""
    (ma, sa, ka), (mb, sb, kb) = mean_spread(a, "fid"), mean_spread(b, "fid")
    verb = "lowered" if mb < ma else "raised" if mb > ma else "left"
    if ka > 1 and kb > 1:
        verdict = ("the spreads overlap, so this budget does not order the two" if overlap(a, b)
                   else "the spreads do not overlap")
    elif ka > 1 or kb > 1:  # one row has seeds: is the gap larger than its seed spread?
        several, spread = (a, sa) if ka > 1 else (b, sb)
        one = b if several is a else a
        size = "larger" if abs(ma - mb) > spread else "not larger"
        verdict = (f"{title(one)} has one seed; the gap is {size} than {title(several)}'s seed spread "
                   f"({spread:.2f})")
    else:
        verdict = "one seed each, so seed noise is not measured"
    differences = config_changes(a["model"], b["model"])
    return (f"- {change} ({title(a)} -> {title(b)}) {verb} the FID from {fid_text(a)} to {fid_text(b)}: {verdict}."
            + (f" {differences}" if differences else ""))


def orderings(rows: list[dict]) -> str:
    by_name = {r["model"]: r for r in rows}
    lines = [compare_sentence(by_name[a], by_name[b], change) for a, b, change in STEPS
             if a in by_name and b in by_name]
    for r in sorted(rows, key=order):
        lines.append(bar_sentence(r))
    return "\n".join(lines) + "\n"


def bar_sentence(row: dict) -> str:
    """How far a row is from its bar: the milestones' goal (GOAL x the floor), else the study's (TARGET, 95%).

    The bar was set for models that are asked for a digit. DDPM as published in 2020 is unconditional:
    its row says how far it is and is not held to the bar (docs/01_epsilon.md measures why it is far).
    """
    mean, _, _ = mean_spread(row, "fid")
    floor = row["fid_floor"]
    if row["model"] in MILESTONES:
        goal = "meets" if mean <= GOAL * floor else f"misses by {mean - GOAL * floor:.2f} FID"
        return f"- {title(row)}: {mean / floor:.1f}x the floor; the goal of {GOAL:g}x ({GOAL * floor:.2f}): {goal}."
    accuracy = mean_spread(row, "accuracy")[0]
    if accuracy is None:  # the bar asks for the digit named; an unconditional model is asked for none
        return (f"- {title(row)}: {mean / floor:.1f}x the floor; unconditional, so not held to the study's bar "
                f"(FID at most {TARGET:g}x and the asked-for digit 95% of the time): it is measured as published.")
    misses = []
    if mean > TARGET * floor:
        misses.append(f"FID by {mean - TARGET * floor:.2f}")
    if accuracy is not None and accuracy < 0.95:
        misses.append(f"accuracy by {100 * (0.95 - accuracy):.1f} points")
    verdict = "meets" if not misses else "misses: " + ", ".join(misses)
    return (f"- {title(row)}: {mean / floor:.1f}x the floor; the study's bar of {TARGET:g}x "
            f"({TARGET * floor:.2f}) and 95% accuracy: {verdict}.")


def effect(rows: list[dict], name: str) -> str:
    """A milestone page's last lines: its row, and the step of the history that led to it."""
    by_name = {r["model"]: r for r in rows}
    if name not in by_name:
        raise KeyError(f"no row for {name!r} in this results.json (rows: {', '.join(by_name)})")
    r = by_name[name]
    lines = [f"{title(r)}: FID {fid_text(r)} (floor {r['fid_floor']:.2f}), accuracy {accuracy_text(r)}, "
             f"{r['sampler']} x{r['steps']} at CFG {r['cfg_scale']}, {training_images(r)} training images."]
    lines += [compare_sentence(by_name[a], r, change) for a, b, change in STEPS if b == name and a in by_name]
    return "\n".join(lines) + "\n"


def timing(results: dict) -> str:
    """Where the scoring's time went (results.json's `seconds`, written by compare.run_comparison)."""
    seconds = results.get("seconds") or {}
    train = sum(r["images_seen"] / r["train_images_per_s"] for r in results["rows"] if r.get("train_images_per_s"))
    lines = [f"- training, first seed, all rows: {train / 60:.0f} min (images / measured img/s)"]
    lines += [f"- {phase}: {s / 60:.0f} min" for phase, s in seconds.items()]
    return "\n".join(lines) + "\n"


def sweeps(results: dict) -> str:
    """The sweeps of the first seed's models (n = results' sweep n): FID (accuracy) at each value."""
    out = []
    for what, label in (("cfg_scale", "guidance scale"), ("steps", "sampling steps")):
        per_model = results.get("sweeps", {}).get(what) or {}
        values = sorted({r[what] for rows in per_model.values() for r in rows})
        if not values:
            continue
        out.append(f"| {label} | " + " | ".join(f"{v:g}" for v in values) + " |")
        out.append("|---" * (len(values) + 1) + "|")
        for name in sorted(per_model, key=lambda n: order({"model": n})):
            by_value = {r[what]: r for r in per_model[name]}
            cells = [f"{by_value[v]['fid']:.1f} ({100 * by_value[v]['accuracy']:.0f}%)"
                     if v in by_value and by_value[v]["accuracy"] is not None
                     else (f"{by_value[v]['fid']:.1f}" if v in by_value else "") for v in values]
            out.append(f"| {title({'model': name})} | " + " | ".join(cells) + " |")
        floor = floor_text([r for rows in per_model.values() for r in rows])
        out.append(f"\nFID (accuracy) per {label}; floor {floor} at this n.\n")
    return "\n".join(out) + ("\n" if out else "")


def fewstep(results: dict) -> str:
    """The few-step study (issue 27): FID (accuracy) against network evaluations, and what each model cost.

    A distilled model's cost includes its teacher's training images. Its speed is compared with its
    baseline's default sampling (the `rows` entry: the config's sampler, steps and guidance): the
    teacher it was distilled from, or the milestone of its family for a model trained from scratch.
    """
    rows = {r["model"]: r for r in results["rows"]}
    curves = results.get("sweeps", {}).get("steps") or {}
    nfes = sorted({p["nfe"] for name in curves for p in curves[name]})
    head = ("| model | training images | " + " | ".join(f"NFE {n}" for n in nfes)
            + " | its default: FID (accuracy), NFE | s / 1000 samples |\n" + "|---" * (len(nfes) + 4) + "|\n")
    lines = []
    for name in sorted(rows, key=lambda n: (n in FEW_STEP_BASELINE, order({"model": n}), n)):
        r, points = rows[name], {p["nfe"]: p for p in curves.get(name, [])}
        base = rows.get(FEW_STEP_BASELINE.get(name, ""))
        images = f"{r['images_seen']:,}"
        if base is not None and r.get("teacher"):
            images += f" + {base['images_seen']:,} (teacher)"
        cells = [f"{points[n]['fid']:.2f} ({100 * points[n]['accuracy']:.0f}%)" if n in points else "" for n in nfes]
        speed = f"{r['seconds_per_1000']:.0f}"
        if base is not None:
            speed += f" ({base['seconds_per_1000'] / r['seconds_per_1000']:.0f}x faster than {title(base)})"
        lines.append(f"| {title(r)} | {images} | " + " | ".join(cells)
                     + f" | {r['fid']:.2f} ({100 * r['accuracy']:.0f}%), {r['nfe']} | {speed} |")
    floor = floor_text(results["rows"])
    return head + "\n".join(lines) + f"\n\nFID (accuracy) at N = {results['n']} samples per point; floor {floor}.\n"


# Each kind of generated block and what renders it from a results json.
RENDERERS = {
    "table": lambda r: table(r["rows"]), "orderings": lambda r: orderings(r["rows"]), "timing": timing,
    "sweeps": sweeps, "fewstep": fewstep, "evaluations": evaluations, "curves": curves, "adherence": adherence,
    "evaluations over seeds": evaluations_over_seeds, "adherence over seeds": adherence_over_seeds,
    "curves over seeds": curves_over_seeds, "learning curves": learning_curves,
    "framing over seeds": framing_over_seeds, "clips": clips,
}


def render(kind: str, results: dict) -> str:
    if kind in RENDERERS:
        return RENDERERS[kind](results)
    if kind.startswith("effect "):
        return effect(results["rows"], kind.removeprefix("effect ").strip())
    raise ValueError(f"unknown kind of generated block {kind!r} ({', '.join(RENDERERS)}, effect <config>)")


def blocks(text: str):
    """(source json, kind, body as on the page) of every generated block in a page."""
    for m in BLOCK.finditer(text):
        yield m.group("source"), m.group("kind"), m.group("body")


def regenerate(text: str, root: Path, only: Optional[str] = None, loaded: Optional[dict] = None) -> str:
    """The page with every generated block (or those from the json `only`) rendered anew.

    `loaded`: source -> results already in memory (publish renders them before writing the json).
    """
    cache: dict[str, dict] = dict(loaded or {})

    def fill(m: re.Match) -> str:
        source = m.group("source")
        if only is not None and source != only:
            return m.group(0)
        if source not in cache:
            cache[source] = json.loads((root / source).read_text())
        return m.group(1) + render(m.group("kind"), cache[source]) + m.group(5)

    return BLOCK.sub(fill, text)


def pages(root: Path) -> list[Path]:
    """The pages that may hold generated blocks: the README, docs/, the lab notes in docs/lab/ and weights/README.md."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md")), *sorted((root / "docs" / "lab").glob("*.md")),
            *sorted((root / "weights").glob("README.md"))]


# A published name becomes docs/results/<name>.json: a plain name, so it cannot point elsewhere ("../../x").
NAME = re.compile(r"[A-Za-z0-9_-]+")


def check_name(name: str) -> str:
    """The name, if it is letters, digits, '_' and '-' only (no path separator, no '..'); else ValueError."""
    if not isinstance(name, str) or not NAME.fullmatch(name) or len(name) > 100:
        raise ValueError(f"--as {shown(name, 60)}: expected a plain name (letters, digits, '_' and '-'), "
                         f"as in docs/results/<name>.json")
    return name


def read_results(results_json, name: str) -> dict:
    """The results to publish (a path to a results.json, or the results themselves), checked: an object with rows.

    Raises ValueError with one line for a file that is not JSON, or results without rows of objects.
    """
    where = name if isinstance(results_json, dict) else str(results_json)  # what the messages name
    if isinstance(results_json, dict):
        results = results_json
    else:
        try:
            results = json.loads(Path(results_json).read_text())
        except (OSError, ValueError, RecursionError) as e:  # RecursionError: nested past the parser's depth
            raise ValueError(f"{where}: cannot be read as JSON ({type(e).__name__})") from None
    try:
        check_structure(results)  # bounded before anything walks it (json.dumps, the renderers)
    except StructureError as e:
        raise ValueError(f"{where}: {e}") from None
    if not isinstance(results, dict):
        raise ValueError(f"{where}: expected an object with 'rows', got {shown(results, 60)}")
    rows = results.get("rows")
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"{where}: no rows to publish")
    bad = next((r for r in rows if not isinstance(r, dict)), None)
    if bad is not None:
        raise ValueError(f"{where}: a row is {shown(bad, 60)}, expected an object")
    return results


def rendered(page: Path, root: Path, source: str, results: dict, label: str) -> str:
    """The page with the blocks generated from `source` rendered from `results`; one-line ValueError if one cannot be.

    Any field missing or of the wrong type fails somewhere inside the formatting (KeyError, TypeError,
    ValueError, ...): whichever it is, nothing has been written yet, and one line names the block.
    """
    text = page.read_text()
    try:
        return regenerate(text, root, only=source, loaded={source: results})
    except Exception as e:  # noqa: BLE001 - see the docstring: the results file is untrusted
        kinds = ", ".join(sorted({kind for s, kind, _ in blocks(text) if s == source}))
        reason = one_line(e, 100)  # bounded: it may quote names from the file
        raise ValueError(f"{label}: {page.relative_to(root)}'s generated block(s) ({kinds}) cannot be rendered "
                         f"from it ({type(e).__name__}: {reason})") from None


def publish(results_json, name: str, root: Path) -> list[Path]:
    """Copy results.json (a path, or the results themselves) to docs/results/<name>.json; rewrite the blocks
    generated from it.

    Everything is checked and rendered before any file is written (ValueError, one line: nothing changed);
    then every file is written at once (write_together).
    """
    name = check_name(name)
    results = read_results(results_json, name)
    label = name if isinstance(results_json, dict) else str(results_json)  # what a render error names
    target = root / "docs" / "results" / f"{name}.json"
    source = str(target.relative_to(root))
    files = {target: json.dumps(results, indent=2) + "\n"}
    changed = []
    for page in pages(root):
        new = rendered(page, root, source, results, label)
        if new != page.read_text():
            files[page] = new
            changed.append(page)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(target.parent, e, "no file was changed") from None
    write_together(files)
    return changed
