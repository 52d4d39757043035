"""Train your own PyTorch model under gradscope.

Defines a small GPT-style character model in plain PyTorch, scripts it with
torch.jit.script, turns a text file into a safetensors data set of next-character
windows, uploads both and submits a job over the HTTP API. Needs torch and safetensors
(`pip install torch safetensors`) and a running `gradscope serve`.

    python examples/torchscript_gpt.py my-text.txt --server http://localhost:8080
    python examples/torchscript_gpt.py my-text.txt --out gpt-files --no-submit

Then watch the job in the dashboard: its layers are the module's parameter names
(`transformer.h.0.attn.c_attn.weight`, ...).
"""

import argparse
import json
import urllib.error
import urllib.request
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file


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


class Block(nn.Module):
    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d)
        self.attn = Attention(d, heads)
        self.ln_2 = nn.LayerNorm(d)
        self.c_fc = nn.Linear(d, 4 * d)
        self.c_proj = nn.Linear(4 * d, d)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        x = x + self.drop(self.attn(self.ln_1(x)))
        return x + self.drop(self.c_proj(F.gelu(self.c_fc(self.ln_2(x)))))


class Transformer(nn.Module):
    def __init__(self, vocab: int, seq: int, d: int, heads: int, layers: int, dropout: float):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(seq, d)
        self.h = nn.ModuleList([Block(d, heads, dropout) for _ in range(layers)])
        self.ln_f = nn.LayerNorm(d)

    def forward(self, idx):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for block in self.h:
            x = block(x)
        return self.ln_f(x)


class Gpt(nn.Module):
    """Character ids [B, T] to next-character logits [B, T, vocab]."""

    def __init__(self, vocab: int, seq: int, d: int = 128, heads: int = 4, layers: int = 4, dropout: float = 0.1):
        super().__init__()
        self.transformer = Transformer(vocab, seq, d, heads, layers, dropout)
        self.lm_head = nn.Linear(d, vocab, bias=False)

    def forward(self, idx):
        return self.lm_head(self.transformer(idx))


def dataset(text: str, seq: int):
    """Non-overlapping windows of the text's character ids; the last tenth validates."""
    vocab = sorted(set(text))
    ids = torch.tensor([vocab.index(c) for c in text], dtype=torch.int64)
    n = (len(ids) - 1) // seq
    x = ids[: n * seq].view(n, seq)
    y = ids[1 : n * seq + 1].view(n, seq)
    split = max(1, n * 9 // 10)
    parts = {"x": x[:split], "y": y[:split], "x_val": x[split:], "y_val": y[split:]}
    return len(vocab), {name: part.clone() for name, part in parts.items()}


def call(server: str, path: str, body: bytes, content_type: str) -> dict:
    request = urllib.request.Request(f"{server}/api/v1{path}", data=body, method="POST",
                                     headers={"content-type": content_type})
    try:
        with urllib.request.urlopen(request) as response:
            return json.load(response)
    except urllib.error.HTTPError as err:
        # The service says which field is wrong: {"error": {"code", "message", "field"}}.
        raise SystemExit(f"POST {path}: {err.code} {err.read().decode()}") from None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("text", type=Path, help="a UTF-8 text file to learn")
    parser.add_argument("--server", default="http://localhost:8080")
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=Path("."), help="where gpt.pt and gpt.safetensors go")
    parser.add_argument("--no-submit", action="store_true", help="only write the files")
    args = parser.parse_args()

    vocab, tensors = dataset(args.text.read_text(encoding="utf-8"), args.seq)
    args.out.mkdir(parents=True, exist_ok=True)
    model_file, data_file = args.out / "gpt.pt", args.out / "gpt.safetensors"
    torch.jit.script(Gpt(vocab, args.seq)).save(str(model_file))
    save_file(tensors, str(data_file))
    print(f"wrote {model_file} and {data_file}: vocabulary {vocab}, {len(tensors['x'])} windows")
    if args.no_submit:
        return

    octets = "application/octet-stream"
    model = call(args.server, "/models", model_file.read_bytes(), octets)
    data = call(args.server, "/datasets", data_file.read_bytes(), octets)
    print(f"model {model['id']}: {model['params']} parameters in {len(model['parameters'])} tensors")
    spec = {
        "name": "my-gpt",
        "steps": args.steps,
        "batch_size": 32,
        "model": {"kind": "torchscript", "id": model["id"]},
        "task": {"kind": "dataset", "id": data["id"], "loss": "cross_entropy", "eval_every": 100},
        "optimizer": {"kind": "adamw", "lr": 3e-4, "warmup_steps": args.steps // 20,
                      "schedule": "cosine"},
        "policy": {"grad": [{"kind": "clip_norm", "max_norm": 1.0}]},
    }
    job = call(args.server, "/jobs", json.dumps(spec).encode(), "application/json")
    print(f"job {job['id']} queued: {args.server}/#/jobs/{job['id']}")


if __name__ == "__main__":
    main()
