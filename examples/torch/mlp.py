"""An MLP trained on synthetic data, written for CUDA (runs on the CPU without a GPU).

    python examples/torch/mlp.py                      # CUDA, or the CPU
    gpupool run --torch -- python examples/torch/mlp.py   # the pool's devices

Prints the loss of every step.
"""

import argparse

import torch
from torch import nn


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even with a GPU")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    torch.manual_seed(0)
    inputs = torch.randn(256, 32)
    targets = (inputs[:, :8].sum(dim=1, keepdim=True) > 0).float()
    model = nn.Sequential(
        nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 1)
    ).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    loss_fn = nn.BCEWithLogitsLoss()
    x, y = inputs.to(device), targets.to(device)
    for step in range(args.steps):
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        print(f"step {step} loss {loss.item():.6f}")
    if device == "cuda":
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
