"""The one-rank fused CLIP loss equals cross-entropy through autograd, values and gradients."""
import math

import torch
import torch.nn.functional as F

from medfm.objectives import clip_loss
from medfm.objectives.clip_fused import symmetric_clip_sum


def reference(a, b, log_scale):
    s = log_scale.exp().clamp(max=100)
    logits = s * a @ b.t()
    t = torch.arange(len(a))
    return 0.5 * (F.cross_entropy(logits, t) + F.cross_entropy(logits.t(), t))


def test_fused_matches_cross_entropy_values_and_gradients():
    g = torch.Generator().manual_seed(0)
    for n, d in [(7, 5), (1500, 16)]:  # 1500 rows: crosses the column-block boundary
        a0 = F.normalize(torch.randn(n, d, generator=g), dim=1)
        b0 = F.normalize(torch.randn(n, d, generator=g), dim=1)
        out = []
        for fn in (clip_loss, reference):
            a, b = a0.clone().requires_grad_(), b0.clone().requires_grad_()
            ls = torch.tensor(math.log(1 / 0.07), requires_grad=True)
            loss = fn(a, b, ls)
            loss.backward()
            out.append((loss.detach(), a.grad, b.grad, ls.grad))
        for x, y in zip(*out):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


def test_fused_gradcheck_double():
    g = torch.Generator().manual_seed(1)
    a = F.normalize(torch.randn(6, 4, generator=g, dtype=torch.float64), dim=1).requires_grad_()
    b = F.normalize(torch.randn(6, 4, generator=g, dtype=torch.float64), dim=1).requires_grad_()
    s = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(symmetric_clip_sum, (a, b, s))


def test_absent_rows_and_labels_still_match():
    g = torch.Generator().manual_seed(2)
    a0 = F.normalize(torch.randn(12, 8, generator=g), dim=1)
    b0 = F.normalize(torch.randn(12, 8, generator=g), dim=1)
    valid = torch.tensor([True] * 9 + [False] * 3)
    ls = torch.tensor(2.0)
    torch.testing.assert_close(clip_loss(a0, b0, ls, valid=valid), reference(a0[:9], b0[:9], ls))
