"""Audio loading and validation on real RAVDESS clips and on deliberately broken files."""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest
import soundfile
import torch

from modeling_mise import audio
from modeling_mise.audio import (
    AudioInputError,
    AudioPolicy,
    check_waveform,
    crop,
    load_audio,
    prepare_waveform,
    rejection_reason,
    resample,
    to_mono,
)


def _sine(frequency: float, seconds: float, sampling_rate: int, amplitude: float = 0.5) -> np.ndarray:
    time = np.arange(int(seconds * sampling_rate)) / sampling_rate
    return (amplitude * np.sin(2 * np.pi * frequency * time)).astype(np.float32)


def _dominant_frequency(waveform: np.ndarray, sampling_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(waveform))
    return float(np.fft.rfftfreq(waveform.shape[0], 1.0 / sampling_rate)[np.argmax(spectrum)])


def test_real_ravdess_clip_loads_as_16k_mono(ravdess_rows):
    row = ravdess_rows[0]
    waveform, sampling_rate = load_audio(row["path"])
    assert sampling_rate == 16000
    assert waveform.dtype == np.float32 and waveform.ndim == 1
    assert waveform.shape[0] / sampling_rate == pytest.approx(float(row["duration_s"]), abs=0.01)
    assert rejection_reason(waveform, sampling_rate) is None
    assert np.abs(waveform).max() <= 1.0


def test_44k_stereo_int16_becomes_16k_mono_float32(tmp_path):
    left = _sine(440.0, 1.5, 44100, amplitude=0.5)
    right = _sine(440.0, 1.5, 44100, amplitude=0.25)
    stereo = np.round(np.stack([left, right], axis=1) * 32767).astype(np.int16)  # (T, 2)
    path = tmp_path / "stereo_44k.wav"
    soundfile.write(path, stereo, 44100, subtype="PCM_16")

    waveform, sampling_rate = load_audio(path, target_sampling_rate=16000)
    assert sampling_rate == 16000
    assert waveform.dtype == np.float32 and waveform.ndim == 1
    assert abs(waveform.shape[0] - 24000) <= 1
    # downmix = mean of channels: peak (0.5 + 0.25) / 2
    assert np.abs(waveform[1000:-1000]).max() == pytest.approx(0.375, abs=0.01)
    assert _dominant_frequency(waveform, 16000) == pytest.approx(440.0, abs=1.0)

    native, native_rate = load_audio(path)
    assert native_rate == 44100 and native.shape[0] == stereo.shape[0]


def test_six_channel_flac_downmixes(tmp_path):
    channels = np.stack(
        [_sine(300.0, 0.5, 48000, amplitude=0.1 * (k + 1)) for k in range(6)], axis=1
    )  # (T, 6)
    path = tmp_path / "surround.flac"
    soundfile.write(path, channels, 48000)
    waveform, sampling_rate = load_audio(path, target_sampling_rate=16000)
    assert sampling_rate == 16000 and waveform.shape == (8000,)
    assert np.abs(waveform[500:-500]).max() == pytest.approx(0.35, abs=0.01)


def test_prepare_waveform_scales_int_pcm_and_downmixes_any_layout():
    int16 = np.array([0, 16384, -32768, 32767], dtype=np.int16)
    np.testing.assert_allclose(prepare_waveform(int16, 16000), [0.0, 0.5, -1.0, 32767 / 32768], atol=1e-6)
    int32 = np.array([2**30, -(2**31)], dtype=np.int32)
    np.testing.assert_allclose(prepare_waveform(int32, 16000), [0.5, -1.0], atol=1e-6)
    uint8 = np.array([128, 255, 0], dtype=np.uint8)
    np.testing.assert_allclose(prepare_waveform(uint8, 16000), [0.0, 127 / 128, -1.0], atol=1e-6)

    channels = np.stack([np.full(100, value, dtype=np.float32) for value in (0.1, 0.2, 0.6)])  # (C=3, T)
    np.testing.assert_allclose(to_mono(channels), np.full(100, 0.3), atol=1e-6)
    np.testing.assert_allclose(to_mono(channels.T), np.full(100, 0.3), atol=1e-6)
    tensor = torch.from_numpy(channels).to(torch.float64)
    prepared = prepare_waveform(tensor, 8000, target_sampling_rate=16000)
    assert prepared.dtype == np.float32 and prepared.shape == (200,)
    with pytest.raises(AudioInputError, match=r"clip-7: expected audio of shape"):
        prepare_waveform(np.zeros((2, 3, 100)), 16000, source="clip-7")
    with pytest.raises(AudioInputError, match="invalid sampling rate"):
        prepare_waveform(np.zeros(100), 0)


def test_resample_soxr_and_scipy_fallback_agree(monkeypatch):
    waveform = _sine(300.0, 1.0, 22050)
    with_soxr = resample(waveform, 22050, 16000)
    monkeypatch.setattr(audio, "soxr", None)
    with_scipy = resample(waveform, 22050, 16000)
    assert with_soxr.dtype == with_scipy.dtype == np.float32
    assert with_soxr.shape == with_scipy.shape == (16000,)
    # away from the edges both are the same band-limited sine
    np.testing.assert_allclose(with_soxr[500:-500], with_scipy[500:-500], atol=5e-3)
    assert _dominant_frequency(with_scipy, 16000) == pytest.approx(300.0, abs=1.0)


def _assert_rejected(path, reason_pattern: str) -> None:
    with pytest.raises(AudioInputError, match=reason_pattern) as info:
        load_audio(path, target_sampling_rate=16000)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_missing_file(tmp_path):
    _assert_rejected(tmp_path / "nowhere.wav", "file not found")


def test_text_file_renamed_wav(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("this is a text file, not audio\n" * 20)
    _assert_rejected(path, "not a readable audio file")


def test_corrupt_wav_header(tmp_path):
    path = tmp_path / "corrupt.wav"
    path.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + os.urandom(64))
    _assert_rejected(path, "not a readable audio file")


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.wav"
    path.touch()
    _assert_rejected(path, "empty file")


def test_wav_with_zero_frames(tmp_path):
    path = tmp_path / "zero_frames.wav"
    soundfile.write(path, np.zeros((0, 1), dtype=np.float32), 16000)
    assert path.stat().st_size > 0
    _assert_rejected(path, r"empty clip \(0 samples\)")


@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
def test_non_finite_samples(tmp_path, bad_value):
    waveform = _sine(200.0, 0.5, 16000)
    waveform[100] = bad_value
    path = tmp_path / "non_finite.wav"
    soundfile.write(path, waveform, 16000, subtype="FLOAT")
    _assert_rejected(path, "NaN or Inf")


def test_directory_is_not_audio(tmp_path):
    _assert_rejected(tmp_path, "is a directory")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any file")
def test_permission_denied(tmp_path):
    path = tmp_path / "locked.wav"
    soundfile.write(path, _sine(200.0, 0.5, 16000), 16000)
    path.chmod(0)
    try:
        _assert_rejected(path, "permission denied")
    finally:
        path.chmod(0o644)


def test_error_says_when_no_decoder_is_available(tmp_path, monkeypatch):
    monkeypatch.setattr(audio, "AudioDecoder", None)
    path = tmp_path / "notes.m4a"
    path.write_text("not audio")
    _assert_rejected(path, "torchcodec")


@pytest.mark.skipif(
    audio.AudioDecoder is None or shutil.which("ffmpeg") is None, reason="needs torchcodec and FFmpeg"
)
def test_torchcodec_fallback_for_containers_soundfile_cannot_read(tmp_path):
    path = tmp_path / "tone.m4a"
    command = ["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "sine=frequency=440:duration=1"]
    subprocess.run([*command, "-ac", "2", "-ar", "22050", "-c:a", "aac", str(path)], check=True)
    with pytest.raises(soundfile.LibsndfileError):
        soundfile.read(path)
    waveform, sampling_rate = load_audio(path, target_sampling_rate=16000)
    assert sampling_rate == 16000 and waveform.dtype == np.float32 and waveform.ndim == 1
    assert abs(waveform.shape[0] - 16000) < 1600  # AAC adds priming samples
    assert _dominant_frequency(waveform, 16000) == pytest.approx(440.0, abs=2.0)


def test_rejection_reason_for_silent_short_and_broken_clips(ravdess_wav):
    rate = 16000
    assert rejection_reason(np.zeros(rate, dtype=np.float32), rate) == "silent (every sample is zero)"
    quiet = _sine(200.0, 1.0, rate, amplitude=10 ** (-72.0 / 20))
    assert rejection_reason(quiet, rate) == "silent (peak -72.0 dBFS)"
    assert rejection_reason(quiet, rate, silence_dbfs=-80.0) is None
    assert rejection_reason(_sine(200.0, 0.1, rate), rate) == "too short (0.10 s < 0.25 s)"
    assert rejection_reason(np.zeros(0, dtype=np.float32), rate) == "empty"
    assert rejection_reason(np.array([0.1, np.nan] * 8000, dtype=np.float32), rate) == "non-finite samples"

    real, real_rate = load_audio(ravdess_wav)
    assert rejection_reason(real, real_rate) is None
    assert rejection_reason(real[: real_rate // 10], real_rate).startswith("too short")


def test_crop_long_clip(ravdess_wav):
    waveform, rate = load_audio(ravdess_wav)
    cropped, was_cropped = crop(waveform, rate, max_seconds=1.5)
    assert was_cropped and cropped.shape == (24000,)
    np.testing.assert_array_equal(cropped, waveform[:24000])
    same, was_cropped = crop(waveform, rate, max_seconds=30.0)
    assert not was_cropped and same is waveform
    with pytest.raises(ValueError, match="max_seconds"):
        crop(waveform, rate, max_seconds=0)


def test_one_policy_errors_and_notices(ravdess_wav):
    rate = 16000
    real, _ = load_audio(ravdess_wav, rate)
    assert check_waveform(real, rate, "clip.wav") == []
    long = np.tile(real, 20)[: 40 * rate]
    assert check_waveform(long, rate, "long.wav") == [
        "40.0 s is longer than the 30 s window: only the first 30 s are classified"
    ]
    limited = AudioPolicy(hard_limit_seconds=35.0)
    with pytest.raises(
        AudioInputError, match=r"^long\.wav: 40\.0 s is longer than the 35 s limit; trim it first$"
    ):
        check_waveform(long, rate, "long.wav", limited)
    with pytest.raises(
        AudioInputError, match=r"^quiet\.wav: silent \(peak -72\.0 dBFS\); nothing to classify$"
    ):
        check_waveform(_sine(200.0, 1.0, rate, amplitude=10 ** (-72.0 / 20)), rate, "quiet.wav")
    with pytest.raises(AudioInputError, match=r"^short\.wav: too short \(0\.20 s < 0\.25 s\)"):
        check_waveform(_sine(200.0, 0.2, rate), rate, "short.wav")
    assert check_waveform(_sine(200.0, 0.2, rate), rate, "short.wav", AudioPolicy(min_seconds=0.1)) == []
    for field, value in (("min_seconds", -1.0), ("max_seconds", 0.0), ("hard_limit_seconds", "120")):
        with pytest.raises(ValueError, match=f"AudioPolicy.{field}"):
            AudioPolicy(**{field: value})
