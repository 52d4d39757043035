"""The same workloads as `cargo bench --bench steps`, in eager PyTorch, for comparison in one run.

Variants, each row labelled with what it measures: a bare step (loss to the host),
torch.nn.utils.clip_grad_norm_, per-layer statistics (norm, max |g|, mean, sample std, zero
fraction, weight norm; non-finite counts only for layers whose norm is not finite) with
foreach norms and one host copy, the same plus clipping by their global norm (as
clip_grad_norm_, without computing the norm twice), and four statistics per layer read back
with .item() each. No update_ratio (it needs a weight snapshot). Median of interleaved
rounds.

    python bench/pytorch_bench.py [--device cpu|cuda] [--large] [--model mlp|lstm|all]
"""

import argparse
import math
import statistics
import time

import torch
from torch import nn


def mlp(device, width, blocks, batch):
    torch.manual_seed(0)
    layers = []
    for _ in range(blocks):
        layers += [nn.Linear(width, width), nn.LayerNorm(width), nn.GELU()]
    net = nn.Sequential(*layers, nn.Linear(width, 10)).to(device)
    xs = torch.randn(batch, width, device=device)
    ys = torch.randint(0, 10, (batch,), device=device)
    name = f"MLP {width} wide x {blocks} blocks, batch {batch}, {len(list(net.parameters()))} tensors"
    return name, net, (lambda: net(xs)), ys


class LstmLm(nn.Module):
    def __init__(self, vocab, hidden, layers):
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.lstm = nn.LSTM(hidden, hidden, layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, xs):
        out, _ = self.lstm(self.embed(xs))
        return self.head(out)


def lstm(device):
    torch.manual_seed(0)
    vocab, hidden, layers, seq, batch = 65, 256, 2, 128, 32
    net = LstmLm(vocab, hidden, layers).to(device)
    xs = torch.randint(0, vocab, (batch, seq), device=device)
    ys = torch.randint(0, vocab, (batch * seq,), device=device)
    name = f"LSTM char LM, {layers} layers x {hidden}, seq {seq}, batch {batch}, {len(list(net.parameters()))} tensors"
    return name, net, (lambda: net(xs).reshape(-1, vocab)), ys


def foreach_stats(grads, weights):
    """Per layer: norm, max |g|, mean, std, zero fraction, weight norm; and the global norm.

    What a careful eager user writes: `torch._foreach_norm` for the norms (2 and inf), the
    global norm as the norm of the layer norms, `torch.std` (the sample standard
    deviation, as gradscope's `grad_std`), and no non-finite counts here: they cost a
    pass, so `count_nonfinite` takes them only for layers whose norm came back non-finite.
    """
    norms = torch.stack(torch._foreach_norm(grads))
    maxes = torch.stack(torch._foreach_norm(grads, float("inf")))
    n = torch.tensor([g.numel() for g in grads], device=grads[0].device, dtype=torch.float32)
    means = torch.stack([g.sum() for g in grads]) / n
    std = torch.stack([g.std() for g in grads])
    zeros = torch.stack([(g == 0).sum() for g in grads]).float()
    wnorms = torch.stack(torch._foreach_norm(weights))
    total = torch.linalg.vector_norm(norms).reshape(1)
    return total, torch.cat([norms, maxes, means, std, zeros / n, wnorms])


def count_nonfinite(grads, host_norms):
    """NaN/Inf counts of the layers whose norm is not finite (a second host copy, rarely)."""
    broken = [i for i, v in enumerate(host_norms) if not math.isfinite(v)]
    if not broken:
        return []
    return torch.stack([(~torch.isfinite(grads[i])).sum() for i in broken]).tolist()


def make_step(variant, net, forward, ys):
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    params = list(net.parameters())
    loss_fn = nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(forward(), ys)
        loss.backward()
        grads = [p.grad for p in params]
        if variant == "bare":
            opt.step()
            loss.item()
        elif variant == "clip":
            total = torch.nn.utils.clip_grad_norm_(params, 1.0)
            torch.stack([loss.detach(), total]).cpu()
            opt.step()
        elif variant in ("stats", "stats+clip"):
            with torch.no_grad():
                total, stats = foreach_stats(grads, params)
                if variant == "stats+clip":
                    # The same global norm, computed once: clipping by it as clip_grad_norm_ does.
                    torch._foreach_mul_(grads, (1.0 / (total[0] + 1e-6)).clamp(max=1.0))
                host = torch.cat([loss.detach().reshape(1), total, stats]).cpu()
                count_nonfinite(grads, host[2 : 2 + len(grads)].tolist())
            opt.step()
        elif variant == "item":
            for g in grads:
                g.norm().item(), g.abs().max().item(), g.mean().item(), g.std().item()
            opt.step()
            loss.item()

    return step


LABELS = {
    "bare": "bare step",
    "clip": "clip_grad_norm_ only",
    "stats": "foreach stats, one host copy",
    "stats+clip": "  + clip by their global norm",
    "item": "4 stats/layer, .item() each",
}


def time_workload(make, args, device):
    runs = []
    name = None
    for variant in LABELS:
        name, net, forward, ys = make()
        runs.append((variant, make_step(variant, net, forward, ys)))
    print(f"\n{name} on {device}")
    for _, step in runs:
        for _ in range(args.warmup):
            step()
    samples = {v: [] for v, _ in runs}
    for r in range(args.rounds):
        order = runs if r % 2 == 0 else list(reversed(runs))
        for variant, step in order:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            samples[variant].append((time.perf_counter() - start) * 1e3 / args.steps)
    medians = {v: statistics.median(s) for v, s in samples.items()}
    print(f"{'variant':<34} {'ms/step':>12} {'vs bare':>10}")
    for variant, ms in medians.items():
        print(f"{LABELS[variant]:<34} {ms:>12.2f} {100 * (ms / medians['bare'] - 1):>+9.1f}%")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--large", action="store_true")
    parser.add_argument("--model", choices=["mlp", "lstm", "all"], default="all")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    large = args.large or device.type == "cuda"
    print(f"PyTorch {torch.__version__} eager: median of {args.rounds} interleaved rounds x {args.steps} steps, "
          f"{torch.get_num_threads()} threads")
    if args.model in ("mlp", "all"):
        width, blocks, batch = (2048, 24, 1024) if large else (256, 12, 128)
        time_workload(lambda: mlp(device, width, blocks, batch), args, device)
    if args.model in ("lstm", "all"):
        time_workload(lambda: lstm(device), args, device)


if __name__ == "__main__":
    main()
