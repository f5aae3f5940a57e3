"""The numbers that judge generated images, from classifier features: FID and precision/recall.

Pure functions of two feature sets; evaluation.py supplies the features.
"""

from __future__ import annotations

from typing import Union

import numpy as np
import torch

ArrayLike = Union[torch.Tensor, np.ndarray]


# --------------------------------------------------------------------------
# FID (Heusel et al. 2017)
# --------------------------------------------------------------------------


def feature_statistics(feats: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and unbiased covariance (D, D) of features (N, D), in float64."""
    x = torch.as_tensor(feats).double().cpu()
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"need features of shape (N >= 2, D), got {tuple(x.shape)}")
    return x.mean(0), torch.cov(x.T)


def _sqrtm_psd(s: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric PSD matrix: V diag(sqrt(w)) V^T from s = V diag(w) V^T."""
    w, v = torch.linalg.eigh((s + s.T) / 2)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def fid_from_statistics(mu_a: torch.Tensor, cov_a: torch.Tensor, mu_b: torch.Tensor, cov_b: torch.Tensor) -> float:
    """Frechet distance of N(mu_a, S_a) and N(mu_b, S_b) (Dowson & Landau 1982; FID: Heusel et al. 2017).

        d^2 = ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2})

    S_a S_b is not symmetric, so its square root is awkward (scipy's sqrtm works
    in complex numbers). We only need its trace: with R = S_a^{1/2} (symmetric),
        S_a S_b = R (R S_b)   and   M = (R S_b) R = R S_b R.
    AB and BA have the same non-zero eigenvalues, so S_a S_b and M share theirs
    (and when S_a is invertible, S_a S_b = R M R^-1 is similar to M). M is
    symmetric PSD, so those eigenvalues are real and >= 0, and
        Tr (S_a S_b)^{1/2} = sum_i sqrt(lambda_i(M)).
    Rounding can make tiny eigenvalues negative; they are clamped to 0.
    """
    mu_a, mu_b, cov_a, cov_b = (torch.as_tensor(t).double().cpu() for t in (mu_a, mu_b, cov_a, cov_b))
    r = _sqrtm_psd(cov_a)
    m = r @ cov_b @ r
    eig = torch.linalg.eigvalsh((m + m.T) / 2).clamp(min=0)
    tr_sqrt = eig.sqrt().sum()
    d2 = (mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * tr_sqrt
    return max(d2.item(), 0.0)


def fid_from_features(feats_a: ArrayLike, feats_b: ArrayLike) -> float:
    """FID between two feature sets (N, D) and (M, D). Note: biased upwards for small N."""
    return fid_from_statistics(*feature_statistics(feats_a), *feature_statistics(feats_b))


# --------------------------------------------------------------------------
# Precision / recall (Kynkaanniemi et al. 2019)
# --------------------------------------------------------------------------


def _kth_nn_radii(feats: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """Distance from each point to its k-th nearest neighbour in the same set (itself excluded)."""
    radii = []
    for i in range(0, len(feats), chunk):
        d = torch.cdist(feats[i : i + chunk], feats)  # (C, N)
        radii.append(d.topk(k + 1, dim=1, largest=False).values[:, -1])  # index 0 is the point itself
    return torch.cat(radii)


def _inside_manifold(queries: torch.Tensor, points: torch.Tensor, radii: torch.Tensor, chunk: int) -> torch.Tensor:
    """For each query q: is ||q - p_j|| <= radius_j for some j (the paper's indicator f)?"""
    inside = []
    for i in range(0, len(queries), chunk):
        d = torch.cdist(queries[i : i + chunk], points)  # (C, M)
        inside.append((d <= radii[None, :]).any(dim=1))
    return torch.cat(inside)


def precision_recall(real_feats: ArrayLike, fake_feats: ArrayLike, k: int = 3,
                     chunk: int = 1000) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019).

    Each set's manifold is the union of balls around its points, of radius the
    distance to the k-th nearest neighbour. precision = fraction of fake points on
    the real manifold; recall = fraction of real points on the fake manifold.
    Distances are computed in chunks of `chunk` rows to bound memory.
    """
    real = torch.as_tensor(real_feats).float().cpu()
    fake = torch.as_tensor(fake_feats).float().cpu()
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"need more than k={k} points in each set, got {len(real)} and {len(fake)}")
    precision = _inside_manifold(fake, real, _kth_nn_radii(real, k, chunk), chunk).double().mean()
    recall = _inside_manifold(real, fake, _kth_nn_radii(fake, k, chunk), chunk).double().mean()
    return precision.item(), recall.item()
