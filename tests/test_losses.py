"""Every training loss against a value computed by hand (docs/method.md sections 3-4)."""
import math

import pytest
import torch
import torch.nn.functional as F

from coda.losses import LPIPSLoss, adaptive_weight, gan_ramp, hinge_d_loss, hinge_g_loss, l1, mse
from coda.quantizers import build_quantizer


def test_l1_and_mse_by_hand():
    x_hat = torch.tensor([[1.0, -1.0], [0.5, 0.0]])
    x = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    # |d| = 1, 1, 0.5, 1 ; d^2 = 1, 1, 0.25, 1
    assert l1(x_hat, x).item() == pytest.approx(3.5 / 4)
    assert mse(x_hat, x).item() == pytest.approx(3.25 / 4)


def test_hinge_losses_by_hand():
    real = torch.tensor([2.0, 0.5, -1.0])    # relu(1 - r): 0, 0.5, 2   -> mean 2.5 / 3
    fake = torch.tensor([-2.0, 0.0, 1.0])    # relu(1 + f): 0, 1, 2     -> mean 1
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (2.5 / 3 + 1.0))
    assert hinge_g_loss(fake).item() == pytest.approx(1.0 / 3)  # -mean(fake)


def test_adaptive_weight_by_hand():
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    a, b = torch.tensor([3.0, 4.0]), torch.tensor([0.0, 2.0])
    nll, gan = (w * a).sum(), (w * b).sum()                  # gradients a and b
    weight = adaptive_weight(nll, gan, w)
    assert weight.item() == pytest.approx(5.0 / (2.0 + 1e-6))
    assert not weight.requires_grad
    (nll + weight * gan).backward()                          # the graph was kept for the real backward
    assert torch.allclose(w.grad, a + weight * b)


def test_adaptive_weight_clamps_when_the_gan_gradient_vanishes():
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    nll, gan = (w * torch.tensor([3.0, 4.0])).sum(), (w * 0).sum()
    assert adaptive_weight(nll, gan, w).item() == 1e4
    assert adaptive_weight(nll, gan, w, max_weight=7.0).item() == 7.0


def test_adaptive_weight_at_a_non_leaf_tensor():
    # without LoRA the trainer differentiates at the decoder input f_hat
    p = torch.tensor([1.0, -1.0], requires_grad=True)
    f_hat = p * 2
    nll, gan = (f_hat ** 2).sum(), f_hat.sum()               # grads 2 f_hat = (4, -4) and (1, 1)
    assert adaptive_weight(nll, gan, f_hat).item() == pytest.approx(math.sqrt(32) / (math.sqrt(2) + 1e-6))


def test_gan_ramp_is_linear_over_the_whole_run():
    assert gan_ramp(0, 100) == 0.0
    assert gan_ramp(25, 100) == 0.25
    assert gan_ramp(100, 100) == 1.0
    assert gan_ramp(150, 100) == 1.0


def _lpips_by_hand(model, a, b):
    """LPIPS v0.1: unit-normalise each layer's features over channels, square the difference,
    weight channels by the linear head, average over space, sum over layers."""
    fa, fb = model.net(model.scaling_layer(a)), model.net(model.scaling_layer(b))
    total = 0.0
    for k, (u, v) in enumerate(zip(fa, fb)):
        u = u / (u.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        v = v / (v.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        head = model.lins[k].model[-1].weight            # 1 x C x 1 x 1
        total = total + ((u - v) ** 2 * head).sum(1).mean((1, 2))
    return total.mean()


@pytest.mark.parametrize("net, size", [("vgg", 32), ("alex", 64)])
def test_lpips_on_real_weights_matches_hand_computation(net, size):
    loss = LPIPSLoss(net).train()                         # stays frozen and in eval mode
    assert not loss.model.training and not any(p.requires_grad for p in loss.parameters())
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, size, size, generator=g) * 2 - 1
    b = (a + 0.3 * torch.randn(2, 3, size, size, generator=g)).clamp(-1, 1).requires_grad_(True)
    value = loss(b, a)
    with torch.no_grad():
        expected = _lpips_by_hand(loss.model, b, a)
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    assert value.item() > 0.01
    assert loss(a, a).item() == pytest.approx(0.0, abs=1e-7)
    value.backward()
    assert b.grad.abs().sum() > 0                           # gradients reach the reconstruction


def _coda_one_scale(beta, temperature=0.5):
    torch.manual_seed(0)
    return build_quantizer("coda", codebook_size=5, dim=3, attn_dim=4, scales=[1], beta=beta,
                           entropy_temperature=temperature)


def _logits_by_hand(q, rows):
    query = F.rms_norm(rows @ q.attn.to_q.weight.T + q.attn.to_q.bias, (4,), q.attn.norm_q.weight, 1e-5)
    keys = F.rms_norm(q.codebooks.weight @ q.attn.to_k.weight.T + q.attn.to_k.bias, (4,), q.attn.norm_k.weight, 1e-5)
    return query @ keys.T / math.sqrt(4)


def test_coda_quantizer_vq_and_entropy_losses_by_hand():
    q = _coda_one_scale(beta=0.05)
    z = torch.randn(6, 3, 1, 1, generator=torch.Generator().manual_seed(1))
    out = q(z)
    rows = z.flatten(1)
    logits = _logits_by_hand(q, rows)
    values = q.codebooks.weight @ q.attn.to_v.weight.T + q.attn.to_v.bias
    chosen = values[logits.argmax(1)]
    # value of each of the three terms is mse(v_idx, r): (1 + 1 + beta) times it
    assert out.vq_loss.item() == pytest.approx((2 + 0.05) * ((chosen - rows) ** 2).mean().item(), rel=1e-5)
    p = (logits / 0.5).softmax(1)
    per_position = -(p * p.log()).sum(1).mean()
    mean_p = p.mean(0)
    of_mean = -(mean_p * (mean_p + 1e-5).log()).sum()
    assert out.entropy_loss.item() == pytest.approx((per_position - of_mean).item(), rel=1e-5, abs=1e-6)


def test_beta_scales_the_codebook_side_term():
    """vq(beta=1) - vq(beta=0) = mse(v_idx, sg r): same value, gradient to the code values only."""
    z = torch.randn(6, 3, 1, 1, generator=torch.Generator().manual_seed(1))
    grads = {}
    for beta in (0.0, 1.0):
        q = _coda_one_scale(beta)
        z_in = z.clone().requires_grad_(True)
        out = q(z_in)
        out.vq_loss.backward()
        grads[beta] = (out.vq_loss.item(), z_in.grad.clone(), q.attn.to_v.weight.grad.clone())
    q = _coda_one_scale(0.0)
    rows = z.flatten(1)
    v_w = q.attn.to_v.weight.detach().clone().requires_grad_(True)
    chosen = (q.codebooks.weight @ v_w.T + q.attn.to_v.bias)[_logits_by_hand(q, rows).argmax(1)]
    extra = ((chosen - rows) ** 2).mean()
    extra.backward()
    assert grads[1.0][0] - grads[0.0][0] == pytest.approx(extra.item(), rel=1e-5)
    assert torch.allclose(grads[1.0][1], grads[0.0][1], atol=1e-7)          # no gradient to the input
    assert torch.allclose(grads[1.0][2] - grads[0.0][2], v_w.grad, atol=1e-6)


def test_nearest_neighbour_vq_loss_by_hand():
    torch.manual_seed(0)
    q = build_quantizer("vq", codebook_size=4, dim=2, latent_size=1, beta=0.25)
    z = torch.randn(5, 2, 1, 1)
    out = q(z)
    rows = z.flatten(1)
    code = q.codebooks.weight[torch.cdist(rows, q.codebooks.weight).argmin(1)]
    assert out.vq_loss.item() == pytest.approx(1.25 * ((code - rows) ** 2).mean().item(), rel=1e-5)
    assert out.entropy_loss.item() == 0.0


@pytest.mark.parametrize("objective", ["release", "hinge"])
def test_discriminator_objective_release_adds_the_generator_gan_term(objective):
    """release: after the generator's and the discriminator's backward passes, D's gradient is that of
    hinge + ramp x lambda x (-mean D(x_hat)) (the released loop's); hinge: of the hinge loss alone."""
    from coda.discriminators import PatchGAN
    from coda.tokenizer import Tokenizer
    from coda.train.config import TrainConfig
    from coda.vae import ContinuousVAE
    from coda.losses import TokenizerLoss

    vae = ContinuousVAE.small(seed=0, block_out_channels=[8, 8], norm_num_groups=4, latent_channels=4)
    quantizer = build_quantizer(kind="coda", codebook_size=16, dim=4, attn_dim=8, scales=[1, 2, 4, 8])
    tokenizer = Tokenizer(vae, quantizer, None, "sample")
    torch.manual_seed(0)
    disc = PatchGAN(channels=8, n_layers=2)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    loss = TokenizerLoss(tokenizer, TrainConfig(lpips_weight=0.0, disc_objective=objective), disc)
    ramp = 0.5
    total, parts, _, x_hat = loss(x, noise_seed=3, ramp=ramp)
    total.backward()
    loss.discriminator_loss(x, x_hat, parts).backward()
    got = [p.grad for p in disc.parameters()]

    params = list(disc.parameters())
    expected = torch.autograd.grad(hinge_d_loss(disc(x), disc(x_hat.detach())), params)
    if objective == "release":
        generator_term = ramp * parts["adaptive_weight"] * hinge_g_loss(disc(x_hat.detach()))
        expected = [e + g for e, g in zip(expected, torch.autograd.grad(generator_term, params))]
    assert parts["adaptive_weight"] > 0
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-7)
