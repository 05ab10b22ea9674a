"""The machine: devices and tf.distribute strategies (`devices`), what the CPU can do natively
(`cpu_features`), the measured matmul peak (`peak`) and the datasheet peaks of accelerators (`datasheet`);
its state during a run (`machine`, with NVIDIA GPUs through `nvml`) and its system description (`system`).

May import `bench.results` (statistics) and `bench.config`; knows nothing of training or runs.
TensorFlow is imported inside the functions of `devices` and `peak`, after the oneDNN choice is made.
"""
