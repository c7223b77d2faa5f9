"""Hand-written PyTorch models, independent of nexusdsl, that the `.nx` examples must equal."""


import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """nanoGPT-style multi-head self-attention with a fused qkv projection."""

    def __init__(self, dim, heads, causal=True, bias=True):
        super().__init__()
        self.heads, self.causal = heads, causal
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.out = nn.Linear(dim, dim, bias=bias)

    def forward(self, x):
        B, T, D = x.shape
        q, k, v = self.qkv(x).split(D, dim=-1)
        q, k, v = (t.view(B, T, self.heads, D // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)  # (B, H, T, D/H), as nanoGPT
        return self.out(y.transpose(1, 2).reshape(B, T, D))


class MLP(nn.Module):
    def __init__(self, dim, mult, approximate="none"):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, dim * mult), nn.Linear(dim * mult, dim)
        self.approximate = approximate

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate=self.approximate))


class TinyLMBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.norm1, self.norm2 = nn.RMSNorm(dim, eps=1e-6), nn.RMSNorm(dim, eps=1e-6)
        self.attn, self.mlp = Attention(dim, heads), MLP(dim, 4)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyLM(nn.Module):
    """The model of docs/language.md "A first file", written by hand."""

    def __init__(self, dim=128, depth=4, heads=4):
        super().__init__()
        self.tok = nn.Embedding(256, dim)
        self.blocks = nn.ModuleList(TinyLMBlock(dim, heads) for _ in range(depth))
        self.norm = nn.RMSNorm(dim, eps=1e-6)

    def forward(self, tokens):
        x = self.tok(tokens)
        for block in self.blocks:
            x = block(x)
        return F.linear(self.norm(x), self.tok.weight)

    @staticmethod
    def nexus_names(depth):
        """Our parameter name -> the `.nx` model's state_dict key."""
        names = {"tok.weight": "tok.weight", "norm.weight": "rmsnorm.weight"}
        for i in range(depth):
            b = f"blocks.{i}"
            names |= {f"{b}.norm1.weight": f"{b}.rmsnorm.weight", f"{b}.norm2.weight": f"{b}.rmsnorm_1.weight"}
            for part in ("qkv", "out"):
                for kind in ("weight", "bias"):
                    names[f"{b}.attn.{part}.{kind}"] = f"{b}.attention.{part}.{kind}"
            for ours, theirs in (("fc1", "linear"), ("fc2", "linear_1")):
                for kind in ("weight", "bias"):
                    names[f"{b}.mlp.{ours}.{kind}"] = f"{b}.mlp.{theirs}.{kind}"
        return names


class GPTBlock(nn.Module):
    def __init__(self, dim, heads, eps):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim, eps=eps), nn.LayerNorm(dim, eps=eps)
        self.attn, self.mlp = Attention(dim, heads), MLP(dim, 4, approximate="tanh")

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """A GPT-2-style model (examples/gpt.nx), written by hand."""

    def __init__(self, dim=96, depth=3, heads=4, context=256, eps=1e-5):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(256, dim), nn.Embedding(context, dim)
        self.blocks = nn.ModuleList(GPTBlock(dim, heads, eps) for _ in range(depth))
        self.ln_f = nn.LayerNorm(dim, eps=eps)

    def forward(self, tokens):
        T = tokens.shape[1]
        x = self.wte(tokens) + self.wpe.weight[:T]
        for block in self.blocks:
            x = block(x)
        return F.linear(self.ln_f(x), self.wte.weight)

    @staticmethod
    def nexus_names(depth):
        names = {"wte.weight": "wte.weight", "wpe.weight": "wpe.weight",
                 "ln_f.weight": "layernorm.weight", "ln_f.bias": "layernorm.bias"}
        for i in range(depth):
            ours, theirs = f"blocks.{i}", f"blocks.{i}.gpt_block"
            for kind in ("weight", "bias"):
                names[f"{ours}.ln1.{kind}"] = f"{theirs}.layernorm.{kind}"
                names[f"{ours}.ln2.{kind}"] = f"{theirs}.layernorm_1.{kind}"
                for part in ("qkv", "out"):
                    names[f"{ours}.attn.{part}.{kind}"] = f"{theirs}.attn.{part}.{kind}"
                names[f"{ours}.mlp.fc1.{kind}"] = f"{theirs}.mlp.linear.{kind}"
                names[f"{ours}.mlp.fc2.{kind}"] = f"{theirs}.mlp.linear_1.{kind}"
        return names
