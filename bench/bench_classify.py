"""`mise classify` on many files against the `transformers` pipeline called once per file, same model.

Both run in this process and both include loading the model: the pipeline (`pipeline("audio-classification")`
then `classifier(path)` for each file, as a user would write it) and `mise classify MODEL FILE... --output`
(batched decoding and feature extraction in worker processes). Prints both wall times, the speed-up and how
often the two agree on the top label, as JSON.

    python bench/bench_classify.py --model runs/ravdess/models/mise-audio-classifier \
        --data_dir ../shared/data/ravdess --clips 200
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path


def pick_clips(data_dir: str, count: int, seed: int) -> list[str]:
    """`count` clips of the corpus' manifest, drawn with a fixed seed."""
    manifest = Path(data_dir) / "manifest.csv"
    with open(manifest, newline="") as handle:
        paths = [str(manifest.parent / row["path"]) for row in csv.DictReader(handle)]
    if count > len(paths):
        raise SystemExit(f"--clips {count}: the corpus has {len(paths)} clips")
    return sorted(random.Random(seed).sample(paths, count))


def time_pipeline(model: str, clips: list[str]) -> tuple[float, list[str]]:
    """Wall time of `pipeline()` (loaded once) called once per file, and its top labels."""
    from transformers import pipeline

    import modeling_mise  # noqa: F401  (registers the MISE classes)

    start = time.perf_counter()
    classifier = pipeline("audio-classification", model=model)
    labels = [classifier(clip, top_k=1)[0]["label"] for clip in clips]
    return time.perf_counter() - start, labels


def time_mise_classify(model: str, clips: list[str], workers: int | None) -> tuple[float, list[str], int]:
    """Wall time of `mise classify` on every file (one results CSV), its top labels and its exit code."""
    from mise.cli import main

    with tempfile.TemporaryDirectory() as folder:
        output = Path(folder) / "results.csv"
        argv = ["classify", model, *clips, "--output", str(output), "--quiet"]
        if workers is not None:
            argv += ["--num_workers", str(workers)]
        start = time.perf_counter()
        code = main(argv)
        seconds = time.perf_counter() - start
        with open(output, newline="") as handle:
            labels = {row["path"]: row["label"] for row in csv.DictReader(handle)}
    return seconds, [labels[clip] for clip in clips], code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", required=True, help="audio-classifier folder (OUT/models/mise-audio-classifier)"
    )
    parser.add_argument("--data_dir", required=True, help="corpus folder with manifest.csv (e.g. RAVDESS)")
    parser.add_argument("--clips", type=int, default=200, help="files to classify (default 200)")
    parser.add_argument("--num_workers", type=int, default=None, help="`mise classify --num_workers`")
    parser.add_argument("--seed", type=int, default=0, help="seed of the clip draw")
    parser.add_argument("--output", default=None, help="also write the JSON report to this file")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    clips = pick_clips(args.data_dir, args.clips, args.seed)
    pipeline_seconds, pipeline_labels = time_pipeline(args.model, clips)
    mise_seconds, mise_labels, code = time_mise_classify(args.model, clips, args.num_workers)
    agree = sum(a == b for a, b in zip(pipeline_labels, mise_labels, strict=True)) / len(clips)
    report = {
        "clips": len(clips),
        "pipeline_per_file_s": round(pipeline_seconds, 2),
        "mise_classify_s": round(mise_seconds, 2),
        "speedup": round(pipeline_seconds / mise_seconds, 2),
        "top_label_agreement": round(agree, 4),
        "mise_classify_exit_code": code,
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": platform.python_version(),
    }
    print(json.dumps(report, indent=2))
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
