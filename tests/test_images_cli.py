"""`coda reconstruct / encode / decode` on real photographs of odd sizes, bad files among them, with a
tiny random tokenizer; no params.yaml anywhere near."""
import json

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open

from coda.cli import main
from coda.data.crops import center_crop
from coda.data.framing import fit_to_square
from coda.data.photos import load_photo
from test_tokenizer import small_tokenizer

RES = 16  # small_tokenizer: last scale 8, VAE downsampling 2


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return small_tokenizer(posterior="sample").save_pretrained(tmp_path_factory.mktemp("tok") / "tokenizer")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """chelsea 300x451 JPEG, coffee 400x600 PNG, rocket in a subfolder, astronaut as grey and as CMYK,
    plus a corrupt JPEG, a truncated PNG and a text file."""
    folder = tmp_path_factory.mktemp("photos")
    (folder / "sub").mkdir()
    Image.fromarray(load_photo("chelsea")).save(folder / "chelsea.jpg", quality=90)
    Image.fromarray(load_photo("coffee")).save(folder / "coffee.png")
    Image.fromarray(load_photo("rocket")).save(folder / "sub" / "rocket.jpg")
    astronaut = Image.fromarray(load_photo("astronaut"))
    astronaut.convert("L").save(folder / "astronaut_grey.png")
    astronaut.convert("CMYK").save(folder / "astronaut_cmyk.jpg")
    (folder / "broken.jpg").write_bytes(bytes(range(256)) * 4)  # no image format's header
    png = (folder / "coffee.png").read_bytes()
    (folder / "cut.png").write_bytes(png[:len(png) // 2])
    (folder / "notes.txt").write_text("not an image\n")
    return folder


GOOD = {"chelsea": (300, 451), "coffee": (400, 600), "sub/rocket": load_photo("rocket").shape[:2],
        "astronaut_grey": (512, 512), "astronaut_cmyk": (512, 512)}


def pixels(path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def test_reconstruct_a_folder_of_odd_sizes_reports_bad_files(tmp_path, photos, tokenizer_dir, capsys,
                                                            monkeypatch):
    monkeypatch.chdir(tmp_path)  # no params.yaml here
    out = tmp_path / "out"
    assert main(["reconstruct", str(photos), "--tokenizer", str(tokenizer_dir), "--out", str(out), "--sheet"]) == 0
    for name in GOOD:
        assert pixels(out / f"{name}.png").shape == (RES, RES, 3)
        sheet = pixels(out / "sheets" / f"{name}.png")
        assert sheet.shape == (RES, 2 * RES, 3)
        assert not np.array_equal(sheet[:, :RES], sheet[:, RES:])  # input beside a (lossy) reconstruction
    report = json.loads((out / "reconstruct_report.json").read_text())
    images = report["images"]
    assert (images["ok"], images["skipped"], images["ignored"]) == (5, 2, 1)
    assert images["by_reason"] == {"corrupt": 1, "truncated": 1}
    assert images["converted"] == {"CMYK": 1, "L": 1}
    assert sorted(f["path"].rsplit("/", 1)[1] for f in images["files"]) == ["broken.jpg", "cut.png"]
    written = {r["output"]: r for r in report["written"]}
    assert set(written) == {f"{name}.png" for name in GOOD}
    assert written["chelsea.png"]["original_size"] == [451, 300]  # width, height
    assert all(np.isfinite(r["psnr_db"]) for r in written.values())
    printed = capsys.readouterr().out
    assert "5 of 7 images" in printed and "'corrupt': 1" in printed and "reconstruct_report.json" in printed


def test_pad_keeps_the_whole_picture_and_removes_the_padding(tmp_path, photos, tokenizer_dir):
    out = tmp_path / "out"
    assert main(["reconstruct", str(photos / "chelsea.jpg"), str(photos / "coffee.png"), "--policy", "pad",
                 "--tokenizer", str(tokenizer_dir), "--out", str(out)]) == 0
    assert pixels(out / "chelsea.png").shape == (11, 16, 3)   # 451 x 300 -> 16 x round(10.6)
    assert pixels(out / "coffee.png").shape == (11, 16, 3)    # 600 x 400 -> 16 x round(10.7)
    written = json.loads((out / "reconstruct_report.json").read_text())["written"]
    assert [r["padding"] for r in written] == [[0, 2, 0, 3], [0, 2, 0, 3]]  # left, top, right, bottom


def test_fit_to_square_policies():
    portrait = Image.fromarray(load_photo("coffee")).transpose(Image.Transpose.ROTATE_90)  # 400 wide, 600 high
    cropped, framing = fit_to_square(portrait, 32, "resize-crop")
    assert np.array_equal(cropped, center_crop(portrait, 32)) and framing.padding == (0, 0, 0, 0)
    padded, framing = fit_to_square(portrait, 32, "pad")
    assert padded.shape == (32, 32, 3) and framing.padding == (5, 0, 6, 0) and framing.original_size == (400, 600)
    picture = framing.unframe(padded)
    assert np.array_equal(picture, np.asarray(portrait.resize((21, 32), Image.LANCZOS)))
    assert np.array_equal(padded[:, :5], np.repeat(picture[:, :1], 5, axis=1))  # edges replicated
    with pytest.raises(ValueError, match="policy"):
        fit_to_square(portrait, 32, "stretch")


@pytest.mark.parametrize("policy", ["resize-crop", "pad"])
@pytest.mark.parametrize("posterior", ["mean", "sample"])
def test_decode_of_encode_equals_reconstruct_bit_for_bit(tmp_path, photos, tokenizer_dir, policy, posterior):
    common = ["--tokenizer", str(tokenizer_dir), "--policy", policy, "--posterior", posterior, "--seed", "7"]
    assert main(["reconstruct", str(photos), *common, "--out", str(tmp_path / "recon")]) == 0
    assert main(["encode", str(photos), *common, "--out", str(tmp_path / "tokens")]) == 0
    assert main(["decode", str(tmp_path / "tokens"), "--tokenizer", str(tokenizer_dir),
                 "--out", str(tmp_path / "decoded")]) == 0
    for name in GOOD:
        assert np.array_equal(pixels(tmp_path / "decoded" / f"{name}.png"),
                              pixels(tmp_path / "recon" / f"{name}.png")), name
    with safe_open(str(tmp_path / "tokens" / "chelsea.safetensors"), framework="numpy") as f:
        metadata = {k: json.loads(v) for k, v in f.metadata().items()}
        levels = [f.get_tensor(k) for k in sorted(f.keys())]
    assert [level.shape for level in levels] == [(s, s) for s in (1, 2, 4, 8)]
    assert all(level.dtype == np.uint16 for level in levels)
    assert metadata["original_size"] == [451, 300] and metadata["policy"] == policy
    assert metadata["padding"] == ([0, 2, 0, 3] if policy == "pad" else [0, 0, 0, 0])
    assert metadata["posterior"] == posterior and metadata["seed"] == 7


def test_the_seed_chooses_the_posterior_sample(tmp_path, photos, tokenizer_dir):
    def tokens(seed):
        out = tmp_path / f"seed{seed}"
        assert main(["encode", str(photos / "coffee.png"), "--tokenizer", str(tokenizer_dir), "--seed", str(seed),
                     "--out", str(out)]) == 0
        with safe_open(str(out / "coffee.safetensors"), framework="numpy") as f:
            return np.concatenate([f.get_tensor(k).ravel() for k in sorted(f.keys())])

    assert np.array_equal(tokens(0), tokens(0))
    assert not np.array_equal(tokens(0), tokens(1))


def test_decode_skips_foreign_and_broken_token_files(tmp_path, photos, tokenizer_dir, capsys):
    other_dir = small_tokenizer(seed=1).save_pretrained(tmp_path / "other")
    tokens = tmp_path / "tokens"
    assert main(["encode", str(photos / "chelsea.jpg"), "--tokenizer", str(tokenizer_dir), "--out", str(tokens)]) == 0
    assert main(["encode", str(photos / "coffee.png"), "--tokenizer", str(other_dir), "--out", str(tokens)]) == 0
    (tokens / "junk.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    out = tmp_path / "decoded"
    assert main(["decode", str(tokens), "--tokenizer", str(tokenizer_dir), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["chelsea.png"]
    report = json.loads((out / "decode_report.json").read_text())["tokens"]
    assert report["by_reason"] == {"other_tokenizer": 1, "unreadable": 1}
    assert report["ignored"] == 1  # encode_report.json
    capsys.readouterr()
    assert main(["decode", str(tokens / "coffee.safetensors"), "--tokenizer", str(tokenizer_dir),
                 "--out", str(tmp_path / "none")]) == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith("coda decode: error: none of the 1") and "decode_report.json" in message
    # the one reason belongs on the terminal, with what to do
    assert "coffee.safetensors: made by tokenizer" in message and "with the tokenizer that encoded them" in message


def test_no_usable_image_is_exit_2_with_the_report(tmp_path, photos, tokenizer_dir, capsys):
    out = tmp_path / "out"
    assert main(["reconstruct", str(photos / "broken.jpg"), str(photos / "cut.png"), str(tmp_path / "absent.jpg"),
                 "--tokenizer", str(tokenizer_dir), "--out", str(out)]) == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    assert message.startswith("coda reconstruct: error: none of the 3 images") and "reconstruct_report.json" in message
    assert json.loads((out / "reconstruct_report.json").read_text())["images"]["by_reason"] == {
        "corrupt": 1, "missing": 1, "truncated": 1}
    assert main(["encode", str(photos), "--tokenizer", str(tmp_path / "no_tokenizer"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "no_tokenizer") in err and "tokenizer directory" in err
