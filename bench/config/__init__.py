"""What a run is: options, device defaults, every check of the input, the recipe, the run's identity, the flags.

`options.RunConfig` declares each option once (its flag, help, allowed values, sweep axis);
`cli` builds the commands' flags from it; `validation` checks everything before any work,
`setup_checks` what only the devices, the data and the Ray cluster can tell; `defaults` decides
the device-dependent `auto` settings; `recipe` the run length and learning-rate schedule;
`identity` the run id and the checkpoint folder's `run.json`; `tuning` what `--autotune` may probe and
its cache key; `cifar_files` where the CIFAR-10 binary files are.

Imports nothing of the harness but `resnet.spec`, and no TensorFlow, Keras or Ray.
"""
