"""The train/eval step builder: learning, replica equivalence, BN statistics, precision, XLA."""

import math

import numpy as np
import pytest
import tensorflow as tf

from bench.selfcheck.env import batches, make_step_functions, random_batch, replica_values, replica_weights, weights
from resnet.model import batch_norm_layers


def run_steps(trainer, iterator, n):
    return float(trainer.train(iterator, tf.constant(n)))


def test_loss_falls_on_a_learnable_task(check_env, strategies):
    trainer = make_step_functions(check_env, strategies[1], 16)
    it = batches(check_env, strategies[1], *random_batch(16))
    first = run_steps(trainer, it, 1)
    later = [run_steps(trainer, it, 5) for _ in range(4)]
    assert math.isfinite(first) and all(math.isfinite(x) for x in later)
    assert later[-1] < 0.5 * first  # a fixed batch is memorised


def test_two_replicas_match_one_device_on_the_first_step(check_env, strategies):
    """Same global batch, same seed: the same loss and the same updated weights (sync BN makes the
    batch statistics global, so both compute exactly the same function)."""
    images, labels = random_batch(16)
    out = {}
    for k, strategy in strategies.items():
        trainer = make_step_functions(check_env, strategy, 16, sync_bn=True, seed=7)
        before = weights(trainer.model)
        loss = run_steps(trainer, batches(check_env, strategy, images, labels), 1)
        out[k] = (loss, before, weights(trainer.model))
    assert out[1][0] == pytest.approx(out[2][0], rel=1e-5)
    for w1, w2 in zip(out[1][1], out[2][1]):
        np.testing.assert_array_equal(w1, w2)  # same initial weights
    for w1, w2, w0 in zip(out[1][2], out[2][2], out[1][1]):
        np.testing.assert_allclose(w2 - w0, w1 - w0, rtol=2e-3, atol=2e-6)  # same update


def test_per_replica_bn_statistics_are_averaged_and_eval_matches_one_device(check_env, strategies):
    images, labels = random_batch(16)
    mirrored = make_step_functions(check_env, strategies[2], 16, seed=3)
    run_steps(mirrored, batches(check_env, strategies[2], images, labels), 3)
    for layer in batch_norm_layers(mirrored.model):
        for var in (layer.moving_mean, layer.moving_variance):
            r0, r1 = replica_values(strategies[2], var)
            np.testing.assert_array_equal(r0, r1)
    stem = batch_norm_layers(mirrored.model)[0].moving_mean
    assert float(np.abs(stem.numpy()).sum()) > 0  # statistics did move
    # Evaluation on two replicas equals evaluation of the same weights on one device.
    one = make_step_functions(check_env, strategies[1], 16, seed=3)
    for dst, src in zip(one.model.weights, mirrored.model.weights):
        dst.assign(src.numpy())
    mask = np.ones(16, np.float32)
    ds = tf.data.Dataset.from_tensors((images, labels, mask))
    results = []
    for trainer, strategy in ((mirrored, strategies[2]), (one, strategies[1])):
        it = iter(strategy.experimental_distribute_dataset(ds))
        results.append([float(x) for x in trainer.eval_loop(it, tf.constant(1))])
    assert results[0][0] == results[1][0]  # correct count
    assert results[0][1] == pytest.approx(results[1][1], rel=1e-5)  # summed loss
    assert results[0][2] == results[1][2] == 16


def test_without_averaging_replica_statistics_would_differ(check_env, strategies):
    """Guards the test above: the two replicas really see different batches."""
    images, labels = random_batch(16)
    images[8:] = 255 - images[8:]
    trainer = make_step_functions(check_env, strategies[2], 16, seed=3)
    trainer._average_bn = False
    run_steps(trainer, batches(check_env, strategies[2], images, labels), 1)
    r0, r1 = replica_values(strategies[2], batch_norm_layers(trainer.model)[0].moving_mean)
    assert not np.allclose(r0, r1)
    trainer.average_moving_statistics()
    r0, r1 = replica_values(strategies[2], batch_norm_layers(trainer.model)[0].moving_mean)
    np.testing.assert_array_equal(r0, r1)


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
@pytest.mark.parametrize("replicas", [1, pytest.param(2, marks=pytest.mark.slow)])  # 2: end to end (bf16 emulated)
def test_mixed_precision_stays_finite_and_learns(check_env, strategies, precision, replicas):
    strategy = strategies[replicas]
    trainer = make_step_functions(check_env, strategy, 16, precision=precision)
    it = batches(check_env, strategy, *random_batch(16))
    first = run_steps(trainer, it, 1)
    last = run_steps(trainer, it, 8)
    assert math.isfinite(first) and math.isfinite(last)
    assert last < first
    assert all(np.isfinite(w).all() for w in weights(trainer.model))


@pytest.mark.parametrize("replicas", [1, 2])
def test_loss_scale_skips_a_step_with_an_injected_inf(check_env, strategies, replicas):
    strategy = strategies[replicas]
    trainer = make_step_functions(check_env, strategy, 16, precision="mixed_float16", inject_inf_grad_at_step=3)
    it = batches(check_env, strategy, *random_batch(16))
    run_steps(trainer, it, 2)
    scale_before = float(trainer.optimizer.dynamic_scale.numpy())
    before = weights(trainer.model)
    run_steps(trainer, it, 1)  # step 3: gradients are inf
    after = weights(trainer.model)
    for w0, w1 in zip(before, after):
        np.testing.assert_array_equal(w0, w1)  # the update was skipped
    assert float(trainer.optimizer.dynamic_scale.numpy()) == scale_before / 2
    assert int(trainer.skipped_steps.numpy()) == 1
    run_steps(trainer, it, 1)  # step 4 applies again
    assert any(not np.array_equal(w0, w1) for w0, w1 in zip(after, weights(trainer.model)))


# (1 replica with XLA passed too when tried; left out for time: its agreement path is the same code.)
@pytest.mark.slow  # XLA and bf16 compiles over 2 replicas: the longest in-process tests (-m e2e)
@pytest.mark.parametrize("replicas,xla", [(2, False), (2, True)])
def test_overflow_on_one_replica_skips_the_step_on_every_replica(check_env, strategies, replicas, xla):
    """inf in the last replica's gradients only: every replica skips, the scale halves once, training goes on."""
    strategy = strategies[replicas]
    trainer = make_step_functions(
        check_env, strategy, 16, precision="mixed_float16", xla=xla, inject_inf_grad_at=(3, replicas - 1)
    )
    it = batches(check_env, strategy, *random_batch(16))
    first = run_steps(trainer, it, 2)
    scale_before = replica_values(strategy, trainer.optimizer.dynamic_scale)
    assert len(set(scale_before)) == 1
    before = replica_weights(strategy, trainer.model)
    run_steps(trainer, it, 1)  # step 3: the last replica's gradients are inf, the others' finite
    after = replica_weights(strategy, trainer.model)
    for replica in range(replicas):
        for w0, w1 in zip(before[replica], after[replica]):
            np.testing.assert_array_equal(w1, w0)  # skipped on this replica too
    for w_r0, w_r1 in zip(after[0], after[-1]):
        np.testing.assert_array_equal(w_r0, w_r1)
    assert replica_values(strategy, trainer.optimizer.dynamic_scale) == [scale_before[0] / 2] * replicas
    assert int(trainer.skipped_steps.numpy()) == 1
    last = run_steps(trainer, it, 8)  # steps 4-11 apply again
    assert math.isfinite(last) and last < first
    assert all(np.isfinite(w).all() for w in weights(trainer.model))
    assert replica_values(strategy, trainer.optimizer.dynamic_scale) == [scale_before[0] / 2] * replicas
    assert int(trainer.skipped_steps.numpy()) == 1


@pytest.mark.slow  # XLA and bf16 compiles over 2 replicas: the longest in-process tests (-m e2e)
@pytest.mark.parametrize("replicas", [1, 2])
def test_xla_and_no_xla_give_the_same_loss(check_env, strategies, replicas):
    strategy = strategies[replicas]
    images, labels = random_batch(16)
    losses = []
    for xla in (False, True):
        trainer = make_step_functions(check_env, strategy, 16, seed=5, xla=xla)
        it = batches(check_env, strategy, images, labels)
        losses.append([run_steps(trainer, it, 1) for _ in range(3)])
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-3)


def test_injected_nan_makes_the_loss_non_finite(check_env, strategies):
    trainer = make_step_functions(check_env, strategies[1], 16, inject_nan_at_step=2)
    it = batches(check_env, strategies[1], *random_batch(16))
    assert math.isfinite(run_steps(trainer, it, 1))
    assert not math.isfinite(run_steps(trainer, it, 1))


def test_sync_bn_with_xla_over_replicas_is_refused_by_the_one_rule(check_env, strategies):
    """The rule lives in bench.config (judged up front with --cpu_replicas, after setup with the real count)."""
    from bench.config import validation
    from bench.config.options import ConfigError, RunConfig

    with pytest.raises(ConfigError, match="sync_bn"):
        validation.check_xla_over_replicas(RunConfig(sync_bn=True, xla=True, batch_norm="keras"), 2)
    validation.check_xla_over_replicas(RunConfig(sync_bn=True, xla=True, batch_norm="keras"), 1)
    make_step_functions(check_env, strategies[1], 16, sync_bn=True, xla=True)  # one replica: builds


@pytest.mark.slow  # XLA and bf16 compiles over 2 replicas: the longest in-process tests (-m e2e)
@pytest.mark.parametrize("replicas", [1, 2])
def test_fused_batch_norm_trains_like_the_keras_layer(check_env, strategies, replicas):
    """Same seed, same batches: the fused-BN net follows the Keras-BN net step for step, including the
    moving statistics (averaged over replicas) and evaluation."""
    strategy = strategies[replicas]
    images, labels = random_batch(16)
    nets = {}
    for bn in ("keras", "fused"):
        trainer = make_step_functions(check_env, strategy, 16, seed=11, batch_norm=bn)
        it = batches(check_env, strategy, images, labels)
        losses = [run_steps(trainer, it, 1) for _ in range(3)]
        nets[bn] = (trainer, losses)
    (keras_trainer, keras_losses), (fused_trainer, fused_losses) = nets["keras"], nets["fused"]
    assert type(batch_norm_layers(fused_trainer.model)[0]).__name__ == "FusedBatchNormalization"
    np.testing.assert_allclose(fused_losses, keras_losses, rtol=1e-4)
    for wk, wf in zip(keras_trainer.model.weights, fused_trainer.model.weights):
        assert wk.path == wf.path
        np.testing.assert_allclose(wf.numpy(), wk.numpy(), rtol=1e-3, atol=1e-4, err_msg=wk.path)
    for layer in batch_norm_layers(fused_trainer.model):
        r = replica_values(strategy, layer.moving_variance)
        np.testing.assert_array_equal(r[0], r[-1])
    logits = [
        t.model(images.astype(np.float32) / 255.0, training=False).numpy() for t in (keras_trainer, fused_trainer)
    ]
    np.testing.assert_allclose(logits[1], logits[0], rtol=1e-3, atol=1e-4)


@pytest.mark.slow  # XLA and bf16 compiles over 2 replicas: the longest in-process tests (-m e2e)
@pytest.mark.parametrize("replicas", [1, 2])
def test_fused_batch_norm_under_xla_and_bfloat16(check_env, strategies, replicas):
    strategy = strategies[replicas]
    images, labels = random_batch(16)
    losses = {}
    for xla, precision in ((False, "float32"), (True, "float32"), (False, "mixed_bfloat16")):
        trainer = make_step_functions(check_env, strategy, 16, seed=5, xla=xla, precision=precision, batch_norm="fused")
        it = batches(check_env, strategy, images, labels)
        losses[xla, precision] = [run_steps(trainer, it, 1) for _ in range(3)]
    np.testing.assert_allclose(losses[True, "float32"], losses[False, "float32"], rtol=1e-3)
    assert all(math.isfinite(x) for x in losses[False, "mixed_bfloat16"])
    np.testing.assert_allclose(losses[False, "mixed_bfloat16"][0], losses[False, "float32"][0], rtol=0.05)
