"""Execution-provider selection for onnxruntime: what is asked for vs what really runs.

``onnxruntime-gpu`` lists the CUDA and TensorRT providers even on machines where their
libraries cannot load, and then logs a wall of errors at every session. We probe once,
silently, with a one-node model, and only ever ask sessions for providers that work.
"""

from __future__ import annotations

import contextlib
import functools
import io

import onnxruntime as ort

from vae_deploy.errors import ConfigError, ProviderError

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
CHOICES = ("auto", *PROVIDERS)
_ORT_DEFAULT_SEVERITY = 2  # WARNING: onnxruntime's own default


@functools.cache
def provider_works(name: str) -> bool:
    """True when a session on ``name`` really gets that provider (not a silent CPU fallback)."""
    ort_name = PROVIDERS[name]
    if ort_name not in ort.get_available_providers():
        return False
    if name == "cpu":
        return True
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = min(model.ir_version, 9)
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    ort.set_default_logger_severity(4)
    try:
        # onnxruntime print()s an "EP Error ... Falling back" block when a provider fails to
        # load; the probe is silent (README): keep it out of the user's terminal.
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            sess = ort.InferenceSession(model.SerializeToString(), opts, providers=[ort_name, "CPUExecutionProvider"])
        return sess.get_providers()[0] == ort_name
    except Exception:
        return False
    finally:
        ort.set_default_logger_severity(_ORT_DEFAULT_SEVERITY)
        del onnx


def resolve(requested: str) -> list[str]:
    """The provider list for a session; raises when an explicit request cannot be met."""
    if requested not in CHOICES:
        raise ConfigError(f"provider must be one of {CHOICES}, got {requested!r}")
    if requested == "auto":
        return [PROVIDERS["cuda"], PROVIDERS["cpu"]] if provider_works("cuda") else [PROVIDERS["cpu"]]
    if not provider_works(requested):
        avail = [k for k, v in PROVIDERS.items() if v in ort.get_available_providers() and provider_works(k)]
        raise ProviderError(
            f"provider {requested!r} was requested but cannot run here (onnxruntime {ort.__version__} "
            f"lists {ort.get_available_providers()}; working: {avail}). Check the CUDA/cuDNN libraries "
            "onnxruntime-gpu needs, or use provider='cpu' or 'auto'."
        )
    if requested == "cpu":
        return [PROVIDERS["cpu"]]
    chain = [PROVIDERS[requested]]
    if requested == "tensorrt" and provider_works("cuda"):
        chain.append(PROVIDERS["cuda"])
    return [*chain, PROVIDERS["cpu"]]


def short_name(ort_name: str) -> str:
    return {v: k for k, v in PROVIDERS.items()}.get(ort_name, ort_name)
