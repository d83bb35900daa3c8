"""The models (robustsweep/models.py)."""

import torch
import torch.nn.functional as F
from torch import nn

from robustsweep.models import M1


def _textbook_m1(model: M1) -> nn.Module:
    """M1 with each ReLU before its max-pool, as usually written, sharing ``model``'s layers."""
    conv1, pool1, relu1, conv2, pool2, relu2 = model.features
    return nn.Sequential(model.normalize, conv1, relu1, pool1, conv2, relu2, pool2, model.classifier)


def test_m1_pooling_before_relu_is_bit_for_bit_the_textbook_order():
    torch.manual_seed(0)
    model = M1().to(memory_format=torch.channels_last)
    textbook = _textbook_m1(model)
    assert [type(m) for m in model.features] == [nn.Conv2d, nn.MaxPool2d, nn.ReLU] * 2
    # a trained-looking mix of signs, with negative pre-activations in every pooling window of some rows
    x = torch.rand(64, 1, 28, 28)
    x[:8] = 0.0
    y = torch.randint(0, 10, (64,))
    for net in (model, textbook):
        net.zero_grad(set_to_none=True)
    out, out_ref = model(x), textbook(x)
    assert torch.equal(out, out_ref)
    F.cross_entropy(out, y).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    F.cross_entropy(textbook(x), y).backward()
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters()))
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()  # what an attack differentiates
    ga = torch.autograd.grad(F.cross_entropy(model(xa), y), xa)[0]
    gb = torch.autograd.grad(F.cross_entropy(textbook(xb), y), xb)[0]
    assert torch.equal(ga, gb)


def test_m1_weights_keep_their_names():
    """Weights saved before the layer order changed (features.0 and features.3) still load."""
    names = [k for k in M1().state_dict() if k.startswith("features.")]
    assert names == ["features.0.weight", "features.0.bias", "features.3.weight", "features.3.bias"]
