"""The ragged cuDNN attention's bookkeeping (shapes, offsets, warm-up coverage) and kernel selection, on the CPU.

The kernel itself runs on sm90+ GPUs only: bench/sft.py `check` compares it with float64 per-sample attention
(outputs and q/k/v gradients) on the GPU."""
from __future__ import annotations

import gc

import numpy as np
import pytest
import torch

from factory.train import cudnn_ragged
from factory.train.config import SFTConfig
from factory.train.cudnn_ragged import RaggedShape, ragged_offsets, ragged_shape, warm_shapes


@pytest.fixture(autouse=True)
def _no_capacity():
    yield
    cudnn_ragged.set_capacity(0)


def test_shape_buckets_slots_and_longest_sample_to_powers_of_two():
    assert ragged_shape([0, 1000, 3500, 8192]) == RaggedShape(slots=4, max_len=8192, total=8192)
    assert ragged_shape([0, 100]) == RaggedShape(slots=1, max_len=512, total=512)
    cudnn_ragged.set_capacity(16_000)  # the run's micro-batch size sets the dQ accumulator: one value for all rows
    assert ragged_shape([0, 5000, 9000]) == RaggedShape(slots=2, max_len=8192, total=16_000)
    assert ragged_shape([0, 17_000]).total == 32_768  # a row past the capacity still gets room


def test_offsets_count_elements_and_park_empty_slots_at_the_row_end():
    table = ragged_offsets([0, 1000, 3500, 8192], slots=4, heads=12, kv_heads=2, dim=128)
    assert table.dtype == torch.int64 and table.shape == (3, 5)
    assert table[0].tolist() == [1000, 2500, 4692, 0, 0]  # lengths; the 4th slot is empty
    assert table[1].tolist() == [0, 1000 * 1536, 3500 * 1536, 8192 * 1536, 8192 * 1536]  # query rows x H x D
    assert table[2].tolist() == [0, 1000 * 256, 3500 * 256, 8192 * 256, 8192 * 256]  # key/value rows x H_kv x D
    with pytest.raises(ValueError, match="do not fit"):
        ragged_offsets([0, 10, 20, 30], slots=2, heads=1, kv_heads=1, dim=8)


@pytest.mark.parametrize("capacity", [4096, 16384, 20480])
def test_warm_up_covers_every_row_a_run_can_pack(capacity):
    """Rows packed first-fit from R1-like lengths (64 tokens to the capacity) never meet an unbuilt plan."""
    from factory.train.packing import pack_first_fit

    warmed = set(warm_shapes(capacity))
    rng = np.random.default_rng(capacity)
    cudnn_ragged.set_capacity(capacity)
    for _ in range(50):
        lengths = np.exp(rng.uniform(np.log(64), np.log(capacity), 64)).astype(int)
        for row in pack_first_fit(list(range(64)), lengths, capacity):
            bounds = np.concatenate([[0], np.cumsum(lengths[row])]).tolist()
            assert ragged_shape(bounds) in warmed, (capacity, bounds)
    assert len(warmed) <= 7 * 7  # a few dozen plans, not one per row


def test_auto_kernel_falls_back_to_hybrid_without_a_hopper_gpu_and_cudnn_frontend():
    from factory.train import attention

    before = attention.ACTIVE.kernel
    try:
        expected = "ragged" if cudnn_ragged.available() else "hybrid"
        assert attention.set_cuda_kernel("auto") == expected
        assert SFTConfig(student="x").attention_kernel == "auto"
        assert SFTConfig(student="x", attention_kernel="ragged").attention_kernel == "ragged"
    finally:
        attention.ACTIVE.kernel = before


def test_garbage_collection_waits_for_the_end_of_the_step():
    from factory.train.trainer import _collect_between_steps

    assert gc.isenabled()
    with _collect_between_steps(True):
        assert not gc.isenabled() and gc.get_freeze_count() > 0
    assert gc.isenabled() and gc.get_freeze_count() == 0
    with _collect_between_steps(False):  # CPU runs keep Python's own collector
        assert gc.isenabled()
