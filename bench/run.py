"""python -m bench.run: train one configuration and append its row to results/summary.csv.

Exit status: 0 ok, 1 failed (row written), 2 bad input (nothing written), 3 diverged (row written).
"""

from __future__ import annotations

import dataclasses
import shlex
import sys

from absl import app, flags

from bench import cli, config
from bench.config import ConfigError, RunConfig
from resnet import spec

FLAGS = flags.FLAGS

flags.DEFINE_enum("strategy", "default", config.STRATEGIES + config.UNSUPPORTED_STRATEGIES,
                  "tf.distribute strategy (multi_worker is not supported yet).")
flags.DEFINE_integer("num_gpus", None, "GPUs to use with --strategy=mirrored (default: all visible).")
flags.DEFINE_integer("cpu_replicas", 1, "Without GPUs: split the CPU into this many logical devices (replicas).")
flags.DEFINE_integer("n", 3, "Blocks per stage: depth 6n+2 (9n+2 for bottleneck).")
flags.DEFINE_enum("block", "preact", spec.BLOCKS, "Residual block type.")
flags.DEFINE_enum("shortcut", "B", spec.SHORTCUTS, "Shortcut option of He et al. 2015.")
flags.DEFINE_boolean("sync_bn", False, "Synchronized batch norm (batch statistics all-reduced over replicas).")
flags.DEFINE_enum("batch_norm", "auto", config.BATCH_NORMS,
                  "BN implementation: keras (keras.layers.BatchNormalization) or fused (the same layer on TF's "
                  "fused kernel). auto: fused on CPUs, keras on GPUs and with --sync_bn.")
flags.DEFINE_enum("precision", "float32", spec.PRECISIONS + tuple(config.PRECISION_ALIASES),
                  "Keras dtype policy (fp32, fp16 and bf16 are accepted too).")
flags.DEFINE_boolean("xla", False, "XLA-compile the forward/backward pass.")
flags.DEFINE_enum("onednn", "auto", config.ONEDNN,
                  "oneDNN CPU kernels (TF_ENABLE_ONEDNN_OPTS). auto: the environment variable if set, else on. "
                  "TensorFlow turns them on by itself only on CPUs with AVX-512 VNNI/BF16 or AMX.")
flags.DEFINE_integer("batch_size", 128, "Global batch size (divided evenly over the replicas).")
flags.DEFINE_integer("steps", None, "Training steps (default: the recipe's).")
flags.DEFINE_float("epochs", None, "Training epochs instead of --steps.")
flags.DEFINE_integer("warmup_steps", 10, "Steps excluded from timing (the first, compiling, step always is).")
flags.DEFINE_integer("steps_per_loop", 10, "Steps run inside one tf.function call (one timed window).")
flags.DEFINE_enum("recipe", "bench", config.RECIPES, "bench: short throughput run; paper: He et al. schedule.")
flags.DEFINE_enum("loop", "ctl", config.LOOPS, "ctl: the custom training loop; fit: Keras model.fit.")
flags.DEFINE_enum("data", "auto", config.DATA_KINDS, "Input: tfds, CIFAR binary files, synthetic, or auto.")
flags.DEFINE_string("cifar_dir", None, "Folder with the CIFAR-10 binary files (or its parent).")
flags.DEFINE_string("tfds_dir", None, "tensorflow-datasets data folder.")
flags.DEFINE_float("target_accuracy", None, "Stop when test accuracy reaches this fraction; record the time.")
flags.DEFINE_float("eval_every_epochs", None, "Evaluate every this many epochs (default: at the end).")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_boolean("deterministic", False, "Deterministic ops (slower).")
flags.DEFINE_string("results", "results/summary.csv", "Results CSV to append the row to.")
flags.DEFINE_string("checkpoint_dir", None, "Checkpoint here; a rerun with the same flags resumes.")
flags.DEFINE_integer("checkpoint_every_steps", None, "Checkpoint cadence (default: each eval, or 50 steps).")
flags.DEFINE_string("tensorboard_dir", None, "Write TensorBoard summaries here.")
flags.DEFINE_string("profile_steps", None, "FIRST,LAST: TF profiler trace of these steps (not timed).")
flags.DEFINE_string("profile_dir", None, "Where the profiler trace goes (default: <tensorboard_dir>/profile).")
flags.DEFINE_integer("inject_nan_at_step", None, "Testing: make the loss non-finite at this step.")


def config_from_flags(values) -> RunConfig:
    """A RunConfig from parsed flags: every flag named like a config field overrides it."""
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    overrides = {name: values[name].value for name in fields if name in values}
    overrides["profile_steps"] = config.parse_profile_steps(values["profile_steps"].value)
    overrides = {k: v for k, v in overrides.items() if v is not None or k in ("profile_steps",)}
    return RunConfig(**overrides)


def main(argv):
    del argv
    from bench import loop

    try:
        cfg = config_from_flags(FLAGS)
        outcome = loop.run(cfg, command=shlex.join(sys.argv))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return outcome.exit_code


def entry():
    app.run(main, flags_parser=cli.parse_flags)


if __name__ == "__main__":
    entry()
