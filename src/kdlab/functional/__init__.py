"""Pure loss functions on plain tensors: no hooks, no config, no models.

One module per family; each function's docstring cites its paper. Methods in
:mod:`kdlab.methods` wrap these with taps, weights and adapters.
"""

from kdlab.functional.logits import cross_entropy, kd_loss, logit_regression

__all__ = ["cross_entropy", "kd_loss", "logit_regression"]
