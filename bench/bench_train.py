"""Benchmark of `training/train.py`: full leave-one-speaker-out MISE on RAVDESS with eGeMAPS, features cached.

    python bench/bench_train.py [--config training/configs/ravdess.yaml] [--output_dir runs/bench]

In one run: (1) the feature stage with an empty cache (decode + openSMILE eGeMAPS of every clip, the first
extraction), then (2) the whole training command on that cache (`main()`: reading the audio, the cached feature
stage, all folds, the final models). Prints and writes `OUT/bench.json` with both feature-stage times, their
ratio (target >= 20x) and the wall time of the full run (target <= 600 s on the 2-core reference machine).
Extra `--key value` arguments go to the training command (e.g. `--max_folds 2` for a smoke run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TARGET_SECONDS = 600.0
TARGET_SPEEDUP = 20.0


def first_extraction(config: str, cache_dir: str, extra: list[str]) -> dict:
    """Time the feature stage of `main()` with an empty cache (same functions, same arguments)."""
    from accelerate import Accelerator

    from modeling_mise.encoders import load_audio_encoder, load_text_encoder
    from training.arguments import parse_arguments
    from training.features import extract_features, read_corpus, usable_clips

    data_args, model_args, _ = parse_arguments(
        [config, "--output_dir", tempfile.mkdtemp(), "--cache_dir", cache_dir, *extra]
    )
    accelerator = Accelerator()
    corpus = read_corpus(data_args)
    encoder = load_audio_encoder(model_args.audio_encoder, model_args.audio_pooling, model_args.audio_layer)
    start = time.perf_counter()
    waveforms, corpus, _ = usable_clips(
        corpus, encoder.sampling_rate, data_args, Path(tempfile.mkdtemp()), accelerator
    )
    read_seconds = time.perf_counter() - start
    text_encoder = load_text_encoder(model_args.text_encoder) if model_args.text_encoder else None
    features = extract_features(corpus, waveforms, encoder, text_encoder, data_args, model_args, accelerator)
    return {
        "read_audio_s": read_seconds,
        "features_s": features.seconds,
        "cache": features.cache_stats,
        "baseline": classic_baseline_uar(corpus, features, data_args, training_seed(config, extra)),
    }


def training_seed(config: str, extra: list[str]) -> int:
    from training.arguments import parse_arguments

    return parse_arguments([config, "--output_dir", tempfile.mkdtemp(), *extra])[2].seed


def classic_baseline_uar(corpus, features, data_args, seed: int) -> dict:
    """SPEC §5's reference on the same features and folds: standardised logistic regression (C=1), pooled UAR,
    on globally standardised features and on per-speaker normalised ones (what `speaker_normalization` feeds
    the folds)."""
    import numpy as np
    from sklearn.metrics import balanced_accuracy_score

    from training.features import speaker_normalized
    from training.pipeline import build_folds
    from training.study_variants import classic_baseline

    labels, speakers = corpus.labels(), corpus.speakers()
    folds = build_folds(data_args, corpus, seed)  # the folds training used, whatever the protocol
    result = {}
    for name, audio in (
        ("global", features.audio),
        ("speaker", speaker_normalized(features, speakers).audio),
    ):
        x, true, pred = audio.numpy(), [], []
        for fold in folds:
            train = np.concatenate([fold.train, fold.validation])
            true.append(labels[fold.test])
            pred.append(classic_baseline(x, labels, train, fold.test))
        result[f"uar_pooled_{name}_normalization"] = float(
            balanced_accuracy_score(np.concatenate(true), np.concatenate(pred))
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=str(REPO / "training" / "configs" / "ravdess.yaml"))
    parser.add_argument("--output_dir", default=str(REPO / "runs" / "bench"))
    args, extra = parser.parse_known_args()
    from training.train import main as train

    cache_dir = tempfile.mkdtemp(prefix="mise-bench-cache-")
    first = first_extraction(args.config, cache_dir, extra)
    assert first["cache"]["audio"]["hits"] == 0, "the first extraction must start from an empty cache"

    start = time.perf_counter()
    summary = train(
        [
            args.config,
            "--output_dir",
            args.output_dir,
            "--cache_dir",
            cache_dir,
            "--overwrite_output_dir",
            "true",
        ]
        + extra
    )
    total = time.perf_counter() - start
    seconds = summary["seconds"]
    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "first_extraction": {"read_audio_s": first["read_audio_s"], "features_s": first["features_s"]},
        "cached_run": {**seconds, "wall_s": total, "feature_cache": summary["feature_cache"]},
        "feature_speedup": first["features_s"] / max(seconds["features"], 1e-9),
        "n_folds": summary["n_folds"],
        "uar_pooled": summary["uar_pooled"],
        "uar_mean": summary["uar_mean"],
        "uar_std": summary["uar_std"],
        "wa_pooled": summary["wa_pooled"],
        "f1_macro_pooled": summary["f1_macro_pooled"],
        "aligner_uar_mean": summary["aligner_uar_mean"],
        "classic_baseline": first["baseline"],
        "targets": {"wall_s": TARGET_SECONDS, "feature_speedup": TARGET_SPEEDUP},
    }
    Path(args.output_dir, "bench.json").write_text(json.dumps(result, indent=2))
    print(
        f"first extraction: {first['features_s']:.1f} s (+ {first['read_audio_s']:.1f} s reading audio); "
        f"cached feature stage: {seconds['features']:.2f} s -> {result['feature_speedup']:.0f}x "
        f"(target >= {TARGET_SPEEDUP:.0f}x)\n"
        f"full run ({summary['n_folds']} folds + final models): {total:.0f} s wall "
        f"(reading audio {seconds['read_audio']:.1f} s, folds {seconds['folds']:.0f} s, "
        f"final models {seconds.get('final_models', 0):.0f} s; target <= {TARGET_SECONDS:.0f} s)\n"
        f"pooled UAR {summary['uar_pooled']:.4f}, mean UAR {summary['uar_mean']:.4f} +- {summary['uar_std']:.4f}, "
        f"WA {summary['wa_pooled']:.4f}, macro-F1 {summary['f1_macro_pooled']:.4f}\n"
        f"classic baseline (logistic regression, same features and folds): {first['baseline']}"
    )


if __name__ == "__main__":
    main()
