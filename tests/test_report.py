"""Report stage on synthetic metrics files: exact columns, the ablation ladder, valid PNGs, README."""
import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from coda.cli import main
from coda.report import ABLATION_COLUMNS, TABLE1_COLUMNS, build_report

REPO = Path(__file__).resolve().parents[1]
REPORTED = REPO / "references" / "reported.csv"


def metrics_file(kind="tokenizer", rfid=None, official=False, **extra):
    base = {"kind": kind, "rfid": rfid, "rfid_official_weights": official,
            "rfid_missing_reason": None if rfid is not None else "Inception-v3 weights not available offline",
            "rfd_vgg16": 12.5, "psnr": 24.0, "ssim": 0.7, "lpips_vgg": 0.2, "lpips_alex": 0.1,
            "dataset": "demo-photos", "num_images": 16, "crop": "center", "resolution": 64, "posterior": "sample",
            "ema": True, "model_sha256": "ab" * 32, "downsample": 8,
            "library_versions": {"torch": "2.14.1", "torch_fidelity": "0.4.0"},
            "psnr_cap_db": 100.0, "ssim_implementation": "skimage"}
    if kind == "tokenizer":
        base.update({"codebook_size": 64, "scales": [1, 2, 4, 8], "indices_per_image": 85, "bits_per_image": 510.0,
                     "codebook_utilization": 0.75, "utilization_per_scale": [0.02, 0.06, 0.25, 0.7]})
    else:
        base.update({"codebook_size": None, "indices_per_image": None, "bits_per_image": None,
                     "codebook_utilization": None, "utilization_per_scale": None, "ema": None})
    return {**base, **extra}


@pytest.fixture
def inputs(tmp_path):
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    files = {"vae": metrics_file("continuous_vae"),
             "coda": metrics_file(rfid=3.0, official=True, inception_score=180.0),
             "ablate_vq": metrics_file(rfid=9.0, official=False,  # test-only weights: kept out of the tables
                                       inception_score=2.0, rfid_weights={"warning": "NOT the official weights"}),
             "ablate_rvq": metrics_file(progressive=[  # per-k rows, as the evaluate stage writes them
                 {"scales": k, "indices_per_image": n, "bits_per_image": 6.0 * n, "psnr": psnr, "lpips_vgg": lp,
                  "rfd_vgg16": fd} for k, n, psnr, lp, fd in
                 [(1, 1, 14.0, 0.6, 40.0), (2, 5, 17.5, 0.45, 25.0), (4, 85, 24.0, 0.2, 12.5)]])}
    metrics = {}
    for name, data in files.items():
        metrics[name] = metrics_dir / f"{name}.json"
        metrics[name].write_text(json.dumps(data))
    rng = np.random.default_rng(0)
    samples, logs, counts = {}, {}, {}
    for name in ("original", "vae", "coda", "ablate_vq"):
        samples[name] = tmp_path / f"{name}_recon.npy"
        np.save(samples[name], rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8))
    for name in ("coda", "ablate_vq"):
        logs[name] = tmp_path / f"{name}_train_log.tsv"
        pd.DataFrame({"step": [1, 2, 3], "phase": ["latents"] * 3, "epoch": [0, 0, 1], "lr": [5e-4, 4e-4, 1e-4],
                      "loss": [1.0, 0.7, 0.5], "latent_mse": [0.6, 0.4, 0.3],
                      "vq": [0.3, 0.2, 0.1]}).to_csv(logs[name], sep="\t", index=False)
        counts[name] = tmp_path / f"{name}_counts.npy"
        np.save(counts[name], rng.integers(0, 5, (4, 64)))
    meta = {"ablate_vq": {"quantizer": {"kind": "vq"}, "lora": None}, "ablate_rvq": {"quantizer": {"kind": "rvq"}},
            "coda": {"quantizer": {"kind": "coda"}, "lora": {"rank": 32}, "vae": "small KL-VAE f8"}}
    return {"metrics": metrics, "meta": meta, "logs": logs, "samples": samples, "counts": counts}


def test_report_tables_figures_and_readme(inputs, tmp_path):
    out = tmp_path / "results"
    written = build_report(inputs["metrics"], REPORTED, out, inputs["meta"], inputs["logs"],
                           inputs["samples"], inputs["counts"])

    table = pd.read_csv(out / "table1.csv", dtype={"downsample": str})
    assert list(table.columns) == TABLE1_COLUMNS
    computed = table[table["source"] == "computed"]
    reported_count = sum(1 for _ in csv.DictReader(REPORTED.open()))
    assert list(computed["experiment"]) == ["vae", "ablate_vq", "ablate_rvq", "coda"]  # ceiling first, then config order
    assert len(table) == 4 + reported_count and table["source"].notna().all()
    coda = computed.set_index("experiment").loc["coda"]
    assert coda["rfid"] == 3.0 and coda["method"].endswith("+ LoRA") and coda["vae"] == "small KL-VAE f8"
    assert pd.isna(computed.set_index("experiment").loc["ablate_vq", "rfid"])  # non-official weights
    assert computed.set_index("experiment").loc["vae", "method"].startswith("continuous VAE")
    assert "680," in (out / "table1.csv").read_text() and "680.0" not in (out / "table1.csv").read_text()
    headline = table[(table["source"] != "computed") & (table["rfid"] == 1.34)].iloc[0]
    assert headline["bits_per_image"] == pytest.approx(680 * 14)

    ablation = pd.read_csv(out / "ablation.csv")
    assert list(ablation.columns) == ABLATION_COLUMNS
    assert list(ablation["experiment"]) == ["ablate_vq", "ablate_rvq", "ablate_attn", "coda"]
    assert list(ablation["rfid_reported"]) == [41.52, 14.23, 7.06, 1.34]
    assert ablation["rfid_computed"].isna().tolist() == [True, True, True, False]
    assert ablation["psnr_computed"].isna().tolist() == [False, False, True, False]  # ablate_attn not run

    for key in ("grid", "usage", "curves", "rate_distortion"):
        with Image.open(written[key]) as image:
            image.verify()
            assert image.format == "PNG"
        with Image.open(written[key]) as image:
            assert min(image.size) > 150

    text = (out / "README.md").read_text()
    assert "Inception-v3 weights not available offline" in text and "NOT the official weights" in text
    assert "`ablate_attn`" in text and "demo-photos" in text and "`abababababab`" in text
    assert "![rate-distortion](figures/rate_distortion.png)" in text
    assert "| ablate_rvq | 2 | 5 | 30 | 17.50 | 0.450 | 25.00 |" in text

    # DVC's view: numbers only, one file per experiment; the whole record is provenance, not a metric
    numbers = {path.stem: json.loads(path.read_text()) for path in (out / "metrics").glob("*.json")}
    assert set(numbers) == {"vae", "coda", "ablate_vq", "ablate_rvq"}
    assert all(isinstance(v, (int, float)) for m in numbers.values() for v in m.values())
    assert numbers["coda"]["rfid"] == 3.0 and "rfid" not in numbers["ablate_vq"]  # test-only weights
    assert numbers["coda"]["inception_score"] == 180.0 and "inception_score" not in numbers["ablate_vq"]
    assert "codebook_utilization" not in numbers["vae"] and numbers["coda"]["psnr"] == 24.0
    assert json.loads((out / "provenance" / "coda.json").read_text())["model_sha256"] == "ab" * 32
    assert "progressive" not in numbers["ablate_rvq"]  # per-k rows are provenance, not DVC metrics
    assert len(json.loads((out / "provenance" / "ablate_rvq.json").read_text())["progressive"]) == 3
    assert (out / "curves" / "coda.tsv").read_text() == inputs["logs"]["coda"].read_text()


def test_report_without_optional_inputs_still_writes_every_file(tmp_path):
    written = build_report({"coda": tmp_path / "absent.json"}, REPORTED, tmp_path / "out")
    for path in written.values():
        assert path.is_file()
    assert len(pd.read_csv(written["ablation"])) == 4
    with Image.open(written["curves"]) as image:
        assert image.format == "PNG"


def test_report_command_reads_the_stage_layout_it_is_given(inputs, tmp_path):
    """`coda report` finds <train>/<experiment>/train_log.tsv, <eval>/<experiment>/{metrics.json,*.npy}
    and <prepared>/val.npy under the folders it is given, and the experiments in params.yaml."""
    layout = {"train": tmp_path / "train", "eval": tmp_path / "eval", "prepared": tmp_path / "prepared"}
    (layout["prepared"]).mkdir()
    shutil.copy(inputs["samples"]["original"], layout["prepared"] / "val.npy")
    for name, path in inputs["metrics"].items():
        (layout["eval"] / name).mkdir(parents=True)
        shutil.copy(path, layout["eval"] / name / "metrics.json")
    for name in ("coda", "ablate_vq"):
        (layout["train"] / name).mkdir(parents=True)
        shutil.copy(inputs["logs"][name], layout["train"] / name / "train_log.tsv")
        shutil.copy(inputs["samples"][name], layout["eval"] / name / "recon_samples.npy")
        shutil.copy(inputs["counts"][name], layout["eval"] / name / "code_counts.npy")
    shutil.copy(REPORTED, tmp_path / "reported.csv")
    code = main(["report", "--params", str(REPO / "params.yaml"),
                 "--reported", str(tmp_path / "reported.csv"), "--prepared", str(layout["prepared"]),
                 "--train", str(layout["train"]), "--eval", str(layout["eval"]), "--out", str(tmp_path / "cli")])
    assert code == 0
    assert (tmp_path / "cli" / "figures" / "reconstructions.png").is_file()
    assert (tmp_path / "cli" / "table1.csv").read_text().startswith(",".join(TABLE1_COLUMNS))
    assert list(pd.read_csv(tmp_path / "cli" / "table1.csv").query("source == 'computed'")["experiment"]) == \
        ["vae", "coda", "ablate_vq", "ablate_rvq"]  # ceiling first, then params.yaml's pipeline order


def test_the_original_row_shows_the_validation_images_the_evaluations_saved(tmp_path):
    from coda.report.build import _originals

    val = np.arange(10 * 2 * 2 * 3, dtype=np.uint8).reshape(10, 2, 2, 3)
    np.save(tmp_path / "val.npy", val)
    assert np.array_equal(_originals(tmp_path / "val.npy", {"a": {"recon_sample_indices": [0, 4, 9]}}, 8),
                          val[[0, 4, 9]])
    assert np.array_equal(_originals(tmp_path / "val.npy", {"a": {}}, 3), val[:3])  # older records: the first


def test_each_tokenizer_gets_its_model_card_with_the_measured_numbers(inputs, tmp_path):
    from test_tokenizer import small_tokenizer

    directory = small_tokenizer().save_pretrained(tmp_path / "coda_tokenizer")
    build_report(inputs["metrics"], REPORTED, tmp_path / "out", inputs["meta"],
                 tokenizers={"coda": directory, "ablate_vq": tmp_path / "never_trained"})
    assert [p.name for p in (tmp_path / "out" / "model_cards").iterdir()] == ["coda.md"]
    card = (tmp_path / "out" / "model_cards" / "coda.md").read_text()
    assert "# CODA tokenizer" in card and "| PSNR (dB) | 24.00 |" in card and "| rFID (Inception-v3) | 3.00 |" in card
    assert "../figures/reconstructions.png" in card and "Liu_2025_ICCV" in card


def test_training_curves_one_row_per_phase_one_colour_per_experiment(tmp_path, monkeypatch):
    """A stage with a warm-up on latents then an image run, beside a latents-only rung: a row of panels
    per phase, the quantities of each, a log axis where the values span decades, the raw trace under
    its moving average, each experiment in one colour in every panel."""
    from coda.report import figures

    steps = np.arange(1, 201)
    warm = pd.DataFrame({"step": steps, "phase": "latents", "latent_mse": 20.0 / steps, "vq": 5.0 / steps,
                         "entropy": -4.0 + 1.0 / steps, "codes_used": 1 - 1.0 / steps})
    image = pd.DataFrame({"step": 200 + np.arange(1, 31), "phase": "images", "l1": 0.1, "lpips": 0.3,
                          "gan_g": np.linspace(0.2, -2.0, 30), "d_loss": 1.5, "vq": 0.03, "codes_used": 0.98})
    logs = {"coda": tmp_path / "coda.tsv", "rung": tmp_path / "rung.tsv"}
    pd.concat([warm, image]).to_csv(logs["coda"], sep="\t", index=False)
    warm.assign(entropy=0.0).to_csv(logs["rung"], sep="\t", index=False)
    drawn = []
    monkeypatch.setattr(figures, "_save", lambda figure, path: drawn.append(figure) or path)
    figures.training_curves(logs, tmp_path / "curves.png")

    drawn_panels = [axes for axes in drawn[0].axes if axes.get_title()]
    panels = {axes.get_title(): axes for axes in drawn_panels[:6]}
    assert [axes.get_title() for axes in drawn_panels] == ["latent MSE (log)", "VQ + commitment loss (log)", "entropy loss",
                            "codes used in the step (fraction)", "pixel L1", "LPIPS", "generator GAN loss",
                            "discriminator loss", "VQ + commitment loss", "codes used in the step (fraction)"]
    titles = [subfigure._suptitle.get_text() for subfigure in drawn[0].subfigs]
    assert titles[0].startswith("Latent phase") and titles[1].startswith("Image phase")
    latent_mse = panels["latent MSE (log)"]
    assert latent_mse.get_yscale() == "log" and panels["entropy loss"].get_yscale() == "linear"
    lines = latent_mse.get_lines()                        # raw + smoothed for each experiment
    assert len(lines) == 4 and [line.get_alpha() for line in lines[::2]] == [0.2, 0.2]
    colour = {line.get_label(): line.get_color() for line in lines if not line.get_label().startswith("_")}
    assert colour == {"coda (warm-up)": "C0", "rung": "C1"}
    assert [line.get_color() for line in panels["pixel L1"].get_lines()] == ["C0", "C0"]
    assert len(panels["entropy loss"].get_lines()) == 2    # the rung logs no entropy term (all zero)
    smoothed = lines[1].get_ydata() if lines[1].get_label() == "rung" else lines[3].get_ydata()
    assert np.all(np.diff(smoothed) < 0) and smoothed[0] == 20.0
    assert list(panels["pixel L1"].get_lines()[0].get_xdata()) == list(range(1, 31))   # steps of the phase
