"""Train any config: python train.py --config configs/unified_sd1_unet_eps.yaml [section.key=value ...]"""

import argparse
import json
import sys
from pathlib import Path

from difflab.infra.failures import usage


def make_trainer(cfg):
    """The trainer of a config (trainers.TRAINERS): all run through the one loop (loop.py), each with its own loss."""
    from difflab.trainers import build_trainer

    return build_trainer(cfg)


def start_line(trainer) -> str:
    """The line a run starts with: what trains, how big, how long, where it writes."""
    cfg = trainer.cfg
    ranks = f" x {trainer.dist.world} ranks" if trainer.dist.enabled else ""
    return (f"training {cfg.name}: {cfg.model.architecture}, {trainer.what()}, {trainer.params:,} parameters, "
            f"{trainer.total_steps} steps of {trainer.batch_size}{ranks} on {trainer.device}; "
            f"writing to {trainer.out_dir}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True, help="a YAML file under configs/")
    parser.add_argument("overrides", nargs="*", help="section.key=value, e.g. training.epochs=2")
    parser.add_argument("--resume", nargs="?", const="last", default=None,
                        help="continue from experiments/<config>/checkpoints/last.pt (or a given checkpoint)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start afresh in a folder that holds an earlier run, deleting its checkpoints, "
                             "samples and log")
    parser.add_argument("--until-epoch", type=int, default=None, metavar="K",
                        help="stop at the end of epoch K of the run (its learning-rate schedule unchanged), saving "
                             "last.pt: a long run in slices, each continued with --resume (benchmarks/curves.py)")
    parser.add_argument("--dry-run", action="store_true", help="build everything, print one JSON line, exit")
    args = parser.parse_args(argv)
    if args.resume and args.overwrite:
        usage("--resume continues a run and --overwrite deletes it: give one of them")
    if args.until_epoch is not None and args.until_epoch < 1:
        usage(f"--until-epoch must be 1 or more, not {args.until_epoch}")

    from difflab.config import load_config
    from difflab.infra.distributed import shutdown
    from difflab.infra.checkpoint import resume

    cfg = load_config(args.config, args.overrides)
    if args.dry_run:
        from difflab.commands.dryrun import describe

        print(json.dumps(describe(cfg)))
        return 0
    from difflab.commands.dryrun import check_memory

    check_memory(cfg)  # a model or a batch too large for this machine: one line now, not a traceback at step 1
    if cfg.data.vae_checkpoint and cfg.data.vae_config and not Path(cfg.data.vae_checkpoint).is_file():
        from difflab.vae_training import train_vae_first

        train_vae_first(cfg)  # latent diffusion's stage 1, on a fresh clone
    if cfg.cascade.base and cfg.cascade.base_config and not Path(cfg.cascade.base).is_file():
        from difflab.cascade import train_base_first

        train_base_first(cfg, args.overrides)  # a cascade's stage 1, on a fresh clone, on the same budget
    if cfg.cascade.refine_below and not (cfg.cascade.base and Path(cfg.cascade.base).is_file()):
        from difflab.config import ConfigError

        raise ConfigError(f"{cfg.name} is a refiner: the grids it draws while training start from its base's steps, "
                          f"and there is no base at cascade.base={cfg.cascade.base} (name one, or cascade.base_config "
                          "to train it first)")
    trainer = make_trainer(cfg)
    if args.resume:
        path = resume(trainer, args.resume)
        if trainer.dist.is_main:
            print(f"resuming from {path} at step {trainer.step} of {trainer.total_steps}")
    if trainer.dist.is_main:
        print(start_line(trainer))
    stop_after = None if args.until_epoch is None else args.until_epoch * trainer.steps_per_epoch
    if stop_after is not None and trainer.step >= min(stop_after, trainer.total_steps):
        print(f"nothing to do: the run is at step {trainer.step}, past the end of epoch {args.until_epoch}")
        return 0
    try:
        trainer.fit(stop_after=stop_after, overwrite=args.overwrite)
    finally:
        shutdown(trainer.dist)
    if trainer.interrupted:
        resume = f"python train.py --config {args.config} {' '.join(args.overrides)} --resume".replace("  ", " ")
        print(f"interrupted at step {trainer.step}: saved {trainer.out_dir / 'checkpoints' / 'last.pt'}\n"
              f"resume with: {resume}", file=sys.stderr)
        return 130
    if trainer.step < trainer.total_steps and trainer.dist.is_main:  # --until-epoch: a slice of the run
        resume = f"python train.py --config {args.config} {' '.join(args.overrides)} --resume".replace("  ", " ")
        print(f"paused at the end of epoch {args.until_epoch} (step {trainer.step} of {trainer.total_steps}): "
              f"saved {trainer.out_dir / 'checkpoints' / 'last.pt'}\ncontinue with: {resume}")
        return 0
    if trainer.dist.is_main:
        pictures = trainer.pictures
        print(f"done: checkpoints in {trainer.out_dir / 'checkpoints'}, {pictures} in {trainer.out_dir / pictures}")
    return 0

