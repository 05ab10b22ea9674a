"""What trains: the input (`data`), augmentation on the device (`augment`), the compiled step
functions for every strategy, precision and XLA setting (`steps`), and the trainers the
controller calls (`trainers`: custom loop, Keras fit, inference).

May import `bench.hardware`, `bench.results`, `bench.config` and `resnet`; knows nothing of the
controller, the row or multi-worker runs.
"""
