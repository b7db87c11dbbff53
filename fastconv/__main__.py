"""python -m fastconv {info, demo, bench, report}: build facts, a one-layer parity check against torch,
benchmarks against torch and their reports."""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

import torch


def _cmd_info(args: argparse.Namespace) -> int:
    import fastconv
    from fastconv.info import format_build_info

    print(format_build_info(fastconv.build_info()))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    """One ResNet-style layer (conv 3x3 + BN + ReLU + max-pool), fastconv vs torch, forward and backward."""
    import fastconv

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    torch.manual_seed(0)
    ref = torch.nn.Sequential(torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.BatchNorm2d(32), torch.nn.ReLU(),
                              torch.nn.MaxPool2d(3, 2, 1)).to(device)
    ours = fastconv.convert(ref)
    x = torch.randn(4, 16, 28, 28, device=device)
    print(f"device: {device}; layer: {ours}")
    ok = True
    for algo in [a for a in fastconv.available_algorithms(device) if a != "gemm1x1"]:
        ours[0].algo = algo
        xr, xo = x.clone().requires_grad_(), x.clone().requires_grad_()
        yo = ours(xo)
        yo.square().sum().backward()
        yr = ref(xr)
        yr.square().sum().backward()
        err_y = (yo - yr).abs().max().item()
        err_g = (xo.grad - xr.grad).abs().max().item() / max(1.0, xr.grad.abs().max().item())
        good = err_y < 1e-4 and err_g < 1e-4
        ok &= good
        print(f"  algo={algo:<8} max|y-y_torch|={err_y:.2e}  rel max|dx-dx_torch|={err_g:.2e}  "
              f"{'OK' if good else 'MISMATCH'}")
    print("parity:", "OK" if ok else "FAILED")
    return 0 if ok else 1


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastconv", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="what was built and what can run here").set_defaults(fn=_cmd_info)
    demo = sub.add_parser("demo", help="one-layer parity check (fastconv vs torch)")
    demo.add_argument("--device", default="auto", help="auto, cpu or cuda")
    demo.set_defaults(fn=_cmd_demo)
    from fastconv.bench.cli import add_parsers

    add_parsers(sub)
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
