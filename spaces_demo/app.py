"""MISE speech emotion recognition Space: upload or record a clip, get the probability of each emotion.

The end-to-end audio classifier (audio -> frozen encoder -> aligned `z_a` -> emotion classifier) is loaded
once, at import, with `trust_remote_code=True`: the model's own code (shipped next to its weights) classifies
and checks the audio, so the Space needs neither the `modeling_mise` nor the `mise` package. Settings, all
optional, from the environment:

- `MISE_MODEL`: Hub id or local folder of the classifier (default: `DEFAULT_MODEL`, the folder
  `runs/ravdess/models/mise-audio-classifier` that `make train` writes, relative to the repository root; in a
  Space built by `mise push --space`, the pushed `<org>/<prefix>-audio-classifier`).
- `MISE_EXAMPLES`: folder of example clips (default: `examples/` next to this file; none shown when absent).
- `MISE_MAX_SECONDS`: longer clips are cropped to their first `MISE_MAX_SECONDS` (default: the model's).
- `MISE_HARD_LIMIT_SECONDS`: longer clips are refused (default 120).
- `MISE_CONCURRENCY`: classifications run at once; further requests wait in the queue (default 2).
- `MISE_WINDOW_SECONDS`, `MISE_HOP_SECONDS`: a clip longer than the window also gets a timeline of emotion over
  time, one point per window (defaults 4 s and 2 s; silent windows are skipped).
"""

from __future__ import annotations

import html
import importlib
import inspect
import logging
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType

import gradio as gr
import numpy as np
import soundfile
import torch
from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

logger = logging.getLogger("mise.space")

APP_DIR = Path(__file__).resolve().parent
DEFAULT_MODEL = str(APP_DIR.parent / "runs" / "ravdess" / "models" / "mise-audio-classifier")
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".m4a", ".opus")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
QUEUE_SIZE = 64
MAX_UPLOAD = "50mb"


def env_number(name: str, default: float | None) -> float | None:
    """A positive number from the environment variable `name`; ValueError naming it for anything else."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not number > 0 or number == float("inf"):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return number


def model_module(model: torch.nn.Module, name: str) -> ModuleType:
    """A module of the model's own code (`trust_remote_code`): `audio` holds the input checks of MISE models."""
    package = type(model).__module__.rpartition(".")[0]
    try:
        return importlib.import_module(f"{package}.{name}")
    except ImportError:
        raise ValueError(f"not a MISE audio classifier: its code has no `{name}` module") from None


@dataclass
class LoadedModel:
    """The classifier, its feature extractor, its audio module and what the page needs to know about them."""

    model: torch.nn.Module
    feature_extractor: object
    audio: ModuleType
    source: str
    sampling_rate: int
    id2label: dict[int, str]
    multimodal: bool
    max_seconds: float
    hard_limit_seconds: float

    @property
    def policy(self):
        """The model's input policy (`audio.AudioPolicy`, the feature extractor's thresholds) with this Space's
        two limits."""
        return replace(
            self.feature_extractor.policy,
            max_seconds=self.max_seconds,
            hard_limit_seconds=self.hard_limit_seconds,
        )


@dataclass
class Clip:
    """A decoded, validated clip ready for the model, and what was done to it."""

    name: str
    waveform: np.ndarray  # (T,) float32 mono at the model's rate
    seconds: float  # duration of the file, before cropping
    sampling_rate: int  # the file's own rate
    channels: int | None  # None when the decoder does not say
    notices: list[str] = field(default_factory=list)


def load_model(source: str | None = None) -> tuple[LoadedModel | None, str | None]:
    """Load the end-to-end classifier from `source` (default: `MISE_MODEL`, else the folder `make train` writes).

    Returns:
        `(model, None)`, or `(None, message)` with a message for the page when there is no usable model.
    """
    source = source or os.environ.get("MISE_MODEL") or DEFAULT_MODEL
    hint = (
        "Train one (`make train` writes `runs/ravdess/models/mise-audio-classifier`) or set `MISE_MODEL` to a "
        "Hub id or to a folder written by `save_pretrained`."
    )
    if Path(source).expanduser().exists():
        source = str(Path(source).expanduser())
    elif source.startswith((".", "/", "~")) or not HUB_ID.match(source):
        return None, f"No model found at `{source}`. {hint}"
    try:
        model = AutoModelForAudioClassification.from_pretrained(source, trust_remote_code=True).eval()
        feature_extractor = AutoFeatureExtractor.from_pretrained(source, trust_remote_code=True)
        audio = model_module(model, "audio")
    except Exception as error:  # the page shows why; any failure to load must not crash the Space
        reason = (
            str(error).strip().splitlines()[0].rstrip(".") if str(error).strip() else type(error).__name__
        )
        return None, f"Could not load the model `{source}`: {reason}. {hint}"
    id2label = {int(index): name for index, name in model.config.id2label.items()}
    try:
        max_seconds = env_number(
            "MISE_MAX_SECONDS",
            getattr(model.config, "max_duration_s", None) or audio.AudioPolicy().max_seconds,
        )
        hard_limit = env_number("MISE_HARD_LIMIT_SECONDS", 120.0)
    except ValueError as error:
        return None, str(error)
    # the feature extractor crops silently: never promise more than it keeps
    max_seconds = min(max_seconds, float(getattr(feature_extractor, "max_duration_s", None) or np.inf))
    loaded = LoadedModel(
        model=model,
        feature_extractor=feature_extractor,
        audio=audio,
        source=source,
        sampling_rate=int(feature_extractor.sampling_rate),
        id2label=id2label,
        # whether the classifier takes [z_a; z_t] (and `forward` a transcript per clip)
        multimodal=bool(getattr(model, "multimodal", False))
        and "transcripts" in inspect.signature(model.forward).parameters,
        max_seconds=max_seconds,
        hard_limit_seconds=max(hard_limit, max_seconds),
    )
    if loaded.multimodal:  # load the text side now, not lazily inside the first (concurrent) requests
        try:
            noise = np.random.default_rng(0).normal(0.0, 0.1, loaded.sampling_rate).astype(np.float32)
            predict(loaded, noise, "warm-up")
        except Exception as error:  # e.g. the text encoder cannot be found offline
            return (
                None,
                f"Could not load the text side of `{source}`: {type(error).__name__}: {error}. {hint}",
            )
    return loaded, None


def _channel_count(path: str) -> int | None:
    """Channels of a file FFmpeg decodes (torchcodec metadata), or None when unknown."""
    try:
        from torchcodec.decoders import AudioDecoder

        return int(AudioDecoder(path).metadata.num_channels)
    except Exception:  # torchcodec missing or without FFmpeg: the count is only informative
        return None


def _decode(path: str, name: str, audio: ModuleType) -> tuple[np.ndarray, int, int | None]:
    """Samples `(T, C)`, sampling rate and channel count of an audio file; AudioInputError naming `name`."""
    try:
        data, rate = soundfile.read(path, dtype="float32", always_2d=True)
        return data, int(rate), int(data.shape[1])
    except Exception:  # not a libsndfile format: load_audio tries FFmpeg and says why it failed
        pass
    try:
        waveform, rate = audio.load_audio(path)
    except audio.AudioInputError as error:
        raise audio.AudioInputError(name, error.reason) from None
    return waveform[:, None], rate, _channel_count(path)


def read_clip(
    path: str,
    sampling_rate: int,
    max_seconds: float,
    hard_limit_seconds: float,
    name: str | None = None,
    policy=None,
    audio: ModuleType | None = None,
) -> Clip:
    """Decode, check, crop, downmix and resample one clip for a model taking `sampling_rate` Hz mono.

    The checks are those of the model's `audio` module (default: the loaded model's), with the thresholds of
    `policy` (default: the module's `AudioPolicy()`), `max_seconds` as the window and `hard_limit_seconds` as
    the limit.

    Raises:
        AudioInputError: naming the file, for a non-audio, empty, silent, too short or too long clip.
    """
    audio = audio or MODEL.audio
    name = name or Path(path).name
    policy = replace(
        policy or audio.AudioPolicy(), max_seconds=max_seconds, hard_limit_seconds=hard_limit_seconds
    )
    try:
        info = soundfile.info(path)
        header_seconds = info.frames / info.samplerate if info.samplerate > 0 else 0.0
    except Exception:  # not a libsndfile format: the duration is checked after decoding
        header_seconds = 0.0
    audio.check_hard_limit(header_seconds, name, policy)  # before decoding a huge file
    data, rate, channels = _decode(path, name, audio)
    if data.shape[0] == 0:
        raise audio.AudioInputError(name, "empty clip (0 samples)")
    seconds = data.shape[0] / rate
    audio.check_hard_limit(seconds, name, policy)
    data, _ = audio.crop(data, rate, max_seconds + 1.0)  # resample no more than the window needs
    waveform = audio.prepare_waveform(data, rate, sampling_rate, source=name)
    audio.check_waveform(waveform, sampling_rate, name, policy)  # raises for a too short or silent clip
    waveform, _ = audio.crop(waveform, sampling_rate, max_seconds)
    notices = [audio.long_clip_notice(seconds, max_seconds)] if seconds > max_seconds else []
    if rate != sampling_rate:
        notices.append(f"Resampled from {rate} Hz to {sampling_rate} Hz, the model's rate.")
    if channels is not None and channels > 1:
        notices.append(f"Downmixed {channels} channels to mono.")
    return Clip(name, waveform, seconds, rate, channels, notices)


@torch.inference_mode()
def predict(
    loaded: LoadedModel,
    waveform: np.ndarray,
    transcript: str | None = None,
    enrolment: list[str] | None = None,
) -> dict[str, float]:
    """Probability of each emotion for a mono waveform at the model's rate; with `enrolment` (other clips of the
    same speaker) the model normalises with that speaker's statistics."""
    inputs = loaded.feature_extractor(waveform, sampling_rate=loaded.sampling_rate, return_tensors="pt")
    extra = {}
    if enrolment:
        extra["speaker_statistics"] = enrolment_statistics(loaded, enrolment)
    if loaded.multimodal and transcript and transcript.strip():
        extra["transcripts"] = [transcript.strip()]
    logits = loaded.model(**inputs, **extra).logits[0]
    probabilities = logits.float().softmax(dim=-1).tolist()
    return {loaded.id2label[index]: p for index, p in enumerate(probabilities)}


def enrolment_statistics(loaded: LoadedModel, paths: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's per-speaker statistics of other clips of the same speaker, each read and checked as an upload
    is; ValueError when the model takes no enrolment clips (saying why) or too few are given."""
    if not hasattr(loaded.model, "speaker_statistics"):
        raise ValueError("enrolment: MISE audio classifiers only")
    clips = [
        read_clip(path, loaded.sampling_rate, loaded.max_seconds, loaded.hard_limit_seconds, None, loaded.policy,
                  loaded.audio)
        for path in paths
    ]  # fmt: skip
    waveforms = [clip.waveform for clip in clips]
    inputs = loaded.feature_extractor(waveforms, sampling_rate=loaded.sampling_rate, return_tensors="pt")
    return loaded.model.speaker_statistics(**inputs)


def describe(
    clip: Clip, scores: dict[str, float], used_transcript: bool, normalization: str = "global"
) -> str:
    """Markdown summary of a classified clip: prediction, duration, rate, channels and notices."""
    label = max(scores, key=scores.get)
    channels = "?" if clip.channels is None else str(clip.channels)
    lines = [
        f"**Prediction: {label}** ({scores[label]:.0%})",
        "",
        "| clip | duration | sample rate | channels |",
        "|---|---|---|---|",
        f"| `{clip.name.replace('`', '')}` | {clip.seconds:.2f} s | {clip.sampling_rate} Hz | {channels} |",
        "",
    ]
    lines += [f"- {notice}" for notice in clip.notices]
    if used_transcript:
        lines.append("- The transcript was used.")
    if normalization != "global":
        lines.append(f"- Normalised with this speaker's statistics: {normalization}.")
    return "\n".join(lines)


def _refuse(message: str) -> tuple[None, str]:
    gr.Warning(html.escape(message.replace("`", "")))  # the toast renders HTML; file names are user input
    return None, f"⚠️ {message}"


MODEL, LOAD_ERROR = load_model()
if LOAD_ERROR:
    logger.warning(LOAD_ERROR)


def classify(
    audio: str | None, transcript: str | None = "", enrolment: list[str] | None = None
) -> tuple[dict[str, float] | None, str]:
    """Classify one clip, given as a file path; `enrolment`: optional other clips of the same speaker.

    Returns:
        The probability of each emotion (for `gr.Label`) and a Markdown description of the clip; for an
        unusable clip (or no model), `None` and a readable message naming the file and the reason.
    """
    if MODEL is None:
        return _refuse(LOAD_ERROR or "No model is loaded.")
    if not audio:
        return _refuse("Upload or record a clip first.")
    name = Path(audio).name
    try:
        clip = read_clip(
            audio, MODEL.sampling_rate, MODEL.max_seconds, MODEL.hard_limit_seconds, name, MODEL.policy
        )
        enrolment = [str(path) for path in enrolment or []]
        scores = predict(MODEL, clip.waveform, transcript, enrolment)
    except MODEL.audio.AudioInputError as error:
        return _refuse(f"Could not classify `{error.source}`: {error.reason}.")
    except ValueError as error:  # enrolment refused: too few clips, or a model trained without it
        return _refuse(f"Could not classify `{name}`: {error}.")
    except Exception as error:  # keep serving; the server log has the traceback
        logger.exception("classification of %s failed", name)
        return _refuse(f"Could not classify `{name}`: {type(error).__name__}: {error}")
    used_transcript = bool(MODEL.multimodal and transcript and transcript.strip())
    normalization = MODEL.model.normalization_label(len(enrolment)) if enrolment else "global"
    return scores, describe(clip, scores, used_transcript, normalization)


def window_scores(clip: Clip, window: float, hop: float) -> list[tuple[float, float, dict[str, float]]]:
    """`(start s, end s, probability of each emotion)` of the windows of a clip, every `hop` seconds; windows
    the model's input checks refuse (silent, too short) are skipped."""
    rate, rows = MODEL.sampling_rate, []
    size, step = round(window * rate), max(1, round(hop * rate))
    for start in range(0, max(len(clip.waveform) - size, 0) + step, step):
        piece = clip.waveform[start : start + size]
        if start and len(piece) < size // 2:  # a short tail is already in the previous window
            break
        try:
            MODEL.audio.check_waveform(piece, rate, clip.name, MODEL.policy)
        except MODEL.audio.AudioInputError:
            continue
        rows.append((start / rate, (start + len(piece)) / rate, predict(MODEL, piece)))
    return rows


def plot_timeline(rows: list[tuple[float, float, dict[str, float]]], title: str):
    """Each emotion's probability at the centre of each window, as a line per emotion."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8.0, 3.2), layout="constrained")
    axis = figure.subplots()
    centres = [(start + end) / 2 for start, end, _ in rows]
    for name in rows[0][2]:
        axis.plot(centres, [scores[name] for _, _, scores in rows], marker="o", ms=3, lw=1.2, label=name)
    axis.set(xlabel="time [s]", ylabel="probability", ylim=(0, 1))
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, ncols=4, loc="upper right")
    axis.set_title(title, fontsize=9)
    return figure


def timeline(audio: str | None):
    """Emotion over time of an upload longer than the window (`MISE_WINDOW_SECONDS`): a plot of each window's
    probabilities, titled with the mean over the windows; hidden for a short, unusable or missing clip."""
    hidden = gr.update(value=None, visible=False)
    if MODEL is None or not audio:
        return hidden
    try:
        window = min(env_number("MISE_WINDOW_SECONDS", 4.0), MODEL.max_seconds)
        hop = min(env_number("MISE_HOP_SECONDS", window / 2), window)
        limit = MODEL.hard_limit_seconds
        clip = read_clip(audio, MODEL.sampling_rate, limit, limit, Path(audio).name)
        if clip.seconds <= window:
            return hidden
        rows = window_scores(clip, window, hop)
    except ValueError:  # classify() already tells the user what is wrong with the clip
        return hidden
    except Exception:  # keep serving; the server log has the traceback
        logger.exception("timeline of %s failed", audio)
        return hidden
    if not rows:
        return hidden
    mean = {name: float(np.mean([scores[name] for _, _, scores in rows])) for name in rows[0][2]}
    label = max(mean, key=mean.get)
    title = f"{clip.name}: {label} ({mean[label]:.0%}, mean of {len(rows)} windows of {window:g} s)"
    return gr.update(value=plot_timeline(rows, title), visible=True)


def find_examples(folder: str | None = None, limit: int = 6) -> list[Path]:
    """Audio files in `folder` (default: `MISE_EXAMPLES`, else `examples/` next to this file)."""
    folder = folder or os.environ.get("MISE_EXAMPLES") or "examples"
    path = Path(folder).expanduser()
    if not path.is_absolute():
        path = APP_DIR / path
    if not path.is_dir():
        return []
    return sorted(p for p in path.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)[:limit]


INTRO = """# MISE: speech emotion recognition
Upload or record a clip to get the probability of each emotion. The model is the end-to-end classifier of
[MISE](https://arxiv.org/abs/2510.10078): a frozen audio encoder, the aligned audio-text space and an emotion
classifier trained on real plus generated features. Any sample rate or channel count is accepted (the clip is
resampled and downmixed); a clip longer than the model's window is classified on its first seconds, and
the page says so; a long upload also gets a timeline of emotion over time."""


def build_demo() -> gr.Blocks:
    """The Space's page: audio in (upload or microphone), emotion probabilities and clip details out."""
    with gr.Blocks(title="MISE speech emotion recognition") as demo:
        gr.Markdown(INTRO)
        if MODEL is None:
            gr.Markdown(f"⚠️ **No model is loaded.** {LOAD_ERROR}", elem_id="model-error")
        with gr.Row():
            with gr.Column():
                audio = gr.Audio(
                    sources=["upload", "microphone"], type="filepath", label="Clip", elem_id="clip"
                )
                multimodal = MODEL is not None and MODEL.multimodal
                transcript = gr.Textbox(
                    label="Transcript (optional)", visible=multimodal, elem_id="transcript", lines=2
                )
                if not multimodal:
                    gr.Markdown("This model is audio-only: it uses no transcript.", elem_id="transcript-note")
                speaker_adaptive = MODEL is not None and MODEL.model.config.speaker_adaptive
                enrolment = gr.File(
                    file_count="multiple",
                    file_types=["audio"],
                    type="filepath",
                    label="Other clips of the same speaker (optional, unlabelled: the model normalises with them)",
                    visible=speaker_adaptive,
                    elem_id="enrolment",
                )
                button = gr.Button(
                    "Classify", variant="primary", interactive=MODEL is not None, elem_id="classify"
                )
            with gr.Column():
                label = gr.Label(
                    num_top_classes=len(MODEL.id2label) if MODEL else None, label="Emotion", elem_id="emotion"
                )
                info = gr.Markdown(elem_id="clip-info")
        plot = gr.Plot(label="Emotion over time", visible=False, elem_id="timeline")
        if MODEL is not None:
            shown = MODEL.source if HUB_ID.match(MODEL.source) else Path(MODEL.source).name
            limits = (
                f"Model: `{shown}` · {len(MODEL.id2label)} emotions · clips over "
                f"{MODEL.max_seconds:g} s are cropped, over {MODEL.hard_limit_seconds:g} s refused."
            )
            gr.Markdown(limits, elem_id="model-info")
        event = button.click(
            classify, inputs=[audio, transcript, enrolment], outputs=[label, info], api_name="classify"
        )
        event.then(timeline, inputs=[audio], outputs=[plot], api_name="timeline")
        examples = find_examples()
        if examples:
            inputs = [audio, transcript] if multimodal else [audio]
            rows = [[str(path), ""] if multimodal else [str(path)] for path in examples]
            gr.Examples(rows, inputs=inputs, cache_examples=False, label="Examples")
    return demo


demo = build_demo()

if __name__ == "__main__":
    try:
        concurrency_limit = int(env_number("MISE_CONCURRENCY", 2))
    except ValueError as error:
        raise SystemExit(str(error)) from None
    example_dirs = sorted({str(path.parent) for path in find_examples()})
    demo.queue(default_concurrency_limit=concurrency_limit, max_size=QUEUE_SIZE).launch(
        max_file_size=MAX_UPLOAD, allowed_paths=example_dirs
    )
