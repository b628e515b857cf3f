"""Does an adaptive PGD whose steps are projected off the whitening window evade PCA whitening on lenet5?

Run: ``FISHERSCOPE_DATA=<folder with mnist.npz> python benchmarks/whitening_projected.py [THREADS] [--json out.json]``.

The protocol of ``adaptive-detection``'s PCA-whitening cells, in one script: lenet5 (preset,
checkpoint cache), the whitening fitted on the 60 000 MNIST training images (window from
coefficient 700, eps 1e-11), its 5%-FPR threshold calibrated on test images 200-299, and the
correctly classified ones of test images 300-499 attacked at BIM L2 2.5 and PGD L∞ 0.3:
oblivious, ``DetectorAwarePGD`` (penalty and orthogonal modes, 100 steps, margin 0.1, the
clean-score spread as scale) with its random start, and the same with every step passed
through ``project_off_window`` and no random start (so x_adv − x has no component in the
window before box clipping). Success is judged by the real detector: misclassified and not
flagged. Not a timing benchmark: it lives here because it is a measurement, not a test.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from fisherscope.attacks import BIM, PGD, DetectorAwarePGD
from fisherscope.data import load_dataset
from fisherscope.detectors import PCAWhiteningDetector
from fisherscope.evaluation.adaptive import _scale
from fisherscope.features import fit_pca_whitening
from fisherscope.training import train_model


def pix(t: torch.Tensor) -> np.ndarray:
    return t.flatten(1).double().numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("threads", nargs="?", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = train_model("lenet5", "mnist", progress=False).model.eval()
    test = load_dataset("mnist", "test")
    x, y = test.x[:500], test.y[:500]
    det = PCAWhiteningDetector(whitening=fit_pca_whitening(load_dataset("mnist", "train").x))
    det.fit(pix(x[:200]), np.zeros(200, dtype=int))
    det.calibrate(pix(x[200:300]))
    score = det.torch_score()
    scale = _scale(det.decision_function(pix(x[200:300])))
    xe, ye = x[300:], y[300:]
    with torch.no_grad():
        ok = model(xe).argmax(1) == ye
    xe, ye = xe[ok], ye[ok]
    print(f"{len(ye)} correctly classified images attacked; 5%-FPR threshold {det.threshold_:.4g}")

    def judge(xa: torch.Tensor) -> dict[str, float]:
        with torch.no_grad():
            mis = (model(xa).argmax(1) != ye).numpy()
        und = det.predict(pix(xa)) == 0
        return {"misclassified": float(mis.mean()), "undetected": float(und.mean()),
                "evasion": float((mis & und).mean())}

    rows = []
    for norm, eps in [("l2", 2.5), ("linf", 0.3)]:
        attacks = [("oblivious", BIM(norm="l2", eps=eps, steps=20) if norm == "l2" else PGD(eps=eps, steps=40))]
        for mode in ("penalty", "orthogonal"):
            for proj in (False, True):
                atk = DetectorAwarePGD(eps=eps, norm=norm, score=score, threshold=float(det.threshold_), steps=100,
                                       mode=mode, margin=0.1, scale=scale, random_start=not proj,
                                       step_transform=score.project_off_window if proj else None)
                attacks.append((f"{mode}{', projected, no random start' if proj else ''}", atk))
        for name, atk in attacks:
            t0 = time.perf_counter()
            r = judge(atk(model, xe, ye, generator=torch.Generator().manual_seed(0)))
            rows.append({"norm": norm, "eps": eps, "attack": name, **r, "seconds": time.perf_counter() - t0})
            print(f"{norm} {eps:g} {name:<40} misclassified {r['misclassified']:6.1%}  undetected "
                  f"{r['undetected']:6.1%}  evasion {r['evasion']:6.1%}", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"n": len(ye), "threshold": float(det.threshold_), "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
