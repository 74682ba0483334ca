"""The Winograd rewrite of 3x3 convolutions: the graph computes torch's convolution, narrow or
irregular convolutions are left alone, and the fp32-winograd variant is verified at export."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from vae_deploy.exporters.winograd import (
    MATRICES,
    multiplication_saving,
    transformed_weights,
    winograd_rewrite,
)


def _onnx(module: nn.Module, x: torch.Tensor, tmp_path, dynamic: bool = True) -> onnx.ModelProto:
    path = tmp_path / "m.onnx"
    axes = {"x": {0: "n", 2: "h", 3: "w"}, "y": {0: "n", 2: "h2", 3: "w2"}} if dynamic else None
    torch.onnx.export(module.eval(), (x,), str(path), input_names=["x"], output_names=["y"], opset_version=17,
                      dynamic_axes=axes, dynamo=False)
    return onnx.load(str(path))


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


@pytest.mark.parametrize("m", [2, 4])
def test_one_dimensional_identity_holds(m):
    """y = A^T[(G g) * (B^T d)] is the correlation of an (m+2) input tile with a 3-tap filter."""
    bt, g, at = MATRICES[m]
    rng = np.random.default_rng(m)
    d, w = rng.standard_normal(m + 2), rng.standard_normal(3)
    want = np.array([d[i:i + 3] @ w for i in range(m)])
    np.testing.assert_allclose(at @ ((g @ w) * (bt @ d)), want, atol=1e-12)
    assert multiplication_saving(m) == pytest.approx({2: 2.25, 4: 4.0}[m])


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("size", [(8, 8), (7, 10), (13, 5)])
def test_rewritten_conv_equals_torch(tmp_path, m, bias, size):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(32, 40, 3, padding=1, bias=bias), nn.SiLU(), nn.Conv2d(40, 32, 3, padding=1))
    x = torch.randn(2, 32, *size)
    base = _onnx(net, torch.randn(1, 32, 8, 8), tmp_path)
    res = winograd_rewrite(base, m)
    assert len(res.applied) == 2 and all(f"F({m}x{m},3x3)" in line for line in res.applied)
    assert not [n for n in res.model.graph.node if n.op_type == "Conv" and n.attribute
                and any(a.name == "kernel_shape" and list(a.ints) == [3, 3] for a in n.attribute)]
    with torch.inference_mode():
        want = net(x).numpy()
    got = _run(res.model, x.numpy())
    assert got.shape == want.shape
    scale = np.abs(want).max()
    # F(2x2) loses ~1-2 bits, F(4x4) ~4: still far inside what a broken transform would give.
    assert np.abs(got - want).max() <= {2: 2e-6, 4: 2e-5}[m] * max(scale, 1.0)


def test_static_multiple_of_tile_needs_no_crop(tmp_path):
    torch.manual_seed(1)
    net = nn.Conv2d(32, 32, 3, padding=1)
    x = torch.randn(1, 32, 16, 16)
    res = winograd_rewrite(_onnx(net, x, tmp_path, dynamic=False), 4)
    assert "Slice" not in {n.op_type for n in res.model.graph.node}
    with torch.inference_mode():
        np.testing.assert_allclose(_run(res.model, x.numpy()), net(x).numpy(), atol=2e-5)


@pytest.mark.parametrize("layer", [
    nn.Conv2d(32, 32, 3, padding=1, stride=2),
    nn.Conv2d(32, 32, 3, padding=1, groups=2),
    nn.Conv2d(32, 32, 3, padding=2, dilation=2),
    nn.Conv2d(32, 32, 1),
    nn.Conv2d(4, 32, 3, padding=1),  # too narrow: transforms would cost more than they save
    nn.Conv2d(32, 3, 3, padding=1),
], ids=["stride2", "grouped", "dilated", "1x1", "narrow-in", "narrow-out"])
def test_irregular_or_narrow_convs_are_left_alone(tmp_path, layer):
    base = _onnx(layer, torch.randn(1, layer.in_channels, 8, 8), tmp_path)
    res = winograd_rewrite(base, 4)
    assert not res.changed
    assert [n.op_type for n in res.model.graph.node] == [n.op_type for n in base.graph.node]


def test_transformed_weights_reproduce_the_kernel_for_a_delta_input():
    """U = G g G^T: with a delta input tile the Winograd product recovers the kernel taps."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((2, 3, 3, 3)).astype(np.float32)
    u = transformed_weights(w, 2)
    assert u.shape == (16, 2, 3)
    bt, _, at = MATRICES[2]
    d = np.zeros((4, 4))
    d[1, 1] = 1.0  # output (0, 0) of the tile sees tap (1, 1)
    v = bt @ d @ bt.T
    y = at @ (u[:, 0, 0].reshape(4, 4) * v) @ at.T
    np.testing.assert_allclose(y[0, 0], w[0, 0, 1, 1], atol=1e-6)


def test_bad_tile_is_refused(tmp_path):
    from vae_deploy.errors import ExportError

    base = _onnx(nn.Conv2d(32, 32, 3, padding=1), torch.randn(1, 32, 8, 8), tmp_path)
    with pytest.raises(ExportError, match="one of"):
        winograd_rewrite(base, 3)


@pytest.mark.slow  # a diffusers export plus parity: ~1-2 minutes on 2 loaded cores
def test_export_writes_a_verified_winograd_variant_of_an_autoencoder_kl(tmp_path):
    """A tiny diffusers AutoencoderKL wide enough to rewrite: the variant is written, verified
    against eager at the fp32 tolerance, stated in the manifest, and loads in the Runtime."""
    diffusers = pytest.importorskip("diffusers", reason="the byo extra (diffusers) is not installed")
    from vae_deploy.adapters import from_module
    from vae_deploy.exporters import export
    from vae_deploy.runtime.core import Runtime

    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 32), layers_per_block=1,
        latent_channels=4, norm_num_groups=8, sample_size=16).eval()
    ex = from_module(vae, torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)))
    out = tmp_path / "exp"
    res = export(ex, out, formats=("onnx",), precisions=("fp32", "fp32-winograd"), batch_sizes=(2,))
    (variant,) = res.variants
    assert variant.status == "written", variant.reason
    assert "decoder" in variant.files and variant.info["decoder"]["tile"] == "F(4x4,3x3)"
    manifest = json.loads((out / "manifest.json").read_text())
    digest = manifest["variants"]["fp32-winograd"]["parity"]
    assert digest["passed"] and digest["max_abs_error"] <= digest["tolerance"]["atol"] + 1e-12
    z = np.random.default_rng(0).standard_normal((2, 4, 8, 8), dtype=np.float32)
    ref = Runtime.load(out, provider="cpu").decode(z)
    wino = Runtime.load(out, provider="cpu", precision="fp32-winograd")
    assert wino.files["decoder"].endswith("decoder.fp32-winograd.onnx")
    got = wino.decode(z)
    assert 0 < np.abs(got - ref).max() <= 1e-4  # not the same graph, and still fp32-close
