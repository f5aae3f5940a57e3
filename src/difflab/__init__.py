"""difflab: diffusion models from DDPM to SD3, on MNIST, for reading."""

__version__ = "0.1.0"
