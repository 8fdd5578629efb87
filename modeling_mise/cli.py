"""The `mise` command: classify clips with a trained end-to-end model (and, with the Hub extras, push runs)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence


def classify(model: str, clips: Sequence[str], top_k: int | None = None) -> list[dict]:
    """Classify audio files with a saved `MiseForAudioClassification` folder or Hub id."""
    from transformers import pipeline

    import modeling_mise  # noqa: F401  (registers the model classes)

    from .audio import load_audio

    classifier = pipeline("audio-classification", model=model)
    rate = classifier.feature_extractor.sampling_rate
    results = []
    for clip in clips:
        waveform, _ = load_audio(clip, target_sampling_rate=rate)
        scores = classifier(
            {"raw": waveform, "sampling_rate": rate}, top_k=top_k or len(classifier.model.config.id2label)
        )
        results.append({"clip": clip, "label": scores[0]["label"], "scores": scores})
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mise", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    classify_parser = commands.add_parser(
        "classify", help="classify audio clips with a trained audio classifier"
    )
    classify_parser.add_argument(
        "model", help="folder written by training (OUT/models/audio-classifier) or a Hub id"
    )
    classify_parser.add_argument("clips", nargs="+", help="audio files (WAV, FLAC, or anything FFmpeg reads)")
    classify_parser.add_argument(
        "--top_k", type=int, default=None, help="scores to show per clip (default: all)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `mise` console script."""
    args = build_parser().parse_args(argv)
    if args.command == "classify":
        try:
            results = classify(args.model, args.clips, args.top_k)
        except (ValueError, OSError) as error:
            print(f"mise classify: {error}", file=sys.stderr)
            return 2
        for result in results:
            print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
