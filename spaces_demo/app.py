"""MISE speech emotion recognition Space: upload or record a clip, get the probability of each emotion.

The end-to-end audio classifier (audio -> frozen encoder -> aligned `z_a` -> emotion classifier) is loaded
once, at import, with `trust_remote_code=True`: the model's own code (shipped next to its weights) checks,
cuts and classifies the audio, so the Space needs neither the `modeling_mise` nor the `mise` package. A clip
longer than the model's training clips is cut at pauses into utterance-sized segments (the model's
`segments.cut_recording`, as `pipeline()` and `mise classify` cut it); the answer is the duration-weighted mean
of the segments', and the timeline under it shows each segment, titled with the same answer. Unlabelled clips of
the same speaker (enrolment) or of the same recording setup (adaptation) give the statistics the model
standardises with. Settings, all optional, from the environment:

- `MISE_MODEL`: Hub id or local folder of the classifier (default: `DEFAULT_MODEL`, the folder
  `runs/ravdess/models/mise-audio-classifier` that `make train` writes, relative to the repository root; in a
  Space built by `mise push --space`, the pushed `<org>/<prefix>-audio-classifier`).
- `MISE_EXAMPLES`: folder of example clips (default: `examples/` next to this file; none shown when absent).
- `MISE_HARD_LIMIT_SECONDS`: longer clips are refused (default 120).
- `MISE_CONCURRENCY`: classifications run at once; further requests wait in the queue (default 2).
"""

from __future__ import annotations

import functools
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
    """The classifier, its feature extractor, the modules of its code the Space uses (`audio`: input checks,
    `segments`: how a recording is cut and pooled, `pipeline`: the statistics of other clips) and what the page
    needs to know about them."""

    model: torch.nn.Module
    feature_extractor: object
    audio: ModuleType
    segments: ModuleType
    pipeline: ModuleType
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

    @property
    def utterance_seconds(self) -> tuple[float, float]:
        """The duration range of the model's training clips: the size of the segments of a long upload."""
        return self.model.config.utterance_range

    def read(self, path: str, name: str | None = None) -> Clip:
        """A whole upload (up to the hard limit), read and checked with the model's input policy."""
        limit = self.hard_limit_seconds
        return read_clip(path, self.sampling_rate, limit, limit, name, self.policy, self.audio)


@dataclass
class Clip:
    """A decoded, validated clip ready for the model, and what was done to it."""

    name: str
    waveform: np.ndarray  # (T,) float32 mono at the model's rate
    seconds: float  # duration of the file, before any cropping
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
        segments, pipeline = (
            model_module(model, "segments"),
            model_module(model, "pipeline_audio_classification"),
        )
    except Exception as error:  # the page shows why; any failure to load must not crash the Space
        reason = (
            str(error).strip().splitlines()[0].rstrip(".") if str(error).strip() else type(error).__name__
        )
        return None, f"Could not load the model `{source}`: {reason}. {hint}"
    if not hasattr(segments, "cut_recording") or not hasattr(model.config, "utterance_range"):
        return None, (
            f"The model `{source}` was saved with code that predates utterance-sized segments and adaptation: "
            "load it with the current `modeling_mise` and save it again (`save_pretrained`) to update its code."
        )
    id2label = {int(index): name for index, name in model.config.id2label.items()}
    try:
        hard_limit = env_number("MISE_HARD_LIMIT_SECONDS", 120.0)
    except ValueError as error:
        return None, str(error)
    # the longest segment: the feature extractor crops anything longer
    max_seconds = float(getattr(feature_extractor, "max_duration_s", None) or audio.AudioPolicy().max_seconds)
    loaded = LoadedModel(
        model=model,
        feature_extractor=feature_extractor,
        audio=audio,
        segments=segments,
        pipeline=pipeline,
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
            predict(loaded, [noise], "warm-up")
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
    waveforms: list[np.ndarray],
    transcript: str | None = None,
    statistics: dict | None = None,
) -> np.ndarray:
    """Probabilities `(N, C)` of mono waveforms at the model's rate; `statistics`: the model's
    `speaker_statistics` or `adaptation_statistics` argument; a transcript is used by a multimodal model for a
    single waveform (one clip) only."""
    inputs = loaded.feature_extractor(waveforms, sampling_rate=loaded.sampling_rate, return_tensors="pt")
    extra = dict(statistics or {})
    if loaded.multimodal and transcript and transcript.strip() and len(waveforms) == 1:
        extra["transcripts"] = [transcript.strip()]
    return loaded.model(**inputs, **extra).logits.float().softmax(dim=-1).numpy()


def other_clips(loaded: LoadedModel, paths: list[str], skip_unusable: bool) -> tuple[list[dict], list[str]]:
    """Uploads of other clips, each read and checked as an upload is: `{raw, sampling_rate, path}` dicts for the
    model's statistics, and the `"<file>: <reason>"` of each unusable one (skipped, or raised when not
    `skip_unusable`)."""
    clips, skipped = [], []
    for path in paths:
        try:
            clip = loaded.read(path)
        except loaded.audio.AudioInputError as error:
            if not skip_unusable:
                raise
            skipped.append(str(error))
            continue
        clips.append({"raw": clip.waveform, "sampling_rate": loaded.sampling_rate, "path": clip.name})
    return clips, skipped


def reference_statistics(
    loaded: LoadedModel, enrolment: list[str], adaptation: list[str]
) -> tuple[dict, str, list[str]]:
    """The model's statistics argument, its label (`training`, `speaker (...)`, `adapted (...)`) and notices of
    skipped adaptation clips. ValueError for both kinds at once, a model without enrolment (saying why), too few
    enrolment clips or no usable adaptation clip."""
    if enrolment and adaptation:
        raise ValueError("give other clips of the speaker or of the recording setup, not both")
    if enrolment:
        clips, _ = other_clips(loaded, enrolment, skip_unusable=False)
        statistics = loaded.pipeline.enrolment_statistics(loaded.model, loaded.feature_extractor, clips)
        return {"speaker_statistics": statistics}, loaded.model.normalization_label(len(clips)), []
    if adaptation:
        clips, skipped = other_clips(loaded, adaptation, skip_unusable=True)
        if not clips:
            raise ValueError("none of the clips of the recording setup is usable: " + "; ".join(skipped))
        statistics, used, unusable = loaded.pipeline.adaptation_statistics(
            loaded.model, loaded.feature_extractor, clips
        )
        skipped += unusable
        label = loaded.model.normalization_label(adaptation_clips=used, skipped=len(skipped))
        return {"adaptation_statistics": statistics}, label, [f"Skipped {message}." for message in skipped]
    return {}, "training", []


@dataclass
class Analysis:
    """A classified upload: the file-level answer, the segments it pools and what the page says about them."""

    clip: Clip
    scores: dict[str, float]  # the duration-weighted mean of the segments' probabilities
    rows: list[dict]  # one `{start_s, end_s, label, scores}` per segment
    normalization: str
    used_transcript: bool

    @property
    def label(self) -> str:
        return max(self.scores, key=self.scores.get)


def analyse(
    loaded: LoadedModel, path: str, transcript: str | None, enrolment: list[str], adaptation: list[str]
) -> Analysis:
    """Read a whole upload, cut it as `pipeline()` and `mise classify` do (`segments.cut_recording` within the
    model's training clip durations), classify every segment with the chosen statistics and pool them."""
    clip = loaded.read(path, Path(path).name)
    statistics, normalization, notices = reference_statistics(loaded, enrolment, adaptation)
    segments, skipped = loaded.segments.cut_recording(
        clip.waveform, loaded.sampling_rate, loaded.utterance_seconds
    )
    if not segments:
        raise loaded.audio.AudioInputError(clip.name, "every segment is silent; nothing to classify")
    pieces = [clip.waveform[segment.start : segment.end] for segment in segments]
    probabilities = predict(loaded, pieces, transcript, statistics)
    names = [loaded.id2label[index] for index in range(len(loaded.id2label))]
    pooled = loaded.segments.duration_weighted_mean(probabilities, segments)
    notice = loaded.segments.segment_notice(segments, skipped, len(clip.waveform))
    if notice is not None:
        low, high = loaded.utterance_seconds
        clip.notices.append(
            f"{notice[0].upper()}{notice[1:]} (the model's training clips: {low:g}-{high:g} s)."
        )
    clip.notices += notices
    used_transcript = bool(loaded.multimodal and transcript and transcript.strip() and len(pieces) == 1)
    if loaded.multimodal and transcript and transcript.strip() and not used_transcript:
        clip.notices.append("The transcript was not used: it cannot be split into the recording's segments.")
    rows = loaded.segments.segment_rows(segments, probabilities, names)
    scores = {name: float(p) for name, p in zip(names, pooled, strict=True)}
    return Analysis(clip, scores, rows, normalization, used_transcript)


@functools.lru_cache(maxsize=16)
def _analysis(
    loaded_id: int, path: str, modified: float, transcript: str, enrolment: tuple, adaptation: tuple
):
    """`analyse` of the loaded model, once per upload and choice: `classify` and `timeline` share it."""
    return analyse(MODEL, path, transcript, list(enrolment), list(adaptation))


def analysis(audio: str, transcript: str | None, enrolment, adaptation) -> Analysis:
    """The analysis of an upload with the current model (cached: the page's answer and timeline are one)."""
    modified = os.path.getmtime(audio) if os.path.exists(audio) else 0.0
    enrolment, adaptation = tuple(str(p) for p in enrolment or []), tuple(str(p) for p in adaptation or [])
    return _analysis(id(MODEL), audio, modified, transcript or "", enrolment, adaptation)


def describe(result: Analysis) -> str:
    """Markdown summary of a classified upload: prediction, duration, rate, channels, statistics and notices."""
    clip, label = result.clip, result.label
    channels = "?" if clip.channels is None else str(clip.channels)
    lines = [
        f"**Prediction: {label}** ({result.scores[label]:.0%})",
        "",
        "| clip | duration | sample rate | channels |",
        "|---|---|---|---|",
        f"| `{clip.name.replace('`', '')}` | {clip.seconds:.2f} s | {clip.sampling_rate} Hz | {channels} |",
        "",
    ]
    lines += [f"- {notice}" for notice in clip.notices]
    if result.used_transcript:
        lines.append("- The transcript was used.")
    lines.append(f"- Statistics: {result.normalization}.")
    return "\n".join(lines)


def _refuse(message: str) -> tuple[None, str]:
    gr.Warning(html.escape(message.replace("`", "")))  # the toast renders HTML; file names are user input
    return None, f"⚠️ {message}"


MODEL, LOAD_ERROR = load_model()
if LOAD_ERROR:
    logger.warning(LOAD_ERROR)


def classify(
    audio: str | None,
    transcript: str | None = "",
    enrolment: list[str] | None = None,
    adaptation: list[str] | None = None,
) -> tuple[dict[str, float] | None, str]:
    """Classify one upload, given as a file path; `enrolment`: optional other clips of the same speaker,
    `adaptation`: optional unlabelled clips of the same recording setup (unusable ones are skipped and named).

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
        result = analysis(audio, transcript, enrolment, adaptation)
    except MODEL.audio.AudioInputError as error:
        return _refuse(f"Could not classify `{error.source}`: {error.reason}.")
    except ValueError as error:  # enrolment refused or too few clips, no usable adaptation clip
        return _refuse(f"Could not classify `{name}`: {error}.")
    except Exception as error:  # keep serving; the server log has the traceback
        logger.exception("classification of %s failed", name)
        return _refuse(f"Could not classify `{name}`: {type(error).__name__}: {error}")
    return result.scores, describe(result)


def timeline(
    audio: str | None,
    transcript: str | None = "",
    enrolment: list[str] | None = None,
    adaptation: list[str] | None = None,
):
    """Emotion over time of an upload cut into several segments: the model's `plot_emotion_timeline` of the
    analysis `classify` answered from, titled with the same answer; hidden for a clip classified whole, an
    unusable or a missing one."""
    hidden = gr.update(value=None, visible=False)
    if MODEL is None or not audio:
        return hidden
    try:
        result = analysis(audio, transcript, enrolment, adaptation)
    except ValueError:  # classify() already tells the user what is wrong with the clip
        return hidden
    except Exception:  # keep serving; the server log has the traceback
        logger.exception("timeline of %s failed", audio)
        return hidden
    if len(result.rows) < 2:
        return hidden
    title = MODEL.segments.timeline_title(result.clip.name, result.scores, len(result.rows))
    return gr.update(value=MODEL.segments.plot_emotion_timeline(result.rows, title=title), visible=True)


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
resampled and downmixed); a recording longer than the model's training clips is cut at pauses into
utterance-sized segments, and a timeline shows the emotion of each. Unlabelled clips of the speaker, or of the
recording setup (microphone, room), let the model standardise with their statistics instead of its training
ones."""


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
                adaptation = gr.File(
                    file_count="multiple",
                    file_types=["audio"],
                    type="filepath",
                    label="Clips of the same recording setup (optional, unlabelled: the model standardises with "
                    "their statistics)",
                    elem_id="adaptation",
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
            low, high = MODEL.utterance_seconds
            limits = (
                f"Model: `{shown}` · {len(MODEL.id2label)} emotions · clips over {high:g} s are cut at pauses "
                f"into segments of about {low:g}-{high:g} s (its training clips), over "
                f"{MODEL.hard_limit_seconds:g} s refused."
            )
            gr.Markdown(limits, elem_id="model-info")
        inputs = [audio, transcript, enrolment, adaptation]
        event = button.click(classify, inputs=inputs, outputs=[label, info], api_name="classify")
        event.then(timeline, inputs=inputs, outputs=[plot], api_name="timeline")
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
