"""`--dry-run`: build the model a config describes and say what it is, without data or training."""

from __future__ import annotations

from .config import Config
from .models import build_model, count_parameters


def describe(cfg: Config) -> dict:
    if cfg.model.architecture == "vae":  # latent diffusion's first stage: no diffusion target
        from .models.vae import build_vae

        return {"config": cfg.name, "architecture": "vae", "target": "reconstruction",
                "params": count_parameters(build_vae(cfg.model))}
    c, size, extra = 1, 28, {}
    if cfg.data.vae_checkpoint:
        from .latent import latent_shape_of, vae_params_of

        c, size, _ = latent_shape_of(cfg)
        extra["vae_params"] = vae_params_of(cfg)  # reported apart from the diffusion model's
    model = build_model(cfg.model, in_channels=c, image_size=size)
    return {
        "config": cfg.name,
        "architecture": cfg.model.architecture,
        "target": cfg.diffusion.target,
        "params": count_parameters(model),
        **extra,
    }
