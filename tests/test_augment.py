"""Seeded crop-and-flip augmentation: hand-computed crops, determinism per (seed, iteration), and
the same augmented batches for a network trained alone, stacked, or resumed from a checkpoint."""

import pytest
import torch

from ticketlab.data.augment import (AUGMENTATIONS, PADDING, augment_batch, augment_stacked, crop_flip,
                                    draw_crop_flip, resolve_augment)
from ticketlab.errors import TicketlabError
from ticketlab.models import create_model
from ticketlab.train import TrainConfig, train
from ticketlab.train.stacked import StackedJob, train_stacked

from conftest import Interrupt, assert_close_states, image_splits, interrupt_at

IMAGE = torch.arange(1.0, 17.0).view(1, 1, 4, 4)  # values 1..16, so the zero padding is recognisable


def _crop(rows, cols, flips, x=IMAGE):
    return crop_flip(x, torch.tensor(rows), torch.tensor(cols), torch.tensor(flips))


def test_crop_shifts_by_the_offset_and_pads_with_zeros():
    # out[i, j] = padded[i + 3, j + 5] = x[i - 1, j + 1]: one row down, one column left
    expected = torch.tensor([[0.0, 0, 0, 0], [2, 3, 4, 0], [6, 7, 8, 0], [10, 11, 12, 0]])
    assert torch.equal(_crop([3], [5], [False])[0, 0], expected)
    assert torch.equal(_crop([PADDING], [PADDING], [False]), IMAGE)           # centred window: unchanged
    assert torch.equal(_crop([0], [0], [False]), torch.zeros_like(IMAGE))    # 4x4 image shifted out by 4


def test_flip_mirrors_the_crop():
    assert torch.equal(_crop([PADDING], [PADDING], [True])[0, 0], IMAGE[0, 0].flip(-1))
    expected = torch.tensor([[0.0, 0, 0, 0], [0, 4, 3, 2], [0, 8, 7, 6], [0, 12, 11, 10]])
    assert torch.equal(_crop([3], [5], [True])[0, 0], expected)


def test_each_image_and_channel_gets_its_own_row_of_offsets():
    x = torch.cat([IMAGE, 100 + IMAGE]).repeat(1, 2, 1, 1)    # (2, 2, 4, 4)
    x[:, 1] *= -1
    out = _crop([3, PADDING], [5, PADDING], [False, True], x)
    assert torch.equal(out[0, 0], _crop([3], [5], [False])[0, 0])
    assert torch.equal(out[0, 1], -out[0, 0])
    assert torch.equal(out[1], x[1].flip(-1))


def test_augment_batch_applies_its_seeded_draws():
    x = torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    rows, cols, flips = draw_crop_flip(5, 17, 64)
    assert rows.min() >= 0 and rows.max() <= 2 * PADDING and cols.min() >= 0 and cols.max() <= 2 * PADDING
    assert 0 < int(flips.sum()) < 64
    assert torch.equal(augment_batch(x, "crop-flip", 5, 17), crop_flip(x, rows, cols, flips))


def test_draws_are_a_pure_function_of_seed_and_iteration():
    x = torch.randn(32, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    first = augment_batch(x, "crop-flip", seed=3, iteration=10)
    assert torch.equal(first, augment_batch(x.clone(), "crop-flip", seed=3, iteration=10))
    assert not torch.equal(first, augment_batch(x, "crop-flip", seed=4, iteration=10))
    assert not torch.equal(first, augment_batch(x, "crop-flip", seed=3, iteration=11))


def test_a_slice_of_the_global_batch_is_augmented_as_in_the_whole():
    x = torch.randn(12, 1, 6, 6, generator=torch.Generator().manual_seed(2))
    whole = augment_batch(x, "crop-flip", 9, 4)
    assert torch.equal(augment_batch(x[4:8], "crop-flip", 9, 4, first=4, total=12), whole[4:8])


def test_stacked_batches_use_each_networks_own_seed():
    x = torch.randn(3, 10, 2, 5, 5, generator=torch.Generator().manual_seed(3))
    out = augment_stacked(x, "crop-flip", [7, 8, 7], iteration=2)
    for n, seed in enumerate([7, 8, 7]):
        assert torch.equal(out[n], augment_batch(x[n], "crop-flip", seed, 2))


def test_none_is_the_identity_and_non_images_are_refused():
    x = torch.randn(8, 12)
    assert augment_batch(x, "none", 0, 0) is x
    with pytest.raises(TicketlabError, match=r"needs image data \(B, C, H, W\).*shape \(8, 12\)"):
        augment_batch(x, "crop-flip", 0, 0)
    with pytest.raises(TicketlabError, match="Unknown augmentation 'mirror'"):
        augment_batch(torch.zeros(1, 1, 4, 4), "mirror", 0, 0)


def test_auto_is_resolved_per_dataset_and_the_config_stores_only_a_resolved_name():
    assert set(AUGMENTATIONS) == {"none", "crop-flip"}
    assert resolve_augment("auto", "cifar10") == "crop-flip"
    assert [resolve_augment("auto", d) for d in ("mnist", "mnist5k", "digits", "mnist1d")] == ["none"] * 4
    assert resolve_augment("none", "cifar10") == "none" and resolve_augment("crop-flip", "digits") == "crop-flip"
    with pytest.raises(TicketlabError, match="resolve_augment"):
        TrainConfig(augment="auto")
    assert "augment" not in TrainConfig().to_json()                   # old run directories keep their hash
    on = TrainConfig(augment="crop-flip")
    assert on.to_json()["augment"] == "crop-flip" and TrainConfig.from_json(on.to_json()) == on


# --- training --------------------------------------------------------------------------------------

CONFIG = TrainConfig(optimizer="sgd", lr=0.02, momentum=0.9, batch_size=16, steps="12it", eval_every="6it",
                     augment="crop-flip")


def _jobs(count):
    return [StackedJob(model=create_model("conv2", (3, 8, 8), 4, seed=i), mask=None, data_seed=7 + i)
            for i in range(count)]


def test_stacked_training_with_augmentation_equals_sequential():
    """Tolerance as tests/test_stacked_training.py holds convnets: rtol 1e-4, atol 1e-5."""
    data = image_splits(channels=3)
    stacked = _jobs(2)
    train_stacked(stacked, data, CONFIG)
    for s_job, job in zip(stacked, _jobs(2)):
        train(job.model, data, CONFIG, data_seed=job.data_seed)
        assert_close_states(s_job.model.state_dict(), job.model.state_dict(), rtol=1e-4, atol=1e-5)
    plain = _jobs(1)[0]
    train(plain.model, data, TrainConfig(**{**CONFIG.__dict__, "augment": "none"}), data_seed=plain.data_seed)
    weight = "classifier.5.weight"
    assert (plain.model.state_dict()[weight] - stacked[0].model.state_dict()[weight]).abs().max() > 1e-3


def test_resumed_training_with_augmentation_equals_uninterrupted(tmp_path):
    data = image_splits(channels=3)
    whole = _jobs(1)[0]
    reference = train(whole.model, data, CONFIG, data_seed=whole.data_seed)
    ckpt = tmp_path / "ckpt.safetensors"
    with pytest.raises(Interrupt):
        train(_jobs(1)[0].model, data, CONFIG, data_seed=7, checkpoint_path=ckpt, on_step=interrupt_at(9))
    resumed_model = create_model("conv2", (3, 8, 8), 4, seed=99)   # everything must come from the checkpoint
    resumed = train(resumed_model, data, CONFIG, data_seed=7, checkpoint_path=ckpt)
    assert resumed.evals == reference.evals
    for name, tensor in whole.model.state_dict().items():
        assert torch.equal(tensor, resumed_model.state_dict()[name]), name
