"""The real examples an export's encoder is checked on (parity at export, calibration of int8
variants): its own module so that the variants need not import the exporter package back."""

from __future__ import annotations

import numpy as np
import torch

from vae_deploy.exporters.spec import ExportSpec


def verification_data(spec: ExportSpec, example_x: torch.Tensor | None = None, n: int = 256) -> tuple[np.ndarray, str]:
    """Real examples to check the encoder on: the training data's test split when known.

    Otherwise (foreign models) the example input given to export/verify, topped up with
    seeded uniform [0, 1) inputs of its shape to 8 examples (a foreign model's inputs are
    often images, and parity cycles the examples to each batch size anyway)."""
    if spec.data_spec:
        from vae_deploy.training.data import dataset_from_spec

        try:
            ds = dataset_from_spec(spec.data_spec, bernoulli=spec.likelihood == "bernoulli")
            s = spec.data_spec
            return ds.test, f"test split of {s['name']!r} (seed {s['seed']}, fraction {s['test_fraction']})"
        except Exception as e:  # the data may be gone on this machine: fall through, but say so
            note = f" (training data unavailable: {e})"
    else:
        note = ""
    from vae_deploy.checks.parity import input_range, uniform_inputs

    rng = np.random.default_rng(0)
    span = "[{:g}, {:g})".format(*input_range(spec))  # the range the VAE takes: [-1, 1) for diffusers'
    if spec.adapter and example_x is not None and example_x.ndim == len(spec.input_shape) + 1:
        n = min(n, 8)
        given = example_x.detach().to("cpu", torch.float32).numpy()[:n]
        extra = uniform_inputs(rng, (n - len(given), *given.shape[1:]), spec)
        return (np.concatenate([given, extra]),
                f"the {len(given)} example inputs given, then seeded uniform {span} inputs of shape "
                f"{list(given.shape[1:])}{note}")
    shape = [d if d > 0 else 16 for d in spec.concrete_input_shape]
    return uniform_inputs(rng, (n, *shape), spec), f"uniform {span} random inputs, seed 0{note}"
