"""WarmupCosineDecay against closed-form values and against the reference's schedulers."""

import math

import keras
import numpy as np
import pytest

from imagen_keras.training import ImagenAdam, WarmupCosineDecay


def values(schedule, steps):
    return np.array([float(keras.ops.convert_to_numpy(schedule(n))) for n in steps])


def test_closed_form_values():
    schedule = WarmupCosineDecay(1e-3, warmup_steps=4, cosine_decay_max_steps=10)
    got = values(schedule, [0, 1, 3, 5, 10, 12])
    expected = [
        1e-3 * 0.25 * (1 + math.cos(0.0)) / 2,  # first update: lr / warmup
        1e-3 * 0.50 * (1 + math.cos(math.pi * 0.1)) / 2,
        1e-3 * 1.00 * (1 + math.cos(math.pi * 0.3)) / 2,  # warmup over at n = W - 1
        1e-3 * 0.5,  # half-way down the cosine
        0.0,  # the cosine reaches 0 at T
        0.0,  # and stays there (the reference's CosineAnnealingLR would rise again)
    ]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize(
    "warmup, total, expected",
    [
        (None, None, [2e-4, 2e-4, 2e-4]),
        (4, None, [5e-5, 1e-4, 2e-4]),
        (None, 4, [2e-4, 2e-4 * (1 + math.cos(math.pi / 4)) / 2, 1e-4]),
    ],
)
def test_each_factor_alone(warmup, total, expected):
    got = values(WarmupCosineDecay(2e-4, warmup, total), [0, 1, 2 if total else 3])
    np.testing.assert_allclose(got, expected, rtol=1e-6)


class _LinearWarmup:
    """pytorch_warmup 0.2.0 `LinearWarmup` bookkeeping (`dampen`, `dampening`), verbatim."""

    def __init__(self, optimizer, warmup_period):
        self.optimizer, self.warmup_period, self.last_step = optimizer, warmup_period, -1
        self.lrs = [g["lr"] for g in optimizer.param_groups]
        self.dampen()

    def dampen(self):
        self.last_step += 1
        for group in self.optimizer.param_groups:
            group["lr"] *= min(1.0, (self.last_step + 1) / self.warmup_period)

    def step_scheduler(self, scheduler):  # `with warmup.dampening(): scheduler.step()`
        for group, lr in zip(self.optimizer.param_groups, self.lrs):
            group["lr"] = lr
        scheduler.step()
        self.lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.dampen()


def test_matches_the_reference_recursion():
    """torch's CosineAnnealingLR is recursive: lr_n = lr_{n-1} * (1 + cos(pi n / T))
    / (1 + cos(pi (n - 1) / T)); pytorch_warmup then multiplies by min(1, (n + 1) / W)."""
    lr, warmup, total = 1e-4, 5, 12
    undampened, reference = lr, []
    for n in range(total + 1):
        if n:
            undampened *= (1 + math.cos(math.pi * n / total)) / (
                1 + math.cos(math.pi * (n - 1) / total)
            )
        reference.append(undampened * min(1.0, (n + 1) / warmup))
    got = values(WarmupCosineDecay(lr, warmup, total), range(total + 1))
    np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-12)


def test_matches_imagen_pytorch_trainer_schedulers():
    """Replay ImagenTrainer.update's schedulers with torch's own CosineAnnealingLR."""
    if keras.backend.backend() != "torch":
        pytest.skip("uses torch's schedulers; runs with the torch backend (import costs ~8 s)")
    import torch

    lr, warmup, total = 1e-4, 5, 12
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    warmup_scheduler = _LinearWarmup(optimizer, warmup)
    reference = []
    for _ in range(total + 1):
        reference.append(optimizer.param_groups[0]["lr"])  # lr of this update
        optimizer.step()
        warmup_scheduler.step_scheduler(cosine)
    got = values(WarmupCosineDecay(lr, warmup, total), range(total + 1))
    np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-12)


def test_optimizer_evaluates_the_schedule_at_the_update_count():
    schedule = WarmupCosineDecay(1e-3, warmup_steps=10)
    optimizer = ImagenAdam(learning_rate=schedule, gradient_accumulation_steps=2, use_ema=False)
    variable = keras.Variable(np.zeros(2, "float32"))
    optimizer.build([variable])
    for _ in range(5):  # 5 micro-batches = 2 updates + 1 pending micro-batch
        optimizer.apply([keras.ops.ones(2)], [variable])
    assert int(keras.ops.convert_to_numpy(optimizer.iterations)) == 2
    np.testing.assert_allclose(
        float(keras.ops.convert_to_numpy(optimizer.learning_rate)), 1e-3 * 3 / 10, rtol=1e-6
    )


def test_serialization_round_trip():
    schedule = WarmupCosineDecay(3e-4, warmup_steps=7, cosine_decay_max_steps=50)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert isinstance(restored, WarmupCosineDecay)
    assert restored.get_config() == schedule.get_config()
    np.testing.assert_array_equal(values(restored, range(60)), values(schedule, range(60)))


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"learning_rate": -1.0}, "learning_rate=-1.0"),
        ({"learning_rate": float("nan")}, "learning_rate=nan"),
        ({"warmup_steps": 0}, "warmup_steps=0"),
        ({"warmup_steps": 2.5}, "warmup_steps=2.5"),
        ({"cosine_decay_max_steps": -3}, "cosine_decay_max_steps=-3"),
    ],
)
def test_bad_arguments(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        WarmupCosineDecay(**kwargs)
