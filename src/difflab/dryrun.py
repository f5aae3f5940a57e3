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
        from .latent import describe_vae

        extra = describe_vae(cfg)  # vae_params: reported apart from the diffusion model's
        c, size, _ = extra["latent_shape"]
    model = build_model(cfg.model, in_channels=c, image_size=size)
    if getattr(model, "text", None) is not None:  # a model of prompts: its text encoder is counted in params
        extra["text_encoder_params"] = count_parameters(model.text)
    return {
        "config": cfg.name,
        "architecture": cfg.model.architecture,
        "target": cfg.diffusion.target,
        "params": count_parameters(model),
        **extra,
    }
