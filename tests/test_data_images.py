"""Image folders, the stream sampler, `shortcut encode` with a tiny random AutoencoderKL (no download;
diffusers + safetensors come with the test extra: these tests run in CI, they are not skipped),
latent training with decoded samples, and the bad inputs (each a clear error, nothing half-written)."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from shortcut import ObjectiveConfig, TrainConfig, train
from shortcut.cli import load_for_sampling, main
from shortcut.data import (MANIFEST, ImageFolder, LatentDataset, StreamSampler, center_crop_resize, make_dataset,
                           scan_image_folder)
from shortcut.encode import encode_folder, load_vae, vae_decode, vae_encode
from shortcut.train import CHECKPOINT

SIZE = 16


def _png(path, arr):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr.astype(np.uint8)).save(path)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """DIR/cat/*.png, DIR/dog/sub/*.png: 5 + 4 random 16×16 RGB images, class-tinted."""
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for c, (name, n) in enumerate([("cat", 5), ("dog", 4)]):
        for i in range(n):
            arr = rng.integers(0, 256, (SIZE, SIZE, 3))
            arr[..., c] = 255
            _png(str(root / name / ("sub" if c else "") / f"{i}.png"), arr)
    return str(root)


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    """A randomly initialised 2-level AutoencoderKL (downsampling ×2, 4 latent channels), saved like a hub VAE."""
    from diffusers import AutoencoderKL
    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                        latent_channels=4, norm_num_groups=4, sample_size=SIZE)
    path = str(tmp_path_factory.mktemp("vae") / "tiny-vae")
    vae.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def latents(folder, vae_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("lat") / "latents")
    man = encode_folder(folder, out, vae_dir, image_size=0, batch_size=4, flip=True, mode="mean", shard_size=5,
                        num_workers=0, progress=False)
    return out, man


def test_image_folder_layout_labels_and_pixels(folder):
    files, labels, classes = scan_image_folder(folder)
    assert classes == ["cat", "dog"] and labels == [0] * 5 + [1] * 4
    assert all("/dog/sub/" in f for f in files[5:])
    data = make_dataset(f"images:{folder}")
    assert isinstance(data, ImageFolder) and data.shape == (3, SIZE, SIZE) and data.num_classes == 2
    x, y = data.load(6)
    ref = torch.from_numpy(np.array(Image.open(files[6]))).permute(2, 0, 1).float() / 127.5 - 1
    torch.testing.assert_close(x, ref)
    assert int(y) == 1
    xf, _ = data.load(6, flip=True)
    torch.testing.assert_close(xf, ref.flip(-1))
    xb, yb = data.batch(3, torch.Generator().manual_seed(0))
    assert xb.shape == (3, 3, SIZE, SIZE) and yb.dtype == torch.long


def test_center_crop_resize_keeps_the_centre():
    arr = np.zeros((10, 40, 3), np.uint8)
    arr[:, 10:30] = (0, 200, 0)             # green centre half, black sides: the crop sees only green
    out = center_crop_resize(Image.fromarray(arr), 8)
    assert out.shape == (8, 8, 3)
    assert np.abs(out[..., 1].astype(int) - 200).max() <= 2 and out[..., 0].max() <= 2
    big = np.full((64, 48, 3), 77, np.uint8)  # halved by a box filter first (short side >= 2·size)
    assert (center_crop_resize(Image.fromarray(big), 8) == 77).all()


def test_image_folder_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolder(str(tmp_path / "nope"))
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images found"):
        ImageFolder(str(tmp_path / "empty"))
    _png(str(tmp_path / "mixed" / "a.png"), np.zeros((8, 8, 3)))
    _png(str(tmp_path / "mixed" / "b.png"), np.zeros((12, 12, 3)))
    with pytest.raises(ValueError, match=r"different sizes .*8x8.*12x12.*image_size"):
        ImageFolder(str(tmp_path / "mixed"))
    assert ImageFolder(str(tmp_path / "mixed"), image_size=8).load(1)[0].shape == (3, 8, 8)
    _png(str(tmp_path / "wide" / "a.png"), np.zeros((8, 12, 3)))
    with pytest.raises(ValueError, match="not square"):
        ImageFolder(str(tmp_path / "wide"))
    _png(str(tmp_path / "both" / "a.png"), np.zeros((8, 8, 3)))
    _png(str(tmp_path / "both" / "cls" / "b.png"), np.zeros((8, 8, 3)))
    with pytest.raises(ValueError, match=r"both at the top level \(a.png, ...\) and in class subfolders"):
        ImageFolder(str(tmp_path / "both"))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image .*broken.png"):
        ImageFolder(str(tmp_path / "bad"))
    with pytest.raises(ValueError, match="cannot read image .*broken.png"):
        ImageFolder(str(tmp_path / "bad"), image_size=8).load(0)
    with pytest.raises(ValueError, match="unknown dataset"):
        make_dataset(str(tmp_path / "missing"))


def test_stream_sampler_is_independent_of_shards_and_resumable():
    def items(shards, num_shards, start=0, steps=7):
        return [it for batch in StreamSampler(10, 4, num_shards, shards, start, steps, 3, True) for it in batch]

    one = items([0], 1)
    # Two shards of 2 cover the same positions as one shard of 4, step by step.
    two = [StreamSampler(10, 4, 2, [r], 0, 7, 3, True) for r in (0, 1)]
    merged = [it for a, b in zip(*two) for it in a + b]
    assert merged == one
    # Each epoch of 10 positions is a permutation of the dataset; flips vary.
    idx = [i for i, _ in one]
    assert sorted(idx[:10]) == list(range(10)) and sorted(idx[10:20]) == list(range(10)) and idx[:10] != idx[10:20]
    assert {f for _, f in one} == {True, False}
    assert items([0], 1, start=3) == one[12:]        # resume at step 3: positions 12 ..
    assert all(not f for _, f in StreamSampler(10, 4, 1, [0], 0, 2, 3, False).__iter__().__next__())


def test_encode_writes_shards_manifest_and_flips(folder, vae_dir, latents):
    out, man = latents
    assert man["count"] == 18 and man["shape"] == [4, SIZE // 2, SIZE // 2] and man["num_classes"] == 2
    assert [s["count"] for s in man["shards"]] == [5, 5, 5, 3] and man["flip"] and man["sample"] == "mean"
    assert man["vae"] == os.path.abspath(vae_dir) and man["scale_factor"] == pytest.approx(0.18215)
    assert json.load(open(os.path.join(out, MANIFEST))) == man
    assert not [f for f in os.listdir(os.path.dirname(out)) if ".tmp" in f]
    data = make_dataset(out)                         # a bare folder with a manifest is latents
    assert isinstance(data, LatentDataset) and len(data) == 18 and data.shape == (4, SIZE // 2, SIZE // 2)
    images = ImageFolder(folder)
    vae = load_vae(vae_dir)
    x = torch.stack([images.load(i)[0] for i in range(9)])
    z = vae_encode(vae, x, 0.18215, mode="mean")
    zf = vae_encode(vae, x.flip(-1), 0.18215, mode="mean")
    for i in (0, 4, 8):                              # entries: image i at 2i, its mirror at 2i + 1
        torch.testing.assert_close(data.load(2 * i)[0], z[i], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(data.load(2 * i + 1)[0], zf[i], rtol=1e-5, atol=1e-5)
        assert int(data.load(2 * i)[1]) == int(data.load(2 * i + 1)[1]) == images.labels[i]


def test_encode_posterior_samples_differ_from_the_mean(folder, vae_dir, tmp_path):
    man = encode_folder(folder, str(tmp_path / "post"), vae_dir, image_size=8, flip=False, mode="posterior",
                        dtype="float16", num_workers=0, progress=False)
    assert man["count"] == 9 and man["image_size"] == 8 and man["shape"] == [4, 4, 4]
    data = LatentDataset(str(tmp_path / "post"))
    z = vae_encode(load_vae(vae_dir), ImageFolder(folder, image_size=8).load(0)[0][None], man["scale_factor"], "mean")
    diff = (data.load(0)[0] - z[0]).abs()
    assert diff.max() > 1e-3 and diff.mean() < 1.0   # a sample near the mean, not the mean


def test_encode_bad_inputs_leave_nothing(folder, vae_dir, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("x")
    with pytest.raises(FileExistsError, match="not an empty folder"):
        encode_folder(folder, str(tmp_path / "taken"), vae_dir, image_size=0, num_workers=0, progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images found"):
        encode_folder(str(tmp_path / "empty"), str(tmp_path / "o1"), vae_dir, num_workers=0, progress=False)
    bad = tmp_path / "bad"
    _png(str(bad / "a" / "0.png"), np.zeros((SIZE, SIZE, 3)))
    (bad / "a" / "1.png").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot read image .*1.png"):   # found while encoding (image_size > 0)
        encode_folder(str(bad), str(tmp_path / "o2"), vae_dir, image_size=8, batch_size=1, shard_size=1,
                      num_workers=0, progress=False)
    with pytest.raises(RuntimeError, match="cannot load the VAE"):
        encode_folder(folder, str(tmp_path / "o3"), str(tmp_path / "no-vae"), image_size=0, num_workers=0,
                      progress=False)
    left = sorted(os.listdir(tmp_path))
    assert left == ["bad", "empty", "taken"], f"partial output left behind: {left}"


def test_manifest_must_match_its_shards(latents, tmp_path):
    import shutil
    src, _ = latents
    for case in ("count", "missing", "shape", "format"):
        d = tmp_path / case
        shutil.copytree(src, d)
        man = json.load(open(d / MANIFEST))
        if case == "count":
            man["shards"][1]["count"] = 4
            match = "does not match its manifest"
        elif case == "missing":
            os.remove(d / man["shards"][2]["file"])
            match = "does not exist"
        elif case == "shape":
            man["shape"] = [4, 4, 4]
            match = "does not match its manifest"
        else:
            man["format"] = "something-else"
            match = "not a shortcut latent manifest"
        json.dump(man, open(d / MANIFEST, "w"))
        with pytest.raises(ValueError, match=match):
            LatentDataset(str(d))
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        LatentDataset(str(tmp_path))


def _lat_cfg(out_dir, data, **kw):
    base = dict(data=f"latents:{data}", preset="tiny", steps=4, batch_size=6, lr=1e-3, log_every=1, ckpt_every=2,
                out_dir=str(out_dir), progress=False, grid_steps=(1, 2), num_workers=0,
                objective=ObjectiveConfig(bootstrap_fraction=0.25))
    base.update(kw)
    return TrainConfig(**base)


def test_latents_train_resume_and_decode_samples(latents, tmp_path):
    data, man = latents
    # Trained on the CPU: the resume check is bitwise, and CUDA's index_add_ (the label table's gradient in
    # the fused conditioning kernel's backward) accumulates with float atomics in a varying order.
    full = train(_lat_cfg(tmp_path / "full", data, device="cpu"))
    run = tmp_path / "run"
    assert len(full.history) == 4 and np.isfinite([r["loss"] for r in full.history]).all()
    # The grid is decoded through the VAE: RGB at pixel size (16 + 2 border) × 4, one column per class (8 min).
    grid = Image.open(tmp_path / "full" / "samples.png")
    assert grid.mode == "RGB" and grid.size == (8 * (SIZE + 2) * 4, 2 * (SIZE + 2) * 4)
    # Exact resume through the DataLoader stream, with a worker process reading the shards.
    train(_lat_cfg(run, data, steps=2, num_workers=1, device="cpu"))
    resumed = train(_lat_cfg(run, data, resume=True, num_workers=1, device="cpu"))
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in full.history[2:]]
    ckpt = torch.load(run / CHECKPOINT, weights_only=False)
    assert ckpt["data_info"]["latent"] == {"vae": man["vae"], "scale_factor": man["scale_factor"]}
    # Sampling needs neither the latents nor the images: the checkpoint names the VAE.
    model, info, decode = load_for_sampling(str(run / CHECKPOINT), torch.device("cpu"))
    from shortcut import sample
    z = sample(model, torch.randn(3, *info["shape"]), 2, y=torch.tensor([0, 1, 1]))
    images = decode(z)
    assert images.shape == (3, 3, SIZE, SIZE) and images.abs().max() <= 1
    torch.testing.assert_close(images, vae_decode(load_vae(man["vae"]), z, man["scale_factor"]))
    # The CLI decodes too: `shortcut sample` on a latent checkpoint writes RGB images at pixel size.
    png = tmp_path / "cli.png"
    main(["sample", "--ckpt", str(run / CHECKPOINT), "--steps", "1", "2", "--n", "3", "--out", str(png)])
    grid = Image.open(png)
    assert grid.mode == "RGB" and grid.size == (3 * (SIZE + 2) * 4, 2 * (SIZE + 2) * 4)
    with pytest.raises(SystemExit, match="use --fid"):
        main(["eval", "--ckpt", str(run / CHECKPOINT), "--steps", "1"])


def test_pixel_folder_training_and_cli_encode(folder, vae_dir, tmp_path, capsys):
    res = train(TrainConfig(data=f"images:{folder}", preset="tiny", image_size=8, steps=2, batch_size=4,
                            out_dir=str(tmp_path / "px"), progress=False, grid_steps=(1,), num_workers=0, log_every=1))
    assert res.ema.cfg.input_size == 8 and res.ema.cfg.num_classes == 2 and res.history[-1]["step"] == 2
    main(["encode", "--data", folder, "--out", str(tmp_path / "lat"), "--vae", vae_dir, "--image-size", "8",
          "--flip", "false", "--num-workers", "0", "--device", "cpu"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["count"] == 9 and summary["shape"] == [4, 4, 4]
    with pytest.raises(SystemExit, match="--recipe needs --data"):
        main(["train", "--recipe", "imagenet256-dit-b2"])
