"""Precision variants: the exact CPU rewrite, int8, fp16, and how export/Runtime/CLI use them."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from vae_deploy.adapters import from_vae
from vae_deploy.checks import parity
from vae_deploy.contract import random_ops
from vae_deploy.errors import ExportError
from vae_deploy.exporters import export
from vae_deploy.exporters.fp16 import to_fp16
from vae_deploy.exporters.onnx import export_onnx
from vae_deploy.exporters.rewrite import optimize_for_cpu
from vae_deploy.exporters.variants import parse_precisions
from vae_deploy.runtime.core import Runtime
from vae_deploy.training.data import DataSpec
from vae_deploy.training.model import VAE, VAEConfig


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _decoder_onnx(model: VAE, tmp_path) -> onnx.ModelProto:
    exp = from_vae(model)
    path = tmp_path / "decoder.onnx"
    return export_onnx(exp.decoder, exp.example_z, path, input_name="z", output_names=["x_hat"],
                       dynamic_dims={0: "batch"}, metadata=exp.spec.metadata("decoder"))


# --- the rewrite ------------------------------------------------------------------------------
def test_rewrite_is_exact_on_conv_decoders(tmp_path):
    """A non-square, multi-channel image; thresholds at zero so that both ConvTranspose layers
    are decomposed (interleave form), and at their defaults (phase chain into the last layer)."""
    torch.manual_seed(0)
    model = VAE(VAEConfig(family="conv", input_shape=(3, 8, 12), latent_dim=5, hidden=(32, 64))).eval()
    base = _decoder_onnx(model, tmp_path)
    z = np.random.default_rng(0).standard_normal((9, 5), dtype=np.float32)
    with torch.no_grad():
        eager = model.decode(torch.from_numpy(z)).numpy()
    for kwargs, kind in (({}, "reads the phases directly"), ({"min_out_channels": 0, "min_channel_product": 0},
                                                              "interleaved")):
        res = optimize_for_cpu(base, **kwargs)
        assert res.changed and all(kind in a for a in res.applied), res.applied
        assert "ConvTranspose" not in {n.op_type for n in res.model.graph.node} or kind != "interleaved"
        out = _run(res.model, z)
        assert out.shape == eager.shape
        assert np.abs(out - eager).max() <= 1e-5


def _convt_graph(layers, cin, h, w, seed=0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    nodes, inits, cur, c = [], [], "x", cin
    for i, (co, k, s, p) in enumerate(layers):
        inits += [numpy_helper.from_array((rng.standard_normal((c, co, *k)) * 0.3).astype(np.float32), f"w{i}"),
                  numpy_helper.from_array(rng.standard_normal(co).astype(np.float32), f"b{i}")]
        nodes.append(helper.make_node("ConvTranspose", [cur, f"w{i}", f"b{i}"], [f"y{i}"], kernel_shape=list(k),
                                      strides=list(s), pads=[p[0], p[1], p[0], p[1]]))
        nodes.append(helper.make_node("LeakyRelu", [f"y{i}"], [f"a{i}"], alpha=0.1))
        cur, c = f"a{i}", co
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", cin, h, w])],
                              [helper.make_tensor_value_info(cur, TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


@pytest.mark.parametrize("layers", [
    [(6, (4, 4), (2, 2), (1, 1)), (2, (4, 4), (2, 2), (1, 1))],
    [(5, (6, 4), (3, 2), (0, 1)), (3, (4, 6), (2, 3), (1, 0))],  # unequal strides and kernels per axis
    [(4, (2, 2), (2, 2), (0, 0)), (16, (3, 3), (3, 3), (0, 0))],
])
def test_rewrite_is_exact_for_other_strides_and_kernels(layers):
    model = _convt_graph(layers, cin=3, h=3, w=5)
    x = np.random.default_rng(1).standard_normal((4, 3, 3, 5), dtype=np.float32)
    ref = _run(model, x)
    for kwargs in ({"min_out_channels": 0, "min_channel_product": 0}, {"min_out_channels": 10, "min_channel_product": 0}):
        res = optimize_for_cpu(model, **kwargs)
        out = _run(res.model, x)
        assert out.shape == ref.shape
        np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)


def test_rewrite_leaves_narrow_or_irregular_layers_alone():
    narrow = _convt_graph([(4, (4, 4), (2, 2), (1, 1))], cin=8, h=4, w=4)
    assert not optimize_for_cpu(narrow).changed  # 8 -> 4 channels: measured slower decomposed
    odd = _convt_graph([(32, (3, 3), (2, 2), (1, 1))], cin=64, h=4, w=4)  # kernel not a multiple of the stride
    assert not optimize_for_cpu(odd, min_out_channels=0, min_channel_product=0).changed


def test_linear_then_conv_transpose_folds_into_one_gemm():
    """Gemm -> Reshape -> ConvTranspose -> ConvTranspose with no non-linearity: one affine map."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((2 * 3 * 4, 6)).astype(np.float32)  # Gemm transB=1: [out, in]
    b1 = rng.standard_normal(2 * 3 * 4).astype(np.float32)
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b1, "b1"),
             numpy_helper.from_array(np.array([-1, 2, 3, 4], np.int64), "shape"),
             numpy_helper.from_array(rng.standard_normal((2, 5, 4, 4)).astype(np.float32), "w2"),
             numpy_helper.from_array(rng.standard_normal(5).astype(np.float32), "b2"),
             numpy_helper.from_array(rng.standard_normal((5, 1, 4, 4)).astype(np.float32), "w3")]
    nodes = [helper.make_node("Gemm", ["z", "w1", "b1"], ["h"], transB=1, alpha=0.5, beta=2.0),
             helper.make_node("Reshape", ["h", "shape"], ["r"]),
             helper.make_node("ConvTranspose", ["r", "w2", "b2"], ["c1"], kernel_shape=[4, 4], strides=[2, 2],
                              pads=[1, 1, 1, 1]),
             helper.make_node("ConvTranspose", ["c1", "w3"], ["c2"], kernel_shape=[4, 4], strides=[2, 2],
                              pads=[1, 1, 1, 1]),
             helper.make_node("Sigmoid", ["c2"], ["x"])]
    graph = helper.make_graph(nodes, "fold", [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 6])],
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 12, 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    res = optimize_for_cpu(model)
    assert [n.op_type for n in res.model.graph.node] == ["Gemm", "Reshape", "Sigmoid"], res.applied
    assert len(res.applied) == 2
    z = rng.standard_normal((7, 6)).astype(np.float32)
    np.testing.assert_allclose(_run(res.model, z), _run(model, z), atol=1e-5, rtol=1e-5)


# --- fp16 ------------------------------------------------------------------------------------
def test_fp16_keeps_float32_io_and_the_logvar_clamp(tmp_path):
    torch.manual_seed(0)
    model = VAE(VAEConfig(family="mlp", input_shape=(1, 8, 8), latent_dim=4, hidden=(16,))).eval()
    with torch.no_grad():
        model.encoder.logvar.bias[:2] = 1000.0  # far beyond the clamp: logvar must read 20
        model.encoder.logvar.bias[2:] = -1000.0  # and -30, not inf or NaN
    exp = from_vae(model)
    enc = export_onnx(exp.encoder, exp.example_x, tmp_path / "e.onnx", input_name="x",
                      output_names=["mu", "logvar"], dynamic_dims={0: "batch"}, metadata=exp.spec.metadata("encoder"))
    half, info = to_fp16(enc)
    assert info["io"] == "float32"
    for v in [*half.graph.input, *half.graph.output]:
        assert v.type.tensor_type.elem_type == TensorProto.FLOAT
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(half.SerializeToString(), so, providers=["CPUExecutionProvider"])
    mu, logvar = sess.run(None, {"x": np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32)})
    assert mu.dtype == np.float32 and np.isfinite(mu).all()
    np.testing.assert_array_equal(logvar[:, :2], 20.0)
    np.testing.assert_array_equal(logvar[:, 2:], -30.0)


def test_fp16_refuses_weights_beyond_its_range():
    w = np.ones((4, 3), np.float32)
    w[0, 0] = 1e6
    graph = helper.make_graph([helper.make_node("MatMul", ["z", "w"], ["x"])], "big",
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                              [numpy_helper.from_array(w, "w")])
    with pytest.raises(ExportError, match="float16's range"):
        to_fp16(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10))


# --- export, manifest, Runtime --------------------------------------------------------------
def _wide_conv_exportable():
    """A conv VAE wide enough for the rewrite (64 -> 32 channels), calibrated on digits."""
    torch.manual_seed(0)
    model = VAE(VAEConfig(family="conv", input_shape=(1, 8, 8), latent_dim=4, hidden=(32, 64))).eval()
    return from_vae(model, data_spec=DataSpec("digits").to_dict())


def test_export_writes_verified_variants_and_runtime_loads_them(tmp_path):
    out = tmp_path / "exp"
    res = export(_wide_conv_exportable(), out, formats=("onnx",), precisions=("fp32", "fp32-fast", "int8", "fp16"),
                 batch_sizes=(3,))
    assert {v.precision: v.status for v in res.variants} == {"fp32-fast": "written", "int8": "written",
                                                            "fp16": "written"}, [v.reason for v in res.variants]
    int8 = next(v for v in res.variants if v.precision == "int8")
    assert int8.info["decoder"]["method"] == "static-qdq" and int8.info["decoder"]["from"] == "fp32-fast graph"
    names = sorted(p.name for p in out.iterdir())
    assert names == ["decoder.fp16.onnx", "decoder.fp32-fast.onnx", "decoder.int8.onnx", "decoder.onnx",
                     "encoder.fp16.onnx", "encoder.int8.onnx", "encoder.onnx", "manifest.json"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["export"]["precisions"] == ["fp32", "fp32-fast", "int8", "fp16"]
    for name in names[:-1]:
        entry = manifest["files"][name]
        assert entry["precision"] == (name.split(".")[1] if name.count(".") == 2 else "fp32")
        m = onnx.load(str(out / name))
        assert not random_ops(m)
        assert all(v.type.tensor_type.elem_type == TensorProto.FLOAT for v in [*m.graph.input, *m.graph.output])
        assert {p.key: p.value for p in m.metadata_props}["vae_deploy.precision"] == entry["precision"]
    backends = manifest["parity"]["backends"]
    assert backends["ort-cpu-fp32-fast"]["max_abs_error"] <= 1e-5 and manifest["parity"]["passed"]
    for precision in ("int8", "fp16"):
        digest = manifest["variants"][precision]["parity"]
        assert digest["passed"] and digest["elbo_rel_diff"] <= 5e-3 and "candidate_recon_mae" in digest
    z = np.random.default_rng(0).standard_normal((5, 4), dtype=np.float32)
    ref = Runtime.load(out, provider="cpu").decode(z)
    fast = Runtime.load(out, provider="cpu", precision="fp32-fast")
    assert fast.files["decoder"].endswith("decoder.fp32-fast.onnx") and fast.files["encoder"].endswith("encoder.onnx")
    np.testing.assert_allclose(fast.decode(z), ref, atol=1e-5)
    np.testing.assert_allclose(Runtime.load(out, provider="cpu", precision="fp16").decode(z), ref, atol=5e-3)
    q = Runtime.load(out, provider="cpu", precision="int8")
    assert q.files["encoder"].endswith("encoder.int8.onnx")
    np.testing.assert_allclose(q.decode(z), ref, atol=0.1)


def test_a_variant_that_breaks_its_tolerance_is_not_written(tmp_path, monkeypatch):
    monkeypatch.setitem(parity.DEFAULT_TOLERANCES, "fp16", parity.Tolerance(atol=0.0, rtol=0.0, elbo_rtol=0.0))
    torch.manual_seed(0)
    model = VAE(VAEConfig(family="mlp", input_shape=(1, 8, 8), latent_dim=4, hidden=(16,))).eval()
    out = tmp_path / "exp"
    res = export(model, out, formats=("onnx",), precisions=("fp32", "fp16"), batch_sizes=(2,))
    (v,) = res.dropped
    assert v.precision == "fp16" and "failed parity" in v.reason and not res.manifest["files"].keys() - {
        "encoder.onnx", "decoder.onnx"}
    assert sorted(p.name for p in out.iterdir()) == ["decoder.onnx", "encoder.onnx", "manifest.json"]
    assert res.manifest["variants"]["fp16"]["status"] == "dropped" and res.manifest["parity"]["passed"]
    with pytest.raises(ExportError, match="fp16: failed parity"):  # strict: all or nothing
        export(model, tmp_path / "strict", formats=("onnx",), precisions=("fp32", "fp16"), strict=True,
               batch_sizes=(2,))
    assert not (tmp_path / "strict").exists()


def test_precision_names_are_validated():
    assert parse_precisions("int8,fp32-fast") == ("fp32", "fp32-fast", "int8")
    with pytest.raises(ExportError, match="unknown precision"):
        parse_precisions("fp32,int4")
    with pytest.raises(ExportError, match="ONNX files"):
        export(VAE(VAEConfig()), "unused", formats=("torchscript",), precisions=("fp32", "int8"))


def test_cli_precision_flag(tiny_ckpts, tmp_path):
    from click.testing import CliRunner

    from vae_deploy.cli import main

    runner = CliRunner()
    bad = runner.invoke(main, ["export", str(tiny_ckpts["mlp"]), "--precision", "fp32,int4"])
    assert bad.exit_code == 2 and "unknown precision" in bad.output
    out = tmp_path / "cli"
    ok = runner.invoke(main, ["export", str(tiny_ckpts["mlp"]), "--out", str(out), "--format", "onnx",
                              "--precision", "fp32,fp32-fast,int8,fp16", "--no-verify"])
    assert ok.exit_code == 0, ok.output
    assert "decoder.int8.onnx" in ok.output and "decoder.fp16.onnx" in ok.output
    assert "skipped fp32-fast" in ok.output  # an MLP has nothing to rewrite
    assert "gains nothing over fp32" in ok.output  # fp16 on CPU is said plainly
    assert (out / "decoder.int8.onnx").is_file() and not (out / "decoder.fp32-fast.onnx").exists()
    assert Runtime.load(out, provider="cpu", precision="int8").sample(2, seed=0).shape == (2, 1, 8, 8)
