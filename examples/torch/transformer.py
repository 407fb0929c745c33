"""A small transformer language model on synthetic tokens, written for CUDA (runs on the CPU
without a GPU).

    python examples/torch/transformer.py
    gpupool run --torch -- python examples/torch/transformer.py

Prints the loss of every step.
"""

import argparse

import torch
import torch.nn.functional as F
from torch import nn


class LM(nn.Module):
    def __init__(self, vocab: int, width: int, heads: int, layers: int, context: int) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, width)
        self.positions = nn.Embedding(context, width)
        layer = nn.TransformerEncoderLayer(
            width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        steps = idx.shape[1]
        positions = torch.arange(steps, device=idx.device)
        x = self.tokens(idx) + self.positions(positions)
        mask = nn.Transformer.generate_square_subsequent_mask(steps, device=idx.device)
        x = self.blocks(x, mask=mask, is_causal=True)
        return self.head(self.norm(x))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even with a GPU")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    torch.manual_seed(0)
    vocab, context = 64, 32
    data = torch.randint(0, vocab, (16, context + 1))
    model = LM(vocab, width=64, heads=4, layers=2, context=context).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    inputs, targets = data[:, :-1].to(device), data[:, 1:].to(device)
    for step in range(args.steps):
        optimizer.zero_grad()
        logits = model(inputs)
        loss = F.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        print(f"step {step} loss {loss.item():.6f}")


if __name__ == "__main__":
    main()
