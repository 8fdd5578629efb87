"""Stage 2 alone under several settings, on real folds: k-NN precision / recall, MI and Fréchet distance of every
generator checkpoint, and of the checkpoint each selection criterion keeps.

    python bench/bench_generator.py training/configs/mise.yaml training/configs/study.yaml \
        training/configs/corpora/ravdess.yaml --output_dir OUT --speaker_normalization false \
        --variants cgan mise --seeds 0 --max_folds 4 \
        --setting shipped= --setting sn="--discriminator_spectral_norm true" [--key value ...]

Every `--setting NAME=FLAGS` trains the generators of the study's `--variants` (those with one: cgan, mise and the
ablations) on the same folds, seeds and stage-1 spaces (trained once per fold and seed, shared by the settings:
a setting may only change stage-2 keys), each checkpoint scored as the study scores it (`quality_folds` folds:
Fréchet distance and k-NN precision / recall of one generated row per training row against the training
features; MI bounds on the validation speakers). No stage 3 runs: the downstream UAR is the study's
(`training/study.py` with the chosen flags). Per generator it reports the checkpoint that `mi` (the summed MI
bounds) and `mi_recall` (MI among the checkpoints whose recall reaches `generator_recall_floor`) keep, which are
the same training runs whatever the criterion; writes `OUT/bench_generator.json` (every checkpoint) and
`OUT/bench_generator.md` (the table), and prints the table.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from training.arguments import ModelArguments  # noqa: E402
from training.infogan import recall_floor_score  # noqa: E402
from training.pipeline import build_folds  # noqa: E402
from training.run import start_run, training_threads  # noqa: E402
from training.speaker_normalization import SpeakerNormalization  # noqa: E402
from training.study import parse_study_arguments  # noqa: E402
from training.study_unit import FoldUnit, Study  # noqa: E402

FILES = ("bench_generator.json", "bench_generator.md")
# stage-1 arguments a setting may not change: the settings share each fold's stage-1 space
STAGE_1 = ("projection_dim", "lambda_cl", "tau", "learn_temperature", "audio_encoder", "text_encoder")


def split_settings(argv: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """(the study's arguments, {setting name: its extra flags}) from `--setting NAME=FLAGS` pairs."""
    rest, settings = [], {}
    items = iter(argv)
    for item in items:
        if item != "--setting":
            rest.append(item)
            continue
        name, _, flags = next(items).partition("=")
        settings[name] = shlex.split(flags)
    return rest, settings or {"shipped": []}


def _stage_1_values(model_args: ModelArguments, training_args) -> dict:
    values = {key: getattr(model_args, key) for key in STAGE_1}
    values.update(
        {
            key: value
            for key, value in dataclasses.asdict(model_args).items()
            if key.startswith(("aligner_", "text_lora"))
        }
    )
    values.update(
        {
            key: value
            for key, value in dataclasses.asdict(training_args).items()
            if key.startswith("aligner_") or key == "seed"
        }
    )
    return values


def chosen(checkpoints: list[dict], criterion: str, floor: float) -> dict:
    """The checkpoint `criterion` keeps (`mi`, `mi_recall`, `last` or `max_recall`); the first on a tie."""
    if criterion == "last":
        return checkpoints[-1]
    if criterion == "max_recall":
        return max(checkpoints, key=lambda c: c.get("recall", -1.0))

    def mi(c: dict) -> float:
        return c["mi_emotion_nats"] + (c.get("mi_text_nats") or 0.0)

    if criterion == "mi_recall":
        return max(checkpoints, key=lambda c: recall_floor_score(mi(c), c["recall"], floor))
    return max(checkpoints, key=mi)


CRITERIA = ("mi", "mi_recall", "last", "max_recall")


def summarize(records: list[dict], floor: float) -> dict:
    """Per (setting, variant): precision / recall / MI / FD at the checkpoint each criterion keeps (means over the
    scored generators) and the chosen epochs."""
    generators = defaultdict(list)
    for record in records:
        if "recall" in record:
            generators[(record["setting"], record["variant"], record["seed"], record["fold"])].append(record)
    table: dict = defaultdict(dict)
    for (setting, variant, _, _), checkpoints in generators.items():
        entry = table[setting].setdefault(variant, {c: defaultdict(list) for c in CRITERIA})
        for criterion in CRITERIA:
            pick = chosen(checkpoints, criterion, floor)
            for key in ("precision", "recall", "frechet_distance", "mi_emotion_nats", "epoch"):
                entry[criterion][key].append(pick.get(key))
    return {
        setting: {
            variant: {
                criterion: {key: float(np.mean(values)) for key, values in values_by_key.items()}
                | {"n": len(values_by_key["epoch"])}
                for criterion, values_by_key in entry.items()
            }
            for variant, entry in variants.items()
        }
        for setting, variants in table.items()
    }


def markdown(summary: dict, seconds: dict, floor: float) -> str:
    lines = [
        f"k-NN precision / recall (k = 5, training features) at the checkpoint each criterion keeps; mean over the "
        f"scored generators. mi_recall: recall floor {floor}.",
        "",
        "| setting | variant | n | mi: P / R | mi_recall: P / R | last: P / R | max recall: P / R | mi epoch | "
        "mi_recall epoch | stage-2 s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for setting, variants in summary.items():
        for variant, entry in variants.items():
            cells = [f"{entry[c]['precision']:.2f} / {entry[c]['recall']:.2f}" for c in CRITERIA]
            lines.append(
                f"| {setting} | {variant} | {entry['mi']['n']} | " + " | ".join(cells)
                + f" | {entry['mi']['epoch']:.0f} | {entry['mi_recall']['epoch']:.0f} | "
                f"{seconds[setting]:.0f} |"
            )  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    argv, settings = split_settings(list(sys.argv[1:] if argv is None else argv))
    parsed = {name: parse_study_arguments([*argv, *flags]) for name, flags in settings.items()}
    first = next(iter(parsed.values()))
    for name, (_, model_args, training_args, _) in parsed.items():
        if _stage_1_values(model_args, training_args) != _stage_1_values(first[1], first[2]):
            raise SystemExit(f"setting {name!r}: changes stage-1 arguments; the settings share stage 1")
    data_args, model_args, training_args, study_args = first
    run = start_run(data_args, model_args, training_args, "", FILES, FILES, "bench", resume_checks_hash=False)
    corpus, features = run.prepared.corpus, run.prepared.features
    normalization = SpeakerNormalization.from_arguments(data_args, features, corpus)
    records, seconds = [], defaultdict(float)
    with training_threads(training_args.training_threads):
        for seed in study_args.seeds:
            folds = build_folds(data_args, corpus, seed)
            choices = normalization.plan(folds)
            for fold_index, fold in enumerate(folds):
                spaces: dict = {}
                for name, (_, model_args_s, training_args_s, study_args_s) in parsed.items():
                    study = Study(
                        run.accelerator, data_args, model_args_s, training_args_s, study_args_s,
                        normalization.features_for(choices[fold.name]).audio, features.text,
                        torch.as_tensor(corpus.labels()), dict(corpus.id2label), features.audio_spec,
                        speakers=np.asarray(corpus.speakers()),
                    )  # fmt: skip
                    unit = FoldUnit(study, fold, fold_index, seed, fold.train)
                    unit.trainer.spaces = spaces  # stage 1 once per fold and seed
                    generators = [variant for variant in study_args_s.selected if variant.uses_generator]
                    for variant in generators:
                        unit.trainer.space(variant)
                    tick = time.perf_counter()  # stage 2 alone
                    for variant in generators:
                        unit.trainer.generator(variant, unit.trainer.space(variant))
                    seconds[name] += time.perf_counter() - tick
                    records += [{"setting": name, **record} for record in unit.quality_records]
                    print(f"seed {seed} {fold.name} {name}: {time.perf_counter() - tick:.0f} s", flush=True)
    floor = training_args.generator_recall_floor
    summary = summarize(records, floor)
    text = markdown(summary, seconds, floor)
    report = {"command": shlex.join(["bench/bench_generator.py", *sys.argv[1:]]), "settings": settings,
              "summary": summary, "seconds": seconds, "records": records}  # fmt: skip
    (run.output_dir / "bench_generator.json").write_text(json.dumps(report, indent=1))
    (run.output_dir / "bench_generator.md").write_text(text)
    print(text)
    return report


if __name__ == "__main__":
    main()
