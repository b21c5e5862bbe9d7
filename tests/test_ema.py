"""EMA: the method's decay schedule, copying before the start epoch, averaging after it."""
import pytest
import torch
from torch import nn

from coda.ema import EMA, ema_decay


def test_decay_schedule_by_hand():
    assert ema_decay(0) == pytest.approx(1 / 10)
    assert ema_decay(2) == pytest.approx(2 / 11)
    assert ema_decay(100) == pytest.approx(51 / 60)
    assert ema_decay(10 ** 6) == 0.9999            # capped
    assert ema_decay(10 ** 6, max_decay=0.99) == 0.99


def _model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    model[0].bias.requires_grad_(False)            # a frozen weight
    return model


def test_copies_live_weights_before_the_start_epoch_then_averages():
    model = _model()
    ema = EMA(model, start_epoch=4)
    assert not ema.model.training and not any(p.requires_grad for p in ema.model.parameters())
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].running_mean.fill_(3.0)
    assert ema.update(model, step=10, epoch=3) == 0.0
    assert torch.equal(ema.model[0].weight, model[0].weight)
    assert torch.equal(ema.model[1].running_mean, model[1].running_mean)   # buffers follow the live model
    before = ema.model[0].weight.clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    decay = ema.update(model, step=10, epoch=4)
    assert decay == pytest.approx(6 / 15)
    assert torch.allclose(ema.model[0].weight, decay * before + (1 - decay) * model[0].weight)
    assert not ema.model.training


def test_frozen_weights_are_left_alone():
    model = _model()
    ema = EMA(model, start_epoch=0)
    assert ema.trained == ["0.weight", "1.weight", "1.bias"]
    ema.update(model, step=0, epoch=0)
    assert torch.equal(ema.model[0].bias, model[0].bias)
