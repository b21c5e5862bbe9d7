"""The generator's input path, sampler and persistence on a small random model."""
import pytest
import torch

from coda.generation import NextScaleGenerator, SamplingSettings, generate
from coda.quantizers import build_quantizer
from coda.quantizers.multiscale import downsample

SCALES = (1, 2, 3, 4, 6)


@pytest.fixture(scope="module")
def quantizer():
    torch.manual_seed(0)
    return build_quantizer(kind="coda", codebook_size=64, dim=8, scales=SCALES).eval()


@pytest.fixture(scope="module")
def model(quantizer):
    torch.manual_seed(1)
    model = NextScaleGenerator(num_classes=3, codebook_size=64, code_dim=8, scales=SCALES, depth=2, width=32, heads=2)
    with torch.no_grad():  # move off VAR's near-zero AdaLN gammas so the blocks matter
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.set_code_values(quantizer.code_values(), "sha-of-the-tokenizer")
    return model.eval()


def random_tokens(batch, seed=2, vocab=64):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(vocab, (batch, s, s), generator=g) for s in SCALES]


def test_teacher_forcing_inputs_are_the_tokenizers_partial_decodes_bit_for_bit(model, quantizer):
    tokens = random_tokens(4)
    with torch.no_grad():
        inputs = model.inputs.teacher_forcing(tokens)
        expected = torch.cat([downsample(quantizer.indices_to_latent(tokens, scales=k), SCALES[k]).flatten(2)
                              .transpose(1, 2) for k in range(1, len(SCALES))], dim=1)
    assert inputs.shape == (4, sum(s * s for s in SCALES) - 1, 8)
    assert torch.equal(inputs, expected)


def test_block_causal_mask_a_scale_sees_only_itself_and_coarser_ones(model):
    tokens = random_tokens(2)
    labels = torch.tensor([0, 2])
    changed = [t.clone() for t in tokens]
    changed[3] = (changed[3] + 1) % 64  # scale 4 changes the inputs of scale 5 only
    with torch.no_grad():
        a, b = model.logits_for(labels, tokens), model.logits_for(labels, changed)
    first_affected = sum(s * s for s in SCALES[:4])
    assert torch.equal(a[:, :first_affected], b[:, :first_affected])
    assert not torch.allclose(a[:, first_affected:], b[:, first_affected:])


def test_cached_sampler_logits_equal_the_uncached_forwards(model):
    labels = torch.tensor([0, 1, 2])
    settings = SamplingSettings(cfg=2.0, top_k=20, top_p=0.9)
    cached, uncached = {}, {}
    tokens = generate(model, labels, settings, torch.Generator().manual_seed(0),
                      on_scale=lambda si, raw, guided: cached.update({si: raw}))
    generate(model, labels, settings, cache=False, forced=tokens,
             on_scale=lambda si, raw, guided: uncached.update({si: raw}))
    doubled = torch.cat((labels, torch.full_like(labels, model.num_classes)))
    with torch.no_grad():
        full = model.logits_for(doubled, [t.repeat(2, 1, 1) for t in tokens])
    begin = 0
    for si, side in enumerate(SCALES):
        end = begin + side * side
        torch.testing.assert_close(cached[si], full[:, begin:end], rtol=0, atol=1e-5)
        torch.testing.assert_close(cached[si], uncached[si], rtol=0, atol=1e-5)
        begin = end


def test_sampling_is_reproducible_from_the_seed(model):
    labels = torch.tensor([1, 1])
    a = generate(model, labels, SamplingSettings(), torch.Generator().manual_seed(5))
    b = generate(model, labels, SamplingSettings(), torch.Generator().manual_seed(5))
    c = generate(model, labels, SamplingSettings(), torch.Generator().manual_seed(6))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    assert [tuple(t.shape) for t in a] == [(2, s, s) for s in SCALES]


def test_top_k_one_is_greedy(model):
    labels = torch.tensor([0])
    seen = {}
    tokens = generate(model, labels, SamplingSettings(cfg=0.0, top_k=1, top_p=0.0), torch.Generator().manual_seed(0),
                      on_scale=lambda si, raw, guided: seen.update({si: guided}))
    for si in range(len(SCALES)):
        assert torch.equal(tokens[si].flatten(1), seen[si].argmax(-1))


def test_save_and_load_keep_weights_value_table_and_tokenizer_hash(model, tmp_path):
    model.save_pretrained(tmp_path / "gen")
    loaded = NextScaleGenerator.from_pretrained(tmp_path / "gen")
    assert loaded.tokenizer_sha256 == "sha-of-the-tokenizer"
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    assert torch.equal(loaded.inputs.code_values, model.inputs.code_values)
    assert not any(p.requires_grad for p in loaded.inputs.parameters())


def test_classes_by_name_or_index_and_unknown_refused():
    model = NextScaleGenerator(num_classes=2, codebook_size=8, code_dim=2, scales=(1, 2), depth=1, width=8, heads=1,
                               class_names=["brick", "grass"])
    assert model.class_index("grass") == 1 and model.class_index(0) == 0 and model.class_index("1") == 1
    with pytest.raises(ValueError, match="unknown class 'moss'"):
        model.class_index("moss")
    with pytest.raises(ValueError, match="unknown class '2'"):
        model.class_index(2)


def test_top_k_top_p_keep_the_smallest_set_of_top_p_mass_among_the_top_k():
    from coda.generation.sampler import sample_tokens

    logits = torch.log(torch.tensor([[[0.05, 0.4, 0.3, 0.15, 0.1]]]))
    draws = lambda k, p: {int(sample_tokens(logits, k, p, torch.Generator().manual_seed(s))) for s in range(300)}
    assert draws(0, 0.0) == {0, 1, 2, 3, 4}
    assert draws(3, 0.0) == {1, 2, 3}
    assert draws(0, 0.6) == {1, 2}        # 0.4 + 0.3 reach 0.6
    assert draws(4, 0.8) == {1, 2, 3}     # renormalised over the top 4: 0.4/0.95 + 0.3/0.95 < 0.8
    assert draws(2, 0.99) == {1, 2} and draws(1, 0.5) == {1}
