"""Unet: shapes, guidance, text dropout, masks, serialization, training, bfloat16."""

import keras
import numpy as np
import pytest
from keras import ops

from imagen_keras import Unet
from imagen_keras.diffusion import classifier_free_guidance
from imagen_keras.generation import guided_call, guided_network, prepare_conditioning
from tests.unet_helpers import (
    CONFIGS,
    SIZE,
    UnetTrainer,
    make_inputs,
    randomize_zero_init,
    to_numpy,
)

_CACHE = {}


def built_unet(name):
    """One built, randomised unet per config and backend (building is the slow part)."""
    if name not in _CACHE:
        unet = Unet(**CONFIGS[name], name=f"unet_{name}")
        x, time, kwargs = make_inputs(CONFIGS[name])
        unet(x, time, **kwargs)
        randomize_zero_init(unet)
        _CACHE[name] = unet
    return _CACHE[name]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_output_shape_and_finite(name):
    unet = built_unet(name)
    x, time, kwargs = make_inputs(CONFIGS[name])
    out = to_numpy(unet(x, time, **kwargs))
    assert out.shape == (2, SIZE, SIZE, 3)
    assert np.all(np.isfinite(out))
    assert np.abs(out).max() > 0


def test_zero_initialised_final_conv_gives_zero_output():
    unet = Unet(**CONFIGS["uncond"])
    x, time, kwargs = make_inputs(CONFIGS["uncond"])
    np.testing.assert_array_equal(to_numpy(unet(x, time, **kwargs)), 0.0)


def test_channels_out():
    config = dict(CONFIGS["uncond"], channels_out=5)
    unet = Unet(**config)
    x, time, kwargs = make_inputs(config)
    assert tuple(unet(x, time, **kwargs).shape) == (2, SIZE, SIZE, 5)


@pytest.mark.parametrize("name", ["full", "efficient"])
def test_cfg_scale_one_equals_conditional(name):
    unet = built_unet(name)
    x, time, kwargs = make_inputs(CONFIGS[name])
    cond = to_numpy(unet(x, time, **kwargs))
    # The doubled (conditional + null) batch of a compiled sampler, at a tensor scale of 1.
    # self_cond changes every step, so it is the network's argument, not conditioning.
    kwargs = dict(kwargs)
    self_cond = kwargs.pop("self_cond", None)
    conditioning = prepare_conditioning(kwargs, x.shape[0], guided=True)
    net = guided_network(unet, conditioning, guided=True, cond_scale=ops.convert_to_tensor(1.0))
    np.testing.assert_allclose(to_numpy(net(x, time, self_cond)), cond, atol=1e-4)


@pytest.mark.parametrize("remove_parallel", [True, False])
def test_cfg_combines_conditional_and_null(remove_parallel):
    unet = built_unet("full")
    x, time, kwargs = make_inputs(CONFIGS["full"])
    cond = unet(x, time, **kwargs)
    null = unet(x, time, cond_drop_prob=1.0, **kwargs)
    expected = to_numpy(classifier_free_guidance(cond, null, 3.0, remove_parallel))
    guided = guided_call(
        unet, x, time, cond_scale=3.0, remove_parallel_component=remove_parallel, **kwargs
    )
    np.testing.assert_allclose(to_numpy(guided), expected, atol=1e-4, rtol=1e-4)
    assert np.abs(expected - to_numpy(cond)).max() > 1e-3


@pytest.mark.parametrize("name", ["full", "efficient"])
def test_text_dropout_prob_one_equals_null_text(name):
    unet = built_unet(name)
    x, time, kwargs = make_inputs(CONFIGS[name])
    dropped = to_numpy(unet(x, time, cond_drop_prob=1.0, **kwargs))
    _, _, other = make_inputs(CONFIGS[name], seed=1)
    kwargs["text_embeds"] = other["text_embeds"]
    null = to_numpy(unet(x, time, text_keep_mask=np.zeros(2, bool), **kwargs))
    np.testing.assert_allclose(dropped, null, atol=1e-6)
    cond = to_numpy(unet(x, time, **kwargs))
    assert np.abs(cond - null).max() > 1e-4


def test_text_dropout_is_per_sample():
    unet = built_unet("full")
    x, time, kwargs = make_inputs(CONFIGS["full"])
    mixed = to_numpy(unet(x, time, text_keep_mask=np.array([True, False]), **kwargs))
    cond = to_numpy(unet(x, time, **kwargs))
    null = to_numpy(unet(x, time, cond_drop_prob=1.0, **kwargs))
    np.testing.assert_allclose(mixed[0], cond[0], atol=1e-5)
    np.testing.assert_allclose(mixed[1], null[1], atol=1e-5)


def test_cond_drop_prob_half_drops_some_samples():
    unet = built_unet("full")
    x, time, kwargs = make_inputs(CONFIGS["full"], batch=16)
    keep = to_numpy(unet.text_keep_mask(16, 0.5)).astype(bool)
    assert 0 < keep.sum() < 16


def test_masked_tokens_do_not_matter():
    unet = built_unet("full")
    x, time, kwargs = make_inputs(CONFIGS["full"])
    before = to_numpy(unet(x, time, **kwargs))
    embeds = np.array(kwargs["text_embeds"])
    embeds[0, -2:] = 100.0  # masked positions of sample 0
    kwargs["text_embeds"] = embeds
    after = to_numpy(unet(x, time, **kwargs))
    np.testing.assert_allclose(after, before, atol=1e-5)
    embeds[0, 0] = 100.0  # an unmasked position
    changed = to_numpy(unet(x, time, **kwargs))
    assert np.abs(changed - before).max() > 1e-4


def test_text_longer_than_max_text_len_is_truncated():
    unet = built_unet("full")
    x, time, kwargs = make_inputs(CONFIGS["full"], tokens=12)
    out = to_numpy(unet(x, time, **kwargs))
    embeds = np.array(kwargs["text_embeds"])
    embeds[:, 8:] = 50.0  # beyond max_text_len=8
    kwargs["text_embeds"] = embeds
    np.testing.assert_allclose(to_numpy(unet(x, time, **kwargs)), out, atol=1e-5)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_keras_save_load_round_trip(name, tmp_path):
    unet = built_unet(name)
    x, time, kwargs = make_inputs(CONFIGS[name])
    path = tmp_path / f"{name}.keras"
    unet.save(path)
    restored = keras.saving.load_model(path)
    assert type(restored) is Unet
    assert restored.get_config() == unet.get_config()
    np.testing.assert_allclose(
        to_numpy(restored(x, time, **kwargs)), to_numpy(unet(x, time, **kwargs)), atol=1e-6
    )


def test_from_config_rebuilds_same_architecture():
    unet = built_unet("efficient")
    clone = Unet.from_config(unet.get_config())
    x, time, kwargs = make_inputs(CONFIGS["efficient"])
    clone(x, time, **kwargs)
    assert clone.count_params() == unet.count_params()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_gradient_step_changes_weights(name):
    config = CONFIGS[name]
    unet = Unet(**config)
    x, time, kwargs = make_inputs(config)
    trainer = UnetTrainer(unet, sorted(kwargs), cond_drop_prob=0.5)
    # XLA only on JAX: compiling the train step with XLA is slow on TensorFlow CPU.
    jit = keras.backend.backend() == "jax"
    trainer.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse", jit_compile=jit)
    inputs = {"x": x, "time": time, **kwargs}
    target = np.ones_like(x)
    trainer(inputs)
    before = [to_numpy(w) for w in unet.trainable_weights]
    losses = [float(trainer.train_on_batch(inputs, target)) for _ in range(3)]
    after = [to_numpy(w) for w in unet.trainable_weights]
    changed = [not np.array_equal(a, b) for a, b in zip(before, after)]
    names = [w.path for w in unet.trainable_weights]
    # The zero-initialised final conv passes gradient on once it has moved; after three
    # steps almost every weight has been updated (a few get no gradient by design, such
    # as the unused pooler of an unconditional unet).
    assert changed[names.index(unet.final_conv.kernel.path)]
    assert sum(changed) / len(changed) > 0.85, [n for n, c in zip(names, changed) if not c]
    assert np.isfinite(losses).all()


def test_bfloat16_forward():
    config = CONFIGS["full"]
    unet = Unet(**config, dtype="mixed_bfloat16")
    x, time, kwargs = make_inputs(config)
    unet(x, time, **kwargs)
    randomize_zero_init(unet)
    out = unet(x, time, **kwargs)
    # Computed in bfloat16, returned in float32 for the diffusion maths around it.
    dense = unet.to_time_cond
    hidden = dense(keras.ops.ones((1, dense.kernel.shape[0])))
    assert keras.backend.standardize_dtype(hidden.dtype) == "bfloat16"
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    assert np.all(np.isfinite(to_numpy(out)))
    guided = guided_call(unet, x, time, cond_scale=2.0, **kwargs)
    assert np.all(np.isfinite(to_numpy(guided)))


def test_cast_model_parameters_configures_unbuilt_unet():
    config = dict(CONFIGS["uncond"], cond_on_text=True, attn_pool_text=True)
    unet = Unet(**config)
    same = unet.cast_model_parameters(
        lowres_cond=True, text_embed_dim=24, channels=3, channels_out=3, cond_on_text=True
    )
    assert same is unet
    reference = Unet(**dict(config, lowres_cond=True, text_embed_dim=24))
    x, time, kwargs = make_inputs(dict(config, lowres_cond=True, text_embed_dim=24))
    unet(x, time, **kwargs)
    reference(x, time, **kwargs)
    assert unet.count_params() == reference.count_params()
    assert unet.get_config()["lowres_cond"] is True


def test_cast_model_parameters_on_built_unet():
    unet = built_unet("uncond")
    assert (
        unet.cast_model_parameters(
            lowres_cond=False, text_embed_dim=None, channels=3, channels_out=3, cond_on_text=False
        )
        is unet
    )
    with pytest.raises(ValueError, match="lowres_cond: unet has False, cascade needs True"):
        unet.cast_model_parameters(
            lowres_cond=True, text_embed_dim=None, channels=3, channels_out=3, cond_on_text=False
        )
