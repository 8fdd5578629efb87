"""Out-of-fold aligned features: `z_a` of each training clip from an aligner that never saw its speaker.

Stage 1 fits its training speakers closely: their `z_a` sit in tight class clusters, while the `z_a` of unseen
speakers (validation, test) scatter around them. A generator trained on the in-fold `z_a` learns those tight
clusters and adds little. Cross-fitting gives stage 2 (and stage 3) training features spread like the unseen
speakers' ones: the training speakers are split into groups, an aligner is trained without each group and encodes
that group, and its space is rotated onto the space of the aligner trained on every training speaker (orthogonal
Procrustes on the rows both encode) - the space in which validation and test clips are encoded.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from modeling_mise import MiseAlignerModel

from .aligner import encode_audio

Tensor = torch.Tensor


def speaker_groups(speakers: np.ndarray, num_groups: int, seed: int) -> list[np.ndarray]:
    """The distinct `speakers` shuffled (seeded) and dealt into at most `num_groups` non-empty groups."""
    if num_groups < 2:
        raise ValueError(f"out-of-fold features need at least 2 speaker groups, got {num_groups}")
    names = np.array(sorted(set(speakers.tolist())))
    if len(names) < 2:
        raise ValueError(f"out-of-fold features need at least 2 training speakers, got {len(names)}")
    np.random.default_rng(seed).shuffle(names)
    groups = min(num_groups, len(names))
    return [names[index::groups] for index in range(groups)]


def orthogonal_map(source: Tensor, target: Tensor) -> Tensor:
    """The rotation `R` minimising ||source @ R - target|| (orthogonal Procrustes): unit-norm rows stay unit-norm."""
    u, _, vt = torch.linalg.svd(source.T.double() @ target.double())
    return (u @ vt).to(source.dtype)


def out_of_fold_features(
    reference: Tensor,
    audio: Tensor,
    speakers: np.ndarray,
    fit: Callable[[np.ndarray, int], MiseAlignerModel],
    num_groups: int,
    seed: int,
) -> Tensor:
    """Out-of-fold `z_a` of the training rows, in the space of the aligner that encoded them as `reference`.

    Args:
        reference: (N, d) `z_a` of the training rows from the aligner trained on all of them.
        audio: (N, audio_dim) their frozen audio features; `speakers`: (N,) their speakers.
        fit: `fit(rows, index)` trains an aligner on the training rows `rows` (indices into `audio`); `index`
            numbers the group left out, for its seed.
        num_groups: speaker groups (one aligner each).
    """
    features = torch.empty_like(reference)
    for index, group in enumerate(speaker_groups(speakers, num_groups, seed)):
        held_out = np.isin(speakers, group)
        inner, outer = np.flatnonzero(~held_out), np.flatnonzero(held_out)
        aligner = fit(inner, index)
        rotation = orthogonal_map(encode_audio(aligner, audio[inner]), reference[inner])
        features[outer] = encode_audio(aligner, audio[outer]) @ rotation
    return features
