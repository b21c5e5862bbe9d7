"""The Tokenizer API: encode/decode/reconstruct, save/load, the released checkpoints."""
import pytest
import torch

from coda import Tokenizer
from coda.lora import add_lora
from coda.quantizers import build_quantizer
from coda.vae import ContinuousVAE


def small_tokenizer(kind="coda", lora=True, posterior="sample", seed=0) -> Tokenizer:
    torch.manual_seed(seed)
    vae = ContinuousVAE.small(seed=seed, block_out_channels=[32, 32], latent_channels=16).freeze()
    lora_cfg = {"rank": 4, "targets": ["conv1", "conv2", "upsample", "downsample"], "where": "both"}
    if lora:
        add_lora(vae, **lora_cfg)
        for name, p in vae.named_parameters():  # non-zero up weights, so LoRA changes the output
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.02)
    kwargs = {"latent_size": 8} if kind == "vq" else {"scales": [1, 2, 4, 8]}
    quantizer = build_quantizer(kind, codebook_size=64, dim=16, **kwargs)
    return Tokenizer(vae, quantizer, lora_cfg if lora else None, posterior).eval()


@pytest.mark.parametrize("kind", ["coda", "rvq", "vq"])
def test_decode_of_encode_equals_reconstruct(kind):
    tok = small_tokenizer(kind)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    indices = tok.encode(x, generator=torch.Generator().manual_seed(1))
    assert [tuple(i.shape) for i in indices] == [(2, s, s) for s in tok.quantizer.scales]
    assert all(i.dtype == torch.long for i in indices)
    recon = tok.reconstruct(x, generator=torch.Generator().manual_seed(1))
    assert torch.equal(tok.decode(indices), recon)
    assert recon.shape == x.shape


def test_progressive_decode():
    """decode(indices, scales=k) decodes the first k scales' partial sum; k = all is decode(indices)."""
    tok = small_tokenizer("coda")
    indices = tok.encode(torch.rand(2, 3, 16, 16) * 2 - 1, generator=torch.Generator().manual_seed(1))
    assert torch.equal(tok.decode(indices, scales=len(indices)), tok.decode(indices))
    coarse = tok.decode(indices, scales=2)
    assert torch.equal(coarse, tok.vae.decode(tok.quantizer.indices_to_latent(indices[:2], scales=2)))
    assert coarse.shape == (2, 3, 16, 16) and not torch.equal(coarse, tok.decode(indices))


def test_posterior_mean_is_deterministic_and_sample_is_not():
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    mean_tok = small_tokenizer(posterior="mean")
    assert torch.equal(mean_tok.reconstruct(x), mean_tok.reconstruct(x))
    sample_tok = small_tokenizer(posterior="sample")
    a = sample_tok.latent(x, torch.Generator().manual_seed(0))
    b = sample_tok.latent(x, torch.Generator().manual_seed(1))
    assert not torch.equal(a, b)
    # the mode is an argument of each call too; the tokenizer's own setting is only the default
    assert torch.equal(sample_tok.reconstruct(x, posterior="mean"), mean_tok.reconstruct(x))
    assert all(map(torch.equal, sample_tok.encode(x, posterior="mean"), mean_tok.encode(x)))


@pytest.mark.parametrize("lora", [True, False])
def test_save_pretrained_round_trip_is_exact(tmp_path, lora):
    tok = small_tokenizer(lora=lora)
    tok.save_pretrained(tmp_path / "tok")
    loaded = Tokenizer.from_pretrained(tmp_path / "tok")
    for (k1, v1), (k2, v2) in zip(tok.state_dict().items(), loaded.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2), k1
    assert loaded.config == tok.config
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.equal(tok.reconstruct(x, torch.Generator().manual_seed(3)),
                       loaded.reconstruct(x, torch.Generator().manual_seed(3)))


def test_from_pretrained_names_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        Tokenizer.from_pretrained(tmp_path)


def test_wrong_image_size_and_mismatched_parts_are_rejected():
    tok = small_tokenizer()
    with pytest.raises(ValueError, match="16 x 16"):
        tok.encode(torch.zeros(1, 3, 32, 32))
    vae = ContinuousVAE.small(block_out_channels=[32, 32], latent_channels=8)
    with pytest.raises(ValueError, match="latent channels"):
        Tokenizer(vae, build_quantizer("coda", codebook_size=8, dim=16, scales=[1, 2]))
    with pytest.raises(ValueError, match="posterior"):
        Tokenizer(vae, build_quantizer("coda", codebook_size=8, dim=8, scales=[1, 2]), posterior="median")


def test_indices_per_image_matches_the_paper():
    quantizer = build_quantizer("coda", codebook_size=16, dim=16)
    vae = ContinuousVAE.small(block_out_channels=[32, 32, 32, 32, 32], latent_channels=16)
    tok = Tokenizer(vae, quantizer)
    assert tok.indices_per_image == 680 and tok.resolution == 256


def test_from_official_f16_reads_released_layouts(tmp_path):
    """Released files (MAR VAE + LoRA, quantizer) in their own layout, saved as .pth, load safely."""
    from coda.compat.release import OFFICIAL_SETTINGS
    from coda.compat.vae import build_vae, export_official_vae_state_dict
    from coda.compat.quantizer import load_official_quantizer

    settings = OFFICIAL_SETTINGS["f16"]
    torch.manual_seed(0)
    vae_state = export_official_vae_state_dict(build_vae(settings["vae"]), settings["vae"])
    quantizer = build_quantizer("coda", codebook_size=16384, dim=16)
    torch.save({k: v.clone() for k, v in vae_state.items()}, tmp_path / "vae_ema.pth")
    torch.save(quantizer.state_dict(), tmp_path / "quantizer_ema.pth")
    tok = Tokenizer.from_official(tmp_path / "vae_ema.pth", tmp_path / "quantizer_ema.pth", variant="f16")
    assert tok.resolution == 256 and tok.indices_per_image == 680
    assert tok.vae.scaling_factor == pytest.approx(0.2325)
    exported = export_official_vae_state_dict(tok.vae, settings["vae"])
    assert all(torch.equal(exported[k], vae_state[k]) for k in vae_state)
    reloaded = load_official_quantizer(quantizer.state_dict(), settings["quantizer"])
    assert all(torch.equal(a, b) for a, b in zip(tok.quantizer.state_dict().values(), reloaded.state_dict().values()))
    with pytest.raises(ValueError, match="variant"):
        Tokenizer.from_official(tmp_path / "vae_ema.pth", tmp_path / "quantizer_ema.pth", variant="f4")
