"""The evaluation record: what the evaluate stage writes (metrics.json) and the report, the model cards
and the tests read back, defined once (docs/evaluation.md describes each number).

A field the evaluation could not compute is None, with a ``<field>_missing_reason`` where it says
why. The record reads by field name too (``record["psnr"]``, ``record.get("rfid")``), as the
report's tables select their columns by name.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from .files import reading, write_json


@dataclass(frozen=True)
class EvaluationRecord:
    # what was evaluated (the caller's protocol fields)
    experiment: str | None = None
    dataset: str | None = None
    crop: str | None = None
    ema: bool | None = None
    vae: str | None = None
    method: str | None = None
    kind: str = "tokenizer"  # or "continuous_vae": the ceiling row
    quantizer_kind: str | None = None
    lora: dict | None = None
    # the numbers
    rfid: float | None = None
    rfid_missing_reason: str | None = None
    rfid_weights: dict | None = None
    rfid_official_weights: bool = False
    rfd_vgg16: float | None = None
    rfd_vgg16_missing_reason: str | None = None
    inception_score: float | None = None
    inception_score_std: float | None = None
    inception_score_missing_reason: str | None = None
    psnr: float | None = None
    ssim: float | None = None
    ssim_missing_reason: str | None = None
    colour_error: float | None = None
    colour_error_per_channel: list | None = None
    lpips_vgg: float | None = None
    lpips_alex: float | None = None
    lpips_missing_reason: str | None = None
    # the code (None for the continuous VAE)
    codebook_size: int | None = None
    scales: list | None = None
    indices_per_image: int | None = None
    bits_per_image: float | None = None
    codebook_utilization: float | None = None
    utilization_per_scale: list | None = None
    code_perplexity: float | None = None
    code_perplexity_per_scale: list | None = None
    # the protocol
    recon_sample_indices: list | None = None
    num_images: int | None = None
    resolution: int | None = None
    downsample: int | None = None
    posterior: str | None = None
    seed: int | None = None
    batch_size: int | None = None
    device: str | None = None
    model_path: str | None = None  # the tokenizer directory (or the VAE stage's directory) evaluated
    model_sha256: str | None = None  # of its model.safetensors (a directory without one: of all its files)
    validation_set: str | None = None
    validation_sha256: str | None = None
    reference_statistics: str | None = None
    fid_protocol: str | None = None
    reconstructions_npz: str | None = None
    psnr_cap_db: float | None = None
    ssim_implementation: str | None = None
    lpips_implementation: str | None = None
    frechet_implementation: str | None = None
    fid_protocol_implementation: str | None = None
    inception_score_implementation: str | None = None
    library_versions: dict | None = None
    # the decodes from the first k scales: {scales, indices_per_image, bits_per_image, psnr, lpips_vgg, rfd_vgg16}
    progressive: list | None = None

    def __getitem__(self, field: str):
        if field not in FIELDS:
            raise KeyError(field)
        return getattr(self, field)

    def get(self, field: str, default=None):
        return getattr(self, field) if field in FIELDS else default

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def write(self, path: str | Path) -> Path:
        return write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, data: dict, source: str = "the record") -> "EvaluationRecord":
        unknown = sorted(set(data) - set(FIELDS))
        if unknown:
            raise ValueError(f"{source} has fields an evaluation record does not ({', '.join(unknown)}): "
                             "written by another version of coda; rerun the evaluate stage")
        return cls(**data)

    @classmethod
    def read(cls, path: str | Path) -> "EvaluationRecord":
        with reading(path, "evaluation record (the evaluate stage's metrics.json)", "rerun the evaluate stage"):
            return cls.from_dict(json.loads(Path(path).read_text()), str(path))


FIELDS = tuple(field.name for field in dataclasses.fields(EvaluationRecord))
