"""curvlinops as a user runs it: ``HessianLinearOperator`` + scipy's ``eigsh`` (ARPACK) for top-k.

    python bench/peers/curvlinops_top.py WEIGHTS.pt DATA.pt --top-k 5 [--tol 1e-3] --out r.json

Install (curvlinops-for-pytorch 3.0.1 without torchvision; its import needs einops, einconv,
opt-einsum, linear_operator, tqdm, scipy, numpy; backpack-for-pytorch, which pulls torchvision,
is only imported by ``curvlinops.experimental`` and is not needed for the Hessian operator):

    pip install --no-deps curvlinops-for-pytorch==3.0.1 einops einconv opt-einsum linear_operator

The operator at its defaults (``check_deterministic=True``: two passes over the data and two
products before the first solver product, all counted), ``to_scipy()`` (float32 products, float64
vectors for ARPACK), then ``eigsh(op, k, which="LA", tol=tol, v0=...)``; scipy's ``tol`` stops
when each Ritz pair's residual is at most ``tol * |lambda|`` (0: machine precision). v0 is a
seeded Gaussian vector so runs repeat. Products are counted columns of the operator's ``_matmat``.
"""

import time

T_START = time.perf_counter()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.sparse.linalg import eigsh  # noqa: E402
from curvlinops import HessianLinearOperator  # noqa: E402

import _user  # noqa: E402

T_IMPORTED = time.perf_counter()


def top_eigenvalues(model, x, y, k: int, tol: float, seed: int = 0) -> tuple[np.ndarray, int]:
    """curvlinops' Hessian with ARPACK: the top-k eigenvalues (descending) and the products taken."""
    count = [0]
    matmat = HessianLinearOperator._matmat

    def counted(self, M):
        count[0] += M[0].shape[-1]
        return matmat(self, M)

    HessianLinearOperator._matmat = counted
    try:
        params = [p for p in model.parameters() if p.requires_grad]
        op = HessianLinearOperator(model, torch.nn.CrossEntropyLoss(), params, [(x, y)]).to_scipy()
        v0 = np.random.default_rng(seed).standard_normal(op.shape[0])
        values = eigsh(op, k=k, which="LA", tol=tol, v0=v0, return_eigenvectors=False)
    finally:
        HessianLinearOperator._matmat = matmat
    return np.sort(values)[::-1], count[0]


def main() -> None:
    ap = _user.parser(__doc__.split("\n")[0])
    ap.add_argument("--tol", type=float, default=1e-3, help="eigsh's tol (default here: 1e-3; scipy's own: 0)")
    args = ap.parse_args()
    model, x, y = _user.load(args.weights, args.data)
    t_loaded = time.perf_counter()
    values, products = top_eigenvalues(model, x, y, args.top_k, args.tol)
    _user.finish(args, T_START, T_IMPORTED, t_loaded, values, products, tool="curvlinops", tol=args.tol)


if __name__ == "__main__":
    main()
