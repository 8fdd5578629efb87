"""Training of MISE with Accelerate: `accelerate launch training/train.py CONFIG.yaml --output_dir OUT`.

`training.stages` holds the three stages on plain tensors (reusable by a study script), `training.loop` the
shared epoch loop (early stopping, NaN guard, checkpoints, resume), `training.pipeline` one fold and the final
models, `training.train` the numbered `main()`.
"""
