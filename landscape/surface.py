"""Loss surfaces: the loss and accuracy on a line, grid, volume or plane of parameter settings.

A surface is the function

    s(c) = (loss_S(w0 + sum_i c_i d_i), accuracy_S(w0 + sum_i c_i d_i))   for every data source S,

evaluated at every point ``c`` of a grid whose axes are given coordinate vectors
(symmetric ``linspace(-r, r, n)`` around the checkpoint, so the centre is a grid point
for odd ``n`` [Li18 §4]; ``linspace(-0.5, 1.5, n)`` for the interpolation from model A
to model B; true Euclidean units with margins for the plane through three models
[G18 §3]). Every point is set from the base ``w0`` (no drift) on a private copy of the
model: the caller's parameters and buffers are never touched.

Result structure
----------------
:func:`load_result` returns (and :func:`evaluate` returns) one plain dict, the
interface to :mod:`landscape.plots`::

    {
      "kind": "line" | "grid" | "volume" | "plane",
      "axes": [np.ndarray, ...],          # 1 (line), 2 (grid, plane) or 3 (volume) float64
                                          # coordinate vectors, one per direction
      "axis_labels": ["alpha", "beta"],   # one str per axis (e.g. "alpha", "beta", "gamma",
                                          # "interpolation", "u (Euclidean)", "v (Euclidean)")
      "values": {                         # one float64 array per source and metric, shape
        "train/loss": ndarray,            # (len(axes[0]), len(axes[1]), ...), "ij" indexing:
        "train/accuracy": ndarray,        # values[k][i, j] is the point axes[0][i], axes[1][j]
        "test/loss": ndarray, ...         # (so matplotlib's contour(x, y, Z) wants Z.T).
      },                                  # Sources: "train", "test", "client 0", "client 1", ...
                                          # Loss: mean cross-entropy; accuracy: fraction in [0, 1].
                                          # NaN/inf where the model diverged (draw as gaps)
                                          # and NaN where not evaluated yet (see "done").
      "done": ndarray of bool,            # same shape: which points are evaluated (all True
                                          # once metadata["complete"])
      "markers": [                        # models to draw on the surface (may be empty)
        {"label": "global" | "client 3" | "swa" | "A" | "B" | "round 40" | ...,
         "role": "global" | "client" | "swa" | "trajectory" | None,
         "coords": [float, ...],          # one coordinate per axis, in the axes' units
         "distance": float | None},       # off-surface (Euclidean) distance for projected
      ],                                  # models (plane, PCA); 0.0 for models on it
      "metadata": {                       # JSON-ready; identifies the run
        "format": "landscape-surface", "format_version": 1,
        "version": landscape.__version__,
        "kind": ..., "shape": [n0, n1, ...], "sources": ["train", "test", ...],
        "checkpoints": [Checkpoint.describe(), ...],   # path, sha256, model, round, role, ...
        "origin_sha256": str,             # hash of the base parameters and buffers
        "directions": {"kind": "random" | "eigen" | "pca" | "plane" | "interpolation" | "file",
                       "seed": int | None, "sha256": str, ...},   # + normalization, cosines,
                                                                  # eigenvalues, explained variance
        "data": {"train": spec dict, "test": spec dict, ...},     # + sha256 of each source
        "bn": "eval" | "recalibrate", "calibration": spec dict | None,
        "dtype": "float32" | "float64", "device": "cpu" | "cuda:0" | ...,
        "points_per_batch": int, "batch_size": int | None,
        "num_done": int, "complete": bool,
        "nonfinite": {"train/loss": count, ...},   # points whose value is NaN or inf
      },
    }

On disk the result is one ``.npz`` (``allow_pickle=False`` readable): arrays
``axis0``, ``axis1``, ..., ``done``, ``values/<source>/<metric>`` and a JSON string
``metadata`` that also holds ``axis_labels`` and ``markers``.
"""
