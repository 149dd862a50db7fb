"""Dataset roles from a data directory's MANIFEST.json: report datasets never reach the zoo build (nor so the
base supernet, backbone and encoders it feeds), whatever the profile or --holdout say."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import _save

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
REPORT = {"notmnist", "orl_faces", "pneumoniamnist", "pacs_art", "cmaterdb_bangla_digits", "dtd10_textures", "flowers5",
          "food101_mini10", "rsscn7_remote_sensing", "simpsons_mnist", "grocery_store_coarse", "elpv_solar_cells"}


@pytest.fixture(scope="module")
def roles_dir(tmp_path_factory):
    """Three tiny archives and a manifest: digits and cells train, faces report."""
    from tans_registry.data import load_dataset

    d = tmp_path_factory.mktemp("roles")
    _save(load_dataset("mnist", max_train=40, max_test=20), d / "digits.npz")
    _save(load_dataset("bccd_cells", max_train=30, max_test=15), d / "cells.npz")
    _save(load_dataset("sign_language_digits", max_train=40, max_test=20), d / "faces.npz")
    (d / "MANIFEST.json").write_text(json.dumps({"digits": {"role": "train"}, "cells": {"role": "train"},
                                                 "faces": {"role": "report"}, "absent": {"role": "report"}}))
    return d


def test_roles_are_read_and_only_archives_present_count(roles_dir, tmp_path):
    from tans_registry.data import dataset_roles, report_datasets

    assert dataset_roles(roles_dir) == {"digits": "train", "cells": "train", "faces": "report"}
    assert report_datasets(roles_dir) == ("faces",)           # 'absent' has no archive here
    assert dataset_roles(tmp_path) is None and report_datasets(tmp_path) == ()


@pytest.mark.parametrize("text, message", [("{not json", "not readable JSON"), ("[1, 2]", "must map each dataset"),
                                           ('{"a": {"role": "test"}}', "role 'test'")])
def test_a_bad_manifest_is_a_clear_error(tmp_path, text, message):
    from tans_registry.data import report_datasets
    from tans_registry.errors import DataError

    (tmp_path / "MANIFEST.json").write_text(text)
    with pytest.raises(DataError, match=message) as err:
        report_datasets(tmp_path)
    assert "MANIFEST.json" in str(err.value)


def test_report_datasets_are_held_out_whatever_the_profile_or_holdout_say(roles_dir):
    from tans_registry.zoo.build import resolve_profile, source_names
    from tans_registry.zoo.config import ZooConfig

    for holdout in (None, (), ("cells",)):
        p = resolve_profile(ZooConfig(profile="bench", holdout=holdout, data_dir=str(roles_dir)))
        assert "faces" in p.holdout and "faces" not in source_names(p, roles_dir)
    p = resolve_profile(ZooConfig(profile="bench", holdout=("cells",), data_dir=str(roles_dir)))
    assert p.holdout == ("cells", "faces") and source_names(p, roles_dir) == ["digits"]   # --holdout adds
    p = resolve_profile(ZooConfig(profile="quick", datasets=None, data_dir=str(roles_dir)))
    assert p.holdout == ("faces",)
    assert p.to_params()["holdout"] == "faces"                 # what the build records (param; tag alike)


def test_without_a_manifest_the_profile_and_holdout_decide_and_with_one_the_manifest_does(tiny_data_dir, tmp_path):
    """No MANIFEST.json: today's behaviour (the bench profile's four names, --holdout replacing them). A
    manifest naming no report archive here still replaces the profile's list: nothing held out."""
    from tans_registry.zoo.build import resolve_profile, source_names
    from tans_registry.zoo.config import ZooConfig
    from tans_registry.zoo.profiles import get_profile

    bench = resolve_profile(ZooConfig(profile="bench", data_dir=str(tiny_data_dir)))
    assert bench.holdout == get_profile("bench").holdout == ("orl_faces", "pacs_art", "notmnist", "pneumoniamnist")
    p = resolve_profile(ZooConfig(profile="bench", holdout=("cells",), data_dir=str(tiny_data_dir)))
    assert p.holdout == ("cells",) and source_names(p, tiny_data_dir) == ["digits"]
    for f in tiny_data_dir.glob("*.npz"):
        (tmp_path / f.name).symlink_to(f)
    (tmp_path / "MANIFEST.json").write_text(json.dumps({"digits": {"role": "train"}, "cells": {"role": "train"},
                                                        "elsewhere": {"role": "report"}}))
    p = resolve_profile(ZooConfig(profile="bench", data_dir=str(tmp_path)))
    assert p.holdout == () and source_names(p, tmp_path) == ["cells", "digits"]


def test_datasets_naming_a_reported_dataset_is_refused_and_nothing_is_written(roles_dir, tmp_path):
    import mlflow

    from tans_registry import tracking
    from tans_registry.cli import main

    res = CliRunner().invoke(main, ["zoo", "build", "--work-dir", str(tmp_path), "--data-dir", str(roles_dir),
                                    "--datasets", "digits,faces", "--holdout", "none"])
    assert res.exit_code == 1 and "'faces' is a reported dataset (MANIFEST.json role report)" in res.output, res.output
    assert "Traceback" not in res.output
    tracking.setup(str(tmp_path))
    assert not mlflow.search_runs(search_all_experiments=True, output_format="list")
    listed = CliRunner().invoke(main, ["data", "list", "--data-dir", str(roles_dir), "--json"])
    assert {r["name"]: r["role"] for r in json.loads(listed.stdout)} == {"cells": "train", "digits": "train",
                                                                        "faces": "report"}
    text = CliRunner().invoke(main, ["data", "list", "--data-dir", str(roles_dir)]).output.splitlines()
    assert text[0].split()[:5] == ["dataset", "classes", "train", "test", "role"]
    assert {line.split()[0]: line.split()[4] for line in text[1:]} == {"cells": "train", "digits": "train",
                                                                       "faces": "report"}


def test_a_bad_manifest_stops_the_build_with_one_line_and_writes_nothing(tmp_path):
    import mlflow

    from tans_registry import tracking
    from tans_registry.cli import main

    data = tmp_path / "data"
    data.mkdir()
    (data / "MANIFEST.json").write_text('{"digits": {"role": "held-out"}}')
    res = CliRunner().invoke(main, ["zoo", "build", "--work-dir", str(tmp_path / "work"), "--data-dir", str(data)])
    assert res.exit_code == 1 and "role 'held-out'" in res.output and "MANIFEST.json" in res.output, res.output
    assert "Traceback" not in res.output
    tracking.setup(str(tmp_path / "work"))
    assert not mlflow.search_runs(search_all_experiments=True, output_format="list")


def test_the_shared_directory_reports_twelve_and_the_bench_zoo_trains_on_the_other_seventeen():
    from tans_registry.data import dataset_roles, report_datasets
    from tans_registry.zoo.build import resolve_profile, source_names
    from tans_registry.zoo.config import ZooConfig

    assert SHARED.is_dir(), f"the shared datasets are expected beside the repository at {SHARED}"
    assert set(report_datasets(SHARED)) == REPORT
    p = resolve_profile(ZooConfig(profile="bench", holdout=(), data_dir=str(SHARED)))
    train = source_names(p, SHARED)
    assert len(train) == 17 and not set(train) & REPORT
    assert set(train) == {k for k, r in dataset_roles(SHARED).items() if r == "train"}
    quick = resolve_profile(ZooConfig(profile="quick", data_dir=str(SHARED)))
    assert "pneumoniamnist" not in quick.datasets                    # the profile's own list loses it
