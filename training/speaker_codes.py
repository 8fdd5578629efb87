"""Speaker-aware generation (a study variant): G is also conditioned on a speaker code, so that stage 3 can ask
for emotion y in the voice of a given speaker.

A speaker's code is the mean `z_a` of all their clips in the fold's stage-1 space, labels unread (the clips
per-speaker statistics already use), centred on the training rows' mean and scaled so that the training
speakers' codes have unit root-mean-square norm. The code is appended to the text code the generator reads
(`[z_t; c_s]`, or `c_s` alone without transcripts), so the InfoGAN's text MI term covers it too. Stage 3 then
draws the speaker part of every generated row independently of its emotion: from the training speakers
(`training`: every emotion in every training voice) or from the fold's test speakers (`test`: their emotions from
their unlabelled clips, only where the fold already reads those clips for per-speaker statistics).
"""

from __future__ import annotations

import numpy as np
import torch

Tensor = torch.Tensor


class SpeakerCodes:
    """Speaker codes of one fold's space, standardised on the training rows `z_train` of speakers
    `speakers_train`."""

    def __init__(self, z_train: Tensor, speakers_train: np.ndarray) -> None:
        z_train = z_train.float()
        self.centre = z_train.mean(0)
        means = _speaker_means(z_train, speakers_train)[0] - self.centre
        self.scale = float(means.pow(2).sum(1).mean().sqrt().clamp(min=1e-6))

    def of_speakers(self, z: Tensor, speakers: np.ndarray) -> Tensor:
        """One code per distinct speaker of `speakers` (sorted), from the mean of their rows `z`."""
        return (_speaker_means(z.float(), speakers)[0] - self.centre) / self.scale

    def of_rows(self, z: Tensor, speakers: np.ndarray) -> Tensor:
        """The code of each row's speaker, `(len(z), dim)`."""
        means, index = _speaker_means(z.float(), speakers)
        return ((means - self.centre) / self.scale)[index]


def _speaker_means(z: Tensor, speakers: np.ndarray) -> tuple[Tensor, Tensor]:
    """(mean row of each distinct speaker, each row's speaker index into those means)."""
    if len(z) != len(speakers):
        raise ValueError(f"speaker codes: {len(z)} rows but {len(speakers)} speakers")
    names, index = np.unique(np.asarray(speakers), return_inverse=True)
    index = torch.as_tensor(index.reshape(-1), dtype=torch.long)
    sums = torch.zeros(len(names), z.shape[1]).index_add_(0, index, z)
    counts = torch.bincount(index, minlength=len(names)).clamp(min=1).unsqueeze(1)
    return sums / counts, index


def with_speaker_codes(text_codes: Tensor | None, speaker_codes: Tensor) -> Tensor:
    """`[z_t; c_s]` per row (`c_s` alone without text codes). A row without transcript (NaN text code) stays
    NaN in its text part and is generated from the null code, speaker code included."""
    if text_codes is None:
        return speaker_codes
    return torch.cat([text_codes.float(), speaker_codes.float()], dim=1)
