"""coda.data: reading bad files, crops, bad-image reports, the prepare stage (folder and demo), datasets.

All fixtures are generated in tmp_path at test time.
"""

from __future__ import annotations

import json
import pickle
import warnings

import numpy as np
import pytest
from PIL import Image

from coda.data.datasets import class_labels
from coda.data.demo import prepare_demo
from coda.data.folder import prepare_folder
from coda.data.bad_images import REASONS, BadImage, BadImageError, BadImageReport, reporting
from coda.data.crops import CROPS, adm_crop, center_crop, release_crop, train_crop
from coda.data.images import list_files, open_rgb, probe_image, read_rgb
from coda.data.layout import npy_rows

RES = 32


# ----------------------------------------------------------------------------------------------
# fixtures: every kind of bad (or convertible) file


def noise(h, w, seed=0, channels=3):
    rng = np.random.default_rng(seed)
    shape = (h, w, channels) if channels > 1 else (h, w)
    return (rng.random(shape) * 255).astype(np.uint8)


def smooth(h, w, seed=0):
    """A smooth colour image (JPEG-friendly)."""
    y, x = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    a, b, c = rng.uniform(0.02, 0.1, 3)
    img = np.stack([128 + 100 * np.sin(a * x), 128 + 100 * np.cos(b * y),
                    128 + 100 * np.sin(c * (x + y))], axis=-1)
    return img.astype(np.uint8)


def save(path, img, fmt=None, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, fmt, **kw)
    return path


def cut(path, frac=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * frac)])
    return path


def make_convertible(d):
    """Files that must be converted to RGB: name -> (path, converted mode)."""
    out = {}
    out["cmyk"] = (save(d / "cmyk.jpg", Image.fromarray(smooth(48, 56, 1)).convert("CMYK")), "CMYK")
    out["gray"] = (save(d / "gray.png", Image.fromarray(noise(40, 50, 2, channels=1))), "L")
    g16 = (np.linspace(0, 65535, 48 * 40).reshape(40, 48)).astype(np.uint16)
    out["gray16"] = (save(d / "gray16.png", Image.fromarray(g16)), "I;16")
    pal = Image.fromarray(smooth(40, 44, 3)).convert("P", palette=Image.ADAPTIVE, colors=16)
    out["palette"] = (save(d / "palette.png", pal, transparency=0), "P+transparency")
    rgba = np.dstack([smooth(36, 40, 4), np.full((36, 40), 128, np.uint8)])
    out["rgba"] = (save(d / "rgba.png", Image.fromarray(rgba, "RGBA")), "RGBA")
    return out


def make_bad(d):
    """Files that must be skipped: name -> (path, reason)."""
    out = {}
    out["trunc_jpg"] = (cut(save(d / "trunc.jpg", Image.fromarray(noise(64, 64, 5)))), "truncated")
    out["trunc_png"] = (cut(save(d / "trunc.png", Image.fromarray(noise(64, 64, 6)))), "truncated")
    p = d / "corrupt.jpg"
    p.write_bytes(np.random.default_rng(7).bytes(3000))
    out["corrupt"] = (p, "corrupt")
    out["tiny"] = (save(d / "tiny.png", Image.fromarray(noise(8, 8, 8))), "too_small")
    p = d / "text.png"
    p.write_text("this is a text file, not a PNG\n" * 20)
    out["text_as_png"] = (p, "not_an_image")
    p = d / "empty.jpg"
    p.write_bytes(b"")
    out["empty"] = (p, "empty")
    return out


# ----------------------------------------------------------------------------------------------
# images.py


def test_read_rgb_converts_what_it_can(tmp_path):
    for name, (path, mode) in make_convertible(tmp_path).items():
        img, converted = open_rgb(path)
        assert img.mode == "RGB", name
        assert converted == mode, name
        assert np.asarray(img).dtype == np.uint8


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    vals = np.array([[0, 257 * 100, 32768, 65535]], dtype=np.uint16).repeat(20, 0).repeat(5, 1)
    p = save(tmp_path / "g16.png", Image.fromarray(vals))
    assert Image.open(p).mode == "I;16"
    arr = np.asarray(read_rgb(p, min_size=1))
    assert arr[0, ::5, 0].tolist() == [0, 100, 128, 255]
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()


def test_transparency_composited_on_white(tmp_path):
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[..., 0] = 255  # red, fully transparent on the left half
    rgba[:, 10:, 3] = 255
    arr = np.asarray(read_rgb(save(tmp_path / "a.png", Image.fromarray(rgba, "RGBA"))))
    assert (arr[:, :10] == 255).all()
    assert (arr[:, 10:] == [255, 0, 0]).all()
    pal = Image.new("P", (20, 20), 0)
    pal.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    pal.paste(1, (0, 0, 20, 10))
    arr = np.asarray(read_rgb(save(tmp_path / "p.png", pal, transparency=0)))
    assert (arr[10:] == 255).all() and (arr[:10] == [0, 255, 0]).all()


def test_exif_orientation_applied(tmp_path):
    img = Image.fromarray(smooth(30, 60))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    p = save(tmp_path / "rot.jpg", img, exif=exif)
    assert read_rgb(p).size == (30, 60)


def test_bad_files_raise_badimage_with_reason(tmp_path):
    for name, (path, reason) in make_bad(tmp_path).items():
        with pytest.raises(BadImage) as info:
            read_rgb(path)
        assert info.value.reason == reason and reason in REASONS, name
        assert str(path) in str(info.value)
    other = tmp_path / "notes.csv"
    other.write_text("a,b\n1,2\n")
    cases = {tmp_path / "nope.jpg": "missing", other: "not_an_image"}
    (tmp_path / "dir.jpg").mkdir()
    cases[tmp_path / "dir.jpg"] = "not_a_file"
    for path, reason in cases.items():
        with pytest.raises(BadImage) as info:
            read_rgb(path)
        assert info.value.reason == reason and reason in REASONS


def test_probe_is_cheap_but_catches_header_problems(tmp_path):
    bad = make_bad(tmp_path)
    assert probe_image(bad["trunc_jpg"][0])[:2] == (64, 64)  # only a full decode sees truncation
    for name in ("corrupt", "tiny", "text_as_png", "empty"):
        with pytest.raises(BadImage) as info:
            probe_image(bad[name][0])
        assert info.value.reason == bad[name][1]


def test_list_files_sorts_skips_hidden_and_splits_off_non_images(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        list_files(tmp_path / "missing_dir")
    (tmp_path / "empty").mkdir()
    assert list_files(tmp_path / "empty") == ([], [])
    d = tmp_path / "d"
    for rel in ["b/2.JPEG", "a/1.png", "a/0.jpg", ".hidden.jpg", ".git/x.png", "readme.txt"]:
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(b"x")
    found = [p.relative_to(d).as_posix() for p in list_files(d)[0]]
    assert found == ["a/0.jpg", "a/1.png", "b/2.JPEG"]
    assert [p.name for p in list_files(d)[1]] == ["readme.txt"]
    with pytest.raises(NotADirectoryError):
        list_files(d / "readme.txt")


# ----------------------------------------------------------------------------------------------
# crops.py


def test_crop_shapes():
    img = Image.fromarray(smooth(200, 300))
    for name, fn in CROPS.items():
        out = fn(img, RES)
        assert out.shape == (RES, RES, 3) and out.dtype == np.uint8, name
    tall = Image.fromarray(smooth(90, 40))
    assert center_crop(tall, 64).shape == (64, 64, 3)  # upscales small images
    assert adm_crop(tall, 64).shape == (64, 64, 3)


def test_adm_crop_box_halves_big_images():
    img = Image.fromarray(noise(800, 1000, 3))
    # min side 800 >= 2*64: halve to 400, 200, 100 (100 < 128 stops), then bicubic to 64.
    ref = img
    for size in [(500, 400), (250, 200), (125, 100)]:
        ref = ref.resize(size, resample=Image.BOX)
    ref = np.asarray(ref.resize((80, 64), resample=Image.BICUBIC))
    ref = ref[0:64, 8:72]
    np.testing.assert_array_equal(adm_crop(img, 64), ref)
    assert not np.array_equal(adm_crop(img, 64), center_crop(img, 64))


def test_center_crop_is_lanczos_centre():
    img = Image.fromarray(noise(60, 90, 4))
    ref = np.asarray(img.resize((48, 32), resample=Image.LANCZOS))[:, 8:40]
    np.testing.assert_array_equal(center_crop(img, 32), ref)


def test_release_crop_is_the_training_transform_on_a_fixed_random_crop():
    """The release evaluates on Resize(288) + RandomCrop(256) of each validation image: here the short
    side to 1.125 x res (Lanczos) and a res crop at a position drawn from the image's own pixels."""
    img = Image.fromarray(noise(60, 90, 6))
    crop = release_crop(img, 32)
    resized = np.asarray(img.resize((54, 36), resample=Image.LANCZOS))  # short side 36 = 1.125 x 32
    positions = [(top, left) for top in range(5) for left in range(23)
                 if np.array_equal(resized[top:top + 32, left:left + 32], crop)]
    assert len(positions) == 1 and positions != [(2, 11)]  # one crop of the resized image, not its centre
    np.testing.assert_array_equal(release_crop(img.copy(), 32), crop)  # the same image: the same crop
    others = [release_crop(Image.fromarray(noise(60, 90, s)), 32) for s in range(7, 11)]
    tops_lefts = {next((t, l) for t in range(5) for l in range(23) if np.array_equal(
        np.asarray(Image.fromarray(noise(60, 90, s)).resize((54, 36), resample=Image.LANCZOS))[t:t + 32, l:l + 32], o))
        for s, o in zip(range(7, 11), others)}
    assert len(tops_lefts) > 1  # positions vary between images


def test_train_crop_deterministic():
    img = Image.fromarray(noise(100, 150, 5))
    a = train_crop(img, RES, np.random.default_rng(1))
    b = train_crop(img, RES, np.random.default_rng(1))
    np.testing.assert_array_equal(a, b)
    crops = [train_crop(img, RES, np.random.default_rng(s)) for s in range(2, 6)]
    assert any(not np.array_equal(a, c) for c in crops)
    assert a.shape == (RES, RES, 3) and a.dtype == np.uint8


# ----------------------------------------------------------------------------------------------
# bad_images.py and layout.py


def test_report_counts_and_policy(tmp_path):
    with reporting(tmp_path / "r.json", "skip", {"train": tmp_path}, source="test") as reports:
        rep = reports["train"]
        rep.add_ok()
        rep.add_ok(converted="CMYK")
        rep.add_bad(tmp_path / "c.jpg", "truncated")
        rep.add_bad(tmp_path / "d.jpg", "truncated")
        rep.add_ignored(tmp_path / "x.txt")
    d = rep.to_dict()
    assert (d["total"], d["ok"], d["skipped"], d["ignored"]) == (4, 2, 2, 1)
    assert d["by_reason"] == {"truncated": 2} and d["converted"] == {"CMYK": 1}
    assert d["files"][0]["path"] == "c.jpg"
    assert json.loads((tmp_path / "r.json").read_text()) == {"on_bad_image": "skip", "source": "test",
                                                              "train": d}
    strict = BadImageReport("error")
    with pytest.raises(BadImageError, match=r"truncated.*c\.jpg"):
        strict.add_bad("c.jpg", "truncated")
    assert strict.skipped == 1  # recorded before raising
    with pytest.raises(ValueError, match="on_bad_image"):
        BadImageReport("ignore")


def test_npy_rows_keeps_the_rows_written_and_leaves_nothing_on_error(tmp_path):
    rows = [np.full((4, 4, 3), i, np.uint8) for i in range(7)]
    with npy_rows(tmp_path / "x.npy", 10, (4, 4, 3)) as w:
        for r in rows:
            w.append(r[None])
    arr = np.load(tmp_path / "x.npy")
    assert arr.shape == (7, 4, 4, 3) and arr.dtype == np.uint8
    np.testing.assert_array_equal(arr, np.stack(rows))
    with open(tmp_path / "ref.npy", "wb") as fh:
        np.save(fh, np.stack(rows))
    assert (tmp_path / "x.npy").read_bytes() == (tmp_path / "ref.npy").read_bytes()  # a plain .npy
    (tmp_path / "ref.npy").unlink()
    with pytest.raises(RuntimeError):
        with npy_rows(tmp_path / "y.npy", 3, (2,)) as w2:
            w2.append(np.zeros((1, 2), np.uint8))
            raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy"]


# ----------------------------------------------------------------------------------------------
# prepare_folder


def fake_imagenet(root):
    """2 classes x 3 images + bad files in train; convertible and bad files in val."""
    train, val = root / "train", root / "val"
    for c, cls in enumerate(["n01", "n02"]):
        for i in range(3):
            ext = "JPEG" if c == 0 else "png"
            save(train / cls / f"img{i}.{ext}", Image.fromarray(smooth(40 + 7 * i, 50, 10 * c + i)))
    bad_train = make_bad(train / "n01")  # truncated files pass the cheap header check
    (train / "n02" / "notes.txt").write_text("not an image")
    save(train / "n02" / ".hidden.jpg", Image.fromarray(smooth(40, 40)))
    (train / "empty_class").mkdir()
    for i in range(2):
        save(val / f"val{i}.JPEG", Image.fromarray(smooth(60, 45 + 20 * i, 30 + i)))
    conv = make_convertible(val)
    bad_val = make_bad(val)
    (val / "README.md").write_text("# val\n")
    return train, val, bad_train, conv, bad_val


def test_prepare_folder_end_to_end(tmp_path):
    train, val, bad_train, conv, bad_val = fake_imagenet(tmp_path / "in")
    out = tmp_path / "out"
    meta = prepare_folder(train, val, out, resolution=RES, crop="center")

    rows = (out / "train_manifest.tsv").read_text().splitlines()
    assert rows[0] == "path\tlabel\tclass"
    listed = [r.split("\t") for r in rows[1:]]
    paths = [r[0] for r in listed]
    assert [p for p in paths if p.startswith("n02")] == [f"n02/img{i}.png" for i in range(3)]
    assert {"n01/trunc.jpg", "n01/trunc.png"} <= set(paths)  # full decode happens at train time
    assert {r[1] for r in listed if r[2] == "n01"} == {"0"} and meta["classes"] == ["n01", "n02"]

    report = json.loads((out / "prepare_report.json").read_text())
    tr = report["train"]
    assert tr["by_reason"] == {"corrupt": 1, "empty": 1, "not_an_image": 1, "too_small": 1}
    assert (tr["ok"], tr["skipped"], tr["ignored"]) == (8, 4, 1)
    va = report["val"]
    assert va["by_reason"] == {"corrupt": 1, "empty": 1, "not_an_image": 1, "too_small": 1,
                               "truncated": 2}
    assert (va["total"], va["ok"], va["skipped"], va["ignored"]) == (13, 7, 6, 1)
    assert va["converted"] == {"CMYK": 1, "I;16": 1, "L": 1, "P+transparency": 1, "RGBA": 1}
    assert {f["path"] for f in va["files"]} == {p.name for p, _ in bad_val.values()}

    arr = np.load(out / "val.npy", mmap_mode="r")
    assert arr.shape == (7, RES, RES, 3) and arr.dtype == np.uint8
    vf = (out / "val_files.tsv").read_text().splitlines()
    assert len(vf) == 8 and vf[1].split("\t")[1] == "cmyk.jpg"  # sorted by path
    img = read_rgb(val / "cmyk.jpg")
    np.testing.assert_array_equal(arr[0], center_crop(img, RES))
    assert meta["counts"]["train"] == 8 and meta["counts"]["val"] == 7
    assert json.loads((out / "meta.json").read_text())["crop"] == "center"
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    classes, labels = class_labels(out)  # the generator's classes: the sorted first subfolders
    assert classes == ["n01", "n02"] and labels["train"].tolist() == [int(r[1]) for r in listed]
    assert labels["val"].tolist() == [-1] * 7  # val files outside any training class folder


def test_prepare_folder_adm_and_limits(tmp_path):
    train, val, *_ = fake_imagenet(tmp_path / "in")
    out = tmp_path / "out"
    meta = prepare_folder(train, val, out, resolution=16, crop="adm", limit_train=3, limit_val=4,
                          seed=3)
    assert meta["counts"]["train"] + meta["counts"]["train_skipped"] == 3
    assert np.load(out / "val.npy").shape[1:] == (16, 16, 3)
    again = prepare_folder(train, val, tmp_path / "out2", resolution=16, crop="adm",
                           limit_train=3, limit_val=4, seed=3)
    assert again["counts"] == meta["counts"]
    np.testing.assert_array_equal(np.load(out / "val.npy"), np.load(tmp_path / "out2" / "val.npy"))


def test_prepare_folder_error_policy_writes_report_then_raises(tmp_path):
    train, val, *_ = fake_imagenet(tmp_path / "in")
    out = tmp_path / "out"
    with pytest.raises(BadImageError) as info:
        prepare_folder(train, val, out, resolution=RES, on_bad_image="error")
    msg = str(info.value)
    assert "corrupt.jpg" in msg and "corrupt" in msg and "prepare_report.json" in msg
    report = json.loads((out / "prepare_report.json").read_text())
    assert report["train"]["files"][0]["path"] == "n01/corrupt.jpg"
    assert not (out / "meta.json").exists()


def test_prepare_folder_missing_and_empty(tmp_path):
    (tmp_path / "empty").mkdir()
    good = tmp_path / "good"
    save(good / "a.png", Image.fromarray(smooth(40, 40)))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        prepare_folder(tmp_path / "nowhere", good, tmp_path / "o1")
    with pytest.raises(ValueError, match="no image files.*empty"):
        prepare_folder(tmp_path / "empty", good, tmp_path / "o2")
    allbad = tmp_path / "allbad"
    make_bad(allbad)
    with pytest.raises(ValueError, match="none of the 6 validation images"):
        prepare_folder(good, allbad, tmp_path / "o3", resolution=16)
    assert json.loads((tmp_path / "o3" / "prepare_report.json").read_text())["val"]["skipped"] == 6
    with pytest.raises(ValueError, match="crop"):
        prepare_folder(good, good, tmp_path / "o4", crop="random")


# ----------------------------------------------------------------------------------------------
# prepare_demo


def test_demo_photos_available():
    from coda.data.photos import PHOTOS, load_photo

    for name in PHOTOS:  # all bundled photos load offline in the project environment
        arr = load_photo(name)
        assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3, name
    with pytest.raises(ValueError):
        load_photo("kidney")


def test_prepare_demo_deterministic_and_split_by_photo(tmp_path):
    kw = dict(resolution=16, crops_per_train_photo=3, crops_per_val_photo=2)
    m0 = prepare_demo(tmp_path / "a", seed=0, **kw)
    prepare_demo(tmp_path / "b", seed=0, **kw)
    prepare_demo(tmp_path / "c", seed=1, **kw)
    for name in ("train.npy", "val.npy"):
        a, b, c = (np.load(tmp_path / d / name) for d in "abc")
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c)
        assert a.shape[1:] == (16, 16, 3) and a.dtype == np.uint8
    meta = json.loads((tmp_path / "a" / "meta.json").read_text())
    train_names = {p["name"] for p in meta["train_photos"]}
    val_names = {p["name"] for p in meta["val_photos"]}
    assert train_names and val_names and not train_names & val_names
    assert m0["counts"]["train"] == 3 * len(train_names) == len(np.load(tmp_path / "a" / "train.npy"))
    tsv = (tmp_path / "a" / "train_files.tsv").read_text().splitlines()[1:]
    assert {r.split("\t")[1] for r in tsv} == train_names
    tsv = (tmp_path / "a" / "val_files.tsv").read_text().splitlines()[1:]
    assert {r.split("\t")[1] for r in tsv} == val_names
    assert json.loads((tmp_path / "a" / "prepare_report.json").read_text())["val"]["skipped"] == 0
    classes, labels = class_labels(tmp_path / "a")  # one class per training photograph
    assert classes == [p["name"] for p in meta["train_photos"]]
    assert labels["train"].tolist() == [c for c in range(len(classes)) for _ in range(3)]
    assert labels["val"].tolist() == [-1] * len(np.load(tmp_path / "a" / "val.npy"))


def test_prepare_demo_unavailable_photo_is_reported(tmp_path, monkeypatch):
    from coda.data import photos

    def broken():
        raise ModuleNotFoundError("needs pooch")

    monkeypatch.setitem(photos.PHOTOS, "rocket", ("scikit-image", broken))
    kw = dict(resolution=16, crops_per_train_photo=1, crops_per_val_photo=1)
    meta = prepare_demo(tmp_path / "a", train_photos=["rocket", "camera"], **kw)
    assert meta["unavailable"] == ["rocket"] and [p["name"] for p in meta["train_photos"]] == ["camera"]
    rep = json.loads((tmp_path / "a" / "prepare_report.json").read_text())
    assert rep["train"]["by_reason"] == {"unavailable": 1}
    with pytest.raises(BadImageError, match="rocket"):
        prepare_demo(tmp_path / "b", train_photos=["rocket", "camera"], on_bad_image="error", **kw)
    with pytest.raises(ValueError, match="both train and validation"):
        prepare_demo(tmp_path / "c", train_photos=["coffee"], **kw)


# ----------------------------------------------------------------------------------------------
# datasets


def test_datasets_over_prepared_dirs(tmp_path):
    torch = pytest.importorskip("torch")
    from coda.data.datasets import ArrayImages, ManifestImages, train_dataset

    prepare_demo(tmp_path / "demo", resolution=16, crops_per_train_photo=2, crops_per_val_photo=1)
    ds = train_dataset(tmp_path / "demo")
    assert isinstance(ds, ArrayImages) and len(ds) > 0
    x = ds[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    assert -1.0 <= float(x.min()) and float(x.max()) <= 1.0
    raw = np.load(tmp_path / "demo" / "train.npy")[0]
    torch.testing.assert_close(x, torch.from_numpy(raw).permute(2, 0, 1).float() / 127.5 - 1)
    ds2 = pickle.loads(pickle.dumps(ds))
    torch.testing.assert_close(ds2[1], ds[1])
    assert len(ArrayImages(tmp_path / "demo" / "val.npy")) == 4

    train, val, *_ = fake_imagenet(tmp_path / "in")
    prepare_folder(train, val, tmp_path / "folder", resolution=16)
    mds = train_dataset(tmp_path / "folder", seed=5)
    assert isinstance(mds, ManifestImages) and len(mds) == 8
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        items = [mds[i] for i in range(len(mds))]  # includes the two truncated files
    assert all(t.shape == (3, 16, 16) for t in items)
    assert sum("skipping bad training image" in str(w.message) for w in caught) == 2
    again = train_dataset(tmp_path / "folder", seed=5)
    with pytest.warns(RuntimeWarning, match="skipping bad training image"):
        for i in range(len(mds)):  # the same crops, also for the redrawn indices
            torch.testing.assert_close(again[i], items[i])
    mds.set_epoch(1)  # a new epoch draws new crops
    assert any(not torch.equal(mds[i], items[i]) for i in range(len(mds)))

