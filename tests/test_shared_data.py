"""Integration checks on the real datasets in ../shared/data; skipped when that folder is absent."""

import numpy as np
import pytest

from cxrkit.data.cache import load_cached
from cxrkit.data.sources import choose_positive_class, open_image_folder

from .conftest import SHARED_DATA


def _need(name: str):
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} not present (shared datasets are only on the project's machines)")
    return path


def test_tb_sakha_layout_and_positive_class():
    src = open_image_folder(_need("tb_sakha_datacamp_224"))
    assert src.classes == ["healthy", "tb"] and len(src.samples) == 302
    assert choose_positive_class(src.classes) == "tb"


def test_covid_mixed_modes_decode_to_one_channel(tmp_path):
    src = open_image_folder(_need("covid19_3class_640"))
    assert src.classes == ["Covid", "Normal", "Viral Pneumonia"]
    sample = src.samples[::25]
    cached = load_cached([s.path for s in sample], 64, cache_dir=tmp_path, progress=False)
    assert cached.ok.all() and cached.images.shape == (len(sample), 64, 64) and cached.images.dtype == np.uint8


def test_nih_valid_folder_is_the_validation_split():
    src = open_image_folder(_need("nih_cxr14_1000_64"))
    assert src.given_splits == ["train", "val"]
    assert choose_positive_class(src.classes) == "1_abnormal"


def test_covid_audit_finds_the_age_shortcut_and_duplicates(tmp_path):
    from cxrkit.audit.dataset_audit import audit_dataset

    audit = audit_dataset(_need("covid19_3class_640"), cache_dir=tmp_path, progress=False)
    probe = audit["shortcut_probe"]
    # adult COVID images from the web against pediatric Kermany normals: borders and corners give it away
    assert probe["warning"] and probe["auc"] > 0.85
    assert probe["giveaways"][0]["class"] == "Covid"
    assert audit["properties"]["Covid"]["mode"].get("L", 0) > 0 and "L" not in audit["properties"]["Normal"]["mode"]
    assert audit["duplicates"]["exact"]["clusters"] >= 3
