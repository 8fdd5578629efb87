"""The feature stage of every entry point (`prepare_features`): corpus -> encoders -> usable clips (bad files
rejected with a reason) -> frozen-encoder features through the cache -> non-finite rejection.

The cache is asked before any audio is decoded: a clip it judged under the same input policy keeps its verdict
(usable, or rejected and why) with its features, so a warm run neither decodes nor judges a clip again.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger

from mise.cache import FeatureCache
from mise.console import progress_bars
from mise.data import (
    Corpus,
    Rejection,
    check_class_sizes,
    combine_corpora,
    keep_emotions_per_speaker,
    load_corpus,
    write_rejections,
)
from modeling_mise.audio import AudioInputError, crop
from modeling_mise.encoders import AudioEncoder, TextEncoder, load_audio_encoder, load_text_encoder
from modeling_mise.layers import speaker_statistics, standardize

from .arguments import ConfigError, DataArguments, ModelArguments

logger = get_logger(__name__)


@dataclass
class PreparedCorpus:
    """What the feature stage hands to training: the usable clips, their features and what was rejected."""

    corpus: Corpus  # the usable clips; row i of the features belongs to `corpus.items[i]`
    features: CorpusFeatures
    rejections: list[Rejection]
    audio_encoder: AudioEncoder
    decoded: int  # clips decoded: those the cache had not judged under the same input policy
    seconds: dict[str, float]  # read_audio (corpus scan, encoder, decoding) and features


def prepare_features(
    data_args: DataArguments, model_args: ModelArguments, output_dir: Path, accelerator: Accelerator
) -> PreparedCorpus:
    """Corpus -> encoders -> usable clips -> features -> non-finite rejection, the feature stage of every entry
    point; the rejected clips are listed in `OUT/rejected.csv`.

    The audio encoder follows `audio_encoder` / `audio_pooling` / `audio_layer`, the text encoder (loaded only
    when the usable clips have transcripts) `text_encoder` / `text_pooling` / `text_dtype`.
    """
    tick = time.perf_counter()
    corpus = read_corpus(data_args)
    logger.info("corpus summary\n" + corpus.format_summary())
    if model_args.multimodal and not any(corpus.transcripts()):  # known before any audio is read
        raise ConfigError(
            "multimodal: no clip of the corpus has a transcript (check transcript_column, or set multimodal false)"
        )
    audio_encoder = load_audio_encoder(
        model_args.audio_encoder, model_args.audio_pooling, model_args.audio_layer
    )
    audio_cache = FeatureCache(data_args.cache_dir, audio_spec(audio_encoder, model_args))
    waveforms, usable, rejections, decoded = usable_clips(
        corpus, audio_cache, audio_encoder.sampling_rate, data_args, accelerator
    )
    report_rejections(rejections, output_dir, accelerator)
    if rejections:  # a class left with too few clips stops the run
        check_class_sizes(usable, data_args.min_class_clips)
    seconds = {"read_audio": time.perf_counter() - tick}
    text_encoder = None
    with_text = any(args.transcript_column for args in data_args.corpus_args or [data_args])
    if model_args.text_encoder is not None and with_text and any(usable.transcripts()):
        text_encoder = load_text_encoder(
            model_args.text_encoder, model_args.text_pooling, dtype=model_args.text_dtype
        )
    features = extract_features(
        usable, waveforms, audio_encoder, text_encoder, data_args, model_args, accelerator
    )
    usable, features = reject_nonfinite(usable, features, rejections, data_args.strict)
    if accelerator.is_main_process:
        write_rejections(rejections, output_dir / "rejected.csv")
    seconds["features"] = features.seconds
    return PreparedCorpus(usable, features, rejections, audio_encoder, decoded, seconds)


@dataclass
class CorpusFeatures:
    """Frozen features of the usable clips, row i belonging to `corpus.items[i]`."""

    audio: torch.Tensor  # (N, audio_dim)
    text: torch.Tensor | None  # (N, text_dim); NaN rows where a clip has no transcript
    audio_spec: dict
    text_spec: dict | None
    cache_stats: dict[str, dict[str, int]] = field(default_factory=dict)
    seconds: float = 0.0
    durations: list[float | None] = field(
        default_factory=list
    )  # seconds per row (file header; None: unknown)


def read_corpus(data_args: DataArguments) -> Corpus:
    """The corpus named by the data arguments (manifest CSV, audiofolder or `datasets` source), or with several
    `corpora` each one read with its own arguments and all combined (`mise.data.combine_corpora`: speakers named
    per corpus, one label space).

    A relative `dataset` path that exists under a local `data_dir` is read from there (e.g. `manifest.csv`
    with `--data_dir ../shared/data/ravdess`); otherwise `data_dir` goes to `datasets.load_dataset`. The split
    column is read (and checked) for protocol split only: other protocols ignore it. A class with fewer than
    `min_class_clips` clips or 2 speakers stops here, before any audio is decoded. With `emotions_per_speaker`
    each speaker keeps the clips of that many of their emotions (`mise.data.keep_emotions_per_speaker`).
    """
    if data_args.corpus_args:
        corpora = {args.corpus_name: read_corpus(args) for args in data_args.corpus_args}
        corpus = combine_corpora(corpora, data_args.keep_unshared_labels)
        check_class_sizes(corpus, data_args.min_class_clips)
        return corpus
    source, data_dir = data_args.dataset, data_args.data_dir
    if data_dir and not Path(source).is_absolute() and (Path(data_dir) / source).exists():
        source, data_dir = str(Path(data_dir) / source), None
    corpus = load_corpus(
        source,
        audio_column=data_args.audio_column,
        label_column=data_args.label_column,
        speaker_column=data_args.speaker_column,
        transcript_column=data_args.transcript_column,
        session_column=data_args.session_column,
        split_column=data_args.split_column if data_args.protocol == "split" else None,
        split=data_args.split,
        label_map=data_args.label_map,
        drop_labels=data_args.drop_labels,
        data_dir=data_dir,
    )
    if data_args.emotions_per_speaker is not None:
        corpus = keep_emotions_per_speaker(corpus, data_args.emotions_per_speaker)
    check_class_sizes(corpus, data_args.min_class_clips)
    return corpus


def audio_spec(audio_encoder: AudioEncoder, model_args: ModelArguments) -> dict:
    """The audio feature cache's key: the encoder's spec plus the crop length."""
    return {**audio_encoder.spec(), "max_duration_s": model_args.max_duration_s}


def input_policy(sampling_rate: int, data_args: DataArguments) -> dict:
    """What decides whether a clip is usable: the rate it is decoded at and the input policy's thresholds."""
    return {
        "sampling_rate": sampling_rate,
        "min_seconds": data_args.min_seconds,
        "silence_dbfs": data_args.silence_dbfs,
    }


def usable_clips(
    corpus: Corpus,
    audio_cache: FeatureCache,
    sampling_rate: int,
    data_args: DataArguments,
    accelerator: Accelerator,
) -> tuple[list[np.ndarray | None], Corpus, list[Rejection], int]:
    """The usable clips' waveforms, the usable clips, the rejected ones (unreadable/empty/silent/NaN/too short)
    and how many clips were decoded.

    The cache is asked first: a clip it judged under the same input policy (`input_policy`) is neither decoded
    nor judged again, its waveform is None and a rejected one keeps its cached reason. Only the other clips are
    decoded and judged; their rejections are cached, the usable ones' verdicts go in with their features
    (`extract_features`). A rejection is fatal with `strict`, no usable clip at all is an error.
    """
    policy = input_policy(sampling_rate, data_args)
    verdicts = audio_cache.verdicts(corpus.fingerprints(), policy)
    reasons = {
        i: verdicts[item.fingerprint] for i, item in enumerate(corpus.items) if item.fingerprint in verdicts
    }
    cached_rejections = [i for i, reason in reasons.items() if reason is not None]
    if data_args.strict and cached_rejections:
        item = corpus.items[cached_rejections[0]]
        raise AudioInputError(f"{item.source} (row {item.row})", reasons[cached_rejections[0]])
    misses = [i for i in range(len(corpus)) if i not in reasons]
    judged = corpus.subset(misses).judge(
        sampling_rate, min_seconds=data_args.min_seconds, strict=data_args.strict,
        show_progress=accelerator.is_local_main_process and bool(misses) and progress_bars(), silence_dbfs=data_args.silence_dbfs,
    )  # fmt: skip
    waveforms: dict[int, np.ndarray] = {}
    for index, (waveform, reason) in zip(misses, judged, strict=True):
        reasons[index] = reason
        fingerprint = corpus.items[index].fingerprint
        if reason is None:
            waveforms[index] = waveform
        elif fingerprint and accelerator.is_main_process:
            audio_cache.store_rejection(fingerprint, reason, policy)
    kept = [i for i in range(len(corpus)) if reasons[i] is None]
    rejections = [corpus.rejection(i, reasons[i]) for i in range(len(corpus)) if reasons[i] is not None]
    if not kept:
        raise ValueError(f"{corpus.source}: none of the {len(corpus)} clips is usable")
    logger.info(
        f"{len(misses)} of {len(corpus)} clip(s) decoded, {len(corpus) - len(misses)} judged by the cache"
    )
    return [waveforms.get(i) for i in kept], corpus.subset(kept), rejections, len(misses)


def report_rejections(rejections: list[Rejection], output_dir: Path, accelerator: Accelerator) -> None:
    """Log each rejected clip and list them all in `OUT/rejected.csv` (written by the main process)."""
    if accelerator.is_main_process:
        write_rejections(rejections, output_dir / "rejected.csv")
    for rejection in rejections:
        logger.warning(f"rejected row {rejection.row}: {rejection.path}: {rejection.reason}")
    if rejections:
        logger.warning(f"{len(rejections)} clip(s) rejected, listed in {output_dir / 'rejected.csv'}")


def text_fingerprint(text: str) -> str:
    """Content key of a transcript in the text-feature cache."""
    return hashlib.sha256(("text:" + text).encode("utf-8")).hexdigest()


def extract_features(
    corpus: Corpus,
    waveforms: list[np.ndarray | None],
    audio_encoder: AudioEncoder,
    text_encoder: TextEncoder | None,
    data_args: DataArguments,
    model_args: ModelArguments,
    accelerator: Accelerator,
) -> CorpusFeatures:
    """Audio features `h` (and text features `t`) of every usable clip, computed once and cached.

    The audio cache key is the encoder's spec plus the crop length; the entry key is each file's content
    fingerprint, so a changed file or encoder recomputes only what changed. Misses are split across processes.
    """
    start = time.perf_counter()
    show = accelerator.is_local_main_process and progress_bars()  # bars on a terminal only
    max_seconds, rate = model_args.max_duration_s, audio_encoder.sampling_rate
    spec = audio_spec(audio_encoder, model_args)
    audio_cache = FeatureCache(data_args.cache_dir, spec)

    def waveform(index: int) -> np.ndarray:  # a clip skipped as cached whose entry turned out unreadable
        return waveforms[index] if waveforms[index] is not None else corpus.items[index].read(rate)

    def encode_audio(indices: list[int]) -> torch.Tensor:
        clips = [crop(waveform(i), rate, max_seconds)[0] for i in indices]
        return audio_encoder.encode(clips, batch_size=data_args.feature_batch_size, show_progress=show)

    policy = input_policy(rate, data_args)
    audio = audio_cache.get_or_compute(corpus.fingerprints(), encode_audio, accelerator, "audio", policy)
    stats = {"audio": dict(audio_cache.last_stats)}

    text, text_spec = None, None
    transcripts = corpus.transcripts()
    present = [i for i, transcript in enumerate(transcripts) if transcript]
    if text_encoder is not None and present:
        text_spec = text_encoder.spec()
        text_cache = FeatureCache(data_args.cache_dir, text_spec)
        texts = [transcripts[i] for i in present]

        def encode_text(indices: list[int]) -> torch.Tensor:
            return text_encoder.encode([texts[i] for i in indices], show_progress=show)

        fingerprints = [text_fingerprint(t) for t in texts]
        found = text_cache.get_or_compute(fingerprints, encode_text, accelerator, desc="text")
        text = torch.full((len(corpus), found.shape[1]), float("nan"))
        text[torch.as_tensor(present)] = found.float()
        stats["text"] = dict(text_cache.last_stats)
        if len(present) < len(corpus):
            logger.warning(
                f"{len(corpus) - len(present)} clip(s) have no transcript: they use the null text code"
            )
    seconds = time.perf_counter() - start
    summary = ", ".join(f"{name} {s['hits']} hits / {s['misses']} misses" for name, s in stats.items())
    logger.info(f"features in {seconds:.1f} s: {summary}")
    durations = [item.duration_s for item in corpus.items]
    return CorpusFeatures(audio.float(), text, spec, text_spec, stats, seconds, durations)


def reject_nonfinite(
    corpus: Corpus, features: CorpusFeatures, rejections: list[Rejection], strict: bool
) -> tuple[Corpus, CorpusFeatures]:
    """Clips whose audio features are NaN/Inf are rejected like unreadable files (fatal when `strict`)."""
    bad = torch.nonzero(~torch.isfinite(features.audio).all(dim=1)).flatten().tolist()
    if not bad:
        return corpus, features
    encoder = features.audio_spec.get("name", "the audio encoder")
    for index in bad:
        item = corpus.items[index]
        reason = f"non-finite features from {encoder}"
        if strict:
            raise ValueError(f"{item.source} (row {item.row}): {reason}")
        rejections.append(Rejection(row=item.row, path=item.source, reason=reason))
        logger.warning(f"rejected row {item.row}: {item.source}: {reason}")
    keep = [i for i in range(len(corpus)) if i not in set(bad)]
    rows = torch.as_tensor(keep)
    text = features.text[rows] if features.text is not None else None
    durations = [features.durations[i] for i in keep] if features.durations else []
    return corpus.subset(keep), replace(features, audio=features.audio[rows], text=text, durations=durations)


def speaker_normalized(features: CorpusFeatures, speakers: np.ndarray) -> CorpusFeatures:
    """Audio features z-normalised per speaker with the speaker's own statistics (labels are not used); with
    the corpus of every row instead of its speaker, per corpus with the corpus' own (the global regime of
    several corpora)."""
    audio = features.audio.clone()
    for speaker in np.unique(speakers):
        rows = torch.as_tensor(speakers == speaker)
        audio[rows] = standardize(audio[rows], *speaker_statistics(audio[rows]))
    return replace(features, audio=audio)
