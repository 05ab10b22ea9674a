"""Contracts of the resnet package: parameter counts, cost, dtypes, gradients, names, errors."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from resnet import cost, spec
from resnet.model import batch_norm_layers, build_resnet, decayed_kernels

# Trainable parameters from the real models (He et al. 2015 Table 6 lists option A:
# 0.27M, 0.46M, 0.66M, 0.85M, 1.7M, 19.4M for n = 3, 5, 7, 9, 18, 200).
PINNED = {
    ("original", "A"): {3: 269722, 5: 464154, 7: 658586, 9: 853018, 18: 1727962},
    ("original", "B"): {3: 272474, 5: 466906, 7: 661338, 9: 855770, 18: 1730714},
    ("original", "C"): {3: 283962, 5: 489594, 7: 695226, 9: 900858, 18: 1826202},
    ("preact", "A"): {3: 269722, 5: 464154, 7: 658586, 9: 853018, 18: 1727962},
    ("preact", "B"): {3: 272282, 5: 466714, 7: 661146, 9: 855578, 18: 1730522},
    ("preact", "C"): {3: 283290, 5: 488474, 7: 693658, 9: 898842, 18: 1822170},
    ("bottleneck", "B"): {18: 1703258},  # ResNet-164, 1.7M in He et al. 2016
}
PAPER_MILLIONS = {3: 0.27, 5: 0.46, 7: 0.66, 9: 0.85, 18: 1.7, 200: 19.4}


def trainable(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_variables)


def closed_form_params(n, block, shortcut, projections=True):
    """Independent count from the papers' description (not from the model code)."""
    total = 3 * 3 * 3 * 16 + (2 * 16 if block == "original" else 0)
    c = 16
    for width, stride in ((16, 1), (32, 2), (64, 2)):
        out = width * 4 if block == "bottleneck" else width
        for i in range(n):
            s = stride if i == 0 else 1
            if block == "bottleneck":
                total += c * width + 9 * width * width + width * out + 2 * c + 4 * width
            elif block == "preact":
                total += 9 * c * out + 9 * out * out + 2 * c + 2 * out
            else:
                total += 9 * c * out + 9 * out * out + 4 * out
            if projections and (shortcut == "C" or (shortcut == "B" and (c != out or s != 1))):
                total += c * out + (2 * out if block == "original" else 0)
            c = out
    if block != "original":
        total += 2 * c
    return total + c * 10 + 10


# The shallowest of each family and the deepest of the default one (pre-activation, B) in the in-process suite;
# the other depths end to end.
PINNED_CASES = [
    pytest.param(
        block,
        shortcut,
        n,
        marks=() if n == 3 or (block, shortcut, n) == ("preact", "B", 18) else pytest.mark.slow,
        id=f"{block}-{shortcut}-{n}",
    )
    for (block, shortcut), counts in sorted(PINNED.items())
    for n in counts
]


@pytest.mark.parametrize("block, shortcut, n", PINNED_CASES)
def test_parameter_counts_are_pinned_and_match_the_closed_form(block, shortcut, n):
    expected = PINNED[(block, shortcut)][n]
    model = build_resnet(n, block=block, shortcut=shortcut)
    assert trainable(model) == expected
    assert closed_form_params(n, block, shortcut) == expected
    if shortcut == "A" and block != "bottleneck":
        assert round(expected / 1e6, 2) == pytest.approx(PAPER_MILLIONS[n], abs=0.01 if n < 18 else 0.05)


@pytest.mark.slow
def test_resnet_1202_has_19_4_million_parameters():
    model = build_resnet(200, block="original", shortcut="A")
    assert trainable(model) == 19421274 == closed_form_params(200, "original", "A")
    assert model.name == "resnet1202_original_A"


@pytest.mark.parametrize("block", ["preact", "original", "bottleneck"])
def test_option_a_adds_nothing_and_b_c_add_exactly_the_projections(block):
    n = 2
    plain = closed_form_params(n, block, "A", projections=False)
    a = build_resnet(n, block=block, shortcut="A")
    assert trainable(a) == plain
    assert not [w for layer in a.layers if "shortcut" in layer.name for w in layer.weights]
    for shortcut in ("B", "C"):
        model = build_resnet(n, block=block, shortcut=shortcut)
        proj = [layer for layer in model.layers if "shortcut" in layer.name]
        proj_params = sum(int(np.prod(w.shape)) for layer in proj for w in layer.trainable_weights)
        assert proj_params > 0
        assert trainable(model) == plain + proj_params
        for layer in proj:
            if isinstance(layer, keras.layers.Conv2D):
                assert layer.kernel.shape[:2] == (1, 1) and not layer.use_bias
            else:
                assert isinstance(layer, keras.layers.BatchNormalization) and block == "original"
    # B projects only where the shape changes: stage 2 and 3 entries (and stage 1 for bottleneck)
    b = build_resnet(n, block=block, shortcut="B")
    convs = sorted(
        layer.name for layer in b.layers if layer.name.endswith("_shortcut") and isinstance(layer, keras.layers.Conv2D)
    )
    expected = ["stage2_block1_shortcut", "stage3_block1_shortcut"]
    if block == "bottleneck":
        expected = ["stage1_block1_shortcut"] + expected
    assert convs == expected


def model_macs(model):
    """Multiply-adds counted from the built model's layers and their output shapes."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kh, kw, cin, cout = layer.kernel.shape
            _, h, w, _ = layer.output.shape
            total += h * w * kh * kw * cin * cout
        elif isinstance(layer, keras.layers.Dense):
            total += int(np.prod(layer.kernel.shape))
    return total


@pytest.mark.parametrize(
    "n,block,shortcut",
    [
        (3, "preact", "A"),
        (3, "preact", "B"),
        (5, "original", "C"),
        (9, "original", "A"),
        (2, "bottleneck", "B"),
        (3, "bottleneck", "C"),
    ],
)
def test_analytic_cost_agrees_with_the_built_model(n, block, shortcut):
    c = cost.cost(n, block, shortcut)
    counted = model_macs(build_resnet(n, block=block, shortcut=shortcut))
    assert abs(c.macs - counted) / counted < 0.01
    assert c.forward_flops == 2 * c.macs and c.train_flops == 3 * c.forward_flops


def test_resnet20_costs_40_8_million_multiply_adds():
    assert cost.forward_macs(3, "preact", "B") / 1e6 == pytest.approx(40.8, abs=0.05)


@pytest.mark.parametrize(
    "precision,compute",
    [
        ("float32", "float32"),
        ("mixed_float16", "float16"),
        ("mixed_bfloat16", "bfloat16"),
    ],
)
def test_shapes_and_dtypes_under_each_policy(precision, compute):
    model = build_resnet(1, precision=precision)
    logits = model(np.zeros((4, 32, 32, 3), np.float32), training=False)
    assert logits.shape == (4, 10)
    assert logits.dtype == tf.float32
    assert model.get_layer("stem_conv").compute_dtype == compute
    assert all(v.dtype == tf.float32 for v in model.trainable_variables)


@pytest.mark.parametrize("block", spec.BLOCKS)
@pytest.mark.parametrize("shortcut", spec.SHORTCUTS)
def test_one_step_gives_finite_gradients(block, shortcut):
    model = build_resnet(1, block=block, shortcut=shortcut)
    x = tf.random.stateless_normal((4, 32, 32, 3), seed=(1, 2))
    y = tf.constant([0, 1, 2, 3])
    with tf.GradientTape() as tape:
        logits = model(x, training=True)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
    grads = tape.gradient(loss, model.trainable_variables)
    assert all(g is not None for g in grads)
    assert all(bool(tf.reduce_all(tf.math.is_finite(g))) for g in grads)
    assert math.isfinite(float(loss))
    assert sum(float(tf.reduce_sum(tf.abs(g))) for g in grads) > 0


def test_stable_layer_names_and_structure():
    model = build_resnet(2, block="preact", shortcut="B")
    names = {layer.name for layer in model.layers}
    for name in (
        "stem_conv",
        "stage1_block1_preact_bn",
        "stage1_block1_conv1",
        "stage1_block2_conv2",
        "stage2_block1_conv1",
        "stage2_block1_shortcut",
        "stage3_block2_add",
        "final_bn",
        "final_relu",
        "pool",
        "fc",
        "logits",
    ):
        assert name in names
    assert model.get_layer("stage2_block1_conv1").strides == (2, 2)
    assert model.get_layer("stage2_block2_conv1").strides == (1, 1)
    assert model.get_layer("stage3_block1_conv1").filters == 64
    assert not model.get_layer("stem_conv").use_bias
    original = build_resnet(2, block="original")
    assert "stem_bn" in {layer.name for layer in original.layers}
    assert "final_bn" not in {layer.name for layer in original.layers}
    # depth counts weighted layers: convs on the main path + the dense layer
    main_convs = [
        layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D) and "shortcut" not in layer.name
    ]
    assert len(main_convs) + 1 == spec.depth(2) == 14


def test_weight_decay_targets_conv_and_dense_kernels_only():
    model = build_resnet(1, shortcut="C")
    kernels = decayed_kernels(model)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert len(kernels) == len(convs) + 1
    assert all(len(k.shape) in (2, 4) for k in kernels)
    assert len(batch_norm_layers(model)) > 0


def test_sync_bn_option_reaches_every_batch_norm():
    model = build_resnet(1, sync_bn=True)
    assert all(layer.synchronized for layer in batch_norm_layers(model))
    assert not any(layer.synchronized for layer in batch_norm_layers(build_resnet(1)))


@pytest.mark.parametrize("precision,atol", [("float32", 1e-4), ("mixed_bfloat16", 0.05)])
def test_fused_batch_norm_layer_computes_what_keras_batch_norm_computes(precision, atol):
    """Outputs, gradients, moving statistics (three training calls) and inference of the two layers."""
    from resnet.layers import FusedBatchNormalization

    rng = np.random.default_rng(0)
    kwargs = dict(momentum=spec.BN_MOMENTUM, epsilon=spec.BN_EPSILON, dtype=keras.DTypePolicy(precision))
    layers = [keras.layers.BatchNormalization(**kwargs), FusedBatchNormalization(**kwargs)]
    gamma, beta = rng.uniform(0.5, 2.0, 5).astype(np.float32), rng.normal(size=5).astype(np.float32)
    for layer in layers:
        layer.build((8, 6, 6, 5))
        layer.gamma.assign(gamma)
        layer.beta.assign(beta)
    for _call in range(3):
        x = tf.constant(rng.normal(3.0, 2.5, (8, 6, 6, 5)).astype(np.float32))
        upstream = tf.constant(rng.normal(size=(8, 6, 6, 5)).astype(np.float32))
        outs, grads = [], []
        for layer in layers:
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x, training=True)
                loss = tf.reduce_sum(tf.cast(y, tf.float32) * upstream)
            outs.append(tf.cast(y, tf.float32).numpy())
            grads.append([g.numpy() for g in tape.gradient(loss, [x, layer.gamma, layer.beta])])
        np.testing.assert_allclose(outs[1], outs[0], atol=atol, rtol=atol)
        for gk, gf in zip(*grads):
            np.testing.assert_allclose(gf, gk, atol=50 * atol, rtol=atol)
        np.testing.assert_allclose(layers[1].moving_mean.numpy(), layers[0].moving_mean.numpy(), rtol=1e-4)
        np.testing.assert_allclose(layers[1].moving_variance.numpy(), layers[0].moving_variance.numpy(), rtol=1e-4)
    assert layers[1].moving_mean.numpy() == pytest.approx(np.full(5, 3.0 * (1 - 0.9**3)), abs=0.3)
    x = tf.constant(rng.normal(3.0, 2.5, (4, 6, 6, 5)).astype(np.float32))
    np.testing.assert_allclose(
        tf.cast(layers[1](x, training=False), tf.float32).numpy(),
        tf.cast(layers[0](x, training=False), tf.float32).numpy(),
        atol=atol,
        rtol=atol,
    )
    assert layers[1](x).dtype == layers[0](x).dtype


def test_fused_batch_norm_option_and_its_limits():
    model = build_resnet(1, batch_norm="fused")
    assert {type(layer).__name__ for layer in batch_norm_layers(model)} == {"FusedBatchNormalization"}
    assert [w.path for w in model.weights] == [w.path for w in build_resnet(1).weights]
    with pytest.raises(ValueError, match="sync_bn"):
        build_resnet(1, batch_norm="fused", sync_bn=True)
    with pytest.raises(ValueError, match="batch_norm"):
        build_resnet(1, batch_norm="cudnn")


@pytest.mark.parametrize(
    "kwargs,argument",
    [
        ({"n": 0}, "n"),
        ({"n": -3}, "n"),
        ({"n": 2.5}, "n"),
        ({"n": 3, "block": "wide"}, "block"),
        ({"n": 3, "shortcut": "D"}, "shortcut"),
        ({"n": 3, "input_shape": (32, 32)}, "input_shape"),
        ({"n": 3, "input_shape": (32, 0, 3)}, "input_shape"),
        ({"n": 3, "precision": "float64"}, "precision"),
        ({"n": 3, "num_classes": 0}, "num_classes"),
    ],
)
def test_bad_arguments_raise_value_errors_naming_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=rf"\b{argument}\b") as err:
        build_resnet(**kwargs)
    if argument in ("block", "shortcut"):
        allowed = spec.BLOCKS if argument == "block" else spec.SHORTCUTS
        assert all(a in str(err.value) for a in allowed)
    if argument != "precision":  # the cost model validates the same architecture arguments
        with pytest.raises(ValueError, match=rf"\b{argument}\b"):
            cost.cost(**kwargs)
