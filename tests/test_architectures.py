"""Each architecture's settings in its own section (issue 43, item 4): what a config file may set for each network,
checked by the network's own file; older configs and checkpoints, which stored every architecture's keys, load."""

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Iterator

import pytest
import torch
from torch import nn

from difflab.config import ConfigError, config_from_dict, load_config
from difflab.infra.checkpoint import save_checkpoint
from difflab.models import ARCHITECTURES, Architecture, build_model, count_parameters
from difflab.models.vae import build_vae
from difflab.pipeline import Pipeline, sampling_batch_size
from difflab.settings import ModelConfig, NetConfig
from difflab.training import Trainer

from conftest import tiny_config, tiny_data

ROOT = Path(__file__).resolve().parents[1]
# Written by the code before this change (commit b30ffba): for every config in configs/, the `model` section its
# checkpoints stored (all 24 keys of every architecture), its parameter count, and the digest of its state dict's
# names and shapes in order (the order in which the weights are drawn at initialisation).
BEFORE = json.loads((ROOT / "tests/fixtures/stored_model_sections.json").read_text())


def _shapes_digest(model: nn.Module) -> str:
    shapes = ";".join(f"{k}:{tuple(v.shape)}" for k, v in model.state_dict().items())
    return hashlib.sha256(shapes.encode()).hexdigest()


# Configs added after the record (issue 45): networks of the record, as few-step students (MeanFlow's is the
# shortcut model's: the MMDiT that also reads the jump size).
NEWER = {"configs/fewstep/sd2_ect.yaml": "configs/unified_sd2_unet_v.yaml",
         "configs/fewstep/sd3_progressive.yaml": "configs/unified_sd3_mmdit_flow.yaml",
         "configs/fewstep/sd2_progressive.yaml": "configs/unified_sd2_unet_v.yaml",
         "configs/fewstep/sd3_meanflow.yaml": "configs/fewstep/sd3_shortcut.yaml",
         # issue 47: the prompted U-Net reading a frozen, pretrained text encoder (same network, weight for weight)
         "configs/prompt/sd1_unet_clip_frozen.yaml": "configs/prompt/sd1_unet_crossattn.yaml",
         "configs/prompt/sd1_unet_mlm_frozen.yaml": "configs/prompt/sd1_unet_crossattn.yaml",
         # issue 48: SD1 trained on reframed digits (data.reframe), the same network
         "configs/microcond/sd1_reframed.yaml": "configs/unified_sd1_unet_eps.yaml"}

# Networks new since the record (no older checkpoint can hold them): DALL-E 2's decoder and prior (issue 47).
NEW_NETWORKS = {"configs/unclip/decoder.yaml", "configs/unclip/prior.yaml",
                "configs/microcond/sdxl_microcond.yaml",  # and SDXL's micro-conditioning (issue 48)
                # and Imagen's cascade (issue 48): a 14x14 base, super-resolution with and without augmentation
                "configs/cascade/base_14.yaml", "configs/cascade/sr_28.yaml", "configs/cascade/sr_28_no_aug.yaml",
                # and SDXL's refiner (issue 48): a half-size SD1 base and an expert of its low noise levels
                "configs/refiner/sdxl_base.yaml", "configs/refiner/sdxl_refiner.yaml",
                # and Sora's video DiT on Moving MNIST (issue 49), factorised and full space-time attention
                "configs/video/sora_moving_mnist.yaml", "configs/video/sora_full_attention.yaml"}

# Model keys added after the record, with the value every config of the record has (the old network).
ADDED = {"hourglass": False,  # issue 46: HDiT's token merging in the DiT and the MMDiT
         "text_encoder": "joint",  # issue 47: which text encoder reads the prompt (difflab.encoders)
         "micro_conditioning": False,  # issue 48: SDXL's size and crop conditioning (difflab.microcond)
         "low_resolution": 0}  # issue 48: a cascade's super-resolution stage (difflab.cascade)


def test_every_config_of_the_repository_is_in_the_record():
    assert sorted([*BEFORE, *NEWER, *NEW_NETWORKS]) == sorted(str(p.relative_to(ROOT))
                                                             for p in (ROOT / "configs").rglob("*.yaml"))
    for new, recorded in NEWER.items():
        model = build_model(load_config(ROOT / new).model)
        assert _shapes_digest(model) == BEFORE[recorded]["shapes_sha256"]  # the same network, weight for weight


@pytest.mark.parametrize("path", sorted(BEFORE))
def test_a_stored_config_from_before_loads_as_its_file_and_builds_the_same_network(path):
    before = BEFORE[path]
    cfg = load_config(ROOT / path)
    old = config_from_dict({**cfg.to_dict(), "name": cfg.name, "model": before["model"]}, source="old.pt", stored=True)
    assert old == cfg
    # The file's settings, and the old default of every other architecture's key, were what the old code stored.
    now = cfg.to_dict()["model"]
    assert {k: v for k, v in before["model"].items() if k in now} == {k: v for k, v in now.items() if k not in ADDED}
    assert all(now[k] == default for k, default in ADDED.items() if k in now)  # an old checkpoint gets the default
    model = build_vae(cfg.model) if cfg.model.architecture == "vae" else build_model(cfg.model)
    assert count_parameters(model) == before["parameters"]
    assert _shapes_digest(model) == before["shapes_sha256"]


def test_a_checkpoint_written_before_samples_as_one_written_now(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, training={"max_steps": 2}), data=tiny_data(32), quiet=True)
    trainer.fit()
    path = trainer.out_dir / "checkpoints" / "last.pt"
    state = torch.load(path, weights_only=False)
    unet_before = BEFORE["configs/unified_sd1_unet_eps.yaml"]["model"]
    assert set(state["config"]["model"]) - set(ADDED) < set(unet_before)  # written now: the U-Net's own keys only
    # The same checkpoint as the code before wrote it: every architecture's keys, at their old defaults.
    state["config"]["model"] = {**unet_before, **state["config"]["model"]}
    del state["sha256"]  # save_checkpoint writes the digest of the contents anew
    old = save_checkpoint(state, tmp_path / "old" / "checkpoints" / "last.pt")
    images = [Pipeline.from_checkpoint(p, "cpu").generate(torch.arange(4), steps=3, seed=1).images for p in (path, old)]
    assert torch.equal(images[0], images[1])


def test_a_key_of_another_architecture_is_refused_in_a_file():
    config = ROOT / "configs/unified_sd2_unet_v.yaml"
    with pytest.raises(ConfigError,
                       match="model.hidden_size: a setting of dit, mmdit, video_dit and prior, not of unet"):
        load_config(config, ["model.hidden_size=64"])
    with pytest.raises(ConfigError, match="model.channels: a setting of unet and vae, not of mmdit"):
        load_config(ROOT / "configs/unified_sd3_mmdit_flow.yaml", ["model.channels=8"])
    with pytest.raises(ConfigError, match=r"model.chanels: unknown key \(known for unet: architecture, "):
        load_config(config, ["model.chanels=8"])
    with pytest.raises(ConfigError, match="model.net: unknown key"):  # the section is a name in code, not in YAML
        load_config(config, ["model.net={channels: 8}"])
    with pytest.raises(ConfigError,
                       match="model.architecture: expected one of unet, dit, mmdit, video_dit, prior, vae, got 'res"):
        load_config(config, ["model.architecture=resnet"])


def test_each_network_checks_its_own_settings():
    config = ROOT / "configs/unified_sd3_mmdit_flow.yaml"
    with pytest.raises(ConfigError, match=r"model.hidden_size: expected a multiple of model.num_heads \(4\)"):
        load_config(config, ["model.hidden_size=110"])
    with pytest.raises(ConfigError, match="model.cond_tokens: expected a number > 0, got 0"):
        load_config(config, ["model.cond_tokens=0"])
    with pytest.raises(ConfigError, match="model.conditioning: expected class for the DiT"):
        load_config(ROOT / "configs/reference/dit_transformer.yaml", ["model.conditioning=prompt"])
    with pytest.raises(ConfigError, match="model.kl_weight: expected a number >= 0"):
        load_config(ROOT / "configs/reference/vae_mnist.yaml", ["model.kl_weight=-1"])


@dataclasses.dataclass
class TinyMLPConfig(NetConfig):
    """A made-up backbone: a config's `model:` section may set its width."""

    width: int = 32
    CPU_SAMPLING_BATCH = 5

    def problems(self, model: ModelConfig) -> Iterator[tuple[str, str]]:
        if self.width < 1:
            yield "width", "a number > 0"


class TinyMLP(nn.Module):
    def __init__(self, width: int, pixels: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(pixels + 1, width), nn.SiLU(), nn.Linear(width, pixels))

    def forward(self, x, t, y):
        flat = torch.cat([x.flatten(1), t[:, None].float() / 1000], dim=1)
        return self.net(flat).view_as(x)


def test_a_new_backbone_is_its_file_and_one_registry_line(monkeypatch, tmp_path):
    """What issue 43 promised: with only an entry in ARCHITECTURES, the new network's key is read from YAML and
    checked by its own class, it builds, trains, stores and loads, and the sampling batch is its own."""
    def build(cfg, in_channels, image_size):
        return TinyMLP(cfg.net.width, in_channels * image_size * image_size)

    def config(**model):
        return config_from_dict({**tiny_config(tmp_path, training={"max_steps": 2}).to_dict(), "model": model})

    monkeypatch.setitem(ARCHITECTURES, "tiny_mlp", Architecture(TinyMLPConfig, build))
    cfg = config(architecture="tiny_mlp", width=24)
    assert cfg.model.net == TinyMLPConfig(width=24)
    with pytest.raises(ConfigError, match="model.width: expected a number > 0, got 0"):
        config(architecture="tiny_mlp", width=0)
    with pytest.raises(ConfigError, match="model.channels: a setting of unet and vae, not of tiny_mlp"):
        config(architecture="tiny_mlp", channels=8)
    trainer = Trainer(cfg, data=tiny_data(32), quiet=True)
    trainer.fit()
    pipe = Pipeline.from_checkpoint(trainer.out_dir / "checkpoints" / "last.pt", "cpu")
    assert isinstance(pipe.model, TinyMLP) and pipe.cfg.model == cfg.model
    assert sampling_batch_size("cpu", "tiny_mlp") == 5
