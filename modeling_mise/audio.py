"""Audio loading and validation: any container, channel count, rate or sample format -> float32 mono.

Every problem with an input is an :class:`AudioInputError` (a ``ValueError``) whose message is
``"<source>: <reason>"``, so a corpus loader can reject the file into a report and carry on.
"""

from __future__ import annotations

import io
import math
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# Optional back-ends. A missing one only disables the feature that needs it.
try:
    import soundfile
except (ImportError, OSError):
    soundfile = None

try:
    import soxr
except ImportError:
    soxr = None

try:
    from scipy import signal as scipy_signal
except ImportError:
    scipy_signal = None

try:
    from torchcodec.decoders import AudioDecoder
except Exception:  # torchcodec raises RuntimeError/OSError, not ImportError, when FFmpeg is missing
    AudioDecoder = None


# the file suffixes taken for audio when a folder is searched for clips (any other file is left alone)
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".opus", ".aiff", ".aif", ".au", ".m4a", ".webm")


def audio_files(folder: str | os.PathLike) -> list[Path]:
    """The audio files (by extension, :data:`AUDIO_EXTENSIONS`) under ``folder``, recursively, sorted."""
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)


class AudioInputError(ValueError):
    """Unusable audio input; the message is ``"<source>: <reason>"``."""

    def __init__(self, source: str, reason: str):
        self.source = str(source)
        self.reason = reason
        super().__init__(f"{self.source}: {reason}")


def resample(waveform: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample along the first axis to ``target_sr`` (soxr when installed, else polyphase filtering)."""
    waveform = np.asarray(waveform, dtype=np.float32)
    if orig_sr <= 0 or target_sr <= 0:
        raise ValueError(f"sampling rates must be positive, got orig_sr={orig_sr}, target_sr={target_sr}")
    if orig_sr == target_sr or waveform.shape[0] == 0:
        return waveform.copy()
    if soxr is not None:
        return np.asarray(soxr.resample(waveform, orig_sr, target_sr, quality="HQ"), dtype=np.float32)
    if scipy_signal is None:
        raise ImportError("resampling needs `soxr` or `scipy`; install one of them")
    divisor = math.gcd(int(orig_sr), int(target_sr))
    resampled = scipy_signal.resample_poly(waveform, target_sr // divisor, orig_sr // divisor, axis=0)
    return np.asarray(resampled, dtype=np.float32)


def to_mono(waveform: np.ndarray, source: str = "<array>") -> np.ndarray:
    """Downmix ``(T,)``, ``(T, C)`` or ``(C, T)`` to ``(T,)`` by averaging channels.

    The shorter axis of a 2-D array is taken as the channel axis (ties: ``(T, C)``, soundfile's layout).
    """
    waveform = np.asarray(waveform)
    while waveform.ndim > 2 and waveform.shape[0] == 1:
        waveform = waveform[0]
    if waveform.ndim == 1:
        return waveform
    if waveform.ndim != 2:
        raise AudioInputError(source, f"expected audio of shape (T,), (T, C) or (C, T), got {waveform.shape}")
    channel_axis = 0 if waveform.shape[0] < waveform.shape[1] else 1
    if waveform.shape[channel_axis] == 1:
        return np.take(waveform, 0, axis=channel_axis)
    return waveform.mean(axis=channel_axis, dtype=np.float64).astype(np.float32)


def _to_float32(waveform: np.ndarray, source: str) -> np.ndarray:
    """Integer PCM -> float32 in [-1, 1]; floats are cast."""
    kind = waveform.dtype.kind
    if kind == "f":
        return waveform.astype(np.float32, copy=False)
    if kind == "i":
        scale = float(2 ** (8 * waveform.dtype.itemsize - 1))
        return (waveform.astype(np.float64) / scale).astype(np.float32)
    if kind == "u":
        # unsigned PCM (8-bit WAV) is centred on 2**(bits-1)
        offset = float(2 ** (8 * waveform.dtype.itemsize - 1))
        return ((waveform.astype(np.float64) - offset) / offset).astype(np.float32)
    raise AudioInputError(source, f"unsupported sample type {waveform.dtype} (expected int or float PCM)")


def _as_numpy(waveform: Any) -> np.ndarray:
    if hasattr(waveform, "detach") and hasattr(waveform, "cpu"):  # torch.Tensor without importing torch
        waveform = waveform.detach().cpu()
        if str(waveform.dtype) == "torch.bfloat16":
            waveform = waveform.float()
        return waveform.numpy()
    return np.asarray(waveform)


def prepare_waveform(
    waveform: Any,
    sampling_rate: int,
    target_sampling_rate: int | None = None,
    source: str = "<array>",
) -> np.ndarray:
    """Any dtype / channel layout / numpy or torch array -> float32 mono ``(T,)`` at ``target_sampling_rate``.

    Raises:
        AudioInputError: for an invalid sampling rate, empty audio or NaN/Inf samples.
    """
    if sampling_rate is None or int(sampling_rate) != sampling_rate or sampling_rate <= 0:
        raise AudioInputError(source, f"invalid sampling rate {sampling_rate!r}")
    sampling_rate = int(sampling_rate)
    try:
        array = _as_numpy(waveform)
    except (TypeError, ValueError) as error:
        raise AudioInputError(source, f"not an audio array ({error})") from error
    if array.dtype == object or array.dtype.kind not in "iuf":
        raise AudioInputError(source, f"unsupported sample type {array.dtype} (expected int or float PCM)")
    if array.size == 0:
        raise AudioInputError(source, "empty clip (0 samples)")
    array = to_mono(_to_float32(array, source), source)
    if not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise AudioInputError(source, f"{bad} of {array.size} samples are NaN or Inf")
    if target_sampling_rate is not None and target_sampling_rate != sampling_rate:
        array = resample(array, sampling_rate, int(target_sampling_rate))
    return np.ascontiguousarray(array, dtype=np.float32)


def _decode_with_torchcodec(path: Path) -> tuple[np.ndarray, int]:
    samples = AudioDecoder(str(path)).get_all_samples()
    # torchcodec returns (C, T) float32
    return samples.data.numpy().T, int(samples.sample_rate)


def load_audio(path: str | os.PathLike, target_sampling_rate: int | None = None) -> tuple[np.ndarray, int]:
    """Read an audio file as float32 mono ``(T,)``, resampled to ``target_sampling_rate`` when given.

    soundfile reads WAV/FLAC/OGG; other containers (mp3, m4a, ...) go through torchcodec (FFmpeg).

    Returns:
        ``(waveform, sampling_rate)`` where ``sampling_rate`` is ``target_sampling_rate`` or the file's own.

    Raises:
        AudioInputError: naming the file for a missing, unreadable, non-audio, empty or NaN/Inf file.
    """
    path = Path(os.fspath(path))
    source = str(path)
    if not path.exists():
        raise AudioInputError(source, "file not found")
    if path.is_dir():
        raise AudioInputError(source, "is a directory, not an audio file")
    if not os.access(path, os.R_OK):
        raise AudioInputError(source, "unreadable (permission denied)")
    if path.stat().st_size == 0:
        raise AudioInputError(source, "empty file (0 bytes)")

    errors = []
    data = None
    if soundfile is not None:
        try:
            data, sampling_rate = soundfile.read(str(path), dtype="float32", always_2d=True)
        except Exception as error:  # libsndfile raises LibsndfileError / RuntimeError / TypeError
            errors.append(
                "soundfile: " + re.sub(r"^Error opening '.*?': ", "", str(error)).strip().rstrip(".")
            )
    else:
        errors.append("soundfile is not installed")
    if data is None:
        if AudioDecoder is None:
            errors.append("torchcodec (with FFmpeg) is not available to decode other formats")
        else:
            try:
                data, sampling_rate = _decode_with_torchcodec(path)
            except Exception as error:  # FFmpeg errors surface as RuntimeError / ValueError
                message = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
                # drop torchcodec's "<C++ class>, <source file>:<line>, " prefix and the repeated path
                message = re.sub(r"^.*\.cpp:\d+,\s*", "", message).replace(f"{path} ", "")
                errors.append(f"torchcodec: {message}")
    if data is None:
        raise AudioInputError(source, "not a readable audio file (" + "; ".join(errors) + ")")
    if data.ndim == 2 and data.shape[1] > 1:
        data = data.mean(axis=1, dtype=np.float64).astype(np.float32)  # decoders give (T, C): no layout guess
    waveform = prepare_waveform(data, sampling_rate, target_sampling_rate, source=source)
    return waveform, int(target_sampling_rate or sampling_rate)


def decode_bytes(data: bytes, name: str | None, sampling_rate: int | None, source: str) -> np.ndarray:
    """The bytes of an audio file (``name`` gives its container by suffix) -> float32 mono; errors name ``source``."""
    if len(data) == 0:
        raise AudioInputError(source, "empty file (0 bytes)")
    try:
        array, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as error:  # libsndfile raises LibsndfileError / RuntimeError / TypeError
        # other containers (mp3, m4a, ...): hand a temporary file to load_audio, which falls back to torchcodec
        with tempfile.NamedTemporaryFile(suffix=Path(name).suffix if name else "") as handle:
            handle.write(data)
            handle.flush()
            try:
                return load_audio(handle.name, sampling_rate)[0]
            except AudioInputError as inner:
                raise AudioInputError(source, inner.reason) from error
    return prepare_waveform(array, rate, sampling_rate, source)


@dataclass(frozen=True)
class AudioPolicy:
    """What every entry point (Space, `mise classify`, `pipeline()`, the feature extractor, training) accepts.

    Not audio, empty, unreadable or NaN/Inf input is always an error. Besides that:

    Args:
        min_seconds: shorter clips are an error ("too short").
        silence_dbfs: clips whose peak is below this level (dBFS) are an error ("silent").
        max_seconds: the model's window; a longer clip gets a notice and only its first `max_seconds` are
            classified (never a silent crop).
        hard_limit_seconds: longer clips are an error (`None`: no limit; the Space sets 120 s).
    """

    min_seconds: float = 0.25
    silence_dbfs: float = -60.0
    max_seconds: float = 30.0
    hard_limit_seconds: float | None = None

    def __post_init__(self) -> None:
        for name in ("min_seconds", "max_seconds", "hard_limit_seconds"):
            value = getattr(self, name)
            if value is None and name == "hard_limit_seconds":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"AudioPolicy.{name} must be a number >= 0, got {value!r}")
        if self.max_seconds <= 0:
            raise ValueError(f"AudioPolicy.max_seconds must be > 0, got {self.max_seconds!r}")
        if isinstance(self.silence_dbfs, bool) or not isinstance(self.silence_dbfs, (int, float)):
            raise ValueError(f"AudioPolicy.silence_dbfs must be a number, got {self.silence_dbfs!r}")


DEFAULT_POLICY = AudioPolicy()


def rejection_reason(
    waveform: np.ndarray,
    sampling_rate: int,
    min_seconds: float = DEFAULT_POLICY.min_seconds,
    silence_dbfs: float = DEFAULT_POLICY.silence_dbfs,
) -> str | None:
    """Why a (prepared) clip is unusable, or ``None`` when it is usable (:class:`AudioPolicy`'s error checks).

    Reasons: ``"empty"``, ``"non-finite samples"``, ``"too short (0.10 s < 0.25 s)"``,
    ``"silent (every sample is zero)"``, ``"silent (peak -72.3 dBFS)"`` (peak below ``silence_dbfs``).
    """
    waveform = np.asarray(waveform)
    if waveform.size == 0:
        return "empty"
    if not np.isfinite(waveform).all():
        return "non-finite samples"
    duration = waveform.shape[0] / float(sampling_rate)
    if duration < min_seconds:
        return f"too short ({duration:.2f} s < {min_seconds:.2f} s)"
    peak = float(np.max(np.abs(waveform)))
    if peak == 0.0:
        return "silent (every sample is zero)"
    peak_dbfs = 20.0 * math.log10(peak)
    if peak_dbfs < silence_dbfs:
        return f"silent (peak {peak_dbfs:.1f} dBFS)"
    return None


def check_waveform(
    waveform: np.ndarray, sampling_rate: int, source: str = "<array>", policy: AudioPolicy = DEFAULT_POLICY
) -> list[str]:
    """Apply `policy` to a prepared mono waveform: raise for an unusable clip, return notices for a usable one.

    Returns:
        Notices, e.g. ``"40.0 s is longer than the 30 s window: only the first 30 s are classified"``.

    Raises:
        AudioInputError: ``"<source>: <reason>"`` for an empty, non-finite, too short, silent or (with
            ``policy.hard_limit_seconds``) too long clip.
    """
    seconds = np.asarray(waveform).shape[0] / float(sampling_rate)
    check_hard_limit(seconds, source, policy)
    reason = rejection_reason(waveform, sampling_rate, policy.min_seconds, policy.silence_dbfs)
    if reason is not None:
        raise AudioInputError(source, f"{reason}; nothing to classify")
    if seconds > policy.max_seconds:
        return [long_clip_notice(seconds, policy.max_seconds)]
    return []


def check_hard_limit(seconds: float, source: str, policy: AudioPolicy = DEFAULT_POLICY) -> None:
    """Raise an :class:`AudioInputError` when a clip of ``seconds`` exceeds ``policy.hard_limit_seconds``."""
    limit = policy.hard_limit_seconds
    if limit is not None and seconds > limit:
        raise AudioInputError(source, f"{seconds:.1f} s is longer than the {limit:g} s limit; trim it first")


def long_clip_notice(seconds: float, max_seconds: float) -> str:
    """The notice for a clip longer than the model's window (the same words at every entry point)."""
    return f"{seconds:.1f} s is longer than the {max_seconds:g} s window: only the first {max_seconds:g} s are classified"


def crop(waveform: np.ndarray, sampling_rate: int, max_seconds: float) -> tuple[np.ndarray, bool]:
    """Keep the first ``max_seconds`` of a clip; returns ``(waveform, was_cropped)``."""
    if max_seconds is None or max_seconds <= 0:
        raise ValueError(f"max_seconds must be positive, got {max_seconds!r}")
    max_samples = int(round(max_seconds * sampling_rate))
    if waveform.shape[0] <= max_samples:
        return waveform, False
    return waveform[:max_samples], True
