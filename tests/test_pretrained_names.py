"""--pretrained files from torchvision and TorchXRayVision load into MONAI's DenseNet-121, or are refused loudly."""

from __future__ import annotations

import re

import pytest
import torch

from cxrkit.models.pretrained import load_state
from cxrkit.models.registry import build_model, get_spec


def _torchvision_names(state: dict, old_style: bool = False) -> dict:
    """MONAI DenseNet-121 names -> torchvision's ("denselayer1.norm1", or "norm.1" in the 2017 release), RGB stem."""
    out = {}
    for k, v in state.items():
        k2 = re.sub(r"\.layers\.(norm|relu|conv)([12])", r".\1.\2" if old_style else r".\1\2", k).replace("class_layers.out", "classifier")
        out[k2] = v.repeat(1, 3, 1, 1).clone() / 3 if k == "features.conv0.weight" else v.clone()
    return out


@pytest.fixture(scope="module")
def densenet():
    return build_model("densenet121", 1, image_size=64)


@pytest.mark.parametrize("old_style, prefix", [(False, ""), (True, "module."), (False, "model.")])
def test_torchvision_style_state_dicts_load(densenet, old_style, prefix):
    source = {prefix + k: v for k, v in _torchvision_names(densenet.state_dict(), old_style).items()}
    source["classifier.weight"] = torch.zeros(18, 1024)  # TorchXRayVision's 18-pathology head: skipped, not fatal
    source["op_threshs"] = torch.zeros(18)
    rep = load_state(densenet, source, "txrv", get_spec("densenet121").head)
    assert len(rep.loaded) + len(rep.adapted) == 725  # every body tensor; the head stays fresh
    assert rep.adapted == ["features.conv0.weight"]  # the RGB stem summed to one grey channel
    assert set(rep.skipped) >= {"op_threshs"}


def test_a_file_covering_too_little_of_the_backbone_is_refused(densenet):
    state = densenet.state_dict()
    partial = dict(list(state.items())[:31])
    with pytest.raises(ValueError, match=r"only \d+ of the model's \d+ backbone tensors.*first missing: features\.denseblock"):
        load_state(densenet, partial, "partial.safetensors", get_spec("densenet121").head)
