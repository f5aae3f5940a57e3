"""Prompts from the images themselves: "a thick, right-slanted 7", and the word-level tokenizer.

Every training image gets one prompt, written from its digit and from where its measured
attributes (difflab.attributes) fall among all training images:

    thickness: thin | regular | thick              tertiles over all digits
    slant:     left-slanted | upright | right-slanted   tertiles over all digits
    width:     narrow | mid-width | wide           tertiles within each digit (a wide 1 is not a wide 0)

Each attribute is named with probability KEEP, in a random order and one of a few phrasings
("a thin, wide 3", "the digit three, thin and wide", ...), so partial prompts are ordinary
training data. Over 60,000 images each image is seen once per epoch, so one prompt per
image, drawn once with a fixed seed, is as good as drawing a fresh one per step. The prompts,
their tokens and the thresholds are computed once and cached beside the data with the digest
of the images they describe (`prompt_data`).

The empty prompt "" is the null condition for classifier-free guidance: just the start token.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from . import attributes
from .data import array_sha256, load_split, tensor_to_uint8

BINS = {
    "thickness": ("thin", "regular", "thick"),
    "slant": ("left-slanted", "upright", "right-slanted"),
    "width": ("narrow", "mid-width", "wide"),
}
PER_DIGIT = ("width",)  # binned within each digit's own distribution
NUMERALS = tuple(str(d) for d in range(10))
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
GLUE = ("a", "an", "the", "digit", "that", "is", "and", "with", "of")
PAD, START = "<pad>", "<start>"
VOCAB = (PAD, START, *GLUE, *NUMERALS, *NUMBER_WORDS, *(w for words in BINS.values() for w in words))
TOKEN = {word: i for i, word in enumerate(VOCAB)}
MAX_TOKENS = 16  # the longest phrasing with every attribute is 11 tokens
KEEP = 0.6  # chance that a training prompt names a given attribute
VERSION = 1  # bump when the prompts change: the cache is rebuilt


class PromptError(ValueError):
    """A prompt the tokenizer cannot read: the message lists the words it knows."""


# --------------------------------------------------------------------------- tokenizer


def words(text: str) -> list[str]:
    """Lower-cased words; commas and full stops are separators, hyphenated words stay whole."""
    return re.findall(r"[a-z0-9-]+", text.lower())


def tokenize(text: str) -> list[int]:
    """START, then one id per word; an unknown word is an error that lists the vocabulary."""
    ids = [TOKEN[START]]
    for word in words(text):
        if word not in TOKEN:
            known = ", ".join(w for w in VOCAB if not w.startswith("<"))
            raise PromptError(f"unknown word {word!r} in prompt {text!r}; the prompts know: {known}")
        ids.append(TOKEN[word])
    if len(ids) > MAX_TOKENS:
        raise PromptError(f"prompt {text!r} has {len(ids) - 1} words; at most {MAX_TOKENS - 1} fit")
    return ids


def encode(texts: Sequence[str]):
    """Prompts -> (B, MAX_TOKENS) int64 tensor, padded with PAD (id 0); the mask is tokens != 0."""
    import torch

    out = torch.zeros(len(texts), MAX_TOKENS, dtype=torch.long)
    for i, text in enumerate(texts):
        ids = tokenize(text)
        out[i, : len(ids)] = torch.tensor(ids)
    return out


def decode(tokens) -> str:
    """Token ids back to words (padding dropped): for logs and error messages."""
    return " ".join(VOCAB[int(i)] for i in tokens if int(i) not in (TOKEN[PAD], TOKEN[START]))


def parse(text: str) -> tuple[Optional[int], dict[str, int]]:
    """What a prompt asks for: (digit or None, attribute -> bin index)."""
    digit, asked = None, {}
    for word in words(text):
        if word in NUMERALS:
            digit = NUMERALS.index(word)
        elif word in NUMBER_WORDS:
            digit = NUMBER_WORDS.index(word)
        for name, names in BINS.items():
            if word in names:
                asked[name] = names.index(word)
    return digit, asked


# --------------------------------------------------------------------------- writing prompts


def article(word: str) -> str:
    """'an' before a vowel sound ("an 8", "an upright 7"), else 'a' ("a one")."""
    return "an" if word[0] in "aeiu8" or word.startswith(("eight", "o")) and word != "one" else "a"


def write(digit: int, asked: dict[str, int], phrasing: int = 0, digit_as_word: bool = False) -> str:
    """A prompt naming `digit` and the attribute bins in `asked` (in that order), in phrasing 0-3."""
    d = NUMBER_WORDS[digit] if digit_as_word else NUMERALS[digit]
    adjs = [BINS[name][b] for name, b in asked.items()]
    if not adjs:
        return [f"{article(d)} {d}", f"{d}", f"the digit {d}", f"the digit {d}"][phrasing]
    listed = ", ".join(adjs)
    joined = " and ".join([", ".join(adjs[:-1]), adjs[-1]] if len(adjs) > 1 else adjs)  # "thin, wide and upright"
    return [f"{article(adjs[0])} {listed} {d}", f"{listed} {d}", f"the digit {d}, {joined}",
            f"{article(d)} {d} that is {joined}"][phrasing]


def random_prompts(digits: np.ndarray, bins: dict[str, np.ndarray], seed: int = 0) -> list[str]:
    """One prompt per image: each attribute kept with probability KEEP, shuffled, a random phrasing."""
    rng = np.random.default_rng(seed)
    names = list(BINS)
    keep = rng.random((len(digits), len(names))) < KEEP
    order = rng.random((len(digits), len(names))).argsort(1)
    phrasing = rng.integers(0, 4, len(digits))
    as_word = rng.random(len(digits)) < 0.3
    out = []
    for i, d in enumerate(digits):
        asked = {names[j]: int(bins[names[j]][i]) for j in order[i] if keep[i, j]}
        out.append(write(int(d), asked, int(phrasing[i]), bool(as_word[i])))
    return out


# --------------------------------------------------------------------------- bins


@dataclass
class Thresholds:
    """Bin edges: name -> (2,) for global bins, or (10, 2) for per-digit bins."""

    edges: dict[str, np.ndarray]

    @classmethod
    def fit(cls, measured: dict[str, np.ndarray], digits: np.ndarray) -> "Thresholds":
        edges = {}
        for name in BINS:
            if name in PER_DIGIT:
                edges[name] = np.stack([np.percentile(measured[name][digits == d], [100 / 3, 200 / 3])
                                        for d in range(10)])
            else:
                edges[name] = np.percentile(measured[name], [100 / 3, 200 / 3])
        return cls(edges)

    def bin(self, measured: dict[str, np.ndarray], digits: np.ndarray) -> dict[str, np.ndarray]:
        """name -> (N,) bin index 0, 1 or 2; per-digit bins use each image's digit."""
        out = {}
        for name in BINS:
            e = self.edges[name]
            lo, hi = (e[digits, 0], e[digits, 1]) if e.ndim == 2 else (e[0], e[1])
            out[name] = (measured[name] > lo).astype(np.int64) + (measured[name] > hi)
        return out

    def to_dict(self) -> dict:
        return {name: e.tolist() for name, e in self.edges.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "Thresholds":
        return cls({name: np.asarray(v, dtype=np.float64) for name, v in d.items()})


# --------------------------------------------------------------------------- the cached prompt set


@dataclass
class PromptData:
    """The training images' prompts: texts, tokens (N, MAX_TOKENS), digits, bins, thresholds."""

    texts: list[str]
    tokens: np.ndarray
    digits: np.ndarray
    bins: dict[str, np.ndarray]
    thresholds: Thresholds


def fit_bins(images: np.ndarray, digits: np.ndarray) -> tuple[Thresholds, dict[str, np.ndarray]]:
    """Measure uint8 images (N, 28, 28), fit the thresholds on them and bin them: (thresholds, name -> (N,))."""
    measured = attributes.measure(images)
    thresholds = Thresholds.fit(measured, digits)
    return thresholds, thresholds.bin(measured, digits)


def build(images: np.ndarray, digits: np.ndarray, seed: int = 0) -> PromptData:
    """Measure, bin and write a prompt for every image (a few seconds for MNIST's 60,000)."""
    thresholds, bins = fit_bins(images, digits)
    texts = random_prompts(digits, bins, seed)
    return PromptData(texts, encode(texts).numpy().astype(np.int16), digits, bins, thresholds)


def cache_path(dataset: str, data_dir=None, limit: Optional[int] = None) -> Optional[Path]:
    """<data dir>/<dataset>_prompts.npz (_<N> with data.limit); None where there is no data folder."""
    from .data import resolve_data_dir

    folder = resolve_data_dir(data_dir)
    name = f"{dataset}_prompts" + (f"_{limit}" if limit else "")
    return folder / f"{name}.npz" if folder.is_dir() else None


def prompt_data(images: np.ndarray, digits: np.ndarray, cache: Optional[Path] = None, seed: int = 0) -> PromptData:
    """build(), cached in `cache` (an .npz): reused only if written for these very images, seed and VERSION."""
    key = {"images_sha256": array_sha256(images), "seed": seed, "version": VERSION}
    if cache is not None and Path(cache).is_file():
        try:
            with np.load(cache, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                if meta["key"] == key and array_sha256(z["tokens"]) == meta["tokens_sha256"]:
                    tokens = z["tokens"]
                    return PromptData(meta["texts"], tokens, digits, {n: z[f"bin_{n}"] for n in BINS},
                                      Thresholds.from_dict(meta["thresholds"]))
        except (OSError, ValueError, KeyError, json.JSONDecodeError):
            pass  # damaged or foreign: rebuilt below
    data = build(images, digits, seed)
    if cache is not None:
        meta = {"key": key, "texts": data.texts, "thresholds": data.thresholds.to_dict(),
                "tokens_sha256": array_sha256(data.tokens)}
        tmp = Path(cache).with_suffix(".tmp.npz")
        np.savez(tmp, meta=json.dumps(meta), tokens=data.tokens, **{f"bin_{n}": b for n, b in data.bins.items()})
        tmp.replace(cache)
    return data


def training_prompts(x, y, data_cfg):
    """The prompt tokens (N, MAX_TOKENS) int64 of training images x (N, 1, 28, 28) in [-1, 1] with digits y.

    Cached beside the data as <dataset>_prompts.npz (<dataset>_prompts_<N>.npz with data.limit).
    """
    import torch

    from .data import tensor_to_uint8

    images = tensor_to_uint8(x.cpu())
    cache = cache_path(data_cfg.dataset, data_cfg.data_dir, len(images) if data_cfg.limit else None)
    data = prompt_data(images, y.cpu().numpy(), cache=cache)
    return torch.from_numpy(data.tokens.astype(np.int64))


# --------------------------------------------------------------------------
# The training images' own prompts: what adherence measures against, and FID's captions
# --------------------------------------------------------------------------

# What a model of prompts is asked for when it is scored (evaluation.asked_for): the digit alone ("a 7",
# as a model of labels is asked), or training images' own captions.
PROMPT_SETS = ("digit", "captions")
CAPTION_SEED = 0  # the captions drawn for FID: the same for every model and every run


def training_prompt_set(data_dir=None) -> PromptData:
    """The training images' measured bins and thresholds (cached beside the data by difflab.prompts)."""
    x, y = load_split("train", data_dir=data_dir)
    return prompt_data(tensor_to_uint8(x), y.numpy(), cache=cache_path("mnist", data_dir))


def captions(n: int, data_dir=None) -> tuple[np.ndarray, list[str]]:
    """(digits, texts): n training images' own prompts, drawn at random without replacement (with it past
    60,000), the same n for every model: FID with real captions (difflab.evaluation.asked_for)."""
    data = training_prompt_set(data_dir)
    rng = np.random.default_rng(CAPTION_SEED)
    pick = rng.permutation(len(data.texts))[:n] if n <= len(data.texts) else rng.integers(0, len(data.texts), n)
    return data.digits[pick], [data.texts[i] for i in pick]
