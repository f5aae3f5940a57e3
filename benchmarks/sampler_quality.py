"""Quality against cost: FID and accuracy vs model evaluations (NFE) for every sampler.

    python benchmarks/sampler_quality.py --checkpoint CKPT [--n 2000 --nfe 4,8,16,32,64]

Trains nothing. For each sampler and each NFE budget it samples n images (the same
seed, so the same starting noise for every sampler) and scores them with
difflab.evaluation; a reference row samples with deterministic DDIM over 1000 steps,
the sampler run to convergence. Prints a markdown table on stdout and writes
sampler_quality.{png,json,md} to --out-dir (default results/sampler_quality/<config>/).

What to expect from the theory:
- DDPM ancestral (Ho et al. 2020) adds fresh noise every step: it needs many steps;
- DDIM (Song et al. 2021) = Euler on the probability-flow ODE (Karras et al. 2022):
  first order, its error shrinks like 1/steps;
- Heun (Karras et al. 2022, Algorithm 1) and DPM-Solver++(2M) (Lu et al. 2022) are
  second order, error ~ 1/steps^2, so they should reach the reference FID in far
  fewer evaluations. Heun pays 2 evaluations per step, so it gets (nfe + 1) // 2 steps
  (its last step is Euler: 2 * steps - 1 evaluations, samplers.count_nfe).
The issue's target: "a deterministic second-order sampler within 10% of the 1000-step
FID at 16 evaluations or fewer". The table's last lines say whether it is met.

Caveat: FID is biased upwards at small n (see fid_floor); all rows share n, so they
compare with each other, not with FIDs measured at another n.
"""

import argparse
import contextlib
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from difflab.commands.common import run_main  # noqa: E402
from difflab.infra.failures import fail  # noqa: E402

SECOND_ORDER = ("heun", "dpm++2m")  # the deterministic second-order samplers
TOLERANCE = 0.10  # "within 10% of the 1000-step FID"


def steps_for(sampler: str, nfe: int) -> int:
    """Sampler steps that spend at most `nfe` model evaluations (Heun: 2 per step, the last 1)."""
    return max((nfe + 1) // 2, 1) if sampler == "heun" else nfe


def parse_nfe(text: str) -> list:
    """'4,8,16' -> [4, 8, 16]; positive integers only."""
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        values = []
    if not values or values[0] < 1:
        fail(f"--nfe: expected positive integers such as 4,8,16, got {text!r}")
    return values


def score(pipe, classifier, sampler: str, steps: int, args, data_dir) -> dict:
    """One point of the benchmark: sample args.n images and score them (a row of the table)."""
    from difflab.evaluation import evaluate_pipeline
    from difflab.samplers import count_nfe

    options = {"spacing": args.spacing or pipe.cfg.sampling.spacing}
    if sampler == "ddim":
        options["eta"] = 0.0  # "ddim" is the deterministic one here; ddpm is the stochastic one
    try:
        row = evaluate_pipeline(pipe, classifier, args.n, sampler=sampler, steps=steps, cfg_scale=args.cfg_scale,
                                seed=args.seed, batch_size=args.batch_size, data_dir=data_dir, **options)
    except FloatingPointError as e:  # a diverging sampler is a result, not a crash
        print(f"warning: {e}", file=sys.stderr)
        row = {"sampler": sampler, "steps": steps, "nfe": count_nfe(sampler, steps), "fid": None,
               "note": "non-finite samples"}
    row.pop("per_digit_accuracy", None)
    return {**row, "spacing": options["spacing"]}


def verdict(rows: list, reference: dict, max_nfe: int) -> dict:
    """The deterministic second-order row at NFE <= max_nfe closest to the reference FID, and
    whether it is within 10% of it (either side).

    The target is convergence: a sampler that has reached the ODE's solution scores what the
    reference scores. An FID far *below* the reference is no better than one far above: on an
    undertrained model few-step samples can be smoother than the converged ones and score
    lower, yet they are not what the model's ODE draws. So the gap is |FID / reference - 1|;
    without a reference the lowest FID is reported.
    """
    candidates = [r for r in rows if r["sampler"] in SECOND_ORDER and r.get("nfe", math.inf) <= max_nfe
                  and r["fid"] is not None]  # fmt: skip
    if not candidates:
        return {"best": None, "max_nfe": max_nfe}
    ref_fid = reference.get("fid") if reference else None
    gap = (lambda r: r["fid"] / ref_fid - 1) if ref_fid is not None else None
    best = min(candidates, key=(lambda r: abs(gap(r))) if gap else (lambda r: r["fid"]))
    out = {"best": {k: best[k] for k in ("sampler", "nfe", "steps", "fid")}, "max_nfe": max_nfe}
    if gap:
        out["reference"] = f"{reference['sampler']} x{reference['steps']}"
        out["reference_fid"] = ref_fid
        out["relative_gap"] = gap(best)
        out["within_10_percent"] = bool(abs(out["relative_gap"]) <= TOLERANCE)
    return out


def _fmt(x, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def markdown(rows: list, reference: dict, result: dict, meta: dict) -> str:
    """The table (one row per sampler and NFE, then the reference) and the verdict under it."""
    lines = [
        f"Sampler quality of `{meta['checkpoint']}` ({meta['config']}): n = {meta['n']} images per row, "
        f"spacing {meta['spacing']}, CFG {meta['cfg_scale']}, seed {meta['seed']}; "
        f"FID floor at this n (real vs real): {_fmt(meta['fid_floor'])}",
        "",
        "| sampler | NFE budget | steps | NFE | FID | accuracy | precision | recall | seconds |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows + ([reference] if reference else []):
        name = r["sampler"] + (" (reference)" if r is reference else "")
        note = f" ({r['note']})" if r.get("note") else ""
        lines.append(
            f"| {name}{note} | {r.get('nfe_budget', '-')} | {r['steps']} | {r.get('nfe', '-')} | {_fmt(r['fid'])} | "
            f"{_fmt(r.get('accuracy'), '.3f')} | {_fmt(r.get('precision'), '.3f')} | {_fmt(r.get('recall'), '.3f')} | "
            f"{_fmt(r.get('seconds'), '.1f')} |"
        )
    lines.append("")
    best = result.get("best")
    if best is None:
        lines.append(f"No deterministic second-order sampler ({', '.join(SECOND_ORDER)}) "
                     f"ran at NFE <= {result['max_nfe']}.")
    else:
        closest = "closest to the reference" if "reference_fid" in result else "lowest FID"
        lines.append(f"Best deterministic second-order sampler at NFE <= {result['max_nfe']} ({closest}): "
                     f"{best['sampler']} at NFE {best['nfe']} ({best['steps']} steps), FID {best['fid']:.2f}.")
        if "within_10_percent" in result:
            yes = "yes" if result["within_10_percent"] else "no"
            lines.append(f"Within 10% of the reference ({result['reference']}) FID {result['reference_fid']:.2f}? "
                         f"{yes} ({100 * result['relative_gap']:+.1f}%).")
    return "\n".join(lines)


def plot(rows: list, reference: dict, meta: dict, path: Path) -> None:
    """FID vs NFE (log x) and accuracy vs NFE, one line per sampler; the reference dashed."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    fig, (ax_fid, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2))
    # Euler and DDIM (eta 0) are the same update, so their lines coincide: vary the style to see both.
    styles = [dict(marker=m, ls=ls) for m, ls in zip("osD^v*", ("-", "--", ":", "-", "-.", "--"))]
    for sampler, style in zip(dict.fromkeys(r["sampler"] for r in rows), styles * 3):
        pts = [r for r in rows if r["sampler"] == sampler and r["fid"] is not None]
        ax_fid.plot([r["nfe"] for r in pts], [r["fid"] for r in pts], label=sampler, **style)
        acc = [(r["nfe"], r["accuracy"]) for r in pts if r.get("accuracy") is not None]
        if acc:
            ax_acc.plot(*zip(*acc), label=sampler, **style)
    if reference and reference.get("fid") is not None:
        label = f"{reference['sampler']} x{reference['steps']}"
        ax_fid.axhline(reference["fid"], color="black", ls="--", lw=1, label=label)
        ax_fid.axhspan(reference["fid"], (1 + TOLERANCE) * reference["fid"], color="black", alpha=0.08,
                       label="within 10%")
        if reference.get("accuracy") is not None:
            ax_acc.axhline(reference["accuracy"], color="black", ls="--", lw=1, label=label)
    if meta.get("fid_floor") is not None:
        ax_fid.axhline(meta["fid_floor"], color="grey", ls=":", lw=1, label="floor (real vs real)")
    ticks = sorted({r.get("nfe_budget", r["nfe"]) for r in rows})  # Heun's points sit just left of theirs
    for ax, ylabel in ((ax_fid, "FID (classifier features)"), (ax_acc, "conditional accuracy")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(t) for t in ticks])  # plain numbers, not 2^k
        ax.minorticks_off()
        ax.set_xlabel("model evaluations (NFE)")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="lower left" if ax is ax_fid else "lower right")
    if not ax_acc.lines:
        ax_acc.text(0.5, 0.5, "unconditional model:\nno accuracy", ha="center", va="center", transform=ax_acc.transAxes)
    ax_fid.set_yscale("log")
    ax_fid.grid(True, which="both", axis="y", alpha=0.15)
    fig.suptitle(f"{meta['config']}: sampler quality vs cost (n = {meta['n']})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--nfe", default="4,8,16,32,64", help="NFE budgets, comma-separated")
    p.add_argument("--samplers", default="ddpm,ddim,euler,heun,dpm++2m")
    p.add_argument("--n", type=int, default=2000, help="images per point (default 2000)")
    p.add_argument("--reference-sampler", default="ddim", help="sampler of the reference row (default: ddim, eta 0)")
    p.add_argument("--reference-steps", type=int, default=1000, help="its steps (default 1000; 0 skips it)")
    p.add_argument("--max-nfe", type=int, default=16, help="the target's budget: NFE <= this (default 16)")
    p.add_argument("--spacing", default=None, help="leading | trailing (default: the config's)")
    p.add_argument("--cfg-scale", type=float, default=None, help="guidance scale (default: the config's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--device", default="auto")
    p.add_argument("--data-dir", default=None, help="MNIST and the classifier (default: the config's, else data/)")
    p.add_argument("--out-dir", default=None, help="default: results/sampler_quality/<config name>/")
    args = p.parse_args(argv)

    from difflab.classifier import load_classifier
    from difflab.config import SPACINGS
    from difflab.samplers import SAMPLERS
    from difflab.pipeline import Pipeline, is_unconditional

    nfes = parse_nfe(args.nfe)
    samplers = [s.strip() for s in args.samplers.split(",") if s.strip()]
    for s in samplers + [args.reference_sampler]:
        if s not in SAMPLERS:
            fail(f"unknown sampler {s!r}; expected some of {', '.join(SAMPLERS)}")
    if args.spacing is not None and args.spacing not in SPACINGS:
        fail(f"--spacing: expected one of {', '.join(SPACINGS)}, got {args.spacing!r}")
    if args.n < 4 or args.batch_size < 1 or args.reference_steps < 0:
        fail("--n: at least 4 images; --batch-size: positive; --reference-steps: 0 or more")

    pipe = Pipeline.from_checkpoint(args.checkpoint, args.device)
    if pipe.cfg.data.dataset != "mnist":
        fail(f"{args.checkpoint}: trained on {pipe.cfg.data.dataset}; the judge is an MNIST classifier")
    data_dir = args.data_dir or pipe.cfg.data.data_dir
    with contextlib.redirect_stdout(sys.stderr):  # stdout is for the table
        classifier = load_classifier(data_dir, device=pipe.device)

    rows = []
    for sampler in samplers:
        for budget in nfes:
            row = score(pipe, classifier, sampler, steps_for(sampler, budget), args, data_dir)
            rows.append({**row, "nfe_budget": budget})
    reference = None
    if args.reference_steps:
        reference = score(pipe, classifier, args.reference_sampler, args.reference_steps, args, data_dir)

    spacing = args.spacing or pipe.cfg.sampling.spacing
    cfg_scale = 1.0 if is_unconditional(pipe.cfg) else (
        pipe.cfg.sampling.cfg_scale if args.cfg_scale is None else args.cfg_scale)
    floor = next((r["fid_floor"] for r in rows + [reference or {}] if r.get("fid_floor") is not None), None)
    meta = {"checkpoint": str(args.checkpoint), "config": pipe.cfg.name, "n": args.n, "spacing": spacing,
            "cfg_scale": cfg_scale, "seed": args.seed, "fid_floor": floor, "device": str(pipe.device)}  # fmt: skip
    result = verdict(rows, reference, args.max_nfe)
    table = markdown(rows, reference, result, meta)
    print(table)

    out_dir = Path(args.out_dir) if args.out_dir else Path("results") / "sampler_quality" / pipe.cfg.name
    out_dir.mkdir(parents=True, exist_ok=True)
    plot(rows, reference, meta, out_dir / "sampler_quality.png")
    (out_dir / "sampler_quality.md").write_text(table + "\n")
    summary = {**meta, "rows": rows, "reference": reference, "verdict": result}
    (out_dir / "sampler_quality.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {out_dir}/sampler_quality.{{png,json,md}}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
