"""Training of MISE with Accelerate: `accelerate launch training/train.py CONFIG.yaml --output_dir OUT`.

One module per stage on plain tensors (reusable by a study script), imported one way: `training.engine` (batches,
optimiser step, supervised fit, the epoch loop with early stopping, NaN guard, checkpoints and resume) ->
`training.aligner` (stage 1 and the text codes) -> `training.infogan` (stage 2 and its losses) ->
`training.classifier` (augmenters and stage 3) -> `training.pipeline` (one fold and the final models) ->
`training.train` (the numbered `main()`) and `training.study`.
"""
