"""The accuracy the papers (and TensorFlow's own benchmarks) report for CIFAR-10 ResNets, as bands a run can fall outside.

- He et al. 2015 ("Deep Residual Learning", Table 6; original blocks, option A shortcuts): test
  error of ResNet-20/32/44/56/110/1202 = 8.75/7.51/7.17/6.97/6.43/7.93%; for ResNet-110 the best of
  5 runs, whose mean ± std is 6.61 ± 0.16%.
- He et al. 2016 ("Identity Mappings", pre-activation; projection shortcuts where the shape
  changes): ResNet-110 6.37%, ResNet-164 (bottleneck) 5.46%, ResNet-1001 (bottleneck) 4.92%.
- TensorFlow's official Keras CIFAR-10 benchmark passes a ResNet-56 run only at a top-1 accuracy
  within 0.929-0.938.

A band is the interval of test accuracy a run of the paper's recipe should land in: TF's own for
ResNet-56; for ResNet-110 (original) the 5 runs' mean ± 2 std; for the single figures, the figure
± 2 × 0.16 pp (the only run-to-run spread the papers give, ResNet-110's, borrowed: said in the
band's source). A band applies only to a row trained with the paper's full recipe (`--recipe
paper`, its whole length, `--lr_scale 1`, no early stop at a target) on real CIFAR-10 (`data`
files or tfds with the 50,000 training images); synthetic data and other files get none.
Pure: no TensorFlow.
"""

from __future__ import annotations

import dataclasses

from bench.config import recipe

PAPER_SPREAD_PP = 0.16  # He et al. 2015: ResNet-110's std over 5 runs (percentage points of error)
CIFAR10_TRAIN_IMAGES = recipe.CIFAR_TRAIN_IMAGES
REAL_DATA = ("files", "tfds")


@dataclasses.dataclass(frozen=True)
class Band:
    low: float  # test accuracy (fraction)
    high: float
    paper_error: float | None  # the paper's own figure (% test error), if it gives one
    source: str

    def judge(self, accuracy):
        """inside | below the band | above the band."""
        if accuracy < self.low:
            return "below the band"
        if accuracy > self.high:
            return "above the band"
        return "inside"

    def text(self):
        return f"{self.low:.4f}–{self.high:.4f}"


def _from_error(error_pct, spread_pp, source):
    return Band(1 - (error_pct + 2 * spread_pp) / 100, 1 - (error_pct - 2 * spread_pp) / 100, error_pct, source)


HE2015 = "He et al. 2015, Table 6"
HE2016 = "He et al. 2016"
BORROWED = f"± 2 × {PAPER_SPREAD_PP} pp (ResNet-110's spread)"

# (block, depth, shortcut or None for any) -> band
BANDS = {
    ("original", 20, "A"): _from_error(8.75, PAPER_SPREAD_PP, f"{HE2015}: 8.75% error {BORROWED}"),
    ("original", 32, "A"): _from_error(7.51, PAPER_SPREAD_PP, f"{HE2015}: 7.51% error {BORROWED}"),
    ("original", 44, "A"): _from_error(7.17, PAPER_SPREAD_PP, f"{HE2015}: 7.17% error {BORROWED}"),
    ("original", 56, None): Band(
        0.929, 0.938, 6.97, "TensorFlow's official ResNet-56 benchmark (He et al.: 6.97% error)"
    ),
    ("original", 110, "A"): Band(
        1 - (6.61 + 2 * 0.16) / 100,
        1 - (6.61 - 2 * 0.16) / 100,
        6.43,
        f"{HE2015}: 6.61 ± 0.16% error over 5 runs, ± 2 std",
    ),
    ("original", 1202, "A"): _from_error(7.93, PAPER_SPREAD_PP, f"{HE2015}: 7.93% error {BORROWED}"),
    ("preact", 110, "B"): _from_error(6.37, PAPER_SPREAD_PP, f"{HE2016}: 6.37% error {BORROWED}"),
    ("bottleneck", 164, "B"): _from_error(5.46, PAPER_SPREAD_PP, f"{HE2016}: 5.46% error {BORROWED}"),
    ("bottleneck", 1001, "B"): _from_error(4.92, PAPER_SPREAD_PP, f"{HE2016}: 4.92% error {BORROWED}"),
}


def reference_errors():
    """{block: {depth: the paper's % test error}} (the report's accuracy-vs-depth plot marks them)."""
    errors = {}
    for (block, depth, _), band in BANDS.items():
        errors.setdefault(block, {})[depth] = band.paper_error
    return errors


def band_for(block, depth, shortcut):
    """The band of a configuration the papers report, or None."""
    return BANDS.get((block, int(depth), shortcut)) or BANDS.get((block, int(depth), None))


def full_paper_recipe(row):
    """Whether a row (a dict of the table's text or numbers) trained with the paper's full recipe on real
    CIFAR-10: `recipe=paper`, its whole length, lr_scale 1, no target stopping it early, 50,000 images."""
    try:
        steps, batch, epochs = (float(row.get(k) or "nan") for k in ("total_steps", "global_batch_size", "epochs"))
        lr_scale = float(row.get("lr_scale") or 1)
    except (TypeError, ValueError):
        return False
    if not (steps > 0 and batch > 0 and epochs > 0):
        return False
    return (
        row.get("recipe") == "paper"
        and row.get("data") in REAL_DATA
        and row.get("mode", "train") in ("train", "")
        and lr_scale == 1.0
        and row.get("target_accuracy") in (None, "")
        and round(steps * batch / epochs) == CIFAR10_TRAIN_IMAGES
        and steps * batch >= recipe.PAPER_ITERATIONS * recipe.PAPER_BATCH
    )
