"""What training the MNIST PixelCNN++ of Bad GAN costs here: a few Adam iterations of the official size
(160 filters, 3 resnet blocks per stage, 10 logistics, 2 stages, batch 40, 28x28) on random images in
[-1, 1], timed, then extrapolated to epochs of the 60000 MNIST training images.

    python benchmarks/density_cost.py [--iters 5] [--threads 2]

The first iteration is a warm-up and is not counted. Prints seconds per iteration and the extrapolation.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from ssgan.density import PixelCNNpp, discretized_logistic_mixture_loglik, log_likelihoods


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = PixelCNNpp()  # the official MNIST sizes
    opt = torch.optim.Adam(model.parameters(), lr=2e-4)
    x = torch.rand(40, 1, 28, 28) * 2 - 1
    times = []
    for i in range(args.iters + 1):
        start = time.time()
        nll = -discretized_logistic_mixture_loglik(x, model(x)).mean()
        opt.zero_grad()
        nll.backward()
        opt.step()
        times.append(time.time() - start)
    per_iter = sum(times[1:]) / args.iters
    start = time.time()
    log_likelihoods(model, torch.rand(30, 1, 28, 28) * 2 - 1)
    penalty_forward = time.time() - start
    params = sum(p.numel() for p in model.parameters())
    print(f"{platform.machine()} CPU, {os.cpu_count()} cores, {args.threads} threads, torch {torch.__version__}; "
          f"{params} parameters")
    print(f"training: {per_iter:.2f} s per iteration of 40 images (mean of {args.iters} after a warm-up)")
    print(f"one epoch of 60000 images = 1500 iterations: {1500 * per_iter / 3600:.1f} h")
    print(f"forward of the 30 generated images of one penalty step: {penalty_forward:.2f} s")


if __name__ == "__main__":
    main()
