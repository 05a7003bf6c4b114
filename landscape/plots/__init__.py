"""Drawing only, never computing: every figure is made from a result that already holds its numbers.

- :mod:`landscape.plots.static`: matplotlib figures (PNG/PDF/SVG by file suffix) of
  surfaces, curves, Hessian spectral densities and flatness metrics.
- :mod:`landscape.plots.interactive`: self-contained plotly HTML (plotly.js inside
  the file, works offline) of surfaces with the models as markers.
- :mod:`landscape.plots.markers`: what both draw of the models: the training path,
  which models a volume's slice shows, one label per place.

The surface input is the dict of :func:`landscape.surface.load_result` (its structure
is documented in :mod:`landscape.surface`).
"""

#: File suffixes the static figures can be written to (checked before any computation).
IMAGE_SUFFIXES = (".png", ".pdf", ".svg")
