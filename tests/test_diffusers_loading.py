"""Loading a diffusers folder cannot lie: the weights must be exactly the model the config builds.

Each defect is made on a copy of one tiny seeded ``AutoencoderKL`` folder (``save_pretrained``)
and must be refused with one ``Error:`` line naming the tensors, before anything large exists;
what loads is compared with diffusers' own ``from_pretrained``.
"""

from __future__ import annotations

import json
import shutil
import time
import tracemalloc
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from vae_deploy.adapters import diffusers_folder as dfolder
from vae_deploy.adapters.diffusers_folder import load_diffusers
from vae_deploy.cli import main
from vae_deploy.errors import CheckpointError, ConfigError, VaeDeployError

diffusers = pytest.importorskip("diffusers", reason="the byo extra (diffusers) is not installed")
from safetensors.torch import load_file, save_file  # noqa: E402

WEIGHTS = "diffusion_pytorch_model.safetensors"


def tiny_akl(**overrides):
    torch.manual_seed(0)
    kwargs = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                  latent_channels=4, norm_num_groups=4, sample_size=32)
    kwargs.update(overrides)
    return diffusers.AutoencoderKL(**kwargs).eval()


@pytest.fixture(scope="module")
def good_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("akl") / "vae"
    tiny_akl().save_pretrained(folder)
    return folder


@pytest.fixture
def folder(good_folder, tmp_path) -> Path:
    dst = tmp_path / "vae"
    shutil.copytree(good_folder, dst)
    return dst


def edit_weights(folder: Path, fn) -> None:
    sd = dict(load_file(str(folder / WEIGHTS)))
    fn(sd)
    save_file(sd, str(folder / WEIGHTS))


def cli_error(args: list[str]) -> str:
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 1, r.output
    errors = [line for line in r.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "Traceback" not in r.output, r.output  # progress lines may come first
    assert r.output.rstrip().splitlines()[-1] == errors[0]
    return errors[0]


def test_a_good_folder_loads_what_diffusers_loads(good_folder):
    ours = load_diffusers(good_folder)
    ref = diffusers.AutoencoderKL.from_pretrained(str(good_folder), local_files_only=True)
    theirs = ref.state_dict()
    assert ours.state_dict().keys() == theirs.keys()
    for k, v in ours.state_dict().items():
        assert torch.equal(v, theirs[k]), k


def test_missing_tensor_is_refused_by_the_cli_before_export(folder, tmp_path):
    edit_weights(folder, lambda sd: sd.pop("decoder.conv_out.weight"))
    out = tmp_path / "export"
    msg = cli_error(["export", "--diffusers", str(folder), "--out", str(out)])
    assert "missing (1): decoder.conv_out.weight" in msg
    assert not out.exists()


@pytest.mark.parametrize("edit, expected", [
    (lambda sd: [sd.pop(k) for k in [k for k in sd if k.startswith("decoder.up_blocks.0.")]],
     "missing (", ),
    (lambda sd: sd.update({"encoder.extra.weight": torch.zeros(3)}), "unexpected (1): encoder.extra.weight"),
    (lambda sd: sd.update({"quant_conv.weight": torch.zeros(8, 8, 1, 2)}),
     "shape mismatch (1): quant_conv.weight: file [8, 8, 1, 2], model [8, 8, 1, 1]"),
    (lambda sd: sd.update({"quant_conv.weight": sd["quant_conv.weight"].to(torch.int8)}),
     "dtype (1): quant_conv.weight: file int8"),
    (lambda sd: sd.update({"post_quant_conv.bias": sd["post_quant_conv.bias"] > 0}),
     "dtype (1): post_quant_conv.bias: file bool"),
], ids=["many-missing", "unexpected", "shape", "int8", "bool"])
def test_weights_that_do_not_fit_are_refused_naming_the_tensors(folder, edit, expected):
    edit_weights(folder, edit)
    with pytest.raises(CheckpointError, match="do not fit the AutoencoderKL") as e:
        load_diffusers(folder)
    assert expected in str(e.value)
    assert "\n" not in str(e.value)
    if expected == "missing (":
        assert ", ... (" in str(e.value)  # first few named, then how many more


@pytest.mark.parametrize("name", [WEIGHTS, "config.json"])
def test_files_symlinked_out_of_the_folder_are_refused(folder, tmp_path, name):
    outside = tmp_path / f"elsewhere-{name}"
    shutil.move(folder / name, outside)
    (folder / name).symlink_to(outside)
    with pytest.raises(ConfigError, match=f"{name}' resolves to .* outside the model folder"):
        load_diffusers(folder)


def test_a_hugging_face_cache_snapshot_loads(good_folder, tmp_path):
    """The hub cache links snapshots/<rev>/vae/* to ../../../blobs/<hash>: that is inside."""
    repo = tmp_path / "models--tiny--vae"
    snap, blobs = repo / "snapshots" / "abc123" / "vae", repo / "blobs"
    snap.mkdir(parents=True)
    blobs.mkdir()
    for name in ("config.json", WEIGHTS):
        shutil.copy(good_folder / name, blobs / f"{name}.blob")
        (snap / name).symlink_to(Path("../../../blobs") / f"{name}.blob")
    model = load_diffusers(snap.parent.parent.parent / "snapshots" / "abc123")  # the pipeline root
    assert torch.equal(model.state_dict()["decoder.conv_out.weight"],
                       load_file(str(good_folder / WEIGHTS))["decoder.conv_out.weight"])


def test_a_huge_config_is_refused_before_it_is_built(folder):
    cfg = json.loads((folder / "config.json").read_text())
    cfg["layers_per_block"] = 100000
    (folder / "config.json").write_text(json.dumps(cfg))
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(ConfigError, match="far larger AutoencoderKL than the weights file holds"):
            load_diffusers(folder)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Building it for real allocated 4.6 GB; stopped early, the Python objects made stay small.
    assert time.perf_counter() - t0 < 20
    assert peak < 64 << 20, f"peak {peak / 2**20:.0f} MiB of Python objects"


def test_a_model_larger_than_memory_is_refused_before_allocating(folder, monkeypatch):
    monkeypatch.setattr(dfolder, "available_memory", lambda: 1 << 10)
    with pytest.raises(ConfigError, match="needs about .* GiB .* available"):
        load_diffusers(folder)


def test_bin_weights_load_with_weights_only(folder, good_folder):
    sd = load_file(str(folder / WEIGHTS))
    (folder / WEIGHTS).unlink()
    torch.save(sd, folder / "diffusion_pytorch_model.bin")
    model = load_diffusers(folder)
    assert torch.equal(model.state_dict()["encoder.conv_in.weight"], sd["encoder.conv_in.weight"])


class NotATensor:  # pickled by reference: weights_only=True refuses to rebuild it
    pass


def test_bin_weights_with_pickled_objects_are_refused(folder):
    (folder / WEIGHTS).unlink()
    torch.save({"x": NotATensor()}, folder / "diffusion_pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"torch.load\(weights_only=True\) can read"):
        load_diffusers(folder)


def test_old_attention_names_load_as_diffusers_renames_them(folder, good_folder):
    """Checkpoints saved before diffusers renamed query/key/value/proj_attn still load, because
    the check applies diffusers' own renaming (``_fix_state_dict_keys_on_load``) first."""
    renames = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}

    def to_old(sd):
        for k in [k for k in sd if ".attentions.0." in k]:
            for new, old in renames.items():
                if f".{new}." in k:
                    sd[k.replace(f".{new}.", f".{old}.")] = sd.pop(k)

    edit_weights(folder, to_old)
    assert any(".query." in k for k in load_file(str(folder / WEIGHTS)))
    ours = load_diffusers(folder).state_dict()
    theirs = diffusers.AutoencoderKL.from_pretrained(str(folder), local_files_only=True).state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in ours.items())


def test_model_weights_follow_the_same_rule(tmp_path):
    """``--model`` + ``--weights`` shares the check: an int8 tensor is refused there too."""
    from vae_deploy.adapters.user_code import load_weights

    model = torch.nn.Linear(3, 2)
    sd = {"weight": model.weight.detach().to(torch.int8), "bias": model.bias.detach()}
    with pytest.raises(CheckpointError, match="dtype \\(1\\): weight: file int8"):
        load_weights(model, sd)


def test_config_that_is_not_a_regular_file_is_refused(folder):
    (folder / "config.json").unlink()
    (folder / "config.json").mkdir()
    with pytest.raises(VaeDeployError):
        load_diffusers(folder)


@pytest.mark.slow
def test_two_exports_of_one_folder_are_identical(good_folder, tmp_path):
    for name in ("a", "b"):
        r = CliRunner().invoke(main, ["export", "--diffusers", str(good_folder), "--out", str(tmp_path / name),
                                      "--format", "onnx"])
        assert r.exit_code == 0, r.output
    for f in ("encoder.onnx", "decoder.onnx"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
