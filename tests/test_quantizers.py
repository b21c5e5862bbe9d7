"""Quantizer contract (docs/interfaces.md), setting checks, the beta weighting, the fused attention
lookup against a plain autograd version, and loading the released key layout."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

import coda.quantizers.attention_lookup as attention_lookup
from coda.compat.io import read_state_dict
from coda.compat.quantizer import load_official_quantizer
from coda.quantizers import CodaQuantizer, QuantizerOutput, ResidualVQ, build_quantizer
from coda.quantizers.multiscale import upsample

SMALL = {
    "coda": dict(kind="coda", codebook_size=32, dim=4, attn_dim=8, scales=(1, 2, 3, 5), entropy_temperature=0.1),
    "rvq": dict(kind="rvq", codebook_size=32, dim=4, scales=(1, 2, 3, 5)),
    "vq": dict(kind="vq", codebook_size=32, dim=4, latent_size=5),
}
KINDS = list(SMALL)


def _small(kind, seed=0, **overrides):
    torch.manual_seed(seed)
    return build_quantizer(**{**SMALL[kind], **overrides})


def _latent(quantizer, batch=2, seed=1):
    side = quantizer.latent_size
    return torch.randn(batch, quantizer.dim, side, side, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- contract


@pytest.mark.parametrize("kind", KINDS)
def test_output_contract(kind):
    q = _small(kind)
    z = _latent(q)
    out = q(z)
    assert isinstance(out, QuantizerOutput)
    assert q.kind == kind and q.latent_size == q.scales[-1]
    assert out.f_hat.shape == z.shape and out.f_hat.dtype == torch.float32
    assert [tuple(i.shape) for i in out.indices] == [(2, s, s) for s in q.scales]
    assert all(i.dtype == torch.long and 0 <= i.min() and i.max() < q.codebook_size for i in out.indices)
    assert out.vq_loss.dim() == 0 and out.entropy_loss.dim() == 0
    assert out.vq_loss.item() > 0
    if kind != "coda":
        assert out.entropy_loss.item() == 0.0


@pytest.mark.parametrize("kind", KINDS)
def test_indices_to_latent_is_bitwise_forward(kind):
    q = _small(kind)
    out = q(_latent(q, batch=3))
    assert torch.equal(q.indices_to_latent(out.indices), out.f_hat)


@pytest.mark.parametrize("kind", KINDS)
def test_decode_from_first_scales_is_the_partial_sum(kind):
    """scales=k: the sum of the first k scales' code values, each bicubic-upsampled to the latent."""
    q = _small(kind)
    z = _latent(q, batch=3)
    out = q(z)
    values, side = q.code_values(), q.latent_size
    manual = torch.zeros_like(z)
    for k, (scale, idx) in enumerate(zip(q.scales, out.indices), start=1):
        code_map = values[idx.reshape(-1)].reshape(3, scale, scale, -1).permute(0, 3, 1, 2)
        manual = manual + (code_map if scale == side else torch.nn.functional.interpolate(
            code_map, size=(side, side), mode="bicubic", align_corners=False))
        torch.testing.assert_close(q.indices_to_latent(out.indices, scales=k), manual, rtol=0, atol=1e-6)
        assert torch.equal(q.indices_to_latent(out.indices[:k], scales=k), q.indices_to_latent(out.indices, scales=k))
    assert torch.equal(q.indices_to_latent(out.indices, scales=len(q.scales)), out.f_hat)
    for bad in (0, len(q.scales) + 1):
        with pytest.raises(ValueError, match="scales"):
            q.indices_to_latent(out.indices, scales=bad)


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_input_and_codebook(kind):
    q = _small(kind)
    z = _latent(q).requires_grad_(True)
    out = q(z)
    (out.f_hat.square().mean() + out.vq_loss + 0.05 * out.entropy_loss).backward()
    assert z.grad.abs().sum() > 0
    assert q.codebooks.weight.grad.abs().sum() > 0
    for name, p in q.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("kind", KINDS)
def test_config_round_trip(kind):
    q = _small(kind)
    config = json.loads(json.dumps(q.config))
    assert config["kind"] == kind
    rebuilt = build_quantizer(**config)
    assert type(rebuilt) is type(q) and rebuilt.config == q.config
    rebuilt.load_state_dict(q.state_dict(), strict=True)
    z = _latent(q)
    assert torch.equal(rebuilt(z).f_hat, q(z).f_hat)


def test_residual_covers_the_latent():
    """Each scale quantizes what the earlier ones left: f_hat approximates z better than scale 1 alone."""
    q = _small("rvq", codebook_size=256)
    z = _latent(q, batch=4)
    out = q(z)
    coarse = upsample(q.codebooks.weight[out.indices[0].reshape(-1)].reshape(4, 1, 1, -1).permute(0, 3, 1, 2), 5)
    assert (out.f_hat - z).square().mean() < (coarse - z).square().mean()


def test_nearest_neighbour_search(monkeypatch):
    import coda.quantizers.rvq as rvq

    monkeypatch.setattr(rvq, "SEARCH_CHUNK_ELEMENTS", 5 * 32)  # several distance blocks
    generator = torch.Generator().manual_seed(0)
    rows, codebook = torch.randn(23, 4, generator=generator), torch.randn(32, 4, generator=generator)
    assert torch.equal(rvq.nearest_code(rows, codebook), torch.cdist(rows, codebook).argmin(dim=1))


@pytest.mark.parametrize("kind", KINDS)
def test_decode_rejects_bad_indices(kind):
    q = _small(kind)
    indices = q(_latent(q)).indices
    with pytest.raises(ValueError, match="index maps"):
        q.indices_to_latent(indices[:-1] if len(indices) > 1 else indices * 2)
    with pytest.raises(ValueError, match=r"\[0, 32\)"):
        q.indices_to_latent([i + 32 for i in indices])


def test_codebook_math_in_fp32_under_autocast():
    q = _small("coda")
    z = _latent(q).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = q(z)
    reference = q(z.float())
    assert out.f_hat.dtype == torch.float32
    assert torch.equal(out.f_hat, reference.f_hat) and torch.equal(out.entropy_loss, reference.entropy_loss)


# ---------------------------------------------------------------- settings


@pytest.mark.parametrize(
    "kind, overrides, message",
    [
        ("coda", dict(codebook_size=1), "codebook_size"),
        ("rvq", dict(codebook_size=0), "codebook_size"),
        ("vq", dict(codebook_size=1.5), "codebook_size"),
        ("coda", dict(dim=0), "dim"),
        ("rvq", dict(dim=-2), "dim"),
        ("coda", dict(attn_dim=0), "attn_dim"),
        ("coda", dict(scales=()), "scales must not be empty"),
        ("rvq", dict(scales=(1, 3, 2)), "strictly increasing"),
        ("coda", dict(scales=(2, 2)), "strictly increasing"),
        ("rvq", dict(scales=(0, 1)), "positive"),
        ("coda", dict(scales=(1, 2.5)), "positive integers"),
        ("coda", dict(beta=-0.1), "beta"),
        ("vq", dict(beta=-1), "beta"),
        ("coda", dict(entropy_temperature=0.0), "entropy_temperature"),
        ("coda", dict(rms_eps=0), "rms_eps"),
        ("vq", dict(latent_size=0), "latent_size"),
    ],
)
def test_invalid_settings_rejected(kind, overrides, message):
    with pytest.raises(ValueError, match=message):
        _small(kind, **overrides)


def test_experiment_block_builds_its_kind():
    """Experiments share one quantizer block: rvq and vq leave the attention settings, vq keeps the last scale."""
    block = dict(codebook_size=32, dim=4, attn_dim=8, scales=[1, 2, 5], beta=0.1, entropy_temperature=0.1,
                 rms_eps=1e-6)
    assert build_quantizer("coda", **block).config == {"kind": "coda", **block}
    assert build_quantizer("rvq", **block).config == dict(kind="rvq", codebook_size=32, dim=4, scales=[1, 2, 5],
                                                          beta=0.1)
    assert build_quantizer("vq", **block).config == dict(kind="vq", codebook_size=32, dim=4, beta=0.1, latent_size=5)
    with pytest.raises(TypeError, match="codebook_sze"):
        build_quantizer("rvq", codebook_sze=32)


def test_unknown_kind_rejected():
    with pytest.raises(ValueError, match="allowed: \\['coda', 'rvq', 'vq'\\]"):
        build_quantizer("fsq", codebook_size=8)


@pytest.mark.parametrize("kind", KINDS)
def test_wrong_latent_shape_rejected(kind):
    q = _small(kind)
    with pytest.raises(ValueError, match=r"latent size \(4, 4\).*scales.*= 5"):
        q(torch.randn(1, q.dim, 4, 4))
    with pytest.raises(ValueError, match="dim=4"):
        q(torch.randn(1, q.dim + 1, 5, 5))


# ---------------------------------------------------------------- beta weighting


@pytest.mark.parametrize("kind", KINDS)
def test_beta_scales_only_the_codebook_side(kind):
    """vq_loss = commitment (to the input) + beta * codebook side: the input gradient ignores beta,
    the code-value gradient's beta-dependent part is linear in beta."""
    z = _latent(_small(kind))
    grads = {}
    for beta in (0.0, 0.5, 1.0):
        q = _small(kind, beta=beta)
        z_in = z.clone().requires_grad_(True)
        q(z_in).vq_loss.backward()
        value_param = q.attn.to_v.weight if kind == "coda" else q.codebooks.weight
        grads[beta] = z_in.grad, value_param.grad.clone()
    assert grads[0.0][0].abs().max() > 0  # the commitment side has weight 1, not beta
    torch.testing.assert_close(grads[0.0][0], grads[1.0][0], rtol=0, atol=1e-7)
    slope = grads[1.0][1] - grads[0.0][1]
    assert slope.abs().max() > 0
    torch.testing.assert_close(grads[0.5][1] - grads[0.0][1], 0.5 * slope, rtol=1e-5, atol=1e-7)
    if kind != "coda":  # nearest-neighbour kinds: the codebook only learns through the beta term
        assert grads[0.0][1].abs().max() == 0


# ---------------------------------------------------------------- fused lookup vs plain autograd


def _dense_coda(q: CodaQuantizer, z):
    """docs/method.md section 3 written directly with one-hot and softmax matrices: the benchmark's baseline."""
    spec = importlib.util.spec_from_file_location("bench_quantizer", Path(__file__).parents[1] / "bench/quantizer.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return QuantizerOutput(*bench.dense_forward(q, z))


# (temperature, share of a chunk allowed in the band): entropy on the band only, dense only, both
ENTROPY_PATHS = {"band": (0.05, 1.0), "dense": (0.05, 0.0), "mixed": (0.01, 0.1)}


@pytest.mark.parametrize("path", list(ENTROPY_PATHS))
@pytest.mark.parametrize("loss_terms", ["all", "no_entropy", "entropy_only"])
def test_fused_lookup_matches_dense(monkeypatch, loss_terms, path):
    """Several row chunks per scale; each backward branch (straight-through, entropy, both); the
    entropy on the band under the row max, on full chunks, and both in one call."""
    temperature, band_share = ENTROPY_PATHS[path]
    monkeypatch.setattr(attention_lookup, "CHUNK_ELEMENTS", 3 * 32)  # 3 rows per chunk
    monkeypatch.setattr(attention_lookup, "SPARSE_MAX_FRACTION", band_share)
    calls = {"band": 0, "dense": 0}

    def counting(name, original):
        def wrapper(*args):
            calls[name] += 1
            return original(*args)
        return wrapper

    for name in calls:
        stats = f"_{name}_stats"
        monkeypatch.setattr(attention_lookup, stats, counting(name, getattr(attention_lookup, stats)))
    q = _small("coda", entropy_temperature=temperature)
    z = _latent(q, batch=3)
    target = torch.randn_like(z)
    results = []
    for forward in (q, lambda x: _dense_coda(q, x)):
        q.zero_grad(set_to_none=True)
        z_in = z.clone().requires_grad_(True)
        out = forward(z_in)
        loss = {
            "all": (out.f_hat - target).square().mean() + out.vq_loss + 0.05 * out.entropy_loss,
            "no_entropy": (out.f_hat - target).square().mean() + out.vq_loss,
            "entropy_only": out.entropy_loss,
        }[loss_terms]
        loss.backward()
        grads = {"input": z_in.grad, **{n: p.grad for n, p in q.named_parameters()}}
        results.append((out, grads))
    assert (calls["band"] > 0) == (path != "dense") and (calls["dense"] > 0) == (path != "band"), calls
    (ours, our_grads), (dense, dense_grads) = results
    assert all(torch.equal(a, b) for a, b in zip(ours.indices, dense.indices))
    torch.testing.assert_close(ours.f_hat, dense.f_hat, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.vq_loss, dense.vq_loss, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ours.entropy_loss, dense.entropy_loss, rtol=1e-5, atol=1e-6)
    for name, grad in dense_grads.items():
        if grad is None:
            assert our_grads[name] is None or our_grads[name].abs().max() == 0, name
            continue
        scale = grad.abs().max().item()
        torch.testing.assert_close(our_grads[name], grad, rtol=1e-4, atol=1e-5 * scale + 1e-9, msg=name)


# ---------------------------------------------------------------- released layout


def _official_state_dict(compat_dir):
    path = compat_dir / "coda_quantizer_keys.tsv"
    rows = [line.split("\t") for line in path.read_text().splitlines()[1:] if line.strip()]
    generator = torch.Generator().manual_seed(0)
    return {key: torch.randn(*map(int, shape.split("x")), generator=generator) for key, shape, _ in rows}


SETTINGS = {"codebook_size": 16384, "code_dim": 16, "attn_dim": 32, "norm": "rms_norm", "rms_eps": 1e-5,
            "scales": [1, 2, 3, 4, 5, 6, 8, 10, 13, 16], "beta": 0.05, "entropy_temperature": 0.01, "seed": 0}


def test_official_keys_load(compat_dir):
    state = _official_state_dict(compat_dir)
    q = load_official_quantizer(state, SETTINGS)
    assert isinstance(q, CodaQuantizer) and set(q.state_dict()) == set(state)
    assert all(torch.equal(q.state_dict()[k], v) for k, v in state.items())


def test_official_missing_key_named(compat_dir):
    state = _official_state_dict(compat_dir)
    del state["attn.norm_k.weight"]
    with pytest.raises(ValueError, match="missing key: attn.norm_k.weight"):
        load_official_quantizer(state, SETTINGS)


def test_official_unexpected_key_named(compat_dir):
    state = _official_state_dict(compat_dir)
    state["attn.to_o.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="unexpected key: attn.to_o.weight"):
        load_official_quantizer(state, SETTINGS)


def test_official_wrong_shape_named(compat_dir):
    state = _official_state_dict(compat_dir)
    state["codebooks.weight"] = torch.zeros(4096, 16)
    expected = "wrong shape: codebooks.weight: expected 16384x16, got 4096x16"
    with pytest.raises(ValueError, match=expected):
        load_official_quantizer(state, SETTINGS)


def test_official_settings_checked():
    with pytest.raises(KeyError, match="code_dim"):
        load_official_quantizer({}, {k: v for k, v in SETTINGS.items() if k != "code_dim"})
    with pytest.raises(ValueError, match="norm"):
        load_official_quantizer({}, {**SETTINGS, "norm": "layer_norm"})


def test_read_state_dict_formats(tmp_path):
    from safetensors.torch import save_file

    state = {"a": torch.arange(3.0), "b.weight": torch.ones(2, 2)}
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save(state, tmp_path / "plain.pth")
    torch.save({"model": state, "step": 7}, tmp_path / "wrapped.pth")
    torch.save({"state_dict": state}, tmp_path / "wrapped.ckpt")
    for name in ("w.safetensors", "plain.pth", "wrapped.pth", "wrapped.ckpt"):
        loaded = read_state_dict(tmp_path / name)
        assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state), name


def test_read_state_dict_refuses_pickled_objects(tmp_path):
    torch.save({"weights": torch.ones(1), "extra": ResidualVQ}, tmp_path / "unsafe.pth")
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        read_state_dict(tmp_path / "unsafe.pth")
    with pytest.raises(FileNotFoundError):
        read_state_dict(tmp_path / "absent.pth")
