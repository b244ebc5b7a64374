"""Attribution methods against their peer implementations on the same model and inputs:
Captum (saliency, integrated gradients, occlusion, guided backprop, deconvnet, NoiseTunnel) and
pytorch-grad-cam (Grad-CAM, Grad-CAM++, Score-CAM), plus the completeness axiom of integrated gradients."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from imgclass.data.labels import LabelSpace
from imgclass.explain import explain, spearman
from imgclass.models.classifier import Classifier, ModelConfig

captum_attr = pytest.importorskip("captum.attr")
pgc = pytest.importorskip("pytorch_grad_cam")


@pytest.fixture(scope="module")
def resnet20():
    from conftest import mirror_file

    mirror_file("models/akamaster-resnet-cifar10/resnet20-12fca82f.th")
    import imgclass

    return imgclass.load_model("zoo:cifar10-resnet20")


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    return torch.rand(2, 3, 32, 32, generator=g)


@pytest.fixture(scope="module")
def targets(resnet20, images):
    with torch.no_grad():
        return resnet20(images).argmax(1)


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> None:
    """Maps equal to ``tol`` relative to the map's scale."""
    a, b = a.detach(), b.detach()
    scale = float(b.abs().max()) or 1.0
    err = float((a - b).abs().max())
    assert err <= tol * scale, f"max difference {err:.3g} exceeds {tol:g} x scale {scale:.3g}"


def _quiet(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn()


def test_saliency_equals_captum_saliency(resnet20, images, targets):
    ref = _quiet(lambda: captum_attr.Saliency(resnet20).attribute(images.clone().requires_grad_(), target=targets,
                                                                   abs=True)).amax(1)
    _close(explain(resnet20, images, targets, method="saliency"), ref)


def test_input_x_gradient_equals_captum(resnet20, images, targets):
    ref = _quiet(lambda: captum_attr.InputXGradient(resnet20).attribute(images.clone().requires_grad_(),
                                                                         target=targets)).sum(1)
    _close(explain(resnet20, images, targets, method="input_x_gradient"), ref)


@pytest.mark.parametrize("integration", ["gausslegendre", "riemann_trapezoid"])
def test_integrated_gradients_equals_captum_ig(resnet20, images, targets, integration):
    ig = captum_attr.IntegratedGradients(resnet20)
    ref = _quiet(lambda: ig.attribute(images.clone().requires_grad_(), baselines=torch.zeros_like(images),
                                      target=targets, n_steps=24, method=integration)).sum(1)
    # internal batch size 10: the 2 x 24 (image, step) points in 5 forwards, one holding steps of both images;
    # equal up to float summation order
    _close(explain(resnet20, images, targets, method="ig", steps=24, integration=integration,
                   internal_batch_size=10), ref)


def test_integrated_gradients_completeness_axiom(resnet20, images, targets):
    """Sundararajan et al. 2017: attributions sum to f(x) - f(baseline) for the target logit, up to the
    quadrature error of the path integral, which shrinks as the steps grow."""
    with torch.no_grad():
        fx = resnet20(images).gather(1, targets[:, None])[:, 0]
        fb = resnet20(torch.full_like(images, 0.5)).gather(1, targets[:, None])[:, 0]
    err = {n: (explain(resnet20, images, targets, method="ig", steps=n, baseline="gray").sum((1, 2)) - (fx - fb)).abs()
           for n in (4, 48)}
    assert (err[48] < 0.1 * (fx - fb).abs()).all(), err[48]
    assert err[48].sum() < err[4].sum()
    mean = torch.tensor(resnet20.config.mean).view(1, 3, 1, 1)
    with torch.no_grad():
        fm = resnet20(mean.expand_as(images)).gather(1, targets[:, None])[:, 0]
    total = explain(resnet20, images, targets, method="ig", steps=48, baseline="mean").sum((1, 2))
    assert ((total - (fx - fm)).abs() < 0.1 * (fx - fm).abs()).all()  # 'mean': the normalization mean image


def test_occlusion_equals_captum_occlusion(resnet20, images, targets):
    occ = captum_attr.Occlusion(resnet20)
    ref = occ.attribute(images, sliding_window_shapes=(3, 8, 8), strides=(3, 6, 6), baselines=0.5,
                        target=targets).mean(1)
    _close(explain(resnet20, images, targets, method="occlusion", window=8, stride=6, baseline=0.5,
                   internal_batch_size=7), ref)


def test_guided_backprop_and_deconvnet_equal_captum(resnet20, images, targets):
    for ours, cls in (("guided_backprop", captum_attr.GuidedBackprop), ("deconvnet", captum_attr.Deconvolution)):
        ref = _quiet(lambda: cls(resnet20).attribute(images.clone().requires_grad_(), target=targets)).abs().amax(1)
        _close(explain(resnet20, images, targets, method=ours, internal_batch_size=2), ref)


class _SmallNet(nn.Module):
    def __init__(self, act: type[nn.Module]):
        super().__init__()
        self.c1, self.a1 = nn.Conv2d(3, 6, 3, padding=1), act()
        self.c2, self.a2 = nn.Conv2d(6, 8, 3, padding=1), act()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.a2(self.c2(self.a1(self.c1(x)))).mean((2, 3)))


def test_guided_backprop_treats_relu6_as_relu():
    """Where no activation reaches 6, a ReLU6 network is the ReLU network: guided backprop and deconvnet
    of the ReLU6 net (our rule) equal Captum's on the ReLU twin."""
    torch.manual_seed(0)
    a, b = _SmallNet(nn.ReLU6), _SmallNet(nn.ReLU)
    b.load_state_dict(a.state_dict())
    cfg = ModelConfig((3, 16, 16), (0.5,) * 3, (0.5,) * 3, 1.0, "bilinear")
    ca = Classifier(a, labels=LabelSpace.anonymous(4), config=cfg, source="relu6").eval()
    cb = Classifier(b, labels=LabelSpace.anonymous(4), config=cfg, source="relu").eval()
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert a.a2(a.c2(a.a1(a.c1(ca.normalize(x))))).max() < 6
    t = torch.tensor([1, 3])
    for ours, cls in (("guided_backprop", captum_attr.GuidedBackprop), ("deconvnet", captum_attr.Deconvolution)):
        ref = _quiet(lambda: cls(cb).attribute(x.clone().requires_grad_(), target=t)).abs().amax(1)
        plain = _quiet(lambda: captum_attr.Saliency(ca).attribute(x.clone().requires_grad_(), target=t)).amax(1)
        _close(explain(ca, x, t, method=ours), ref)
        assert float((ref - plain).abs().max()) > 1e-3 * float(ref.abs().max())  # the rule did change something


def test_smoothgrad_equals_captum_noise_tunnel(resnet20, images, targets):
    """Same seed, same noise: our SmoothGrad equals NoiseTunnel(Saliency) drawing all samples at once."""
    nt = captum_attr.NoiseTunnel(captum_attr.Saliency(resnet20))
    for i in range(2):
        torch.manual_seed(7)
        ref = _quiet(lambda: nt.attribute(images[i:i + 1].clone().requires_grad_(), nt_type="smoothgrad",
                                          nt_samples=12, nt_samples_batch_size=12, stdevs=0.1,
                                          target=targets[i:i + 1])).amax(1)
        ours = explain(resnet20, images[i:i + 1], targets[i:i + 1], method="smoothgrad", n_samples=12, stdev=0.1,
                       seed=7, internal_batch_size=5)
        _close(ours, ref)


def _grad_cam_reference(cls, model, layer, x, t, reshape=None):
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cam = cls(model=model, target_layers=[layer], reshape_transform=reshape)
        if hasattr(cam, "batch_size"):
            cam.batch_size = 64
        try:
            return cam(input_tensor=x, targets=[ClassifierOutputTarget(int(k)) for k in t])
        finally:
            cam.activations_and_grads.release()


@pytest.mark.parametrize("ours,theirs", [("gradcam", "GradCAM"), ("gradcam++", "GradCAMPlusPlus"),
                                         ("scorecam", "ScoreCAM")])
def test_cams_rank_match_pytorch_grad_cam(resnet20, images, targets, ours, theirs):
    ref = _grad_cam_reference(getattr(pgc, theirs), resnet20, resnet20.model.layer3, images, targets)
    maps = explain(resnet20, images, targets, method=ours).numpy()
    for a, b in zip(maps, ref):
        assert spearman(a, b) > 0.99


def test_gradcam_vit_tokens_match_pytorch_grad_cam():
    """On a timm ViT the default layer is the last block's norm1, class token dropped, tokens on the 14x14 grid:
    pytorch-grad-cam's documented ViT recipe."""
    import imgclass

    clf = imgclass.load_model("timm:vit_tiny_patch16_224?pretrained=false")
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([3, 500])

    def reshape(tensor, h=14, w=14):
        return tensor[:, 1:, :].reshape(tensor.size(0), h, w, tensor.size(2)).permute(0, 3, 1, 2)

    ref = _grad_cam_reference(pgc.GradCAM, clf, clf.model.blocks[-1].norm1, x, t, reshape)
    maps = explain(clf, x, t, method="gradcam").numpy()
    assert maps.shape == (2, 224, 224)
    for a, b in zip(maps, ref):
        assert spearman(a, b) > 0.99
    named = explain(clf, x, t, method="gradcam", layer="blocks.11.norm1")
    np.testing.assert_allclose(named.numpy(), maps, rtol=1e-5, atol=1e-7)
