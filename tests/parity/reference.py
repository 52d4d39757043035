"""PyTorch reference for gradscope's parity tests.

Usage: python reference.py CASES.json OUT_DIR

CASES.json holds {"models": [...], "grad_policies": [...], "weight_policies": [...],
"optimizers": [...], "schedules": [...], "statistics": [...], "spectral": [...],
"time_profile": [...], "signal": [...], "grad_scaler": [...]}.
For each case this script builds the PyTorch equivalent (modules from torch.nn, the
policies from torch.nn.utils or from their papers' formulas), runs it on inputs it draws
itself, and writes inputs and results as safetensors under OUT_DIR/<case name>/, for the
Rust side to replay and compare.
"""

import json
import math
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

torch.set_num_threads(1)
# The threshold of the `underflow` statistic in these tests: float16's smallest normal.
TINY = 2.0 ** -14
ACTIVATIONS = {"relu": F.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "gelu": F.gelu}


def norm_layer(kind, dim):
    return {"batch": lambda: nn.BatchNorm1d(dim), "layer": lambda: nn.LayerNorm(dim),
            "rms": lambda: nn.RMSNorm(dim)}[kind]()


class Block(nn.Module):
    def __init__(self, width, hidden, norm):
        super().__init__()
        self.linear = nn.Linear(width, hidden)
        if norm != "none":
            self.norm = norm_layer(norm, hidden)


class Mlp(nn.Module):
    def __init__(self, spec, io):
        super().__init__()
        width, hidden = io["features"], spec["hidden"]
        self.blocks = nn.ModuleList()
        for _ in range(spec["layers"]):
            self.blocks.append(Block(width, hidden, spec.get("norm", "none")))
            width = hidden
        self.head = nn.Linear(width, io["output"])
        self.act = ACTIVATIONS[spec.get("activation", "relu")]
        self.residual = spec.get("residual", False)

    def forward(self, x):
        self.outputs = []
        for block in self.blocks:
            h = block.linear(x)
            if hasattr(block, "norm"):
                h = block.norm(h)
            h = self.act(h)
            x = x + h if self.residual and h.shape == x.shape else h
            self.outputs.append(x)
        return self.head(x)


class Recurrent(nn.Module):
    def __init__(self, spec, io):
        super().__init__()
        hidden, kind = spec["hidden"], spec["kind"]
        width = io.get("features")
        if "vocab" in io:
            self.embed = nn.Embedding(io["vocab"], hidden)
            width = hidden
        args = dict(input_size=width, hidden_size=hidden, num_layers=spec["layers"], batch_first=True)
        if kind == "rnn":
            self.rnn = nn.RNN(nonlinearity=spec.get("activation", "tanh"), **args)
        elif kind == "lstm":
            self.lstm = nn.LSTM(**args)
        else:
            self.gru = nn.GRU(**args)
        self.kind = kind
        self.head = nn.Linear(hidden, io["output"])

    def forward(self, x):
        if hasattr(self, "embed"):
            x = self.embed(x)
        out, _ = getattr(self, self.kind)(x)
        return self.head(out)


class Transformer(nn.Module):
    def __init__(self, spec, io):
        super().__init__()
        d, norm = spec["hidden"], spec.get("norm", "layer")
        if "vocab" in io:
            self.embed = nn.Embedding(io["vocab"], d)
        else:
            self.input = nn.Linear(io["features"], d)
        self.pos = nn.Embedding(io["max_len"], d)
        pre = spec.get("norm_position", "pre") == "pre"
        layer = nn.TransformerEncoderLayer(
            d, spec.get("heads", 4), 4 * d, dropout=0.0, activation=ACTIVATIONS[spec.get("activation", "gelu")],
            batch_first=True, norm_first=pre)
        if norm == "rms":
            layer.norm1, layer.norm2 = nn.RMSNorm(d), nn.RMSNorm(d)
        self.encoder = nn.TransformerEncoder(
            layer, spec["layers"], norm=norm_layer(norm, d) if pre else None, enable_nested_tensor=False)
        self.head = nn.Linear(d, io["output"])

    def forward(self, x):
        x = self.embed(x) if hasattr(self, "embed") else self.input(x)
        t = x.shape[1]
        x = x + self.pos.weight[:t]
        mask = nn.Transformer.generate_square_subsequent_mask(t)
        return self.head(self.encoder(x, mask=mask, is_causal=True))


def task_batch(task, io, batch, seq):
    kind = task["kind"]
    if kind == "classification":
        return torch.randn(batch, io["features"]), torch.randint(0, io["output"], (batch,))
    xs = torch.randint(0, io["vocab"], (batch, seq)) if "vocab" in io else torch.randn(batch, seq, io["features"])
    if kind == "char_lm":
        return xs, torch.randint(0, io["output"], (batch, seq))
    if kind == "adding":
        return xs, torch.rand(batch, 1)
    return xs, torch.randint(0, io["output"], (batch, task["length"]))


def task_loss(task, out, ys):
    kind = task["kind"]
    if kind == "adding":
        return F.mse_loss(out[:, -1], ys)
    if kind == "copy":
        out = out[:, -task["length"]:]
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), ys.reshape(-1))


def grad_statistics(g):
    """DESIGN.md's per-layer statistics, the plain way: norm, max |g|, mean, std
    (the sample standard deviation, n - 1: torch.std, NaN for one element), fraction of
    exact zeros, count of NaN/Inf, fraction below TINY in magnitude (zeros included)."""
    g = g.detach().double().flatten()
    return torch.stack([g.norm(), g.abs().max(), g.mean(), g.std(), (g == 0).double().mean(),
                        (~torch.isfinite(g)).double().sum(), (g.abs() < TINY).double().mean()]).float()


def grad_histogram(g):
    """Counts of |g|: exact zeros, [2^e, 2^(e+1)) for e = -40..8 (clamped at both ends),
    then NaN/Inf: 51 buckets."""
    a = g.detach().abs().flatten()
    counts = torch.zeros(51, dtype=torch.int64)
    finite = torch.isfinite(a)
    counts[50] = (~finite).sum()
    nonzero = finite & (a != 0)
    counts[0] = (finite & (a == 0)).sum()
    e = torch.floor(torch.log2(a[nonzero].double())).clamp(-40, 8).long() + 41
    counts += torch.bincount(e, minlength=51)
    return counts


def run_model(case, out):
    torch.manual_seed(case["seed"])
    spec, io, task = case["model"], case["io"], case["task"]
    cls = {"mlp": Mlp, "transformer": Transformer}.get(spec["kind"], Recurrent)
    model = cls(spec, io)
    # Spread the initial weights a little so no test rests on a lucky symmetric start.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    state = {k: v.contiguous() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    save_file(state, out / "weights.safetensors")
    xs, ys = task_batch(task, io, case["batch"], io["max_len"])
    model.train()
    loss = task_loss(task, model(xs), ys)
    loss.backward()
    results = {"loss": loss.detach().reshape(1)}
    for name, p in model.named_parameters():
        results["grad." + name] = p.grad
        results["stats." + name] = grad_statistics(p.grad)
        results["hist." + name] = grad_histogram(p.grad)
    if spec.get("norm") == "batch":
        # The running statistics after one training step, then an evaluation-mode loss.
        for name, buf in model.named_buffers():
            if not name.endswith("num_batches_tracked"):
                results["buffer." + name] = buf.clone()
        model.eval()
        with torch.no_grad():
            results["eval_loss"] = task_loss(task, model(xs), ys).reshape(1)
    save_file({"xs": xs, "ys": ys}, out / "batch.safetensors")
    save_file({k: v.contiguous() for k, v in results.items()}, out / "expected.safetensors")
    (out / "names.json").write_text(json.dumps([n for n, _ in model.named_parameters()]))


# ---- gradient policies: torch.nn.utils where it has them, else the papers' formulas ----

def total_norm(grads):
    return torch.stack([g.norm() for g in grads]).norm().item()


def clip_to(grads, max_norm, norm):
    coef = min(1.0, max_norm / (norm + 1e-6))
    for g in grads:
        g.mul_(coef)


def agc(grads, weights, lam, eps):
    # Brock et al. 2021, unit-wise: rows of matrices, whole vectors.
    def unit_norm(t):
        return t.norm() if t.ndim <= 1 else t.norm(dim=tuple(range(1, t.ndim)), keepdim=True)
    for g, w in zip(grads, weights):
        max_norm = unit_norm(w).clamp(min=eps) * lam
        gn = unit_norm(g)
        g.copy_(torch.where(gn < max_norm, g, g * (max_norm / gn.clamp(min=1e-6))))


class AutoClip:
    """Seetharaman et al. 2020: clip to the p-th percentile of the norms so far."""

    def __init__(self, percentile, history):
        self.p, self.history, self.norms = percentile, history, []

    def __call__(self, grads, weights):
        norm = total_norm(grads)
        self.norms = (self.norms + [norm])[-self.history:]
        clip_to(grads, float(np.percentile(self.norms, self.p)), norm)
        return False


class ZStats:
    """ZClip's estimator (Kumar et al. 2025): warm-up mean and population variance, then EMAs."""

    def __init__(self, alpha, z, warmup):
        self.alpha, self.z, self.warmup, self.buffer = alpha, z, warmup, []
        self.mean = self.var = None

    def warming_up(self, norm):
        if self.mean is not None:
            return False
        self.buffer.append(norm)
        if len(self.buffer) == self.warmup:
            self.mean = sum(self.buffer) / len(self.buffer)
            self.var = sum((x - self.mean) ** 2 for x in self.buffer) / len(self.buffer)
        return True

    def zscore(self, norm):
        return (norm - self.mean) / (math.sqrt(self.var) + 1e-6)

    def update(self, x):
        self.mean = self.alpha * self.mean + (1 - self.alpha) * x
        self.var = self.alpha * self.var + (1 - self.alpha) * (x - self.mean) ** 2


class ZClip(ZStats):
    """As bluorion-com/ZClip's `ZClip.step` (zscore mode, adaptive scaling): during warm-up
    `clip_grad_norm_(max_grad_norm)`; after it, the adaptive threshold capped at
    `max_grad_norm`, and the EMA fed the uncapped threshold (or the norm)."""

    def __init__(self, alpha, z, warmup, max_grad_norm):
        super().__init__(alpha, z, warmup)
        self.max_grad_norm = max_grad_norm

    def __call__(self, grads, weights):
        norm = total_norm(grads)
        if self.warming_up(norm):
            if self.max_grad_norm is not None:
                nn.utils.clip_grad_norm_(as_params(grads), self.max_grad_norm)
            return False
        z = self.zscore(norm)
        clip_val = None
        if z > self.z:
            clip_val = self.mean + (self.z * math.sqrt(self.var)) / (z / self.z)
        adaptive = clip_val if clip_val is not None else norm
        effective = adaptive if self.max_grad_norm is None else min(adaptive, self.max_grad_norm)
        if norm > effective:
            for g in grads:
                g.mul_(effective / (norm + 1e-6))
        self.update(clip_val if clip_val is not None else norm)
        return False


class SkipSpike(ZStats):
    """Skips spikes, at most `max_consecutive` in a row; the next is taken and joins the EMA."""

    def __init__(self, alpha, z, warmup, max_consecutive):
        super().__init__(alpha, z, warmup)
        self.max_consecutive, self.streak = max_consecutive, 0

    def __call__(self, grads, weights):
        norm = total_norm(grads)
        if self.warming_up(norm):
            return False
        if self.zscore(norm) > self.z and self.streak < self.max_consecutive:
            self.streak += 1
            return True
        self.streak = 0
        self.update(norm)
        return False


def as_params(grads):
    """Leaf tensors whose `.grad` are `grads` (torch.nn.utils clips parameters' gradients)."""
    params = []
    for g in grads:
        p = torch.zeros_like(g)
        p.grad = g
        params.append(p)
    return params


def stateless(apply):
    """Wraps an in-place policy that never asks to skip the update."""
    def call(grads, weights):
        apply(grads, weights)
        return False
    return call


def grad_policy(p):
    kind = p["kind"]
    if kind == "clip_norm":
        norm_type = float("inf") if p.get("norm_type") == "inf" else 2.0
        return stateless(lambda g, w: nn.utils.clip_grad_norm_(as_params(g), p["max_norm"], norm_type=norm_type))
    if kind == "clip_value":
        return stateless(lambda g, w: nn.utils.clip_grad_value_(as_params(g), p["limit"]))
    if kind == "clip_layer_norm":
        return stateless(lambda g, w: [nn.utils.clip_grad_norm_(as_params([x]), p["max_norm"]) for x in g])
    if kind == "agc":
        return stateless(lambda g, w: agc(g, w, p.get("lambda", 0.01), p.get("eps", 1e-3)))
    if kind == "autoclip":
        return AutoClip(p.get("percentile", 10.0), p.get("history", 10000))
    if kind == "zclip":
        return ZClip(p.get("alpha", 0.97), p.get("z_threshold", 2.5), p.get("warmup", 25),
                     p.get("max_grad_norm", 1.0))
    if kind == "skip_spike":
        return SkipSpike(p.get("alpha", 0.97), p.get("z_threshold", 6.0), p.get("warmup", 25),
                         p.get("max_consecutive", 10))
    raise ValueError(kind)


SHAPES = [(6, 4), (6,), (3, 6), (3,)]


def run_grad_policies(case, out):
    torch.manual_seed(case["seed"])
    weights = [torch.randn(s) * 0.5 for s in SHAPES]
    policies = [grad_policy(p) for p in case["policies"]]
    tensors = {f"weight.{i}": w for i, w in enumerate(weights)}
    for step in range(case["steps"]):
        # Log-normal scale, with a few large spikes to exercise the adaptive policies.
        scale = math.exp(0.3 * torch.randn(()).item()) * (30.0 if step in case.get("spikes", []) else 1.0)
        grads = [torch.randn(s) * scale for s in SHAPES]
        for i, g in enumerate(grads):
            tensors[f"in.{step}.{i}"] = g.clone()
        skip = False
        for policy in policies:
            skip = bool(policy(grads, weights)) or skip
        for i, g in enumerate(grads):
            tensors[f"out.{step}.{i}"] = g
        tensors[f"skip.{step}"] = torch.tensor([float(skip)])
    save_file({k: v.contiguous() for k, v in tensors.items()}, out / "policy.safetensors")


def run_weight_policies(case, out):
    torch.manual_seed(case["seed"])
    weights = [torch.randn(s) * 2.0 for s in SHAPES]
    tensors = {f"in.{i}": w.clone() for i, w in enumerate(weights)}
    with torch.no_grad():
        for step in range(1, case["steps"] + 1):
            for p in case["policies"]:
                for w in weights:
                    if p["kind"] == "clip":
                        w.clamp_(-p["limit"], p["limit"])
                    elif p["kind"] == "max_norm" and w.ndim >= 2:
                        w.copy_(torch.renorm(w, 2, p.get("dim", 0), p["max"]))
                    elif p["kind"] == "scale" and step % p.get("every", 1) == 0:
                        w.mul_(p["factor"])
    tensors.update({f"out.{i}": w for i, w in enumerate(weights)})
    save_file({k: v.contiguous() for k, v in tensors.items()}, out / "policy.safetensors")


# ---- fp16 loss scaling ----

def run_grad_scaler(case, out):
    """torch.amp.GradScaler on the CPU over a linear-plus-quadratic loss of SHAPES
    parameters, trained by SGD: each step's scale, its gradients after the backward pass
    of the scaled loss, stored in float16 (rounded to it and back, where the scaled
    gradient overflows past 65504) and unscaled, and whether the step was skipped. The
    coefficients of steps listed in `spikes` are 1000 times larger, to overflow."""
    torch.manual_seed(case["seed"])
    params = [nn.Parameter(torch.randn(s)) for s in SHAPES]
    tensors = {f"init.{i}": p.detach().clone() for i, p in enumerate(params)}
    opt = torch.optim.SGD(params, lr=case["lr"], foreach=False)
    ls = case["loss_scale"]
    scaler = torch.amp.GradScaler("cpu", init_scale=ls["init_scale"], growth_factor=ls["growth_factor"],
                                  backoff_factor=ls["backoff_factor"], growth_interval=ls["growth_interval"])
    for step in range(case["steps"]):
        spike = 1000.0 if step in case["spikes"] else 1.0
        coefs = [torch.randn(s) * spike for s in SHAPES]
        for i, c in enumerate(coefs):
            tensors[f"coef.{step}.{i}"] = c
        opt.zero_grad(set_to_none=False)
        loss = sum((c * p).sum() + 0.5 * (p * p).sum() for c, p in zip(coefs, params))
        tensors[f"scale.{step}"] = torch.tensor([scaler.get_scale()], dtype=torch.float64)
        scaler.scale(loss).backward()
        with torch.no_grad():
            for p in params:
                p.grad.copy_(p.grad.half().float())
        scaler.unscale_(opt)
        for i, p in enumerate(params):
            tensors[f"grad.{step}.{i}"] = p.grad.detach().clone()
        before = [p.detach().clone() for p in params]
        scaler.step(opt)
        scaler.update()
        skipped = all(torch.equal(b, p.detach()) for b, p in zip(before, params))
        tensors[f"skip.{step}"] = torch.tensor([float(skipped)])
    tensors.update({f"final.{i}": p.detach().clone() for i, p in enumerate(params)})
    tensors["final_scale"] = torch.tensor([scaler.get_scale()], dtype=torch.float64)
    save_file({k: v.contiguous() for k, v in tensors.items()}, out / "scaler.safetensors")


# ---- optimizers with parameter groups, and learning-rate schedules ----

def run_optimizer(case, out):
    """torch.optim with two parameter groups when `no_decay` is bias_and_norm: every 1-D
    tensor in a group with weight_decay 0 (HF Trainer's and timm's split)."""
    torch.manual_seed(case["seed"])
    params = [nn.Parameter(torch.randn(s)) for s in case["shapes"]]
    tensors = {f"init.{i}": p.detach().clone() for i, p in enumerate(params)}
    wd = case["weight_decay"]
    if case["no_decay"] == "bias_and_norm":
        groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": wd},
                  {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
    else:
        groups = [{"params": params, "weight_decay": wd}]
    lr = case["lr"]
    if case["kind"] == "adamw":
        opt = torch.optim.AdamW(groups, lr=lr, foreach=False)
    elif case["kind"] == "adam":
        opt = torch.optim.Adam(groups, lr=lr, foreach=False)
    else:
        opt = torch.optim.SGD(groups, lr=lr, momentum=case.get("momentum", 0.0), foreach=False)
    for step in range(case["steps"]):
        for i, p in enumerate(params):
            p.grad = torch.randn(p.shape) * (step + 1)
            tensors[f"grad.{step}.{i}"] = p.grad.clone()
        opt.step()
    tensors.update({f"final.{i}": p.detach().clone() for i, p in enumerate(params)})
    save_file({k: v.contiguous() for k, v in tensors.items()}, out / "optimizer.safetensors")


def run_schedule(case, out):
    """The rate of each optimizer.step() under PyTorch's schedulers: warm-up LinearLR from
    1/W over W-1 scheduler steps, then LinearLR to 0 or CosineAnnealingLR over T-W, chained
    by SequentialLR at milestone W."""
    from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR, LinearLR, SequentialLR
    warmup, total = case["warmup_steps"], case["steps"]
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=case["lr"])
    if case["schedule"] == "linear":
        decay = LinearLR(opt, start_factor=1.0, end_factor=0.0, total_iters=total - warmup)
    elif case["schedule"] == "cosine":
        decay = CosineAnnealingLR(opt, T_max=total - warmup)
    else:
        decay = LambdaLR(opt, lambda _: 1.0)
    sched = decay
    if warmup > 0:
        warm = LinearLR(opt, start_factor=1.0 / warmup, end_factor=1.0, total_iters=warmup - 1)
        sched = SequentialLR(opt, [warm, decay], milestones=[warmup])
    rates = []
    for step in range(total):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        if step < total - 1:
            sched.step()
    (out / "rates.json").write_text(json.dumps(rates))


# ---- the statistics engine on chosen gradients: float64 NumPy, and torch.nn.utils ----

def draw_layer(rng, spec):
    """A float32 gradient as `spec` describes it: `n` values drawn from N(mean, std²) (or
    uniform in [low, high)), then `zeros` exact zeros, `nan`, `posinf` and `neginf`
    special values at distinct random places."""
    n = spec["n"]
    if "low" in spec:
        g = rng.uniform(spec["low"], spec["high"], n)
    else:
        g = spec.get("mean", 0.0) + spec.get("std", 1.0) * rng.standard_normal(n)
    g = g.astype(np.float32)
    specials = [0.0] * spec.get("zeros", 0) + [np.nan] * spec.get("nan", 0) \
        + [np.inf] * spec.get("posinf", 0) + [-np.inf] * spec.get("neginf", 0)
    if specials:
        g[rng.choice(n, len(specials), replace=False)] = np.array(specials, dtype=np.float32)
    return g


def numpy_statistics(g32):
    """The statistics by their definitions, in float64 from the float32 values."""
    g = g32.astype(np.float64)
    n = g.size
    with np.errstate(invalid="ignore"):
        mean = g.mean()
        # The sample standard deviation: undefined (NaN) for a single value.
        std = math.nan if n < 2 else math.sqrt(np.sum((g - mean) ** 2) / (n - 1))
        return np.array([math.sqrt(np.sum(g * g)), np.max(np.abs(g)), mean, std, np.mean(g == 0),
                         np.count_nonzero(~np.isfinite(g)), np.mean(np.abs(g) < TINY)], dtype=np.float64)


def numpy_histogram(g32):
    """Bucket counts by frexp (|g| = m·2^e, m in [0.5, 1), so floor(log2 |g|) = e - 1),
    an exact integer count independent of how the engine reads exponent bits."""
    a = np.abs(g32.astype(np.float64))
    finite = np.isfinite(a)
    counts = np.zeros(51, dtype=np.int64)
    counts[50] = np.count_nonzero(~finite)
    counts[0] = np.count_nonzero(a == 0)
    nonzero = a[finite & (a != 0)]
    _, e = np.frexp(nonzero)
    counts += np.bincount(np.clip(e - 1, -40, 8) + 41, minlength=51)
    return counts


def run_statistics(case, out):
    rng = np.random.default_rng(case["seed"])
    tensors = {}
    grads, befores, afters = [], [], []
    for i, spec in enumerate(case["layers"]):
        g = draw_layer(rng, spec)
        before = np.zeros(spec["n"], np.float32) if spec.get("weight") == "zero" \
            else rng.standard_normal(spec["n"]).astype(np.float32)
        after = (before + 1e-3 * rng.standard_normal(spec["n"])).astype(np.float32)
        grads.append(g)
        befores.append(before)
        afters.append(after)
        tensors[f"grad.{i}"] = torch.from_numpy(g)
        tensors[f"before.{i}"] = torch.from_numpy(before)
        tensors[f"after.{i}"] = torch.from_numpy(after)
        tensors[f"stats.{i}"] = torch.from_numpy(numpy_statistics(g))
        tensors[f"hist.{i}"] = torch.from_numpy(numpy_histogram(g))
        b, a = befores[i].astype(np.float64), afters[i].astype(np.float64)
        base = np.linalg.norm(b)
        # ‖Δw‖/‖w‖ has no value where ‖w_before‖ = 0.
        ratio = np.linalg.norm(a - b) / base if base > 0 else math.nan
        tensors[f"weights.{i}"] = torch.tensor([np.linalg.norm(a), ratio], dtype=torch.float64)
    total = math.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in grads))
    # torch.nn.utils.clip_grad_norm_ on the same gradients: its total norm, the clipped
    # gradients, and their norm measured in float64 afterwards.
    params = as_params([torch.from_numpy(g.copy()) for g in grads])
    torch_total = nn.utils.clip_grad_norm_(params, case["max_norm"]).item()
    clipped = [p.grad.numpy() for p in params]
    post = math.sqrt(sum(np.sum(c.astype(np.float64) ** 2) for c in clipped))
    tensors["global"] = torch.tensor([total, torch_total, post, post / total], dtype=torch.float64)
    tensors.update({f"clipped.{i}": torch.from_numpy(c) for i, c in enumerate(clipped)})
    save_file({k: v.contiguous() for k, v in tensors.items()}, out / "statistics.safetensors")


def run_spectral(case, out):
    """A model's weights at `rounds` points of a slow drift, and at each the 2-norm (the
    largest singular value) of every recurrent weight's gate blocks and every square
    hidden weight of an MLP, by torch.linalg.matrix_norm."""
    torch.manual_seed(case["seed"])
    spec, io = case["model"], case["io"]
    model = (Mlp if spec["kind"] == "mlp" else Recurrent)(spec, io)
    hidden = spec["hidden"]
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(case.get("scale", 1.0))
        drift = {n: 0.02 * torch.randn_like(p) for n, p in model.named_parameters()}
        for r in range(case["rounds"]):
            if r > 0:
                for n, p in model.named_parameters():
                    p.add_(drift[n])
            state = {k: v.contiguous() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
            save_file(state, out / f"weights.{r}.safetensors")
            norms = []
            for name, p in model.named_parameters():
                leaf = name.rsplit(".", 1)[-1]
                if leaf.startswith("weight_hh_l"):
                    for block in p.split(hidden, 0):
                        norms.append(torch.linalg.matrix_norm(block.double(), 2))
                elif name.startswith("blocks.") and name.endswith(".linear.weight") and p.shape[0] == p.shape[1]:
                    norms.append(torch.linalg.matrix_norm(p.double(), 2))
            save_file({"radius": torch.stack(norms)}, out / f"expected.{r}.safetensors")


def run_signal(case, out):
    """Each block's output in a training-mode forward: an MLP block's after its activation
    and residual, a transformer encoder layer's (forward hooks), a recurrent layer's last
    hidden state (the h_n of torch.nn.RNN/LSTM/GRU); its mean and root mean square in
    float64."""
    torch.manual_seed(case["seed"])
    spec, io, task = case["model"], case["io"], case["task"]
    cls = {"mlp": Mlp, "transformer": Transformer}.get(spec["kind"], Recurrent)
    model = cls(spec, io)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(case.get("scale", 1.0)).add_(0.05 * torch.randn_like(p))
    state = {k: v.contiguous() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    save_file(state, out / "weights.safetensors")
    xs, ys = task_batch(task, io, case["batch"], io["max_len"])
    outputs = []
    if spec["kind"] == "transformer":
        for layer in model.encoder.layers:
            layer.register_forward_hook(lambda _m, _i, o: outputs.append(o))
    elif spec["kind"] != "mlp":
        rnn = getattr(model, model.kind)
        rnn.register_forward_hook(lambda _m, _i, o: outputs.extend((o[1][0] if model.kind == "lstm" else o[1]).unbind(0)))
    model.train()
    model(xs)
    if spec["kind"] == "mlp":
        outputs = model.outputs
    mean = torch.stack([o.detach().double().mean() for o in outputs])
    rms = torch.stack([o.detach().double().square().mean().sqrt() for o in outputs])
    save_file({"xs": xs, "ys": ys}, out / "batch.safetensors")
    save_file({"mean": mean, "rms": rms}, out / "expected.safetensors")


def run_time_profile(case, out):
    """The gradient reaching the embedded input at each position (the embedding's output,
    the input projection's, or the features themselves), its norm over the width averaged
    over the batch, by autograd with the embedded input's gradient retained."""
    torch.manual_seed(case["seed"])
    spec, io, task = case["model"], case["io"], case["task"]
    model = (Transformer if spec["kind"] == "transformer" else Recurrent)(spec, io)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, out / "weights.safetensors")
    xs, ys = task_batch(task, io, case["batch"], io["max_len"])
    captured = {}

    def keep(_module, _inputs, output):
        output.retain_grad()
        captured["x"] = output

    entry = getattr(model, "embed", None) or getattr(model, "input", None)
    if entry is not None:
        entry.register_forward_hook(keep)
        fed = xs
    else:
        fed = xs.clone().requires_grad_(True)
        captured["x"] = fed
    model.train()
    loss = task_loss(task, model(fed), ys)
    loss.backward()
    grad = captured["x"].grad
    profile = grad.double().norm(dim=2).mean(0).float()
    save_file({"xs": xs, "ys": ys}, out / "batch.safetensors")
    save_file({"profile": profile, "loss": loss.detach().reshape(1)}, out / "expected.safetensors")


def main():
    warnings.simplefilter("ignore")  # schedulers warn about calling step() without gradients
    cases = json.loads(Path(sys.argv[1]).read_text())
    root = Path(sys.argv[2])
    for group, run in [("models", run_model), ("grad_policies", run_grad_policies),
                       ("weight_policies", run_weight_policies), ("optimizers", run_optimizer),
                       ("schedules", run_schedule), ("statistics", run_statistics),
                       ("spectral", run_spectral), ("time_profile", run_time_profile),
                       ("signal", run_signal), ("grad_scaler", run_grad_scaler)]:
        for case in cases.get(group, []):
            out = root / case["name"]
            out.mkdir(parents=True, exist_ok=True)
            run(case, out)


if __name__ == "__main__":
    main()
