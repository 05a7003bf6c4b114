"""How often the certified eigenvalue bounds of ``landscape.eigen.lanczos`` fail, on purpose-made hard spectra.

1500 dense symmetric 80 x 80 matrices with known spectra (uniform, log-uniform over three decades,
Gaussian, a tight cluster 5.0/4.9/4.8 over a uniform bulk, and a quartic ramp), k = 1, 3, 5, tol from
1e-1 to 1e-6; every other run warm-started from a slightly perturbed eigenvector of a LOWER eigenvalue
(an adversarial start: the top eigenvectors are almost absent from it). For every reported pair:

- ``nearest``: the bound holds when some eigenvalue lies within it of the Ritz value (what Bauer-Fike
  and Kato-Temple promise);
- ``ith``: the bound holds against the i-th largest eigenvalue (which a Krylov method can only promise
  once its space has seen the top of the spectrum).

Run:  python bench/certificates.py          (prints counts per kind of bound)
"""

from __future__ import annotations

import math
import warnings

import torch

from landscape.eigen import lanczos

KINDS = ("uniform", "log-uniform", "gaussian", "cluster", "ramp")


def spectrum(kind: int, n: int, g: torch.Generator) -> torch.Tensor:
    if kind == 0:
        return torch.rand(n, generator=g, dtype=torch.float64) * 2 - 0.5
    if kind == 1:
        return 10.0 ** (-3 * torch.rand(n, generator=g, dtype=torch.float64))
    if kind == 2:
        return torch.randn(n, generator=g, dtype=torch.float64)
    if kind == 3:
        return torch.cat([torch.tensor([5.0, 4.9, 4.8], dtype=torch.float64),
                          torch.rand(n - 3, generator=g, dtype=torch.float64)])
    return torch.linspace(0, 1, n, dtype=torch.float64) ** 4


def main(trials: int = 1500, n: int = 80) -> None:
    warnings.simplefilter("ignore")
    g = torch.Generator().manual_seed(0)
    counts = {(how, what): [0, 0] for how in ("gap", "residual") for what in ("nearest", "ith")}
    for t in range(trials):
        spec = spectrum(t % 5, n, g)
        q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
        A = q @ torch.diag(spec) @ q.T
        k = (1, 3, 5)[t % 3]
        tol = (1e-1, 5e-2, 1e-2, 1e-3, 1e-6)[(t // 3) % 5]
        start = None
        if t % 2:
            j = int(torch.randint(1, 6, (1,), generator=g))
            start = q[:, spec.argsort(descending=True)[j]] + 0.05 * torch.randn(n, generator=g, dtype=torch.float64) / math.sqrt(n)
        r = lanczos(A, k, tol=tol, seed=t, start=start)
        errors = {"nearest": (r.eigenvalues[:, None] - spec[None]).abs().min(1).values,
                  "ith": (r.eigenvalues - spec.sort(descending=True).values[:k]).abs()}
        for what, err in errors.items():
            for e, b, how in zip(err, r.bounds, r.certified_by):
                counts[how, what][0] += 1
                counts[how, what][1] += int(e > b * (1 + 1e-9) + 1e-14)
    print(f"{'bound':<10} {'against':<8} {'pairs':>6} {'failed':>7} {'rate':>7}")
    for (how, what), (num, failed) in counts.items():
        print(f"{how:<10} {what:<8} {num:>6} {failed:>7} {failed / max(num, 1):>7.2%}")


if __name__ == "__main__":
    main()
