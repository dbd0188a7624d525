"""Every bad-input case raises DataError naming the file/field/value, and writes nothing."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from conftest import generic_log_config

from cadc_ray.config import DataConfig, SyntheticConfig
from cadc_ray.data import DataError, prepare_dataset, sample_mask
from cadc_ray.data.prepare import main


def _prepare_fails(config: DataConfig, tmp_path: Path, *fragments: str) -> None:
    output = tmp_path / "out"
    with pytest.raises(DataError) as caught:
        prepare_dataset(config, output)
    for fragment in fragments:
        assert fragment in str(caught.value)
    # Nothing half-written: no prepared folder, no temp folder.
    assert not output.exists() or not any((output / "prepared").glob("*"))


def _ml100k(tmp_path: Path, data: str) -> DataConfig:
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    (folder / "u.data").write_text(data)
    return DataConfig(dataset="ml-100k", path=str(folder))


def test_missing_folder(tmp_path: Path) -> None:
    config = DataConfig(dataset="ml-1m", path=str(tmp_path / "nowhere"))
    _prepare_fails(config, tmp_path, "nowhere", "not found")


def test_missing_ratings_file(tmp_path: Path) -> None:
    (tmp_path / "ml").mkdir()
    _prepare_fails(
        DataConfig(dataset="ml-1m", path=str(tmp_path / "ml")), tmp_path, "no ratings.dat"
    )


def test_wrong_delimiter(tmp_path: Path) -> None:
    config = _ml100k(tmp_path, "1,2,3,4\n5,6,7,8\n")
    _prepare_fails(config, tmp_path, "u.data", "line 1", "4 tab-separated fields", "found 1")


def test_wrong_column_count_names_line(tmp_path: Path) -> None:
    config = _ml100k(tmp_path, "1\t2\t3\t4\n1\t3\t3\t4\t9\t9\n")
    _prepare_fails(config, tmp_path, "u.data", "line 2")


def test_non_integer_id(tmp_path: Path) -> None:
    config = _ml100k(tmp_path, "1\t2\t3\t4\nx7\t3\t3\t5\n")
    _prepare_fails(config, tmp_path, "u.data", "line 2", "'user'", "'x7'")


def test_negative_id(tmp_path: Path) -> None:
    config = _ml100k(tmp_path, "1\t2\t3\t4\n2\t-3\t3\t5\n")
    _prepare_fails(config, tmp_path, "u.data", "line 2", "'item'", "-3")


def test_empty_file(tmp_path: Path) -> None:
    _prepare_fails(_ml100k(tmp_path, ""), tmp_path, "u.data", "empty")


def test_double_colon_format_with_single_colons(tmp_path: Path) -> None:
    folder = tmp_path / "ml"
    folder.mkdir()
    (folder / "ratings.dat").write_text("1::2::3::4\n1:3:3:4\n")
    _prepare_fails(DataConfig(dataset="ml-1m", path=str(folder)), tmp_path, "ratings.dat", "line 2")


def test_unreadable_gzip(tmp_path: Path) -> None:
    folder = tmp_path / "ml"
    folder.mkdir()
    (folder / "ratings.dat.gz").write_bytes(b"\x1f\x8b\x08\x00 definitely not gzip")
    _prepare_fails(
        DataConfig(dataset="ml-1m", path=str(folder)), tmp_path, "ratings.dat.gz", "gzip"
    )


def test_gzip_ratings_are_read(tmp_path: Path) -> None:
    folder = tmp_path / "ml"
    folder.mkdir()
    with gzip.open(folder / "ratings_part.dat.gz", "wt") as stream:
        stream.write("1::10::5::100\n1::11::4::101\n2::10::3::102\n")
    prepared = prepare_dataset(DataConfig(dataset="ml-1m", path=str(folder)), tmp_path / "out")
    assert (prepared / "manifest.json").is_file()


def test_duplicate_rows_under_error_rule(tmp_path: Path) -> None:
    config = generic_log_config(tmp_path / "log.csv", "u,i\na,x\nb,y\na,x\n", duplicates="error")
    _prepare_fails(config, tmp_path, "log.csv", "user='a'", "item='x'", "line 2, line 4")


def test_generic_missing_column(tmp_path: Path) -> None:
    config = generic_log_config(tmp_path / "log.csv", "u;i\na;x\n")
    _prepare_fails(config, tmp_path, "log.csv", "data.generic.user", "'u'", "wrong delimiter")


def test_generic_empty_dataset(tmp_path: Path) -> None:
    config = generic_log_config(tmp_path / "log.csv", "u,i\n")
    _prepare_fails(config, tmp_path, "log.csv", "empty")


def test_unknown_dataset_name() -> None:
    from cadc_ray.data.readers import read_dataset

    bogus = DataConfig(dataset="ml-42m", path=".")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="unknown dataset 'ml-42m'"):
        read_dataset(bogus)


def test_invalid_synthetic_size(tmp_path: Path) -> None:
    config = DataConfig(synthetic=SyntheticConfig(num_users=100, num_interactions=10))
    _prepare_fails(config, tmp_path, "data.synthetic.num_interactions")


@pytest.mark.parametrize("ratio", [0.5, 0.0, -2.0, float("nan")])
def test_filter_ratio_below_one(ratio: float) -> None:
    with pytest.raises(DataError, match=r"data\.filter_ratio"):
        sample_mask(np.arange(4), ratio, 0)


def test_cli_reports_data_and_config_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(
            [
                "--dataset",
                "ml-100k",
                "--path",
                str(tmp_path / "none"),
                "--output",
                str(tmp_path / "o"),
            ]
        )
        == 1
    )
    assert "data error" in capsys.readouterr().err
    assert main(["--dataset", "ml-9k", "--output", str(tmp_path / "o")]) == 2
    assert "data.dataset" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
