"""`bench/bench_train.py --only stage2`: where a stage-2 step's time goes (fixed per step, per row, FLOPs)."""

from __future__ import annotations

import argparse

import pytest
import torch

from tests.conftest import REPO_ROOT, load_file_module

bench = load_file_module("bench_train", REPO_ROOT / "bench" / "bench_train.py")

TINY = ["--projection_dim", "16", "--noise_dim", "8", "--generator_hidden_sizes", "32",
        "--discriminator_hidden_sizes", "32", "--generator_batch_size", "64", "--text_code_dropout", "0"]  # fmt: skip


def _infogan_flops(batch: int, dim: int = 16, noise: int = 8, hidden: int = 32, classes: int = 8) -> int:
    """Matrix-product FLOPs of one D step and one G step of the TINY config, by hand.

    G: (noise + classes + dim) -> hidden -> dim; D trunk: dim -> hidden; heads: hidden -> 1 + classes + dim.
    D step: G forward on `batch` rows (no gradient), D forward on 3 x batch rows (real, fake, mixed-up real),
    backward: weight gradients of every D layer, input gradients of all but D's first layer.
    G step: G and D forward on `batch` rows; backward: input gradients through D (frozen) and through all of G
    (its input holds the learned null text code), weight gradients of G. Each step's text MI term (InfoNCE,
    `batch x batch` similarities of `dim`-d codes): forward, and the gradient of its one trained side."""
    g_layers = [(noise + classes + dim, hidden), (hidden, dim)]
    d_trunk, d_heads = (dim, hidden), (hidden, 1 + classes + dim)
    mac = lambda rows, layers: sum(rows * i * o for i, o in layers)  # noqa: E731
    d_step = mac(batch, g_layers) + 3 * mac(3 * batch, [d_trunk, d_heads]) - mac(3 * batch, [d_trunk])
    g_step = 3 * mac(batch, g_layers) + 2 * mac(batch, [d_trunk, d_heads])
    info_nce = 2 * batch * batch * dim
    return 2 * (d_step + g_step + 2 * info_nce)


def test_stage2_bench_counts_the_step_s_matrix_products_and_splits_its_time():
    threads = torch.get_num_threads()
    result = bench.bench_stage2(argparse.Namespace(config=bench.CONFIG), "", TINY)
    assert torch.get_num_threads() == threads  # the config's training_threads do not leak out
    # 630 rows split evenly: 10 batches of 63 rows, 79 batches of 7 at 1/8 of the batch size
    assert (result["threads"], result["batch_size"], result["small_batch_size"]) == (1, 63, 7)
    assert result["gflop_per_step"] * 1e9 == _infogan_flops(63)
    # the fixed cost is the line through (7 rows, small step) and (63 rows, step) at 0 rows (no timing asserted)
    step, small = result["step_ms"], result["small_batch_step_ms"]
    assert step > 0 and small > 0 and result["matmul_gflops"] > 0
    assert result["fixed_ms"] == pytest.approx(small - (step - small) * 7 / (63 - 7))
    assert result["matmul_ms"] == pytest.approx(result["gflop_per_step"] / result["matmul_gflops"] * 1e3)
    (row,) = bench.table({"stage2": result})
    assert row[0] == "stage 2, one D + G step (63 rows, 1 thread(s))"
    assert f"{result['fixed_ms']:.1f} ms fixed per step" in row[1]
