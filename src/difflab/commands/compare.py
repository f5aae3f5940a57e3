"""Compare trained models side by side: python compare_models.py [--checkpoints A B ...]

Without --checkpoints, takes the newest checkpoint of each config under experiments/; runs of other
training seeds in experiments/seed<k>/ (make compare SEEDS=N) are scored too, and the table reports
each config's mean and spread over its seeds.
Writes into results/: grid.png (a column per model, same noise, same digits),
trajectories.png/.gif, fid_vs_steps.png, fid_vs_guidance.png, loss_curves.png,
RESULTS.md and results.json. Every score is also kept in results/scores.json (src/difflab/study/score_cache.py):
run again after a failure, and only what was not scored yet is sampled. One comparison writes to an
--out folder at a time: a second is refused, naming the first one's pid.

    python compare_models.py --publish results/results.json --as study

copies that results.json to docs/results/study.json and regenerates the README's and docs'
blocks marked as generated from it (src/difflab/study/report.py). A page's own measurements go the same way:

    python compare_models.py --evaluations "CFG 1.5=a.json" "CFG 2=b.json" --as latent_guidance

gathers those evaluate.py outputs (`evaluate.py ... --out a.json`) into docs/results/latent_guidance.json
and regenerates the blocks `<!-- generated from docs/results/latent_guidance.json: evaluations -->`.
"""

import argparse
import platform
import sys
from pathlib import Path


from difflab.infra.failures import fail, usage


def numbers(text, kind):
    try:
        return [kind(v) for v in text.split(",") if v.strip()] if text else []
    except ValueError:
        usage(f"expected comma-separated numbers, got {text!r}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoints", nargs="+", default=None)
    p.add_argument("--experiments", default="experiments")
    p.add_argument("--out", default="results")
    p.add_argument("--n", type=int, default=2000, help="samples per model for the table")
    p.add_argument("--sweep-n", type=int, default=500, help="samples per point of the sweeps")
    p.add_argument("--steps-list", default="10,25,50", help="sampling steps to sweep ('' to skip)")
    p.add_argument("--scales", default="1,3,5,7.5", help="guidance scales to sweep ('' to skip)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--note", default=None, help="a line for RESULTS.md (default: the machine)")
    p.add_argument("--publish", metavar="RESULTS_JSON", default=None,
                   help="score nothing: copy RESULTS_JSON to docs/results/<--as>.json and rewrite the README's and "
                        "docs' blocks generated from it (src/difflab/study/report.py)")
    p.add_argument("--evaluations", nargs="+", metavar="LABEL=EVAL_JSON", default=None,
                   help="score nothing: publish these evaluate.py outputs (--out), a table row each under its label, "
                        "as docs/results/<--as>.json (blocks of kind evaluations, adherence or adherence over seeds: "
                        "src/difflab/study/page_tables.py)")
    p.add_argument("--as", dest="publish_as", default="study", help="the name it is published under")
    args = p.parse_args(argv)
    if args.publish and args.evaluations:
        usage("--publish or --evaluations, not both")
    if args.publish or args.evaluations:
        from difflab.study.report import check_name

        try:  # a plain name: docs/results/<name>.json, never a path out of the repository ("../../x")
            check_name(args.publish_as)
        except ValueError as e:
            usage(str(e))
    if args.evaluations:
        return publish(gather(args.evaluations), args.publish_as)
    if args.publish:
        return publish(Path(args.publish), args.publish_as)

    from difflab.study.compare import holding, seed_runs

    other_seeds = []
    if args.checkpoints:
        ckpts = [Path(c) for c in args.checkpoints]
    else:
        if not Path(args.experiments).is_dir():
            fail(f"no {args.experiments}/ folder: train something first, or pass --checkpoints")
        runs = seed_runs(Path(args.experiments))  # seed 0 in DIR, seed k in DIR/seed<k> (make compare SEEDS=N)
        ckpts, other_seeds = runs[0], [runs[k] for k in sorted(runs) if k > 0]
        if not ckpts:
            fail(f"no checkpoints under {args.experiments}/*/checkpoints/")
    if args.n < 1 or args.sweep_n < 1:
        usage("--n and --sweep-n must be positive")
    with holding(Path(args.out)):  # a second comparison into this folder is refused now, before any loading
        return score(args, ckpts, other_seeds)


def score(args, ckpts, other_seeds) -> int:
    """Score the checkpoints and write the results (main, once the output folder is held)."""
    from difflab.classifier import load_classifier
    from difflab.study.compare import run_comparison

    print("comparing: " + ", ".join(str(c) for c in ckpts), file=sys.stderr)
    note = args.note or (f"Machine: {platform.machine()}, {platform.processor() or 'cpu'}; "
                         f"N = {args.n} samples per model, seed {args.seed}.")
    from difflab.infra.checkpoint import load_checkpoint

    def dataset(path) -> str:  # the config's full check comes when the pipelines load; here only its dataset
        data = load_checkpoint(path)["config"].get("data")
        return str(data.get("dataset", "mnist")) if isinstance(data, dict) else "mnist"

    datasets = {dataset(c) for c in ckpts}
    if len(datasets) > 1:
        usage(f"these checkpoints were trained on different datasets ({', '.join(sorted(datasets))}): "
              "compare each apart")
    result = run_comparison(ckpts, Path(args.out), load_classifier(dataset=datasets.pop()), n=args.n, seed=args.seed,
                            steps_list=numbers(args.steps_list, int), scales=numbers(args.scales, float),
                            sweep_n=args.sweep_n, device=args.device, note=note, other_seeds=other_seeds)
    print((Path(args.out) / "RESULTS.md").read_text())
    print(f"wrote {args.out}/: grid.png, trajectories.png/.gif, fid_vs_steps.png, fid_vs_guidance.png, "
          f"loss_curves.png, RESULTS.md, results.json ({len(result['rows'])} models)")
    return 0


def gather(pairs) -> dict:
    """LABEL=FILE pairs -> the json of an `evaluations` block (page_tables.gather_evaluations)."""
    import json

    from difflab.study.page_tables import gather_evaluations

    labelled = {}
    for pair in pairs:
        label, sep, path = pair.rpartition("=")
        if not sep or not label.strip():
            usage(f"--evaluations: expected LABEL=EVAL_JSON, got {pair!r}")
        if label in labelled:
            usage(f"--evaluations: the label {label!r} is given twice")
        if not Path(path).is_file():
            fail(f"--evaluations: {path}: no such file (write one with `evaluate.py ... --out {path}`)")
        try:
            labelled[label] = json.loads(Path(path).read_text())
        except (ValueError, RecursionError):  # RecursionError: nested past the parser's depth
            fail(f"--evaluations: {path} is not JSON")
    try:
        return gather_evaluations(labelled)
    except ValueError as e:
        fail(f"--evaluations: {e}")


def publish(results_json, name: str) -> int:
    """Write docs/results/<name>.json and the blocks generated from it; a malformed results file changes nothing."""
    from difflab.study.report import publish as write_docs

    if not isinstance(results_json, dict) and not results_json.is_file():
        fail(f"{results_json}: no such file; `make compare` writes results/results.json")
    root = next((d for d in (Path.cwd(), *Path.cwd().parents) if (d / "README.md").is_file() and (d / "docs").is_dir()),
                None)
    if root is None:
        fail("--publish writes the project's README.md and docs/: run it inside the difflab folder")
    try:
        changed = write_docs(results_json, name, root)  # checks and renders everything before writing anything
    except ValueError as e:
        fail(f"{e}; no file was changed")
    print(f"wrote docs/results/{name}.json; regenerated blocks in: "
          + (", ".join(str(p.relative_to(root)) for p in changed)
             or "no page changed (none names it, or its blocks already show these rows)"))
    return 0

