"""The next-scale generator: VAR's transformer (FoundationVision/VAR ``models/var.py``, commit
78b9539) on the CODA tokenizer's scales, and its input path from the tokenizer's value table.

Sequence layout (VAR's): the scales' tokens, coarse to fine, row-major inside a scale; L = sum s^2
(680 for the f16 scales). Token 0..first_l-1 is the start: the class embedding plus ``pos_start``.
The input at the tokens of scale k+1 is the tokenizer's partial decode after scales 1..k,
area-downsampled to scale k+1 and embedded by ``word_embed``. Every token adds its scale's learned
positions (``pos_scales``) and its level embedding. Attention is block-causal over scales: a token
sees its own scale and every coarser one. The class embedding (row ``num_classes`` = the null class,
used for guidance and class dropout) is also the AdaLN condition of every block and of the head.

Inputs are pluggable: anything with ``start(batch)``, ``advance(f_hat, k, idx)`` and
``teacher_forcing(indices)`` (``CodeValueInputs`` is the product's; the VAR golden test plugs in
VAR's own quantizer with its Phi convolutions).
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from huggingface_hub import ModelHubMixin, hf_hub_download
from huggingface_hub.errors import HFValidationError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .. import __version__
from ..files import UnreadableFileError, atomic_path, reading, write_json
from ..quantizers.multiscale import F16_SCALES, add_scale_codes, check_int, check_scales, downsample
from .blocks import AdaLNBeforeHead, AdaLNSelfAttention

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
READ_WHAT = "generator directory (config.json + model.safetensors)"
READ_REMEDY = "rerun the generator's train stage (`coda train-generator`), or point to another generator"

# VAR's init_weights arguments, named after its flags (utils/arg_util.py; build_vae_var's defaults).
INIT_ADALN = 0.5        # --aln: AdaLN scale/shift weights multiplied by this
INIT_HEAD = 0.02        # --hd: head weight multiplied by this
# --alng: AdaLN gamma weights. The code default is 1e-5; the README's commands set 1e-3 for d16/d20,
# 1e-4 for d24, 1e-5 for d30 (recipe_for_depth).
INIT_ADALN_GAMMA = 1e-3


def recipe_for_depth(depth: int) -> dict:
    """The README commands' per-size settings: base lr per 256 images (tblr), AdaLN gamma init (alng),
    final lr fraction (wpe) and drop path (build_vae_var: 0.1 * depth / 24)."""
    big = depth >= 24
    return {"base_lr": 8e-5 if big else 1e-4, "init_adaln_gamma": 1e-5 if depth >= 30 else 1e-4 if big else 1e-3,
            "final_lr_fraction": 0.01 if big else 0.1, "drop_path": 0.1 * depth / 24}


def rows(latent: Tensor) -> Tensor:
    """B x d x s x s -> B x s^2 x d, positions row-major (the token order)."""
    return latent.flatten(2).transpose(1, 2)


class CodeValueInputs(nn.Module):
    """The generator's inputs from a frozen copy of the tokenizer's value table (``code_values()``):
    the partial sums of ``residual_decode`` (the same operations in the same order, so bit for bit
    ``indices_to_latent(indices, scales=k)``), area-downsampled to the next scale."""

    def __init__(self, codebook_size: int, dim: int, scales):
        super().__init__()
        self.scales = tuple(scales)
        self.register_buffer("code_values", torch.zeros(codebook_size, dim))

    def start(self, batch: int) -> Tensor:
        side = self.scales[-1]
        return self.code_values.new_zeros(batch, self.code_values.shape[1], side, side)

    def advance(self, f_hat: Tensor, k: int, idx: Tensor) -> tuple[Tensor, Tensor | None]:
        """Add scale k's codes (``idx``: B x s_k x s_k or B x s_k^2); return the new sum and the
        next scale's input (B x s_{k+1}^2 x d; None after the last scale)."""
        side = self.scales[k]
        f_hat = add_scale_codes(f_hat, self.code_values, idx.reshape(-1, side, side))
        if k + 1 == len(self.scales):
            return f_hat, None
        return f_hat, rows(downsample(f_hat, self.scales[k + 1]))

    def teacher_forcing(self, indices: list[Tensor]) -> Tensor:
        """The inputs of scales 2..K in one pass: B x (L - s_1^2) x d."""
        f_hat, inputs = self.start(indices[0].shape[0]), []
        for k in range(len(self.scales) - 1):
            f_hat, nxt = self.advance(f_hat, k, indices[k])
            inputs.append(nxt)
        return torch.cat(inputs, dim=1)


class NextScaleGenerator(nn.Module, ModelHubMixin, library_name="coda", license="apache-2.0",
                         tags=["image-generation", "next-scale-prediction", "var", "coda"]):
    def __init__(self, num_classes: int, codebook_size: int, code_dim: int, scales=F16_SCALES, depth: int = 16,
                 width: int = 1024, heads: int = 16, mlp_ratio: float = 4.0, norm_eps: float = 1e-6,
                 drop_path: float = 0.0, class_names: list[str] | None = None,
                 tokenizer_sha256: str | None = None):
        super().__init__()
        self.num_classes = check_int("num_classes", num_classes, 1)
        self.codebook_size = check_int("codebook_size", codebook_size, 2)
        self.code_dim = check_int("code_dim", code_dim, 1)
        self.scales = check_scales(scales)
        self.depth, self.width, self.heads = check_int("depth", depth, 1), check_int("width", width, 1), heads
        self.mlp_ratio, self.norm_eps, self.drop_path = float(mlp_ratio), float(norm_eps), float(drop_path)
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.class_names, self.tokenizer_sha256 = class_names, tokenizer_sha256
        self.first_l = self.scales[0] ** 2
        self.length = sum(s * s for s in self.scales)
        self.init_std = math.sqrt(1 / width / 3)

        self.class_emb = nn.Embedding(num_classes + 1, width)  # row num_classes: the null class
        self.pos_start = nn.Parameter(torch.empty(1, self.first_l, width))
        self.pos_scales = nn.Parameter(torch.empty(1, self.length, width))
        self.level_emb = nn.Embedding(len(self.scales), width)
        self.word_embed = nn.Linear(code_dim, width)
        rates = torch.linspace(0, drop_path, depth).tolist()
        self.blocks = nn.ModuleList(AdaLNSelfAttention(width, width, heads, mlp_ratio, norm_eps, rate) for rate in rates)
        self.head_norm = AdaLNBeforeHead(width, width, norm_eps)
        self.head = nn.Linear(width, codebook_size)
        self.inputs = CodeValueInputs(codebook_size, code_dim, self.scales)
        self.inputs.requires_grad_(False)

        levels = torch.cat([torch.full((s * s,), i) for i, s in enumerate(self.scales)])
        self.register_buffer("levels", levels, persistent=False)
        # token i sees token j iff scale(j) <= scale(i)
        mask = torch.where(levels[None, :] <= levels[:, None], 0.0, -math.inf)
        self.register_buffer("mask", mask[None, None], persistent=False)
        self.init_weights()

    # -- initialisation ------------------------------------------------------------------------
    @torch.no_grad()
    def init_weights(self, init_adaln: float = INIT_ADALN, init_adaln_gamma: float = INIT_ADALN_GAMMA,
                     init_head: float = INIT_HEAD) -> None:
        """VAR's init_weights with build_vae_var's init_std = sqrt(1 / (3 width)): truncated normal for
        every linear and embedding, zero biases, then the named rescalings; attn.proj and ffn.fc2
        divided by sqrt(2 depth). The positions use the same std (VAR's __init__)."""
        std = self.init_std
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.trunc_normal_(module.weight, std=std)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
        for start in range(len(self.scales)):  # one table per scale, drawn in turn as VAR does
            begin = sum(s * s for s in self.scales[:start])
            nn.init.trunc_normal_(self.pos_scales[:, begin:begin + self.scales[start] ** 2], std=std)
        nn.init.trunc_normal_(self.pos_start, std=std)
        self.head.weight.mul_(init_head)
        self.head.bias.zero_()
        self.head_norm.ada.weight.mul_(init_adaln)
        self.head_norm.ada.bias.zero_()
        for block in self.blocks:
            block.attn.proj.weight.div_(math.sqrt(2 * self.depth))
            block.ffn.fc2.weight.div_(math.sqrt(2 * self.depth))
            block.ada.weight[2 * self.width:].mul_(init_adaln)        # scales and shifts
            block.ada.weight[:2 * self.width].mul_(init_adaln_gamma)  # gamma1, gamma2
            block.ada.bias.zero_()
            block.attn.q_bias.zero_()
            block.attn.v_bias.zero_()
            block.attn.log_scale.fill_(math.log(4.0))
        self.inputs.code_values.zero_()  # set from the tokenizer (set_code_values), never trained

    def set_code_values(self, code_values: Tensor, tokenizer_sha256: str) -> None:
        """Freeze a copy of the tokenizer's value table: the generator's inputs are defined by it."""
        if tuple(code_values.shape) != (self.codebook_size, self.code_dim):
            raise ValueError(f"value table {tuple(code_values.shape)} does not fit the generator "
                             f"({self.codebook_size} codes of {self.code_dim} channels)")
        self.inputs.code_values.copy_(code_values.detach())
        self.tokenizer_sha256 = tokenizer_sha256

    # -- the transformer -----------------------------------------------------------------------
    def start_tokens(self, cond: Tensor) -> Tensor:
        """The first scale's tokens: class embedding + pos_start + its positions and level."""
        level_pos = self.level_emb(self.levels[:self.first_l]) + self.pos_scales[0, :self.first_l]
        return cond[:, None] + self.pos_start + level_pos

    def embed(self, inputs: Tensor, begin: int) -> Tensor:
        """Token embeddings of ``inputs`` (B x n x code_dim) at sequence positions begin..begin+n."""
        end = begin + inputs.shape[1]
        return self.word_embed(inputs.float()) + self.level_emb(self.levels[begin:end]) + self.pos_scales[0, begin:end]

    def transformer(self, x: Tensor, cond: Tensor, mask: Tensor | None) -> Tensor:
        """Blocks and head: logits (fp32). ``mask`` None for the cached, scale-by-scale calls."""
        for block in self.blocks:
            x = block(x, cond, mask)
        return self.head(self.head_norm(x.float(), cond).float()).float()

    def forward(self, labels: Tensor, inputs: Tensor) -> Tensor:
        """Teacher forcing: labels (B; num_classes = null) and the inputs of scales 2..K
        (B x (L - first_l) x code_dim) -> logits B x L x V."""
        cond = self.class_emb(labels)
        x = torch.cat((self.start_tokens(cond), self.embed(inputs, self.first_l)), dim=1)
        return self.transformer(x, cond, self.mask)

    def logits_for(self, labels: Tensor, indices: list[Tensor]) -> Tensor:
        """Teacher-forced logits of token maps (one B x s x s per scale) through the value table."""
        return self(labels, self.inputs.teacher_forcing(indices))

    def kv_caching(self, enabled: bool) -> None:
        for block in self.blocks:
            block.attn.kv_caching(enabled)

    # -- labels ----------------------------------------------------------------------------------
    def class_index(self, name_or_index: str | int) -> int:
        """A class given by its name or its index (a string of digits is an index)."""
        text = str(name_or_index)
        if text.isdigit() and int(text) < self.num_classes:
            return int(text)
        if self.class_names and text in self.class_names:
            return self.class_names.index(text)
        names = f": {', '.join(self.class_names[:12])}{' ...' if self.num_classes > 12 else ''}" \
            if self.class_names else ""
        raise ValueError(f"unknown class {text!r}: the generator has {self.num_classes} classes, give an index "
                         f"0..{self.num_classes - 1} or a name{names}")

    # -- persistence -----------------------------------------------------------------------------
    @property
    def config(self) -> dict:
        return {"num_classes": self.num_classes, "codebook_size": self.codebook_size, "code_dim": self.code_dim,
                "scales": list(self.scales), "depth": self.depth, "width": self.width, "heads": self.heads,
                "mlp_ratio": self.mlp_ratio, "norm_eps": self.norm_eps, "drop_path": self.drop_path,
                "class_names": self.class_names, "tokenizer_sha256": self.tokenizer_sha256,
                "coda_version": __version__}

    @classmethod
    def from_config(cls, config: dict) -> "NextScaleGenerator":
        return cls(**{k: v for k, v in config.items() if k != "coda_version"})

    def _save_pretrained(self, save_directory: Path) -> None:
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        with atomic_path(Path(save_directory) / WEIGHTS_NAME) as tmp:
            save_file(state, tmp)
        write_json(Path(save_directory) / CONFIG_NAME, self.config)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **hub_kwargs) -> "NextScaleGenerator":
        """A generator directory or a Hub repo id, as ``Tokenizer.from_pretrained``."""
        try:
            return super().from_pretrained(pretrained_model_name_or_path, **hub_kwargs)
        except json.JSONDecodeError as error:
            raise UnreadableFileError(f"{pretrained_model_name_or_path} is not a readable {READ_WHAT} "
                                      f"({CONFIG_NAME}: {error}); {READ_REMEDY}") from error
        except HFValidationError as error:
            raise FileNotFoundError(f"{pretrained_model_name_or_path} not found: give a generator directory (as "
                                    f"written by coda train-generator) or a Hub repo id 'org/name'") from error

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision, cache_dir, force_download, local_files_only, token,
                         config: dict | None = None, **config_entries) -> "NextScaleGenerator":
        directory = Path(model_id)
        if directory.is_dir():
            weights = directory / WEIGHTS_NAME
        else:
            weights = Path(hf_hub_download(model_id, WEIGHTS_NAME, revision=revision, cache_dir=cache_dir,
                                           force_download=force_download, local_files_only=local_files_only,
                                           token=token))
            directory = weights.parent
        if config is None or not weights.is_file():
            raise FileNotFoundError(f"{directory / CONFIG_NAME if config is None else weights} not found: a "
                                    f"{READ_WHAT}, as written by coda train-generator")
        with reading(directory, READ_WHAT, READ_REMEDY):
            model = cls.from_config(config)
            model.load_state_dict(load_file(weights), strict=True)
        return model.eval()


def drop_labels(labels: Tensor, rate: float, num_classes: int, generator: torch.Generator | None = None) -> Tensor:
    """Class dropout (VAR's cond_drop_rate): each label becomes the null class with probability ``rate``."""
    if rate <= 0:
        return labels
    drop = torch.rand(labels.shape, generator=generator, device=labels.device) < rate
    return torch.where(drop, torch.full_like(labels, num_classes), labels)


def value_table_sha256(code_values: Tensor) -> str:
    return hashlib.sha256(code_values.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()
