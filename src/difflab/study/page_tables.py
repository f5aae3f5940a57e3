"""A docs page's own measurements, generated: tables rendered from evaluate.py outputs.

A page that measures something of its own (a sweep of one config's settings, an ablation, a
pair of prompted models) keeps each `evaluate.py ... --out FILE.json` and publishes them under labels:

    python compare_models.py --evaluations "CFG 1.5=a.json" "CFG 2=b.json" --as latent_guidance

which writes docs/results/latent_guidance.json (report.publish) and fills the page's blocks

    <!-- generated from docs/results/latent_guidance.json: evaluations -->   a row per output
    <!-- generated from docs/results/latent_guidance.json: adherence -->     a column per model of prompts
    <!-- generated from docs/results/x.json: evaluations over seeds -->       a row per model, its seeds' mean
    <!-- generated from docs/results/x.json: adherence over seeds -->         a column per model, its seeds' mean
    <!-- generated from docs/results/x.json: curves over seeds -->            few-step curves, each seed's mean
    <!-- generated from docs/results/x.json: learning curves -->             quality against training, a row per model
    <!-- generated from docs/results/x.json: framing over seeds -->          cut-off and tiny digits, a column per model
    <!-- generated from docs/results/x.json: clips -->                       a video model's clips, a column per output

so its numbers are checked by tests/test_docs.py like the study's (report.py renders every kind).
"""

from __future__ import annotations

import re
import statistics

from ..microcond import TINY

SEED = re.compile(r",\s*seed \d+$")  # "SD1 cross-attention, seed 2": seed 2 of the model "SD1 cross-attention"


def floor_text(rows: list) -> str:
    """The FID floor (real test digits against real training digits) of the judge that scored the rows: "2.26".

    Each machine trains its own judge (difflab.classifier, seed 0), and CPUs round differently, so judges of
    different machines differ a little, and so do their floors (2.26 on one, 2.38 on another). A table whose rows
    were judged on different machines names every floor and says so, rather than one floor for all of them.
    """
    floors = sorted({f"{r['fid_floor']:.2f}" for r in rows})
    if len(floors) == 1:
        return floors[0]
    return " and ".join(floors) + ": rows judged on different machines, compare FIDs within one judge"


def sampling_text(r: dict) -> str:
    """How an evaluate.py output was sampled: "euler x50, CFG 1.5"; a DALL-E 2 chain names its decoder's too."""
    text = f"{r['sampler']} x{r['steps']}, CFG {r['cfg_scale']:g}"
    if r.get("decoder"):
        d = r["decoder"]
        text = f"prior {text}, decoder {d['sampler']} x{d['steps']}, CFG {d['cfg_scale']:g}"
    return text


def evaluations(results: dict) -> str:
    """A page's own measurements: one row per evaluate.py output (`--out FILE.json`), under the label it was given.

    The json keeps each output whole (checkpoint, sampler, n, ...), so a row can be traced to what printed it.
    """
    lines = ["| | FID | floor | accuracy | sampling | N |", "|---|---|---|---|---|---|"]
    for r in results["rows"]:
        accuracy = "n/a" if r["accuracy"] is None else f"{100 * r['accuracy']:.1f}%"
        lines.append(f"| {r['label']} | {r['fid']:.2f} | {r['fid_floor']:.2f} | {accuracy} | "
                     f"{r['sampler']} x{r['steps']}, CFG {r['cfg_scale']:g} | {r['n']} |")
    return "\n".join(lines) + "\n"


CURVE_STEPS = (1, 2, 4, 8)


def curves(results: dict) -> str:
    """Few-step curves from evaluate.py outputs labelled "<model> @ <steps>": a row per model, FID (accuracy) at
    1, 2, 4 and 8 network calls, and the seconds per 1000 samples of its 2-call row (sampling only, this machine).

    The model's label carries what a reader needs beside the numbers (its sampler, its total training images).
    """
    models: dict = {}
    for r in results["rows"]:
        name, _, steps = r["label"].rpartition(" @ ")
        models.setdefault(name.strip(), {})[int(steps)] = r
    lines = ["| model | NFE 1 | NFE 2 | NFE 4 | NFE 8 | s / 1000 samples at 2 |", "|---|---|---|---|---|---|"]
    for name, by_steps in models.items():
        cells = []
        for steps in CURVE_STEPS:
            r = by_steps.get(steps)
            accuracy = "" if r is None or r["accuracy"] is None else f" ({100 * r['accuracy']:.0f}%)"
            cells.append("" if r is None else f"{r['fid']:.2f}{accuracy}")
        two = by_steps.get(2)
        cost = "" if two is None else f"{1000 * two['seconds'] / two['n']:.0f}"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {cost} |")
    ns = sorted({r["n"] for r in results["rows"]})
    return ("\n".join(lines)
            + f"\n\nFID (accuracy) at N = {', '.join(map(str, ns))}; floor {floor_text(results['rows'])}.\n")


def curves_over_seeds(results: dict) -> str:
    """Few-step curves over training seeds: outputs labelled "<model> @ <steps>, seed <k>", a row per model with
    FID (accuracy) as mean +- sample standard deviation over its seeds at 1, 2, 4 and 8 network calls.

    The seeds column counts the seeds of the model's fewest-scored point, so a half-finished run shows as such.
    """
    models: dict = {}
    for r in results["rows"]:
        name, _, steps = SEED.sub("", r["label"]).rpartition(" @ ")
        models.setdefault(name.strip(), {}).setdefault(int(steps), []).append(r)
    lines = ["| model | seeds | NFE 1 | NFE 2 | NFE 4 | NFE 8 |", "|---|---|---|---|---|---|"]
    for name, by_steps in models.items():
        cells = []
        for steps in CURVE_STEPS:
            seeds = by_steps.get(steps, [])
            fids, accuracies = [r["fid"] for r in seeds], [r["accuracy"] for r in seeds]
            if not seeds:
                cells.append("")
                continue
            cell = over_seeds(fids)
            if None not in accuracies:
                cell += f" ({over_seeds(accuracies, percent=True)})"
            cells.append(cell)
        seeds = min(len(v) for v in by_steps.values())
        lines.append(f"| {name} | {seeds} | " + " | ".join(cells) + " |")
    ns = sorted({r["n"] for r in results["rows"]})
    return ("\n".join(lines) + f"\n\nFID (accuracy): mean +- sample standard deviation over training seeds, each "
            f"scored at N = {', '.join(map(str, ns))} with sampling seed 0; floor {floor_text(results['rows'])}.\n")


def learning_curves(results: dict) -> str:
    """Quality against training (benchmarks/curves.py): outputs labelled "<model> @ epoch <k>", each with the
    "training" record curves.py adds (images, seconds, GFLOP per image); a row per model, FID (accuracy) per epoch.

    The last columns say what the model's longest scored run cost: its training FLOPs and CPU hours on this machine
    (the process's CPU time over all its threads, which a paused run does not add to).
    """
    models: dict = {}
    for r in results["rows"]:
        if "training" not in r:
            raise ValueError(f"{r['label']}: no training record (score it with benchmarks/curves.py)")
        name, _, epoch = r["label"].rpartition(" @ epoch ")
        models.setdefault(name.strip(), {})[int(epoch)] = r
    epochs = sorted({e for by_epoch in models.values() for e in by_epoch})
    lines = ["| model | GFLOP / training image | " + " | ".join(f"epoch {e}" for e in epochs)
             + " | training at the last point |", "|---" * (len(epochs) + 3) + "|"]
    for name, by_epoch in models.items():
        cells = []
        for e in epochs:
            r = by_epoch.get(e)
            accuracy = "" if r is None or r["accuracy"] is None else f" ({100 * r['accuracy']:.1f}%)"
            cells.append("" if r is None else f"{r['fid']:.2f}{accuracy}")
        last = by_epoch[max(by_epoch)]["training"]
        cpu = last.get("cpu_seconds") or last["seconds"] * last["threads"]  # records older than cpu_seconds
        cost = f"{last['images']:,} images, {last['pflop']:.2f} PFLOP, {cpu / 3600:.1f} CPU h"
        first = next(iter(by_epoch.values()))["training"]
        lines.append(f"| {name} | {first['gflop_per_image']:.2f} | " + " | ".join(cells) + f" | {cost} |")
    r0 = results["rows"][0]
    return ("\n".join(lines) + f"\n\nFID (accuracy) at N = {r0['n']}, sampling seed 0, each config's own sampler and "
            f"guidance; floor {floor_text(results['rows'])}. CPU hours: training only, summed over "
            f"{r0['training']['threads']} threads.\n")


def spread_text(mean: float, spread: float, seeds: int, percent: bool = False) -> str:
    """A mean over training seeds and its spread: "82.4% +- 2.1", "9.31 +- 2.08"; one seed: the mean alone."""
    scale, unit, digits = (100, "%", 1) if percent else (1, "", 2)
    return f"{scale * mean:.{digits}f}{unit}" + (f" +- {scale * spread:.{digits}f}" if seeds > 1 else "")


def over_seeds(values: list, percent: bool = False) -> str:
    """One measure of one model over its training seeds: mean +- sample standard deviation (spread_text)."""
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return spread_text(statistics.fmean(values), spread, len(values), percent)


def by_model(rows: list) -> dict:
    """Rows labelled "<model>, seed <k>" grouped by model, in the order first seen."""
    models: dict[str, list] = {}
    for r in rows:
        models.setdefault(SEED.sub("", r["label"]), []).append(r)
    return models


def evaluations_over_seeds(results: dict) -> str:
    """A page's own measurements over training seeds: a row per model (outputs labelled "<model>, seed <k>"), FID and
    digit accuracy as mean +- sample standard deviation over its seeds, and how many seeds; a label without a seed is
    a model of one."""
    lines = ["| | seeds | FID | accuracy | sampling |", "|---|---|---|---|---|"]
    for name, seeds in by_model(results["rows"]).items():
        accuracy = "n/a" if any(r["accuracy"] is None for r in seeds) else over_seeds([r["accuracy"] for r in seeds],
                                                                                        True)
        sampling = " / ".join(sorted({sampling_text(r) for r in seeds}))
        lines.append(f"| {name} | {len(seeds)} | {over_seeds([r['fid'] for r in seeds])} | {accuracy} | {sampling} |")
    first = results["rows"][0]
    return ("\n".join(lines) + f"\n\nMean +- sample standard deviation over training seeds; N = {first['n']}, floor "
            f"{floor_text(results['rows'])}.\n")


def with_adherence(rows: list) -> list:
    """The rows, if each was scored on the held-out prompts (evaluate.py on a model of prompts)."""
    missing = [r["label"] for r in rows if not r.get("adherence")]
    if missing:
        raise ValueError(f"no prompt adherence in: {', '.join(missing)} (evaluate a model of prompts)")
    return rows


def adherence(results: dict) -> str:
    """Prompted models side by side, a column per evaluate.py output: FID, digit accuracy and attribute hits.

    Chance rates (what a model that ignored the word would score) are the first column's; every
    column was scored on the same held-out prompts (difflab.adherence).
    """
    rows = with_adherence(results["rows"])
    first = rows[0]["adherence"]

    def line(name: str, cell) -> str:
        return f"| {name} | " + " | ".join(cell(r, r["adherence"]) for r in rows) + " |"

    lines = ["| | " + " | ".join(r["label"] for r in rows) + " |", "|---" * (len(rows) + 1) + "|",
             line(f'FID from "a <digit>" (floor {floor_text(rows)}, N = {rows[0]["n"]})',
                  lambda r, a: f"{r['fid']:.2f}"),
             line('digit accuracy from "a <digit>" / from the held-out prompts',
                  lambda r, a: f"{100 * r['accuracy']:.1f}% / {100 * a['accuracy']:.1f}%")]
    for name, attribute in first["attributes"].items():
        lines.append(line(f"{name}: hit (chance {100 * attribute['chance']:.1f}%) / correlation",
                          lambda r, a, n=name: f"{100 * a['attributes'][n]['hit_rate']:.1f}% / "
                                               f"{a['attributes'][n]['correlation']:.2f}"))
    for key, what in (("common_combinations", "most common"), ("rare_combinations", "rarest")):
        lines.append(line(f"all three bins, the digit's {what} combination: "
                          f"hit (chance {100 * first[key]['chance']:.1f}%)",
                          lambda r, a, k=key: f"{100 * a[k]['all_three_hit']:.1f}%"))
    if all(r["adherence"].get("clip") for r in rows):  # scored with the tiny CLIP (difflab.clip)
        lines.append(line(f"CLIP score (real images: {first['clip']['real_images']:.1f}) / its correlation with "
                          "following everything asked, over the prompts",
                          lambda r, a: f"{a['clip']['clip_score']:.1f} / {a['clip']['correlation_over_prompts']:.2f}"))
    lines.append(line(f"seconds per 1000 samples ({rows[0]['steps']} steps)",
                      lambda r, a: f"{1000 * r['seconds'] / r['n']:.0f} (CFG {r['cfg_scale']:g})"))
    return "\n".join(lines) + f"\n\n{first['per_prompt']} images for each of {first['prompts']} held-out prompts.\n"


def seeds_text(seeds: list) -> str:
    """A column's heading suffix: "(1 seed)", "(3 seeds)"."""
    return f"({len(seeds)} seed{'' if len(seeds) == 1 else 's'})"


def over_seeds_note(models: dict) -> str:
    """The footnote's first words: what the cells are, over the training seeds the columns hold."""
    if all(len(seeds) == 1 for seeds in models.values()):
        return "One training seed per column, so no spread: a small difference may be one seed's noise"
    return "Mean +- sample standard deviation over training seeds"


def adherence_over_seeds(results: dict) -> str:
    """Prompted models over training seeds: a column per model, each measure's mean +- spread over its seeds.

    Rows labelled "<model>, seed <k>" are seeds of one model (columns in the order first seen); the
    spread is the sample standard deviation, as in the README's study table. One seed's noise can
    flip a single-seed comparison; the spread says how far apart two models must be to be ordered.
    """
    rows = with_adherence(results["rows"])
    models = by_model(rows)
    first = rows[0]["adherence"]
    fid = f'FID from "a <digit>" (floor {floor_text(rows)}, N = {rows[0]["n"]})'
    measures = [(fid, lambda r: r["fid"], False),
                ('digit accuracy from "a <digit>"', lambda r: r["accuracy"], True),
                ("digit accuracy from the held-out prompts", lambda r: r["adherence"]["accuracy"], True)]
    for name, attribute in first["attributes"].items():
        measures += [(f"{name}: hit (chance {100 * attribute['chance']:.1f}%)",
                      lambda r, n=name: r["adherence"]["attributes"][n]["hit_rate"], True),
                     (f"{name}: correlation", lambda r, n=name: r["adherence"]["attributes"][n]["correlation"], False)]
    for key, what in (("common_combinations", "most common"), ("rare_combinations", "rarest")):
        chance = f"{100 * first[key]['chance']:.1f}%"
        measures.append((f"all three bins, the digit's {what} combination: hit (chance {chance})",
                         lambda r, k=key: r["adherence"][k]["all_three_hit"], True))
    if all(r["adherence"].get("clip") for r in rows):  # scored with the tiny CLIP (difflab.clip)
        measures += [(f"CLIP score (real images with their own prompts: {first['clip']['real_images']:.1f})",
                      lambda r: r["adherence"]["clip"]["clip_score"], False),
                     ("CLIP score's correlation over the prompts with following everything asked",
                      lambda r: r["adherence"]["clip"]["correlation_over_prompts"], False)]

    def sampling(seeds: list) -> str:
        return " / ".join(sorted({sampling_text(r) for r in seeds}))

    lines = ["| | " + " | ".join(f"{m} {seeds_text(seeds)}" for m, seeds in models.items()) + " |",
             "|---" * (len(models) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(over_seeds([value(r) for r in seeds], percent) for seeds in models.values())
              + " |"
              for name, value, percent in measures]
    lines.append("| sampling | " + " | ".join(sampling(seeds) for seeds in models.values()) + " |")
    return ("\n".join(lines) + f"\n\n{over_seeds_note(models)}; for each seed "
            f"{first['per_prompt']} images for each of {first['prompts']} held-out prompts.\n")


def framing_over_seeds(results: dict) -> str:
    """Models trained on reframed digits (difflab.microcond) over training seeds: a column per model, the seeds'
    mean +- spread of FID, digit accuracy and the shares of cut-off and tiny digits, asked for MNIST's framing."""
    missing = [r["label"] for r in results["rows"] if not r.get("framing")]
    if missing:
        raise ValueError(f"no framing in: {', '.join(missing)} (evaluate a model trained with data.reframe)")
    models = by_model(results["rows"])
    first = results["rows"][0]
    measures = [(f"FID (floor {floor_text(results['rows'])}, N = {first['n']})", lambda r: r["fid"], False),
                ("digit accuracy", lambda r: r["accuracy"], True),
                ("digits cut off by the canvas", lambda r: r["framing"]["cut_off"], True),
                (f"tiny digits (under {TINY} rows of ink)", lambda r: r["framing"]["tiny"], True)]

    lines = ["| asked for MNIST's own framing | " + " | ".join(f"{m} {seeds_text(s)}" for m, s in models.items())
             + " |", "|---" * (len(models) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(over_seeds([value(r) for r in seeds], percent) for seeds in models.values())
              + " |"
              for name, value, percent in measures]
    return "\n".join(lines) + f"\n\n{over_seeds_note(models)}.\n"


def clips(results: dict) -> str:
    """Video DiTs' clips (difflab.video_scores): a column per evaluate.py output, and the real held-out clips' own
    scores (the first output's `real` entry), the ceiling, beside them; a row per measure."""
    missing = [r["label"] for r in results["rows"] if not r.get("video")]
    if missing:
        raise ValueError(f"no video scores in: {', '.join(missing)} (evaluate a video DiT's checkpoint)")
    rows, real = results["rows"], results["rows"][0]["video"]["real"]

    def pct(value) -> str:
        return "-" if value is None else f"{100 * value:.1f}%"

    measures = [("digit accuracy, frame by frame", "frame_accuracy"),
                ("one digit in every frame", "identity_consistent"),
                ("the digit asked for in every frame", "identity_correct"),
                ("moving the direction asked", "direction_accuracy"), ("at the speed asked", "speed_accuracy")]
    lines = ["| | " + " | ".join(r["label"] for r in rows) + " | real held-out clips |",
             "|---" * (len(rows) + 2) + "|",
             f"| frame FID (floor {floor_text(rows)}) | " + " | ".join(f"{r['fid']:.2f}" for r in rows)
             + " | - |"]
    lines += [f"| {name} | " + " | ".join(pct(r["video"][key]) for r in rows) + f" | {pct(real[key])} |"
              for name, key in measures]
    lines.append("| first frame given, its mean pixel error | "
                 + " | ".join(pct(r["video"].get("first_frame_error")) for r in rows) + " | - |")
    lines.append("| sampling | " + " | ".join(sampling_text(r) for r in rows)
                 + " | - |")
    lines.append("| seconds to draw a clip | " + " | ".join(f"{r['seconds'] / r['n']:.2f}" for r in rows) + " | - |")
    return ("\n".join(lines) + f"\n\nN = {rows[0]['n']} clips each, asked for the first held-out clips' prompts; "
            "pixel errors with pixels in [0, 1].\n")


def gather_evaluations(labelled: dict) -> dict:
    """{label: evaluate.py output} -> the json that `evaluations` blocks render (rows in the given order)."""
    rows = []
    for label, scores in labelled.items():
        if not isinstance(scores, dict):
            raise ValueError(f"{label}: not an evaluate.py output (not a JSON object)")
        missing = [k for k in ("fid", "fid_floor", "accuracy", "sampler", "steps", "cfg_scale", "n") if k not in scores]
        if missing:
            raise ValueError(f"{label}: not an evaluate.py output (no {', '.join(missing)})")
        rows.append({"label": label, **scores})
    return {"kind": "evaluations", "rows": rows}
