"""Scripted models and data sets for gradscope's TorchScript tests, and their PyTorch
reference runs.

Usage: python user_models.py OUT_DIR [STEPS MAX_NORM LR]

Writes to OUT_DIR:
- gpt.pt, gpt.safetensors: a 2-block GPT-style transformer (causal self-attention,
  GELU MLP, pre-LN) scripted with torch.jit.script, and a next-token data set;
- mlp.pt, mlp.safetensors: an MLP with BatchNorm1d, scripted, and a classification set;
- gpt.json, mlp.json: the same modules trained in PyTorch for STEPS steps with
  torch.optim.AdamW and clip_grad_norm_(MAX_NORM) on the whole data set each step (a
  batch as large as the data set): the loss and every parameter's gradient norm before
  clipping, per step;
- frozen.pt: a scripted module with no trainable parameter;
- buffered.pt: a scripted module with buffers of its own and in nested batch norms (one
  without running statistics), a frozen parameter and a plain tensor attribute;
- buffers.json: `named_buffers()` (name, shape, dtype) of gpt.pt, mlp.pt and buffered.pt
  as PyTorch loads them;
- nan.safetensors (a NaN in x), short_y.safetensors (y one sample short),
  wide.safetensors (x one feature wider than mlp.pt takes), float_y.safetensors
  (float targets).
"""

import json
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

torch.set_num_threads(1)

VOCAB, SEQ, WIDTH, HEADS, GPT_SAMPLES = 16, 8, 16, 2, 8
FEATURES, CLASSES, MLP_SAMPLES = 6, 3, 16


class Attention(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.c_attn = nn.Linear(d, 3 * d)
        self.c_proj = nn.Linear(d, d)
        self.heads = heads

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.c_attn(x).split(c, dim=2)
        h = self.heads
        q = q.view(b, t, h, c // h).transpose(1, 2)
        k = k.view(b, t, h, c // h).transpose(1, 2)
        v = v.view(b, t, h, c // h).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(b, t, c))


class Mlp(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.c_fc = nn.Linear(d, 4 * d)
        self.c_proj = nn.Linear(4 * d, d)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d)
        self.attn = Attention(d, heads)
        self.ln_2 = nn.LayerNorm(d)
        self.mlp = Mlp(d)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, vocab: int, seq: int, d: int, heads: int, layers: int):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(seq, d)
        self.h = nn.ModuleList([Block(d, heads) for _ in range(layers)])
        self.ln_f = nn.LayerNorm(d)

    def forward(self, idx):
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        return self.ln_f(x)


class Gpt(nn.Module):
    """Token ids [B, T] to logits [B, T, vocab]."""

    def __init__(self, vocab: int, seq: int, d: int, heads: int, layers: int):
        super().__init__()
        self.transformer = Transformer(vocab, seq, d, heads, layers)
        self.lm_head = nn.Linear(d, vocab, bias=False)

    def forward(self, idx):
        return self.lm_head(self.transformer(idx))


class Frozen(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(3), requires_grad=False)

    def forward(self, x):
        return x * self.scale


class Buffered(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.register_buffer("scale", torch.ones(2, 2))
        self.blocks = nn.ModuleList([
            nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3)),
            nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5, track_running_stats=False)),
        ])
        self.frozen = nn.Parameter(torch.ones(3), requires_grad=False)
        self.plain = torch.zeros(3)
        self.register_buffer("steps", torch.zeros((), dtype=torch.int32))

    def forward(self, x):
        x = self.fc(x) * self.frozen + self.plain
        for block in self.blocks:
            x = block(x)
        return x * self.scale.sum()


def mlp():
    return nn.Sequential(
        nn.Linear(FEATURES, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, CLASSES)
    )


def reference(path, x, y, steps, max_norm, lr):
    """Trains the saved module as PyTorch would: whole-set batches, AdamW, clipping."""
    module = torch.jit.load(str(path))
    module.train()
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    losses, norms = [], []
    for _ in range(steps):
        out = module(x)
        loss = F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        losses.append(loss.item())
        norms.append([p.grad.norm().item() for p in params])
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        opt.step()
    return {"names": [n for n, _ in named], "losses": losses, "grad_norms": norms}


def main():
    out = Path(sys.argv[1])
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 50
    max_norm = float(sys.argv[3]) if len(sys.argv) > 3 else 0.5
    lr = float(sys.argv[4]) if len(sys.argv) > 4 else 1e-2
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    gpt = torch.jit.script(Gpt(VOCAB, SEQ, WIDTH, HEADS, 2))
    gpt.save(str(out / "gpt.pt"))
    # A periodic "text" of token ids: each target is the next token.
    text = torch.tensor([(3 * i + i // 5) % VOCAB for i in range(GPT_SAMPLES * SEQ + 1)])
    gx = torch.stack([text[i * SEQ:(i + 1) * SEQ] for i in range(GPT_SAMPLES)])
    gy = torch.stack([text[i * SEQ + 1:(i + 1) * SEQ + 1] for i in range(GPT_SAMPLES)])
    save_file({"x": gx.contiguous(), "y": gy.contiguous()}, str(out / "gpt.safetensors"))

    net = torch.jit.script(mlp())
    net.save(str(out / "mlp.pt"))
    mx = torch.randn(MLP_SAMPLES, FEATURES)
    my = torch.randint(0, CLASSES, (MLP_SAMPLES,))
    save_file({"x": mx, "y": my, "x_val": mx[:4].clone(), "y_val": my[:4].clone()},
              str(out / "mlp.safetensors"))

    for name, x, y in [("gpt", gx, gy), ("mlp", mx, my)]:
        result = reference(out / f"{name}.pt", x, y, steps, max_norm, lr)
        (out / f"{name}.json").write_text(json.dumps(result))

    torch.jit.script(Frozen()).save(str(out / "frozen.pt"))
    torch.jit.script(Buffered()).save(str(out / "buffered.pt"))
    buffers = {
        name: [
            {"name": n, "shape": list(b.shape), "dtype": str(b.dtype).removeprefix("torch.")}
            for n, b in torch.jit.load(str(out / f"{name}.pt")).named_buffers()
        ]
        for name in ["gpt", "mlp", "buffered"]
    }
    (out / "buffers.json").write_text(json.dumps(buffers))
    nan = mx.clone()
    nan[3, 2] = float("nan")
    save_file({"x": nan, "y": my}, str(out / "nan.safetensors"))
    save_file({"x": mx, "y": my[:-1].clone()}, str(out / "short_y.safetensors"))
    save_file({"x": torch.randn(MLP_SAMPLES, FEATURES + 1), "y": my}, str(out / "wide.safetensors"))
    save_file({"x": mx, "y": my.float()}, str(out / "float_y.safetensors"))


if __name__ == "__main__":
    main()
