"""PyHessian as a user runs it: top-k Hessian eigenvalues of the CIFAR CNN on one batch.

    python bench/peers/pyhessian_top.py WEIGHTS.pt DATA.pt --top-k 5 [--tol 1e-3 --max-iter 100] --out r.json

``pyhessian.hessian(model, CrossEntropyLoss(), data=(x, y), cuda=False).eigenvalues(top_n=k,
maxIter=..., tol=...)``; the defaults are PyHessian's own (maxIter 100, tol 1e-3). Its
Hessian-vector products are counted by wrapping ``hessian_vector_product`` in the
``pyhessian.hessian`` module (a counter, nothing else). Start vectors come from torch's global
RNG, seeded 0 here (PyHessian leaves it to the user).
"""

import time

T_START = time.perf_counter()

import sys  # noqa: E402
import warnings  # noqa: E402

import torch  # noqa: E402
import pyhessian  # noqa: E402

import _user  # noqa: E402

T_IMPORTED = time.perf_counter()


def main() -> None:
    ap = _user.parser(__doc__.split("\n")[0])
    ap.add_argument("--tol", type=float, default=1e-3)
    ap.add_argument("--max-iter", type=int, default=100)
    ap.add_argument("--budget", type=int, default=None,
                    help="stop unfinished after this many products (the result then has no eigenvalues)")
    args = ap.parse_args()
    model, x, y = _user.load(args.weights, args.data)
    t_loaded = time.perf_counter()

    mod = sys.modules["pyhessian.hessian"]  # the module (``pyhessian.hessian`` the attribute is the class)
    count = [0]
    hvp = mod.hessian_vector_product

    class Budget(Exception):
        pass

    def counted(*a):
        if args.budget is not None and count[0] >= args.budget:
            raise Budget
        count[0] += 1
        return hvp(*a)

    mod.hessian_vector_product = counted
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # backward(create_graph=True) reference-cycle warning
        h = pyhessian.hessian(model, torch.nn.CrossEntropyLoss(), data=(x, y), cuda=False)
        try:
            values, _ = h.eigenvalues(maxIter=args.max_iter, tol=args.tol, top_n=args.top_k)
            finished = True
        except Budget:
            values, finished = [], False
    _user.finish(args, T_START, T_IMPORTED, t_loaded, values, count[0], tool="pyhessian", tol=args.tol,
                 max_iter=args.max_iter, finished=finished)


if __name__ == "__main__":
    main()
