"""The next-scale generator's speed: the training step (forward + backward + AdamW, the trainer's
own code) and sampling with the KV cache against without it (same tokens), on random weights and
random tokens of a chosen shape. Defaults: the demo's tokens (f16 scales, 680 indices, V = 1024,
8-channel codes, 12 classes); ``--paper`` uses VAR-d16 on the paper's tokens (V = 16384, 16-channel
codes, 1,000 classes; a GPU job: bench/gpu.sh).

    python bench/generation.py --widths 64 128 --depth 2 --batch 32      # demo sizing
    python bench/generation.py --paper --batch 32 --samples 64           # on a GPU
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch
from torch.utils.data import Dataset

from coda.generation.model import NextScaleGenerator
from coda.generation.sampler import SamplingSettings, generate
from coda.generation.train import GeneratorSettings, build_generator, fit
from coda.quantizers.multiscale import F16_SCALES


class RandomTokens(Dataset):
    def __init__(self, n, vocab, classes, scales, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.maps = [[torch.randint(vocab, (s, s), generator=g) for s in scales] for _ in range(n)]
        self.labels = torch.randint(classes, (n,), generator=g).tolist()

    def __len__(self):
        return len(self.maps)

    def __getitem__(self, i):
        return self.maps[i], self.labels[i]


def train_steps_per_s(width, depth, heads, batch, steps, vocab, code_dim, classes, device, bf16) -> float:
    """Median steps/s of the trainer over ``steps`` steps after one warm-up step (train_log.tsv)."""
    settings = GeneratorSettings.from_dict(dict(depth=depth, width=width, heads=heads, batch_size=batch,
                                                global_batch=batch, max_steps=steps + 1, checkpoint_every=10 ** 9,
                                                progress_interval=1e9, device=device, bf16=bf16))
    model = build_generator(settings, num_classes=classes, scales=F16_SCALES,
                            code_values=torch.randn(vocab, code_dim), tokenizer_sha256="bench")
    data = RandomTokens(batch * (steps + 1), vocab, classes, F16_SCALES)
    with tempfile.TemporaryDirectory() as tmp:
        fit(settings, model, data, tmp)
        rows = open(f"{tmp}/train_log.tsv").read().splitlines()
        column = rows[0].split("\t").index("images_per_s")
        rates = sorted(float(r.split("\t")[column]) / batch for r in rows[2:])
    return rates[len(rates) // 2], sum(p.numel() for p in model.parameters() if p.requires_grad)


def sampling_images_per_s(model, n, batch, device, repeats=1):
    labels = torch.arange(n, device=device) % model.num_classes
    settings = SamplingSettings()
    out = {}
    for cache in (True, False):
        best, tokens = 0.0, None
        for _ in range(repeats):
            t0 = time.perf_counter()
            got = []
            rng = torch.Generator(device).manual_seed(0)
            for b in range(0, n, batch):
                got.append(generate(model, labels[b:b + batch], settings, rng, cache=cache))
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            best = max(best, n / (time.perf_counter() - t0))
            tokens = got
        out[cache] = (best, tokens)
    same = all(torch.equal(a, b) for x, y in zip(out[True][1], out[False][1]) for a, b in zip(x, y))
    return out[True][0], out[False][0], same


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--paper", action="store_true", help="VAR-d16 on the paper's f16 tokens")
    p.add_argument("--widths", type=int, nargs="+", default=[64, 128])
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--samples", type=int, default=32, help="images sampled per mode (0: skip sampling)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.paper:
        shapes, vocab, code_dim, classes = [(1024, 16, 16)], 16384, 16, 1000
    else:
        shapes, vocab, code_dim, classes = [(w, args.depth, args.heads) for w in args.widths], 1024, 8, 12
    print(f"device {args.device}, threads {torch.get_num_threads()}, batch {args.batch}, V {vocab}, "
          f"code dim {code_dim}, {sum(s * s for s in F16_SCALES)} tokens, bf16 {args.bf16}")
    print("width\tdepth\theads\tparams\ttrain steps/s\timages/s (train)\tsample img/s cached\tuncached\tsame tokens")
    for width, depth, heads in shapes:
        rate, params = train_steps_per_s(width, depth, heads, args.batch, args.steps, vocab, code_dim, classes,
                                         args.device, args.bf16)
        cached = uncached = float("nan")
        same = "-"
        if args.samples:
            torch.manual_seed(0)
            model = NextScaleGenerator(num_classes=classes, codebook_size=vocab, code_dim=code_dim, scales=F16_SCALES,
                                       depth=depth, width=width, heads=heads).to(args.device).eval()
            model.inputs.code_values.normal_()
            cached, uncached, same = sampling_images_per_s(model, args.samples, args.batch, args.device)
        print(f"{width}\t{depth}\t{heads}\t{params / 1e6:.2f}M\t{rate:.3f}\t{rate * args.batch:.1f}\t"
              f"{cached:.1f}\t{uncached:.1f}\t{same}")


if __name__ == "__main__":
    main()
