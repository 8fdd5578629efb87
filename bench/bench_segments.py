"""Utterance-sized segments against classifying the same clips one by one, on recordings built from real clips.

The clips of the held-out speakers are joined into recordings of `--clips` clips with `--pause_seconds` pauses,
once with pauses of digital silence and once with pauses of low-level white noise (`--noise_dbfs` RMS). Each
recording is classified as `mise classify` classifies a long file (cut at pauses within the model's training
clip durations); each clip's span takes the label of the segment that covers most of it. Reported per pause
kind: the accuracy of those labels, of the same clips classified one by one (each as its own file), their
ratio, how often the two agree, and the accuracy of the previous default (windows of the model's
`max_duration_s`, 30 s) for comparison. The model is trained here without the held-out speakers
(`training/train.py`, the shipped config, one fold before the final models), unless `--model` is given.

    python bench/bench_segments.py --corpus ../shared/data/ravdess --held_out Actor_21 Actor_22 Actor_23 Actor_24 \
        --output_dir runs/bench_segments/ravdess
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make `mise` and `modeling_mise` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mise.file_classification import AudioFileClassifier
from modeling_mise.audio import load_audio
from training.cross_corpus import train_corpus

REPO_ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", required=True, help="a corpus folder with manifest.csv")
    parser.add_argument(
        "--held_out", nargs="+", required=True, help="speakers whose clips build the recordings"
    )
    parser.add_argument("--output_dir", required=True, help="results.json (and the trained model) go here")
    parser.add_argument(
        "--model", default=None, help="an audio classifier that never saw the held-out speakers"
    )
    parser.add_argument("--clips", type=int, default=40, help="clips per recording")
    parser.add_argument("--pause_seconds", type=float, default=0.5)
    parser.add_argument("--noise_dbfs", type=float, default=-60.0, help="RMS level of the noise pauses")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", default=str(REPO_ROOT / "training" / "configs" / "mise.yaml"))
    return parser.parse_args(argv)


def manifest_rows(corpus: str) -> list[dict]:
    """The corpus' manifest rows, paths made absolute."""
    folder = Path(corpus).resolve()
    with open(folder / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row["path"] = str(folder / row["path"])
    return rows


def train_without(rows: list[dict], held_out: list[str], args: argparse.Namespace) -> Path:
    """The audio classifier trained on every speaker but the held-out ones (`OUT/corpus/manifest.csv`, trained as
    `training/cross_corpus.py` trains a corpus; reused when it exists)."""
    folder = Path(args.output_dir) / "corpus"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "manifest.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(row for row in rows if row["speaker"] not in held_out)
    options = argparse.Namespace(output_dir=args.output_dir, config=args.config, max_folds=1)
    return train_corpus("without_held_out", str(folder), [], options)


def build_recordings(
    waveforms: list[np.ndarray], count: int, pause: int, noise_dbfs: float | None, seed: int
) -> list[tuple[np.ndarray, list[tuple[int, int]], list[int]]]:
    """Recordings of `count` clips each (the clips in a seeded random order), joined with pauses of `pause`
    samples of digital silence, or of white noise at `noise_dbfs` RMS: `(recording, clip spans, clip ids)`."""
    generator = np.random.default_rng(seed)
    order = generator.permutation(len(waveforms)).tolist()
    recordings = []
    for start in range(0, len(order) - count + 1, count):
        parts, spans, position = [], [], 0
        for index in order[start : start + count]:
            gap = (
                np.zeros(pause)
                if noise_dbfs is None
                else 10 ** (noise_dbfs / 20) * generator.standard_normal(pause)
            )
            parts += [waveforms[index], gap.astype(np.float32)]
            spans.append((position, position + len(waveforms[index])))
            position += len(waveforms[index]) + len(gap)
        recordings.append((np.concatenate(parts), spans, order[start : start + count]))
    return recordings


def covering_labels(segments: list[dict], spans: list[tuple[int, int]], rate: int) -> list[str | None]:
    """Each clip span's label: that of the segment covering most of it (None when no segment touches it)."""
    labels = []
    for start, end in spans:
        overlaps = [min(end / rate, s["end_s"]) - max(start / rate, s["start_s"]) for s in segments]
        best = int(np.argmax(overlaps)) if overlaps else -1
        labels.append(segments[best]["label"] if best >= 0 and overlaps[best] > 0 else None)
    return labels


def recording_labels(classifier: AudioFileClassifier, recordings: list, size: int) -> tuple[dict, int]:
    """`{clip id: label}` over every recording (each classified as one file) and the number of segments."""
    labels, segments = {}, 0
    for waveform, spans, ids in recordings:
        (result,) = classifier.classify_waveforms([("recording", waveform)])
        rows = result.segments or [{"start_s": 0.0, "end_s": len(waveform) / size, "label": result.label}]
        segments += len(rows)
        labels.update(zip(ids, covering_labels(rows, spans, size), strict=True))
    return labels, segments


def measure(model: Path, rows: list[dict], args: argparse.Namespace) -> dict:
    """One-by-one, segment and 30 s-window accuracies of the held-out clips, for both pause kinds."""
    segmenter = AudioFileClassifier(str(model))
    rate = segmenter.sampling_rate
    windows = AudioFileClassifier(str(model), window_seconds=segmenter.feature_extractor.max_duration_s)
    waveforms = [load_audio(row["path"], rate)[0] for row in rows]
    truth = [row["emotion"] for row in rows]
    clips = [(row["path"], waveform) for row, waveform in zip(rows, waveforms, strict=True)]
    alone = [result.label for result in segmenter.classify_waveforms(clips)]
    report = {
        "model": str(model),
        "utterance_seconds": list(segmenter.utterance_seconds),
        "clips": len(rows),
        "one_by_one_accuracy": float(np.mean([a == t for a, t in zip(alone, truth, strict=True)])),
    }
    for kind, noise in (("silence", None), ("noise", args.noise_dbfs)):
        recordings = build_recordings(
            waveforms, args.clips, round(args.pause_seconds * rate), noise, args.seed
        )
        ids = [i for _, _, chosen in recordings for i in chosen]
        by_segment, segments = recording_labels(segmenter, recordings, rate)
        by_window, _ = recording_labels(windows, recordings, rate)
        one = float(np.mean([alone[i] == truth[i] for i in ids]))
        seg = float(np.mean([by_segment[i] == truth[i] for i in ids]))
        report[kind] = {
            "recordings": len(recordings),
            "clips": len(ids),
            "segments": segments,
            "one_by_one_accuracy": one,
            "segment_accuracy": seg,
            "ratio": seg / one if one else None,
            "agreement_with_one_by_one": float(np.mean([by_segment[i] == alone[i] for i in ids])),
            "window_accuracy": float(np.mean([by_window[i] == truth[i] for i in ids])),
            "window_seconds": windows.window_seconds,
        }
    return report


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    rows = manifest_rows(args.corpus)
    missing = sorted(set(args.held_out) - {row["speaker"] for row in rows})
    if missing:
        raise SystemExit(f"--held_out: no clips of {missing} in {args.corpus}")
    model = Path(args.model) if args.model else train_without(rows, args.held_out, args)
    report = measure(model, [row for row in rows if row["speaker"] in args.held_out], args)
    report["arguments"] = {k: v for k, v in vars(args).items() if k != "config"}
    output = Path(args.output_dir) / "results.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
