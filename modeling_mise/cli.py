"""The `mise` command: classify clips with a trained end-to-end model (and, with the Hub extras, push runs)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path


def resolve_model_source(model: str) -> str:
    """A model argument -> an existing local folder (``~`` expanded) or a Hub id.

    Raises:
        ValueError: ``"<model>: no such folder"`` when the argument looks like a local path (starts with ``.``,
            ``/`` or ``~``, or its parent folder exists) and does not exist: no Hub look-up, no retries.
    """
    path = Path(model).expanduser()
    if path.exists():
        return str(path)
    parent = os.path.dirname(model.rstrip("/"))
    if model.startswith((".", "/", "~")) or (parent not in ("", ".") and Path(parent).expanduser().is_dir()):
        raise ValueError(f"{model}: no such folder")
    return model


def load_classifier(model: str):
    """`pipeline("audio-classification")` on a local folder or Hub id; one-line ValueError when it cannot load."""
    source = resolve_model_source(model)  # before any Hub look-up
    from transformers import pipeline

    import modeling_mise  # noqa: F401  (registers the model classes)

    try:
        return pipeline("audio-classification", model=source)
    except Exception as error:  # Hub / network / format errors from transformers: one line, no traceback
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        where = "folder" if Path(source).exists() else "Hub id (is the Hub reachable, the id right?)"
        raise ValueError(f"{model}: could not load this {where}: {reason}") from None


def classify(model: str, clips: Sequence[str], top_k: int | None = None) -> list[dict]:
    """Classify audio files with a saved `MiseForAudioClassification` folder or Hub id.

    Each clip is checked with the model's input policy (`modeling_mise.audio.AudioPolicy`): an unusable clip
    raises an `AudioInputError` naming it; a clip longer than the model's window is classified on its first
    `max_duration_s` and its result carries a notice saying so.
    """
    from .audio import crop, load_checked
    from .pipeline_audio_classification import input_policy

    classifier = load_classifier(model)
    rate = classifier.feature_extractor.sampling_rate
    policy = input_policy(classifier.feature_extractor)
    results = []
    for clip in clips:
        waveform, _, notices = load_checked(clip, rate, policy)
        waveform, _ = crop(waveform, rate, policy.max_seconds)
        scores = classifier(
            {"raw": waveform, "sampling_rate": rate}, top_k=top_k or len(classifier.model.config.id2label)
        )
        results.append({"clip": clip, "label": scores[0]["label"], "scores": scores, "notices": notices})
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
    push_parser = commands.add_parser(
        "push",
        help="publish a training run: build OUT/hub/{encoder,generator,classifier} with model cards and upload",
        description="Build the upload-ready folders OUT/hub/{encoder,generator,classifier} (weights, code, "
        "config with auto_map, model card), validate them offline, then create <org>/<prefix>-<model> on the "
        "Hub and upload. Nothing of the run is deleted: a failed push can be rerun.",
    )
    push_parser.add_argument("output_dir", help="run folder written by training/train.py (--output_dir)")
    push_parser.add_argument("--org", required=True, help="Hub user or organisation that receives the repos")
    push_parser.add_argument(
        "--prefix", default=None, help="repository name prefix: <prefix>-encoder, ... (default: mise)"
    )
    push_parser.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or `hf auth login`)")
    push_parser.add_argument("--private", action="store_true", help="create the repositories as private")
    push_parser.add_argument(
        "--license", default=None, help="licence id for the cards (default: the training corpus' licence)"
    )
    push_parser.add_argument(
        "--study",
        default=None,
        help="folder written by training/study.py (with study.json): each card quotes its comparison table",
    )
    push_parser.add_argument(
        "--dry_run",
        action="store_true",
        help="only build and validate OUT/hub/* (no token, no network)",
    )
    return parser


def push(args: argparse.Namespace) -> dict:
    """The `push` subcommand: build and validate the Hub folders, then upload them unless `--dry_run`."""
    from .hub import build_hub_folders, push_run

    if args.dry_run:
        folders = build_hub_folders(
            args.output_dir, args.org, args.prefix, license=args.license, study=args.study
        )
        return {kind: str(folder) for kind, folder in folders.items()}
    return push_run(
        args.output_dir,
        args.org,
        args.prefix,
        token=args.token,
        private=args.private,
        license=args.license,
        study=args.study,
    )


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
            for notice in result["notices"]:
                print(f"mise classify: {result['clip']}: {notice}", file=sys.stderr)
            print(json.dumps(result))
    elif args.command == "push":
        from .hub import HubPushError

        try:
            pushed = push(args)
        except (HubPushError, ValueError, OSError) as error:
            print(f"mise push: {error}", file=sys.stderr)
            return 2
        print(json.dumps(pushed, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
