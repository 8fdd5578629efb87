"""The `mise` command: classify files, folders and long recordings, evaluate a model on another corpus, push runs."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from mise.console import DEBUG_FLAG, DEBUG_VARIABLE, UsageError, progress_bars, run_command

COMMANDS = ("classify", "evaluate", "push")


def resolve_model_source(model: str) -> str:
    """A model argument -> an existing local folder (``~`` expanded) or a Hub id.

    Raises:
        UsageError: ``"<model>: no such folder"`` when the argument looks like a local path (starts with ``.``,
            ``/`` or ``~``, or its parent folder exists) and does not exist: no Hub look-up, no retries.
    """
    path = Path(model).expanduser()
    if path.exists():
        return str(path)
    parent = os.path.dirname(model.rstrip("/"))
    if model.startswith((".", "/", "~")) or (parent not in ("", ".") and Path(parent).expanduser().is_dir()):
        raise UsageError(f"{model}: no such folder")
    return model


def load_file_classifier(args: argparse.Namespace):
    """The `AudioFileClassifier` of `classify` / `evaluate`: a mistyped local folder fails before any Hub look-up,
    and a model that cannot be loaded (offline, unreachable, not a MISE model) is one line, not a traceback."""
    source = resolve_model_source(args.model)  # before any Hub look-up
    from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

    import modeling_mise  # noqa: F401  (registers the MISE classes)
    from mise.file_classification import AudioFileClassifier

    try:
        model = AutoModelForAudioClassification.from_pretrained(source)
        extractor = AutoFeatureExtractor.from_pretrained(source)
    except (OSError, ValueError, KeyError, ImportError) as error:  # Hub, network, format: one line
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        where = "folder" if Path(source).exists() else "Hub id (is the Hub reachable, the id right?)"
        raise UsageError(f"{args.model}: could not load this {where}: {reason}") from error
    return AudioFileClassifier(model, extractor, args.window_seconds, args.hop_seconds, args.batch_size)


def classify(args: argparse.Namespace) -> int:
    """The `classify` subcommand: one result per file (stdout JSON lines or `--output`); 0 when every file was
    classified, 1 when some failed."""
    from mise.file_classification import collect_audio_paths, default_num_workers, write_results

    if args.output and not args.output.lower().endswith((".csv", ".jsonl")):
        raise UsageError(f"--output {args.output}: the file name must end in .csv or .jsonl")
    paths = collect_audio_paths(args.paths)
    if not paths:
        raise UsageError("no audio files found in " + ", ".join(args.paths))
    show_progress = progress_bars(args.quiet)  # before loading: no "Loading weights" bar when quiet
    classifier = load_file_classifier(args)
    if args.enrolment and args.adapt:
        raise UsageError(
            "give --enrolment (clips of the speaker) or --adapt (of the recording setup), not both"
        )
    if args.enrolment:
        classifier.enrol(collect_audio_paths(args.enrolment))
    if args.adapt:
        for message in classifier.adapt(collect_audio_paths(args.adapt)):
            print(f"mise classify: adaptation: {message} (skipped)", file=sys.stderr)
        print(f"mise classify: statistics: {classifier.normalization}", file=sys.stderr)
    workers = default_num_workers() if args.num_workers is None else args.num_workers
    results = classifier.classify_files(paths, num_workers=workers, show_progress=show_progress)
    if args.output:
        written = write_results(results, args.output, classifier.label_names)
        print(f"mise classify: {len(results)} file(s) -> {written}", file=sys.stderr)
    else:
        for result in results:
            print(json.dumps(result.to_dict()))
    if args.timeline:
        from mise.file_classification import write_timelines

        written = write_timelines(results, args.timeline)
        print(f"mise classify: {len(written)} timeline(s) -> {args.timeline}", file=sys.stderr)
    for result in results:
        for notice in result.notices:
            print(f"mise classify: {result.path}: {notice}", file=sys.stderr)
    failed = [result for result in results if result.error]
    for result in failed:
        print(f"mise classify: {result.error}", file=sys.stderr)
    return 1 if failed else 0


def evaluate(args: argparse.Namespace) -> int:
    """The `evaluate` subcommand: metrics of a released model on a labelled corpus, over the shared classes."""
    from mise.evaluation import evaluate_on_corpus

    options = ("label_map", "drop_labels", "label_column", "speaker_column", "audio_column", "data_dir")
    options += ("batch_size", "num_workers", "window_seconds", "hop_seconds", "normalize", "adaptation_clips")
    report = evaluate_on_corpus(
        resolve_model_source(args.model),
        args.corpus,
        args.output_dir,
        show_progress=progress_bars(),
        **{name: getattr(args, name) for name in options},
    )
    keys = ("uar", "wa", "macro_f1", "classes", "clips", "normalization")
    print(json.dumps({key: report[key] for key in keys}, indent=2))
    return 0


def add_classify_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by `classify` and `evaluate`: windows of long clips, batching, workers."""
    parser.add_argument(
        "--window_seconds",
        type=float,
        default=None,
        help="cut clips longer than this into windows of this size (at most the model's max_duration_s); "
        "default: a clip longer than the model's training clips is cut at pauses into utterance-sized segments. "
        "Each segment is classified; the file's scores are the duration-weighted mean",
    )
    parser.add_argument(
        "--hop_seconds",
        type=float,
        default=None,
        help="step between windows (default: the window, no overlap)",
    )
    parser.add_argument("--batch_size", type=int, default=16, help="clips or windows per forward pass")
    parser.add_argument(
        "--num_workers",
        type=int,
        default=None,
        help="processes decoding and classifying batches of files (default: the CPU cores, at most 8; "
        "0 or 1: this process only)",
    )


def add_adaptation_and_timeline_arguments(parser: argparse.ArgumentParser) -> None:
    """`classify`'s options for a new recording setup (`--adapt`) and for long recordings (`--timeline`)."""
    parser.add_argument(
        "--adapt",
        nargs="+",
        default=None,
        help="unlabelled clips (files, folders, manifests) of the same recording setup as PATHS: the model "
        "standardises with their statistics, shrunk toward the training statistics; clips that fail the input "
        "policy are named and skipped; each result says which statistics it used",
    )
    parser.add_argument(
        "--timeline",
        default=None,
        metavar="FOLDER",
        help="write FOLDER/<file>.png for each file cut into several segments: each segment's emotion over time, "
        "titled with the file's answer (needs matplotlib)",
    )


def add_evaluate_parser(commands) -> None:
    """The `evaluate` subcommand's arguments."""
    evaluate_parser = commands.add_parser(
        "evaluate",
        help="evaluate a trained audio classifier on a labelled corpus (cross-corpus): metrics.json + figure",
        description="Classify every clip of CORPUS and score the predictions on the classes the model and the "
        "corpus share (matched by name after --label_map); classes only one side has are reported. Writes "
        "OUTPUT_DIR/metrics.json (UAR, WA, macro-F1, confusion matrix) and OUTPUT_DIR/confusion_matrix.png.",
    )
    evaluate_parser.add_argument(
        "model", help="folder written by training (OUT/models/mise-audio-classifier) or a Hub id"
    )
    evaluate_parser.add_argument(
        "corpus",
        help="a manifest CSV, an audiofolder, a dataset folder or a Hub dataset id (as training reads it)",
    )
    evaluate_parser.add_argument("--output_dir", default="evaluation", help="where metrics.json goes")
    evaluate_parser.add_argument(
        "--label_map",
        default=None,
        help="the corpus' labels onto the model's: a preset (iemocap4), a JSON object or a JSON file",
    )
    evaluate_parser.add_argument("--drop_labels", nargs="*", default=[], help="corpus labels to leave out")
    evaluate_parser.add_argument("--label_column", default="emotion", help="emotion column of the corpus")
    evaluate_parser.add_argument("--speaker_column", default="speaker", help="speaker column of the corpus")
    evaluate_parser.add_argument("--audio_column", default=None, help="audio column (default: guessed)")
    evaluate_parser.add_argument("--data_dir", default=None, help="`data_dir` of a Hub or local dataset")
    evaluate_parser.add_argument(
        "--normalize",
        choices=("training", "corpus", "speaker"),
        default="training",
        help="standardise the frozen features with the training statistics stored in the model (training, as "
        "released), with the statistics of the corpus' unlabelled clips (corpus: adaptation to its recording "
        "setup) or of each of its speakers' (speaker: enrolment, models that take it); both shrunk toward the "
        "training statistics",
    )
    evaluate_parser.add_argument(
        "--adaptation_clips",
        type=int,
        default=None,
        help="with --normalize corpus / speaker: statistics of this many clips of the corpus / of each speaker, "
        "drawn at random (seed 0); default: all",
    )
    add_classify_arguments(evaluate_parser)


def add_push_parser(commands) -> None:
    """The `push` subcommand's arguments."""
    push_parser = commands.add_parser(
        "push",
        help="publish a training run: its models with model cards, or (--space) its Gradio Space",
        description="Build the upload-ready folders OUT/hub/<prefix>-{aligner,generator,classifier,"
        "audio-classifier} (weights, code, config with auto_map, model card from OUT/card.json), validate them "
        "offline, then create <org>/<prefix>-<model> on the Hub and upload. With --space: build OUT/hub/space "
        "(app.py, requirements.txt, README.md), the Gradio Space that loads <org>/<prefix>-audio-classifier "
        "through remote code, and upload it as the Space <org>/<prefix>-demo. Nothing of the run is deleted: "
        "a failed push can be rerun.",
    )
    push_parser.add_argument("output_dir", help="run folder written by training/train.py (--output_dir)")
    push_parser.add_argument("--org", required=True, help="Hub user or organisation that receives the repos")
    push_parser.add_argument(
        "--prefix", default=None, help="repository name prefix: <prefix>-aligner, ... (default: mise)"
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
        "--held_out",
        default=None,
        help="folder with the summary.json of leave-one-corpus-out runs (training/train.py --protocol loco; one "
        "per sub-folder, e.g. per seed): each card quotes their UAR per held-out corpus, adapted and as released",
    )
    push_parser.add_argument(
        "--space",
        action="store_true",
        help="build (and upload) the Gradio Space OUT/hub/space instead of the models (push those first)",
    )
    push_parser.add_argument(
        "--dry_run",
        action="store_true",
        help="only build and validate OUT/hub/* (no token, no network)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mise",
        description=__doc__,
        epilog="Exit codes: 0 done; 1 a file, clip or corpus row that failed (each named on stderr); 2 a usage "
        "error (a flag, path or model that is wrong; nothing ran).",
    )
    parser.add_argument(
        DEBUG_FLAG,
        action="store_true",
        help=f"on an error, the traceback instead of one line (anywhere on the line; also {DEBUG_VARIABLE}=1)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    classify_parser = commands.add_parser(
        "classify", help="classify audio clips with a trained audio classifier"
    )
    classify_parser.add_argument(
        "model", help="folder written by training (OUT/models/mise-audio-classifier) or a Hub id"
    )
    classify_parser.add_argument(
        "paths",
        nargs="+",
        help="audio files (WAV, FLAC, or anything FFmpeg reads), folders (searched recursively for audio "
        "files) and manifest CSVs (a path/audio/file column, relative to the CSV)",
    )
    classify_parser.add_argument(
        "--output",
        default=None,
        help="results.csv (one row per file: path, label, score per class, duration, notices, error) or "
        "results.jsonl (the same, with the segments of long clips); default: JSON lines on stdout",
    )
    classify_parser.add_argument(
        "--enrolment",
        nargs="+",
        default=None,
        help="other clips (files, folders, manifests) of the same speaker as PATHS, unlabelled: the model "
        "normalises with that speaker's statistics (models trained where per-speaker statistics were "
        "label-neutral; others refuse, saying why); each result says which statistics it used",
    )
    add_adaptation_and_timeline_arguments(classify_parser)
    classify_parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_classify_arguments(classify_parser)
    add_evaluate_parser(commands)
    add_push_parser(commands)
    return parser


def push(args: argparse.Namespace) -> dict:
    """The `push` subcommand: build and validate the Hub folders (or the Space folder with `--space`), then
    upload them unless `--dry_run`."""
    from mise.hub.push import build_hub_folders, build_space, push_run, push_space

    if args.space:
        if args.dry_run:
            return {"space": str(build_space(args.output_dir, args.org, args.prefix))}
        return push_space(args.output_dir, args.org, args.prefix, token=args.token, private=args.private)
    if args.dry_run:
        folders = build_hub_folders(
            args.output_dir,
            args.org,
            args.prefix,
            license=args.license,
            study=args.study,
            held_out=args.held_out,
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
        held_out=args.held_out,
    )


def _run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "push":
        from mise.hub.push import HubPushError

        try:
            pushed = push(args)
        except HubPushError as error:  # no token or no Hub: nothing of the run is lost, rerun when fixed
            raise UsageError(str(error)) from error
        print(json.dumps(pushed, indent=2))
        return 0
    return classify(args) if args.command == "classify" else evaluate(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `mise` console script: exit 0, 1 (a file or corpus row that failed) or 2 (a usage
    error), as `mise.console` says; a traceback only with --debug or MISE_DEBUG=1."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((arg for arg in argv if arg in COMMANDS), None)
    return run_command(_run, f"mise {command}" if command else "mise", argv)


if __name__ == "__main__":
    raise SystemExit(main())
