"""The four target variants (issue 14, item 4 B): OLS, SVLS, Tf-KD reg and focal loss.

Each is tested against a short re-statement of its authors' code (typed out below, with the
repository and file that was read), on loss and gradient, and on the library's contract
(reductions, ignore_index, dtypes, extreme logits, argument errors).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import labelsmooth as ls
from labelsmooth.variants.focal import FocalLoss, focal_cross_entropy
from labelsmooth.variants.online_label_smoothing import (
    OnlineLabelSmoothing,
    online_label_smoothing,
)
from labelsmooth.variants.spatial_label_smoothing import (
    SpatialLabelSmoothingLoss,
    spatial_label_smoothing,
    spatial_smooth_labels,
    svls_kernel,
)
from labelsmooth.variants.teacher_free_kd import (
    TeacherFreeKDLoss,
    teacher_free_kd,
    virtual_teacher,
)

DTYPES = [torch.float32, torch.float64]


def _tol(dtype):
    return (
        {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-12}
    )


def _grad(fn, x):
    x = x.detach().clone().requires_grad_(True)
    loss = fn(x)
    (g,) = torch.autograd.grad(loss, x)
    return loss.detach(), g


def _assert_same(fn, ref, x, dtype):
    loss, g = _grad(fn, x)
    ref_loss, ref_g = _grad(ref, x)
    torch.testing.assert_close(loss, ref_loss, **_tol(dtype))
    torch.testing.assert_close(g, ref_g, **_tol(dtype))


# --- References, typed out from the authors' code ------------------------------------------------


# zhangchbin/OnlineLabelSmoothing, cifar/scripts/train_cifar_all_methods.py (Solver.
# update_loss_lams, Solver.soft_cross_entropy, the "ols" branch of Solver.train and the loop at
# the end of the epoch); fine-grained/solver.py is the same apart from the init of loss_lams
# (1/K there, zeros in the CIFAR script), the weights (1.0, 1.0) and a 0.88 cap.
def ref_ols_update(output, target, cur_epoch_lams, cur_epoch_cnt):
    with torch.no_grad():
        logits = torch.softmax(output, dim=1)
        sort_args = torch.argsort(logits, dim=1, descending=True)
        for k in range(output.shape[0]):
            if target[k] != sort_args[k, 0]:
                continue
            cur_epoch_lams[target[k]] += logits[k]
            cur_epoch_cnt[target[k]] += 1


def ref_ols_soft_cross_entropy(output, target, loss_lams):
    target_prob = torch.zeros_like(output)
    batch = output.shape[0]
    for k in range(batch):
        target_prob[k] = loss_lams[target[k]]
    log_like = -torch.nn.functional.log_softmax(output, dim=1)
    return torch.sum(torch.mul(log_like, target_prob)) / batch


def ref_ols_loss(output, target, loss_lams, alpha=0.5):
    # their CIFAR script: 0.5 * nn.CrossEntropyLoss()(output, target) + 0.5 * soft CE
    return alpha * F.cross_entropy(output, target) + (1 - alpha) * ref_ols_soft_cross_entropy(
        output, target, loss_lams
    )


def ref_ols_epoch_end(loss_lams, cur_epoch_lams, cur_epoch_cnt, numberofclass):
    for cls in range(numberofclass):
        if cur_epoch_cnt[cls].max() < 0.5:
            loss_lams[cls] = 1.0 / numberofclass
        else:
            loss_lams[cls] = cur_epoch_lams[cls] / cur_epoch_cnt[cls]


# mobarakol/SVLS, SVLS_2D.ipynb (get_gaussian_kernel_2d, get_svls_filter_2d, CELossWithSVLS_2D),
# with the nn.Conv2d(padding_mode="replicate") written as F.pad + F.conv2d.
def ref_gaussian_kernel_2d(ksize=0, sigma=0):
    x_grid = torch.arange(ksize).repeat(ksize).view(ksize, ksize)
    y_grid = x_grid.t()
    xy_grid = torch.stack([x_grid, y_grid], dim=-1).float()
    mean = (ksize - 1) / 2.0
    variance = sigma**2.0
    gaussian_kernel = (1.0 / (2.0 * math.pi * variance + 1e-16)) * torch.exp(
        -torch.sum((xy_grid - mean) ** 2.0, dim=-1) / (2 * variance + 1e-16)
    )
    return gaussian_kernel / torch.sum(gaussian_kernel)


def ref_svls_2d(inputs, labels, classes, sigma=1, ksize=3):
    gkernel = ref_gaussian_kernel_2d(ksize=ksize, sigma=sigma)
    neighbors_sum = (1 - gkernel[1, 1]) + 1e-16
    gkernel[int(ksize / 2), int(ksize / 2)] = neighbors_sum
    svls_kernel_ = gkernel / neighbors_sum
    weight = svls_kernel_.view(1, 1, ksize, ksize).repeat(classes, 1, 1, 1).to(inputs.dtype)
    oh_labels = (
        F.one_hot(labels.to(torch.int64), num_classes=classes)
        .contiguous()
        .permute(0, 3, 1, 2)
        .to(inputs.dtype)
    )
    padding = int(ksize / 2)
    padded = F.pad(oh_labels, (padding,) * 4, mode="replicate")
    svls_labels = F.conv2d(padded, weight, groups=classes) / svls_kernel_.sum()
    return (-svls_labels * F.log_softmax(inputs, dim=1)).sum(dim=1).mean()


# mobarakol/SVLS, svls.py (get_svls_filter_3d, CELossWithSVLS), nn.Conv3d written as F.conv3d.
def ref_svls_3d(inputs, labels, classes, sigma=1):
    kernel_size = 3
    x_coord = torch.arange(kernel_size)
    x_grid_2d = x_coord.repeat(kernel_size).view(kernel_size, kernel_size)
    x_grid = x_coord.repeat(kernel_size * kernel_size).view(kernel_size, kernel_size, kernel_size)
    y_grid_2d = x_grid_2d.t()
    y_grid = y_grid_2d.repeat(kernel_size, 1).view(kernel_size, kernel_size, kernel_size)
    z_grid = y_grid_2d.repeat(1, kernel_size).view(kernel_size, kernel_size, kernel_size)
    xyz_grid = torch.stack([x_grid, y_grid, z_grid], dim=-1).float()
    mean = (kernel_size - 1) / 2.0
    variance = sigma**2.0
    gaussian_kernel = (1.0 / (2.0 * math.pi * variance + 1e-16)) * torch.exp(
        -torch.sum((xyz_grid - mean) ** 2.0, dim=-1) / (2 * variance + 1e-16)
    )
    gaussian_kernel = gaussian_kernel / torch.sum(gaussian_kernel)
    neighbors_sum = 1 - gaussian_kernel[1, 1, 1]
    gaussian_kernel[1, 1, 1] = neighbors_sum
    svls_kernel_3d = gaussian_kernel / neighbors_sum
    weight = svls_kernel_3d.view(1, 1, 3, 3, 3).repeat(classes, 1, 1, 1, 1).to(inputs.dtype)
    cls_idx = torch.arange(classes).reshape(1, classes)
    with torch.no_grad():
        oh_labels = (labels[..., None] == cls_idx).permute(0, 4, 1, 2, 3)
        x = oh_labels.to(inputs.dtype)
        x = F.pad(x, (1, 1, 1, 1, 1, 1), mode="replicate")
        svls_labels = F.conv3d(x, weight, groups=classes) / svls_kernel_3d.sum()
    return (-svls_labels * F.log_softmax(inputs, dim=1)).sum(dim=1).mean()


# yuanli2333/Teacher-free-Knowledge-Distillation, my_loss_function.py (loss_kd_regularization;
# correct_prob is hard-coded 0.99 there, params.reg_alpha / reg_temperature / multiplier).
def ref_loss_kd_regularization(outputs, labels, alpha, T, multiplier, correct_prob=0.99):  # noqa: N803
    loss_CE = F.cross_entropy(outputs, labels)
    K = outputs.size(1)
    teacher_soft = torch.ones_like(outputs)
    teacher_soft = teacher_soft * (1 - correct_prob) / (K - 1)
    for i in range(outputs.shape[0]):
        teacher_soft[i, labels[i]] = correct_prob
    loss_soft_regu = (
        torch.nn.KLDivLoss()(F.log_softmax(outputs, dim=1), F.softmax(teacher_soft / T, dim=1))
        * multiplier
    )
    return (1.0 - alpha) * loss_CE + alpha * loss_soft_regu


# kornia/kornia, kornia/losses/focal.py (focal_loss; commit b4f5a78), without its ignore_index
# masking (the tests that use it have no ignored elements).
def ref_kornia_focal_loss(pred, target, alpha, gamma=2.0, reduction="none"):
    target_one_hot = F.one_hot(target, num_classes=pred.shape[1]).movedim(-1, 1).to(pred.dtype)
    log_pred_soft = pred.log_softmax(1)
    loss_tmp = -torch.pow(1.0 - log_pred_soft.exp(), gamma) * log_pred_soft * target_one_hot
    num_of_classes = pred.shape[1]
    broadcast_dims = [-1] + [1] * len(pred.shape[2:])
    if alpha is not None:
        alpha_fac = torch.tensor(
            [1 - alpha] + [alpha] * (num_of_classes - 1),
            dtype=loss_tmp.dtype,
            device=loss_tmp.device,
        )
        loss_tmp = alpha_fac.view(broadcast_dims) * loss_tmp
    if reduction == "none":
        return loss_tmp
    if reduction == "mean":
        return torch.mean(loss_tmp)
    return torch.sum(loss_tmp)


# --- The variants against their references --------------------------------------------------------


def _stochastic(k, dtype=torch.float32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(k, k, generator=g, dtype=dtype), -1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("alpha", [0.5, 0.2, 1.0, 0.0])
def test_ols_functional_matches_authors(dtype, alpha):
    x = torch.randn(9, 6, dtype=dtype) * 2
    y = torch.randint(6, (9,))
    S = _stochastic(6, dtype)
    _assert_same(
        lambda z: online_label_smoothing(z, y, S, alpha),
        lambda z: ref_ols_loss(z, y, S, alpha),
        x,
        dtype,
    )
    module = OnlineLabelSmoothing(6, alpha).to(dtype)
    module.soft_targets.copy_(S)
    _assert_same(lambda z: module(z, y), lambda z: ref_ols_loss(z, y, S, alpha), x, dtype)


@pytest.mark.parametrize("init", ["uniform", "zeros"])
def test_ols_module_matches_authors_over_epochs(init):
    k = 5
    module = OnlineLabelSmoothing(k, init=init)
    # their fine-grained code starts from 1/K, their CIFAR script from zeros
    loss_lams = torch.full((k, k), 1.0 / k) if init == "uniform" else torch.zeros(k, k)
    for _epoch in range(3):
        cur_lams, cur_cnt = torch.zeros(k, k), torch.zeros(k)
        for _step in range(4):
            x = torch.randn(8, k) * 3
            y = torch.randint(k, (8,))
            loss = module(x, y)
            ref_ols_update(x, y, cur_lams, cur_cnt)
            torch.testing.assert_close(loss, ref_ols_loss(x, y, loss_lams))
        torch.testing.assert_close(module.epoch_sum, cur_lams)
        torch.testing.assert_close(module.epoch_count, cur_cnt)
        module.epoch_end()
        ref_ols_epoch_end(loss_lams, cur_lams, cur_cnt, k)
        torch.testing.assert_close(module.soft_targets, loss_lams)


def test_ols_epoch_end_by_hand():
    module = OnlineLabelSmoothing(3, alpha=0.5, ignore_index=-1)
    x = torch.tensor(
        [
            [2.0, 0.0, 0.0],  # y=0, predicted 0: counts
            [0.0, 3.0, 1.0],  # y=1, predicted 1: counts
            [1.0, 0.0, 0.0],  # y=0, predicted 0: counts
            [0.0, 0.0, 5.0],  # y=1, predicted 2: wrong, not counted
            [9.0, 0.0, 0.0],  # ignored
        ]
    )
    y = torch.tensor([0, 1, 0, 1, -1])
    module(x, y)
    p = torch.softmax(x, 1)
    torch.testing.assert_close(module.epoch_count, torch.tensor([2.0, 1.0, 0.0]))
    module.epoch_end()
    expected = torch.stack([(p[0] + p[2]) / 2, p[1], torch.full((3,), 1 / 3)])
    torch.testing.assert_close(module.soft_targets, expected)
    assert torch.equal(module.epoch_sum, torch.zeros(3, 3))
    assert torch.equal(module.epoch_count, torch.zeros(3))
    # the next loss uses the new matrix
    x2, y2 = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    torch.testing.assert_close(module(x2, y2), ref_ols_loss(x2, y2, expected))


def test_ols_eval_mode_does_not_accumulate():
    module = OnlineLabelSmoothing(4).eval()
    x = torch.eye(4) * 5
    y = torch.arange(4)
    loss = module(x, y)
    assert torch.equal(module.epoch_count, torch.zeros(4))
    assert torch.equal(module.epoch_sum, torch.zeros(4, 4))
    torch.testing.assert_close(loss, ref_ols_loss(x, y, module.soft_targets))
    module.train()(x, y)
    assert torch.equal(module.epoch_count, torch.ones(4))


def test_ols_accumulates_without_gradient():
    module = OnlineLabelSmoothing(4)
    x = (torch.eye(4) * 5).requires_grad_(True)
    module(x, torch.arange(4)).backward()
    assert not module.epoch_sum.requires_grad and not module.soft_targets.requires_grad
    assert x.grad is not None


def test_ols_state_dict_round_trip_and_to():
    module = OnlineLabelSmoothing(4, alpha=0.3, init="zeros")
    module(torch.randn(16, 4) * 4, torch.randint(4, (16,)))
    module.epoch_end()
    module(torch.randn(16, 4) * 4, torch.randint(4, (16,)))
    state = module.state_dict()
    assert set(state) == {"soft_targets", "epoch_sum", "epoch_count"}
    other = OnlineLabelSmoothing(4, alpha=0.3, init="zeros")
    other.load_state_dict(state)
    for name in state:
        assert torch.equal(getattr(other, name), getattr(module, name))
    x, y = torch.randn(5, 4), torch.randint(4, (5,))
    torch.testing.assert_close(other(x, y), module(x, y))
    double = module.double()
    assert double.soft_targets.dtype == torch.float64
    assert double.epoch_count.dtype == torch.float64
    double(torch.randn(3, 4, dtype=torch.float64), torch.tensor([0, 1, 2]))
    meta = OnlineLabelSmoothing(4).to("meta")
    assert {b.device.type for b in meta.buffers()} == {"meta"}


def test_ols_repr_and_input_classes():
    module = OnlineLabelSmoothing(3, 0.25, init="zeros", ignore_index=0, reduction="sum")
    assert repr(module) == (
        "OnlineLabelSmoothing(num_classes=3, alpha=0.25, init='zeros', ignore_index=0, "
        "reduction='sum')"
    )
    with pytest.raises(ValueError, match=r"input must have num_classes=3 classes"):
        module(torch.randn(2, 4), torch.tensor([0, 1]))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sigma", [1.0, 0.5, 2.5])
def test_svls_2d_matches_authors(dtype, sigma):
    x = torch.randn(2, 4, 6, 7, dtype=dtype)
    y = torch.randint(4, (2, 6, 7))
    tol = {"rtol": 1e-5, "atol": 1e-6}  # their kernel is built in float32
    loss, g = _grad(lambda z: spatial_label_smoothing(z, y, sigma), x)
    ref_loss, ref_g = _grad(lambda z: ref_svls_2d(z, y, 4, sigma=sigma), x)
    torch.testing.assert_close(loss, ref_loss, **tol)
    torch.testing.assert_close(g, ref_g, **tol)
    module = SpatialLabelSmoothingLoss(sigma)
    torch.testing.assert_close(module(x, y), ref_loss, **tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sigma", [1.0, 2.0])
def test_svls_3d_matches_authors(dtype, sigma):
    x = torch.randn(2, 3, 4, 5, 3, dtype=dtype)
    y = torch.randint(3, (2, 4, 5, 3))
    tol = {"rtol": 1e-5, "atol": 1e-6}
    loss, g = _grad(lambda z: spatial_label_smoothing(z, y, sigma), x)
    ref_loss, ref_g = _grad(lambda z: ref_svls_3d(z, y, 3, sigma=sigma), x)
    torch.testing.assert_close(loss, ref_loss, **tol)
    torch.testing.assert_close(g, ref_g, **tol)


def test_svls_kernel_matches_authors_construction():
    for sigma in (0.3, 1.0, 3.0):
        g = ref_gaussian_kernel_2d(3, sigma).double()
        neighbours = 1 - g[1, 1]
        g[1, 1] = neighbours
        ref = g / neighbours
        ref = ref / ref.sum()
        torch.testing.assert_close(
            svls_kernel(2, sigma, dtype=torch.float64), ref, rtol=1e-6, atol=0
        )
    kernel = svls_kernel(3, 1.0, 5, dtype=torch.float64)
    assert kernel.shape == (5, 5, 5)
    assert kernel[2, 2, 2] == 0.5
    torch.testing.assert_close(kernel.sum(), torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(kernel, kernel.flip(0).transpose(0, 2))
    # tiny sigma: the neighbours' half goes to the face neighbours, no nan
    sharp = svls_kernel(2, 1e-3, dtype=torch.float64)
    torch.testing.assert_close(sharp[0, 1], torch.tensor(0.125, dtype=torch.float64))
    assert sharp[0, 0] == 0


def test_svls_uniform_label_map_is_one_hot():
    y = torch.full((1, 5, 5), 2)
    t = spatial_smooth_labels(y, 3, 1.0)
    torch.testing.assert_close(t, F.one_hot(y, 3).movedim(-1, 1).float())


def test_svls_ignored_pixels():
    x = torch.randn(1, 3, 4, 4, requires_grad=True)
    y = torch.randint(3, (1, 4, 4))
    y[0, 1, 2] = -100
    y[0, 3, 0] = -100
    t = spatial_smooth_labels(y, 3)
    sums = t.sum(1)
    assert torch.equal(sums[0, 1, 2], torch.tensor(0.0))
    valid = y != -100
    torch.testing.assert_close(sums[valid], torch.ones(int(valid.sum())))
    loss = spatial_label_smoothing(x, y)
    (g,) = torch.autograd.grad(loss, x)
    assert torch.equal(g[0, :, 1, 2], torch.zeros(3))
    manual = -(t * F.log_softmax(x, 1)).sum(1)[valid].mean()
    torch.testing.assert_close(loss, manual)


# The authors' nn.KLDivLoss() "mean" warns that it divides by N * K (that is their loss).
@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides the total loss")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("alpha", "temperature", "multiplier", "correct_prob"),
    [(0.1, 20.0, 100.0, 0.99), (0.95, 40.0, 1.0, 0.99), (0.5, 1.0, 3.0, 0.9), (1.0, 0.5, 1.0, 0.6)],
)
def test_tfkd_matches_authors(dtype, alpha, temperature, multiplier, correct_prob):
    x = torch.randn(7, 10, dtype=dtype) * 3
    y = torch.randint(10, (7,))
    kwargs = {
        "alpha": alpha,
        "temperature": temperature,
        "multiplier": multiplier,
        "correct_prob": correct_prob,
    }
    ref = lambda z: ref_loss_kd_regularization(  # noqa: E731
        z, y, alpha, temperature, multiplier, correct_prob
    )
    _assert_same(lambda z: teacher_free_kd(z, y, **kwargs), ref, x, dtype)
    module = TeacherFreeKDLoss(correct_prob, temperature, alpha, multiplier)
    _assert_same(lambda z: module(z, y), ref, x, dtype)


def test_virtual_teacher_matches_authors():
    y = torch.tensor([3, 0, 4])
    teacher = torch.full((3, 5), (1 - 0.99) / 4, dtype=torch.float64)
    teacher[torch.arange(3), y] = 0.99
    expected = F.softmax(teacher / 20.0, dim=1)
    torch.testing.assert_close(virtual_teacher(y, 5, 0.99, 20.0, dtype=torch.float64), expected)
    # extreme temperatures neither overflow nor underflow to nan
    sharp = virtual_teacher(y, 5, 0.99, 1e-6)
    torch.testing.assert_close(sharp, F.one_hot(y, 5).float())
    assert torch.isfinite(virtual_teacher(y, 5, 0.0, 1e-6)).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("gamma", [2.0, 0.5, 0.0, 3.0])
def test_focal_matches_kornia(dtype, gamma):
    x = torch.randn(3, 5, 4, 2, dtype=dtype) * 2
    y = torch.randint(5, (3, 4, 2))
    # kornia sums over classes only in "sum"; its "mean" also divides by C
    _assert_same(
        lambda z: focal_cross_entropy(z, y, gamma, reduction="sum"),
        lambda z: ref_kornia_focal_loss(z, y, None, gamma, "sum"),
        x,
        dtype,
    )
    _assert_same(
        lambda z: focal_cross_entropy(z, y, gamma),
        lambda z: ref_kornia_focal_loss(z, y, None, gamma, "mean") * 5,
        x,
        dtype,
    )
    loss = focal_cross_entropy(x, y, gamma, reduction="none")
    torch.testing.assert_close(loss, ref_kornia_focal_loss(x, y, None, gamma).sum(1), **_tol(dtype))
    # kornia's scalar alpha (class 0 = background) is alpha = [1 - a, a, ..., a] here
    _assert_same(
        lambda z: FocalLoss(gamma, alpha=[0.75] + [0.25] * 4, reduction="sum").to(dtype)(z, y),
        lambda z: ref_kornia_focal_loss(z, y, 0.25, gamma, "sum"),
        x,
        dtype,
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("style", ["uniform", "others"])
@pytest.mark.parametrize("gamma", [2.0, 0.7])
def test_focal_smoothed_matches_definition(dtype, style, gamma):
    x = torch.randn(8, 6, dtype=dtype) * 2
    y = torch.randint(6, (8,))
    alpha = torch.rand(6, dtype=dtype) + 0.5

    def definition(z):
        t = ls.smooth_labels(y, 6, 0.2, style=style, dtype=dtype)
        logp = F.log_softmax(z, -1)
        return -(alpha * t * (1 - logp.exp()) ** gamma * logp).sum(-1).mean()

    _assert_same(
        lambda z: focal_cross_entropy(z, y, gamma, 0.2, style=style, alpha=alpha),
        definition,
        x,
        dtype,
    )


# --- Contract shared by the four losses ----------------------------------------------------------

K = 4


def _svls(x, y, **kw):
    return spatial_label_smoothing(x, y, 1.0, **kw)


def _ols(x, y, **kw):
    return online_label_smoothing(x, y, _stochastic(K, torch.float64).to(x.device), 0.3, **kw)


def _tfkd(x, y, **kw):
    return teacher_free_kd(x, y, temperature=2.0, alpha=0.4, multiplier=3.0, **kw)


def _focal(x, y, **kw):
    return focal_cross_entropy(x, y, 2.0, 0.1, **kw)


def _focal_half(x, y, **kw):
    return focal_cross_entropy(x, y, 0.5, 0.1, style="others", **kw)


LOSSES = {"svls": _svls, "ols": _ols, "tfkd": _tfkd, "focal": _focal, "focal_half": _focal_half}


def _batch(dtype=torch.float32, ignored=True):
    x = torch.randn(2, K, 3, 5, dtype=dtype)
    y = torch.randint(K, (2, 3, 5))
    if ignored:
        y[0, 1, 1] = -100
        y[1, 2, :2] = -100
    return x, y


@pytest.mark.parametrize("name", LOSSES)
def test_reductions_and_ignore_index(name):
    loss_fn = LOSSES[name]
    x, y = _batch(torch.float64)
    none = loss_fn(x, y, reduction="none")
    assert none.shape == y.shape and none.dtype == torch.float64
    ignored = y == -100
    assert torch.equal(none[ignored], torch.zeros(int(ignored.sum()), dtype=torch.float64))
    torch.testing.assert_close(loss_fn(x, y, reduction="sum"), none.sum())
    torch.testing.assert_close(loss_fn(x, y), none.sum() / (~ignored).sum())
    # ignored elements: their logits get no gradient and do not change the loss
    loss, g = _grad(lambda z: loss_fn(z, y), x)
    assert torch.equal(g.movedim(1, -1)[ignored], torch.zeros(int(ignored.sum()), K).double())
    x2 = x.clone()
    x2.movedim(1, -1)[ignored] = 100.0
    torch.testing.assert_close(loss_fn(x2, y), loss)
    # a custom ignore_index that is also a valid class
    y0 = y.masked_fill(y == -100, 3)
    none0 = loss_fn(x, y0, reduction="none", ignore_index=3)
    assert torch.equal(none0[y0 == 3], torch.zeros(int((y0 == 3).sum()), dtype=torch.float64))


@pytest.mark.parametrize("name", LOSSES)
def test_all_ignored_mean_is_zero_with_zero_gradient(name):
    x = torch.randn(2, K, 3, 5, requires_grad=True)
    y = torch.full((2, 3, 5), -100)
    loss = LOSSES[name](x, y)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_computes_in_float32(name, dtype):
    loss_fn = LOSSES[name]
    x, y = _batch(dtype)
    up = x.float()
    for reduction in ("mean", "sum"):
        loss = loss_fn(x, y, reduction=reduction)
        assert loss.dtype == torch.float32
        torch.testing.assert_close(loss, loss_fn(up, y, reduction=reduction))
    none = loss_fn(x, y, reduction="none")
    assert none.dtype == dtype
    torch.testing.assert_close(none, loss_fn(up, y, reduction="none").to(dtype))
    x.requires_grad_(True)
    loss_fn(x, y).backward()
    assert x.grad.dtype == dtype and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_extreme_logits_are_finite(name, dtype):
    loss_fn = LOSSES[name]
    x = (torch.randint(0, 2, (2, K, 3, 5)) * 2 - 1).to(dtype) * 1e4
    x[:, 0] = 1e4  # exact ties of +1e4 and p == 1 on some classes
    _, y = _batch(dtype)
    x.requires_grad_(True)
    for reduction in ("mean", "sum", "none"):
        loss = loss_fn(x, y, reduction=reduction)
        assert torch.isfinite(loss).all()
        (g,) = torch.autograd.grad(loss.sum(), x)
        assert torch.isfinite(g).all()


@pytest.mark.parametrize("name", LOSSES)
def test_gradcheck_float64(name):
    loss_fn = LOSSES[name]
    x = torch.randn(2, K, 2, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randint(K, (2, 2, 3))
    y[0, 0, 1] = -100
    for reduction in ("mean", "none"):
        assert torch.autograd.gradcheck(lambda z, r=reduction: loss_fn(z, y, reduction=r), (x,))
    if name != "svls":  # 1-D and 2-D layouts
        x1 = torch.randn(3, K, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda z: loss_fn(z, torch.tensor([0, 3, 1])), (x1,))
        x0 = torch.randn(K, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda z: loss_fn(z, torch.tensor(2)), (x0,))


def test_gradcheck_svls_3d():
    x = torch.randn(1, 3, 2, 3, 2, dtype=torch.float64, requires_grad=True)
    y = torch.randint(3, (1, 2, 3, 2))
    assert torch.autograd.gradcheck(lambda z: spatial_label_smoothing(z, y, 0.8), (x,))


def test_class_layouts_agree():
    # (N, C, d) equals the rows (N*d, C) for the row-wise losses
    x = torch.randn(2, K, 3)
    y = torch.randint(K, (2, 3))
    rows_x, rows_y = x.movedim(1, -1).reshape(-1, K), y.reshape(-1)
    for name in ("ols", "tfkd", "focal"):
        torch.testing.assert_close(LOSSES[name](x, y), LOSSES[name](rows_x, rows_y))


# --- Properties ----------------------------------------------------------------------------------


@given(
    style_eps=st.sampled_from(
        [("uniform", 0.0), ("uniform", 0.3), ("others", 0.2), ("uniform", 1.0)]
    ),
    eps_scale=st.floats(0.0, 1.0),
    n=st.integers(1, 6),
    k=st.integers(2, 7),
    seed=st.integers(0, 2**16),
)
def test_focal_gamma_zero_is_cross_entropy(style_eps, eps_scale, n, k, seed):
    style, eps_max = style_eps
    eps = eps_max * eps_scale
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, k, generator=g, dtype=torch.float64) * 3
    y = torch.randint(k, (n,), generator=g)
    torch.testing.assert_close(
        focal_cross_entropy(x, y, 0.0, eps, style=style),
        ls.cross_entropy(x, y, eps, style=style),
    )


@given(n=st.integers(1, 6), k=st.integers(1, 7), seed=st.integers(0, 2**16))
def test_ols_alpha_one_is_cross_entropy(n, k, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, k, generator=g, dtype=torch.float64) * 3
    y = torch.randint(k, (n,), generator=g)
    S = torch.rand(k, k, generator=g, dtype=torch.float64)
    torch.testing.assert_close(online_label_smoothing(x, y, S, 1.0), F.cross_entropy(x, y))


@given(
    shape=st.sampled_from([(1, 5), (2, 3, 4), (1, 4, 1), (1, 2, 3, 2)]),
    k=st.integers(1, 5),
    sigma=st.floats(0.05, 10.0),
    size=st.sampled_from([3, 5]),
    seed=st.integers(0, 2**16),
)
def test_svls_targets_sum_to_one(shape, k, sigma, size, seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(k, shape, generator=g)
    t = spatial_smooth_labels(y, k, sigma, kernel_size=size, dtype=torch.float64)
    assert t.shape == (shape[0], k, *shape[1:])
    assert (t >= 0).all()
    torch.testing.assert_close(t.sum(1), torch.ones(shape, dtype=torch.float64))
    # each pixel keeps at least half of its own label
    assert (t.gather(1, y.unsqueeze(1)) >= 0.5 - 1e-12).all()


@given(
    k=st.integers(2, 50),
    correct_prob=st.floats(0.0, 1.0),
    temperature=st.floats(1e-3, 1e3),
    seed=st.integers(0, 2**16),
)
def test_virtual_teacher_rows_sum_to_one(k, correct_prob, temperature, seed):
    y = torch.randint(k, (4,), generator=torch.Generator().manual_seed(seed))
    q = virtual_teacher(y, k, correct_prob, temperature, dtype=torch.float64)
    torch.testing.assert_close(q.sum(-1), torch.ones(4, dtype=torch.float64))
    assert (q > 0).all() or temperature < 0.1


# --- Arguments -----------------------------------------------------------------------------------

X, Y = torch.randn(3, 4), torch.tensor([0, 1, 2])
XS, YS = torch.randn(1, 4, 3, 3), torch.zeros(1, 3, 3, dtype=torch.long)
S4 = torch.full((4, 4), 0.25)

BAD = [
    (lambda: focal_cross_entropy(X, Y, -1.0), ValueError, r"gamma must be >= 0, got gamma=-1.0"),
    (lambda: focal_cross_entropy(X, Y, "2"), TypeError, r"gamma must be a real number"),
    (lambda: focal_cross_entropy(X, Y, 2.0, 1.5), ValueError, r"eps must be <= 1"),
    (
        lambda: focal_cross_entropy(X, Y, 2.0, 0.8, style="others"),
        ValueError,
        r"eps must be <= 0.75 for style='others'",
    ),
    (lambda: focal_cross_entropy(X, Y, style="fair"), ValueError, r"style must be one of"),
    (lambda: focal_cross_entropy(X, Y, reduction="avg"), ValueError, r"reduction=.avg."),
    (lambda: focal_cross_entropy(X, Y, alpha=[1.0, 2.0]), ValueError, r"alpha must have shape"),
    (
        lambda: focal_cross_entropy(X, Y, alpha=[1.0, float("nan"), 1, 1]),
        ValueError,
        r"alpha must be finite",
    ),
    (lambda: focal_cross_entropy(X, Y.float()), TypeError, r"target must hold integer class"),
    (lambda: focal_cross_entropy(X.long(), Y), TypeError, r"input must be a floating-point"),
    (lambda: focal_cross_entropy(X, Y[:2]), ValueError, r"target must have shape \(3,\)"),
    (lambda: focal_cross_entropy(X, Y + 2), ValueError, r"class index 4"),
    (
        lambda: focal_cross_entropy(X, Y, ignore_index=1.5),
        TypeError,
        r"ignore_index must be an int",
    ),
    (
        lambda: FocalLoss(eps=0.7, style="others", alpha=[1.0] * 3),
        ValueError,
        r"eps must be <= 0.666667 for style='others' with num_classes=3",
    ),
    (lambda: FocalLoss(alpha=torch.ones(2, 2)), ValueError, r"alpha must be a 1-D tensor"),
    (lambda: online_label_smoothing(X, Y, S4, 1.5), ValueError, r"alpha must be in \[0, 1\]"),
    (lambda: online_label_smoothing(X, Y, S4, -0.1), ValueError, r"alpha must be >= 0"),
    (
        lambda: online_label_smoothing(X, Y, torch.ones(3, 3)),
        ValueError,
        r"soft_targets must have shape \(4, 4\)",
    ),
    (
        lambda: online_label_smoothing(X, Y, S4.long()),
        TypeError,
        r"soft_targets must be a floating-point tensor, got dtype=torch.int64",
    ),
    (lambda: OnlineLabelSmoothing(0), ValueError, r"num_classes must be >= 1"),
    (lambda: OnlineLabelSmoothing(3.0), TypeError, r"num_classes must be an int"),
    (lambda: OnlineLabelSmoothing(3, init="eye"), ValueError, r"init must be one of"),
    (lambda: OnlineLabelSmoothing(3, reduction="max"), ValueError, r"reduction must be one of"),
    (lambda: teacher_free_kd(X, Y, temperature=0.0), ValueError, r"temperature must be > 0"),
    (lambda: teacher_free_kd(X, Y, correct_prob=1.2), ValueError, r"correct_prob must be in"),
    (lambda: teacher_free_kd(X, Y, alpha=2.0), ValueError, r"alpha must be in \[0, 1\]"),
    (lambda: teacher_free_kd(X, Y, multiplier=-1.0), ValueError, r"multiplier must be >= 0"),
    (
        lambda: teacher_free_kd(torch.randn(2, 1), torch.zeros(2, dtype=torch.long)),
        ValueError,
        r"input with at least 2 classes .* got input of shape \(2, 1\)",
    ),
    (lambda: TeacherFreeKDLoss(temperature=-1.0), ValueError, r"temperature must be > 0"),
    (lambda: virtual_teacher(Y, 4, dtype=torch.long), TypeError, r"dtype must be a floating"),
    (lambda: spatial_label_smoothing(XS, YS, 0.0), ValueError, r"sigma must be > 0, got sigma=0.0"),
    (lambda: spatial_label_smoothing(XS, YS, kernel_size=4), ValueError, r"kernel_size=4"),
    (lambda: spatial_label_smoothing(XS, YS, kernel_size=3.0), TypeError, r"kernel_size must be"),
    (lambda: spatial_label_smoothing(X, Y), ValueError, r"input must be segmentation logits"),
    (lambda: spatial_label_smoothing(XS, YS[:, :2]), ValueError, r"target must have shape"),
    (lambda: spatial_label_smoothing(XS, YS + 7), ValueError, r"class index 7"),
    (lambda: spatial_label_smoothing(XS, YS, reduction="avg"), ValueError, r"reduction"),
    (lambda: spatial_smooth_labels(YS, 0), ValueError, r"num_classes must be >= 1"),
    (lambda: svls_kernel(4), ValueError, r"ndim must be 1, 2 or 3"),
    (lambda: SpatialLabelSmoothingLoss(kernel_size=1), ValueError, r"kernel_size must be an odd"),
]


@pytest.mark.parametrize(("call", "error", "match"), BAD)
def test_argument_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_module_reprs():
    assert repr(FocalLoss(1.0, 0.1, style="others", alpha=[1.0, 2.0])) == (
        "FocalLoss(gamma=1.0, eps=0.1, style='others', alpha=<2 classes>, ignore_index=-100, "
        "reduction='mean')"
    )
    assert repr(SpatialLabelSmoothingLoss(2.0, kernel_size=5, reduction="sum")) == (
        "SpatialLabelSmoothingLoss(sigma=2.0, kernel_size=5, ignore_index=-100, reduction='sum')"
    )
    assert repr(TeacherFreeKDLoss(0.9, 10.0, 0.95)) == (
        "TeacherFreeKDLoss(correct_prob=0.9, temperature=10.0, alpha=0.95, multiplier=1.0, "
        "ignore_index=-100, reduction='mean')"
    )


def test_focal_alpha_buffer_moves():
    module = FocalLoss(alpha=[1.0, 2.0, 3.0])
    assert "alpha" in module.state_dict()
    assert module.double().alpha.dtype == torch.float64
    assert module.to("meta").alpha.device.type == "meta"


# --- Regressions from the adversarial review ------------------------------------------------


def test_online_label_smoothing_rejects_non_finite_soft_targets():
    soft = torch.full((3, 3), 1 / 3)
    soft[1, 2] = math.nan
    with pytest.raises(ValueError, match=r"soft_targets must be finite, got nan at \[1, 2\]"):
        online_label_smoothing(torch.randn(2, 3), torch.tensor([0, 1]), soft)


def test_online_label_smoothing_module_does_not_accumulate_nan_rows():
    # A nan row's argmax can equal its label; its nan probabilities used to be added to
    # epoch_sum (and nan * 0 for the rows that were not), poisoning S for good.
    criterion = OnlineLabelSmoothing(num_classes=3)
    logits = torch.tensor([[math.nan, 0.0, 0.0], [3.0, 0.0, 0.0], [0.0, math.inf, 0.0]])
    criterion(logits, torch.tensor([0, 0, 1]))
    assert torch.equal(criterion.epoch_count, torch.tensor([1.0, 0.0, 0.0]))
    assert torch.isfinite(criterion.epoch_sum).all()
    criterion.epoch_end()
    assert torch.isfinite(criterion.soft_targets).all()


@pytest.mark.parametrize("bad", [[1.0, 2.0], None])
def test_online_label_smoothing_module_rejects_non_tensor_input(bad):
    criterion = OnlineLabelSmoothing(num_classes=2)
    with pytest.raises(TypeError, match="input must be a torch.Tensor"):
        criterion(bad, torch.tensor(0))


@pytest.mark.parametrize("sigma", [1e-300, 1e-20, 1e20, 1e300])
@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_svls_kernel_extreme_sigma_is_the_limit(sigma, ndim):
    # sigma**2 used to underflow to 0 (nan kernel) or overflow (OverflowError).
    kernel = svls_kernel(ndim, sigma=sigma, dtype=torch.float64)
    assert torch.isfinite(kernel).all()
    assert kernel.sum().item() == pytest.approx(1.0)
    centre = (1,) * ndim
    assert kernel[centre].item() == 0.5
    neighbours = kernel.clone()
    neighbours[centre] = 0
    if sigma < 1:  # the 2 ndim nearest neighbours share 1/2
        nearest = (neighbours == 0.5 / (2 * ndim)).sum().item()
        assert nearest == 2 * ndim
    else:  # every neighbour the same share
        assert torch.allclose(
            neighbours[neighbours > 0], torch.tensor(0.5 / (3**ndim - 1)).double()
        )


def test_spatial_label_smoothing_empty_spatial_dimension():
    logits = torch.randn(2, 3, 0, 4, requires_grad=True)
    target = torch.zeros(2, 0, 4, dtype=torch.long)
    loss = spatial_label_smoothing(logits, target)
    assert loss.item() == 0.0
    loss.backward()
    none = spatial_label_smoothing(logits, target, reduction="none")
    assert none.shape == (2, 0, 4)
    assert spatial_smooth_labels(target, 3).shape == (2, 3, 0, 4)


def test_spatial_label_smoothing_target_on_another_device_raises():
    with pytest.raises(ValueError, match="target must be on the device of input"):
        spatial_label_smoothing(
            torch.randn(1, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long, device="meta")
        )


@pytest.mark.parametrize(
    ("alpha", "error", "match"),
    [
        ("abc", TypeError, "alpha must be a 1-D tensor of floats"),
        (["a", "b"], TypeError, "alpha must be a 1-D tensor of floats"),
        ({0: 1.0}, TypeError, "alpha must be a 1-D tensor of floats"),
        (torch.ones(2, dtype=torch.complex64), TypeError, "alpha must be a real"),
        (torch.tensor([True, False]), TypeError, "alpha must be a real"),
        (torch.ones(2, 2), ValueError, "alpha must be a 1-D tensor"),
        (0.25, TypeError, "alpha must be a 1-D tensor of floats"),
    ],
)
def test_focal_module_bad_alpha_raises_at_construction(alpha, error, match):
    with pytest.raises(error, match=match):
        FocalLoss(alpha=alpha)


def test_focal_alpha_on_meta_device_raises():
    with pytest.raises(ValueError, match="alpha must be on the device of input"):
        focal_cross_entropy(
            torch.randn(2, 3), torch.tensor([0, 1]), alpha=torch.ones(3, device="meta")
        )
    # A list stays in the default dtype, as before.
    assert FocalLoss(alpha=[0.25, 0.75]).alpha.dtype == torch.get_default_dtype()
