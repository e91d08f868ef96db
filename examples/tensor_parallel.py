"""Tensor (vocab) parallelism: a sharded output projection with an exact label-smoothed loss.

Each rank holds a slice of the vocabulary rows of the output projection (unequal slices: the
vocabulary of 1001 tokens does not divide by the number of ranks). The label-smoothed loss of
the sharded logits is computed with ``labelsmooth.distributed``; rank 0 then checks it, and the
gradients, against the single-device ``labelsmooth.cross_entropy`` of the full logits.

Run on CPU with gloo (loopback only):

    torchrun --standalone --nproc-per-node 2 examples/tensor_parallel.py

``python examples/tensor_parallel.py`` runs the same code as a single rank.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

import labelsmooth as ls
from labelsmooth.distributed import vocab_parallel_linear_cross_entropy

BATCH, SEQ, HIDDEN, VOCAB, EPS = 2, 16, 64, 1001, 0.1


def main() -> int:
    launched = "RANK" in os.environ  # set by torchrun
    if launched:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if launched else 0
    world = dist.get_world_size() if launched else 1

    # The same "model" and batch on every rank (the batch is replicated in tensor parallelism).
    torch.manual_seed(0)
    hidden = torch.randn(BATCH, SEQ, HIDDEN, dtype=torch.float64)
    weight = torch.randn(VOCAB, HIDDEN, dtype=torch.float64) / HIDDEN**0.5
    bias = 0.1 * torch.randn(VOCAB, dtype=torch.float64)
    target = torch.randint(0, VOCAB, (BATCH, SEQ))
    target[:, -3:] = -100  # padding, ignored

    # Shard the vocabulary rows in rank order: near-equal, unequal slices.
    sizes = [len(part) for part in torch.arange(VOCAB).tensor_split(world)]
    start = sum(sizes[:rank])
    stop = start + sizes[rank]
    local_weight = weight[start:stop].clone().requires_grad_()
    local_bias = bias[start:stop].clone().requires_grad_()
    local_hidden = hidden.clone().requires_grad_()

    loss = vocab_parallel_linear_cross_entropy(
        local_hidden, local_weight, target, EPS, local_bias=local_bias
    )
    loss.backward()  # every rank; the hidden-state gradient is all-reduced inside
    print(
        f"rank {rank}: vocabulary rows [{start}, {stop}) of {VOCAB}, loss {loss.item():.10f}",
        flush=True,
    )

    ok = True
    if rank == 0:
        full_hidden = hidden.clone().requires_grad_()
        full_weight = weight.clone().requires_grad_()
        logits = full_hidden @ full_weight.T + bias  # (B, T, V)
        single = ls.cross_entropy(logits.transpose(1, 2), target, EPS)  # class dimension 1
        single.backward()
        ok = (
            torch.allclose(loss, single, rtol=1e-9, atol=1e-9)
            and torch.allclose(local_hidden.grad, full_hidden.grad, rtol=1e-9, atol=1e-9)
            and torch.allclose(local_weight.grad, full_weight.grad[start:stop], atol=1e-9)
        )
        print(f"{world} rank(s), vocab-parallel loss: {loss.item():.10f}")
        print(f"single device, ls.cross_entropy:  {single.item():.10f}")
        print("loss and gradients match" if ok else "MISMATCH")
    if launched:
        dist.destroy_process_group()
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
