"""landscape: loss landscapes and Hessian spectra of federated models.

The analysis package: model registry, self-describing checkpoints, data sets and
federated partitions, matrix-free Hessian operators and solvers, loss surfaces,
flatness metrics and plots. ``train/`` builds on it; it never imports ``train``.
"""

__version__ = "0.1.0"
