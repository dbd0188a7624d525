"""Prepare a dataset: raw files (or the synthetic generator) -> Parquet shards + manifest.

``prepare_dataset(config, output_root)`` writes the layout of ``cadc_ray.data.layout`` into a
temp folder next to the target and renames it into place, so a prepared folder is never
half-written. A folder whose manifest matches (same input checksums and the same
content-defining data config) is reused; a different one is refused unless ``force``.

CLI: ``python -m cadc_ray.prepare --dataset ml-1m --path ../shared/data/ml-1m --output DIR``
(see ``main``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from cadc_ray.arrow_pool import system_arrow_pool
from cadc_ray.atomic import atomic_directory
from cadc_ray.config import (
    ConfigError,
    DataConfig,
    ExperimentConfig,
    apply_overrides,
    from_dict,
    parse_override,
    read_yaml_mapping,
    to_dict,
    validate,
)
from cadc_ray.data.errors import DataError
from cadc_ray.data.layout import (
    MANIFEST_FILE,
    SCHEMA_VERSION,
    Manifest,
    feature_specs,
    interactions_dir,
    interactions_table,
    shard_name,
    write_entity_features,
    write_id_map,
)
from cadc_ray.data.readers import (
    NormalizedData,
    list_input_files,
    read_dataset,
    resolve_input_path,
)
from cadc_ray.data.synthetic import generate_synthetic, validate_synthetic

logger = logging.getLogger(__name__)

REAL_SHARD_ROWS = 250_000  # real datasets: a few shards so Ray Data reads in parallel
HASH_CHUNK_BYTES = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def content_config(config: DataConfig) -> dict[str, Any]:
    """The parts of DataConfig that determine the prepared content (not where the raw files
    are: their checksums identify them; not the sampling fields: samples come later)."""
    content: dict[str, Any] = {"dataset": config.dataset, "duplicates": config.duplicates}
    if config.dataset == "synthetic":
        content["synthetic"] = to_dict(config.synthetic)
    if config.dataset == "generic":
        content["generic"] = to_dict(config.generic)
    return content


def prepared_path(config: DataConfig, output_root: Path) -> Path:
    """``data.prepared_dir``, else ``<output_root>/prepared/<dataset>-<digest of content config>``
    (the digest keeps differently-sized synthetic datasets apart)."""
    if config.prepared_dir:
        return Path(config.prepared_dir).expanduser()
    digest = hashlib.sha256(json.dumps(content_config(config), sort_keys=True).encode()).hexdigest()
    return Path(output_root) / "prepared" / f"{config.dataset}-{digest[:10]}"


def _input_checksums(config: DataConfig) -> tuple[dict[str, str], Path | None]:
    if config.dataset == "synthetic":
        validate_synthetic(config.synthetic)
        return {}, None
    path = resolve_input_path(config)
    files = list_input_files(config, path)
    for file in files:
        if not file.is_file():
            what = "is a folder, expected a file" if file.is_dir() else "file not found"
            raise DataError(f"{file}: {what} (data.path for dataset {config.dataset!r})")
    return {file.name: sha256_file(file) for file in files}, path


def _write_normalized(data: NormalizedData, folder: Path) -> int:
    shards = interactions_dir(folder)
    shards.mkdir()
    n = data.num_interactions
    num_shards = max(1, -(-n // REAL_SHARD_ROWS))
    for index in range(num_shards):
        part = slice(index * REAL_SHARD_ROWS, min(n, (index + 1) * REAL_SHARD_ROWS))
        table = interactions_table(
            np.arange(part.start, part.stop),
            data.user_id[part],
            data.item_id[part],
            data.timestamp[part],
            None if data.rating is None else data.rating[part],
        )
        pq.write_table(table, shards / shard_name(index))
        logger.info("shard %d/%d written (%d rows)", index + 1, num_shards, table.num_rows)
    write_entity_features(folder / "user_features.parquet", "user", data.user_features)
    write_entity_features(folder / "item_features.parquet", "item", data.item_features)
    write_id_map(folder / "user_ids.parquet", "user", data.user_raw_ids)
    write_id_map(folder / "item_ids.parquet", "item", data.item_raw_ids)
    return num_shards


def _time_order(has_timestamp: bool) -> str:
    if has_timestamp:
        return "timestamp, ties broken by original row order"
    return "row order (the dataset has no timestamps: row order is taken as the time order)"


def _build(
    config: DataConfig, folder: Path, checksums: dict[str, str], input_path: Path | None
) -> Manifest:
    started = time.perf_counter()
    extra: dict[str, Any] = {"input_path": None if input_path is None else str(input_path)}
    if config.dataset == "synthetic":
        shards = interactions_dir(folder)
        shards.mkdir()
        result = generate_synthetic(config.synthetic, shards, log_progress=logger.info)
        write_entity_features(folder / "user_features.parquet", "user", result.user_features)
        write_entity_features(folder / "item_features.parquet", "item", result.item_features)
        write_id_map(folder / "user_ids.parquet", "user", np.arange(result.num_users))
        write_id_map(folder / "item_ids.parquet", "item", result.item_raw_ids)
        counts = (result.num_interactions, result.num_users, result.num_items)
        has_timestamp, has_rating, dropped, num_shards = True, False, 0, result.num_shards
        user_specs, item_specs = (
            feature_specs(result.user_features),
            feature_specs(result.item_features),
        )
    else:
        data = read_dataset(config)
        num_shards = _write_normalized(data, folder)
        counts = (data.num_interactions, data.num_users, data.num_items)
        has_timestamp, has_rating = data.has_timestamp, data.rating is not None
        dropped = data.duplicates_dropped
        user_specs, item_specs = (
            feature_specs(data.user_features),
            feature_specs(data.item_features),
        )
    extra["prepare_seconds"] = round(time.perf_counter() - started, 3)
    manifest = Manifest(
        schema_version=SCHEMA_VERSION,
        dataset=config.dataset,
        num_interactions=counts[0],
        num_users=counts[1],
        num_items=counts[2],
        has_timestamp=has_timestamp,
        has_rating=has_rating,
        time_order=_time_order(has_timestamp),
        user_features=user_specs,
        item_features=item_specs,
        inputs=checksums,
        duplicates_rule=config.duplicates,
        duplicates_dropped=dropped,
        num_shards=num_shards,
        data_config=content_config(config),
        extra=extra,
    )
    (folder / MANIFEST_FILE).write_text(manifest.to_json(), encoding="utf-8")
    return manifest


def prepare_dataset(config: DataConfig, output_root: Path | str, *, force: bool = False) -> Path:
    """Prepares ``config``'s dataset (see module docstring); returns the prepared folder.

    Raises DataError on bad input (nothing is written) or when the target folder holds a
    different prepared dataset and ``force`` is False.
    """
    target = prepared_path(config, Path(output_root))
    checksums, input_path = _input_checksums(config)
    if target.exists() and not force:
        try:
            existing = Manifest.load(target)
        except DataError as error:
            raise DataError(
                f"{target}: exists but is not a usable prepared dataset ({error}); use --force to replace it"
            ) from None
        if existing.inputs == checksums and existing.data_config == content_config(config):
            logger.info("reusing prepared dataset %s (inputs and data config match)", target)
            return target
        differences = [
            name
            for name, same in (
                ("input checksums", existing.inputs == checksums),
                ("data config", existing.data_config == content_config(config)),
            )
            if not same
        ]
        raise DataError(
            f"{target}: holds a different prepared dataset ({' and '.join(differences)} differ); "
            f"use --force to replace it or choose another data.prepared_dir"
        )
    # force and an existing target: swapped in, then the old copy removed
    with system_arrow_pool(), atomic_directory(target, replace_existing=True) as temp:
        manifest = _build(config, temp, checksums, input_path)
    logger.info(
        "prepared %s: %d interactions, %d users, %d items, %d shards -> %s",
        manifest.dataset,
        manifest.num_interactions,
        manifest.num_users,
        manifest.num_items,
        manifest.num_shards,
        target,
    )
    if not manifest.has_timestamp:
        logger.warning("%s has no timestamps: %s", manifest.dataset, manifest.time_order)
    return target


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cadc_ray.prepare",
        description="Prepare a dataset (raw files or the synthetic generator) as Parquet shards.",
    )
    parser.add_argument("--config", type=Path, help="experiment YAML; its data: section is used")
    parser.add_argument("--dataset", help="synthetic, ml-100k, ml-1m, ml-10m, epinions or generic")
    parser.add_argument(
        "--path", help="raw data folder or file (default: $CADC_DATA_DIR/<dataset>)"
    )
    parser.add_argument("--output", help="the prepared folder (sets data.prepared_dir)")
    parser.add_argument(
        "--output-root",
        default=None,
        help="root for the default prepared folder (default: the config's output_root)",
    )
    parser.add_argument("--duplicates", help="keep_last, keep_first or error")
    generic = parser.add_argument_group("generic files")
    generic.add_argument("--user-col")
    generic.add_argument("--item-col")
    generic.add_argument("--timestamp-col", help="'none' for a file without timestamps")
    generic.add_argument("--rating-col", help="'none' for a file without ratings")
    generic.add_argument("--delimiter", help="e.g. ',' or 'tab' (default: from the suffix)")
    generic.add_argument("--no-header", action="store_true", help="columns are named 0, 1, ...")
    synthetic = parser.add_argument_group("synthetic")
    synthetic.add_argument("--num-users", type=int)
    synthetic.add_argument("--num-items", type=int)
    synthetic.add_argument("--num-interactions", type=int)
    synthetic.add_argument("--shard-rows", type=int)
    synthetic.add_argument("--seed", type=int)
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="dotted config override, e.g. data.synthetic.latent_dim=32 (repeatable)",
    )
    parser.add_argument("--force", action="store_true", help="replace a different prepared dataset")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def _optional_column(value: str) -> str | None:
    return None if value.lower() in ("none", "null", "") else value


def build_config(args: argparse.Namespace) -> ExperimentConfig:
    """The experiment config from ``--config``, the flags and ``--set`` (ConfigError if bad)."""
    raw = read_yaml_mapping(args.config) if args.config is not None else {}
    flags: list[tuple[str, Any]] = []

    def add(key: str, value: Any) -> None:
        if value is not None:
            flags.append((key, value))

    add("data.dataset", args.dataset)
    add("data.path", args.path)
    add("data.prepared_dir", args.output)
    add("data.duplicates", args.duplicates)
    add("data.generic.user", args.user_col)
    add("data.generic.item", args.item_col)
    if args.timestamp_col is not None:
        flags.append(("data.generic.timestamp", _optional_column(args.timestamp_col)))
    if args.rating_col is not None:
        flags.append(("data.generic.rating", _optional_column(args.rating_col)))
    if args.delimiter is not None:
        delimiter = {"tab": "\t", "\\t": "\t", "comma": ","}.get(args.delimiter, args.delimiter)
        flags.append(("data.generic.delimiter", delimiter))
    if args.no_header:
        flags.append(("data.generic.has_header", False))
    add("data.synthetic.num_users", args.num_users)
    add("data.synthetic.num_items", args.num_items)
    add("data.synthetic.num_interactions", args.num_interactions)
    add("data.synthetic.shard_rows", args.shard_rows)
    add("data.synthetic.seed", args.seed)
    data_fields = set(DataConfig.__dataclass_fields__)
    for text in args.overrides:
        key, value = parse_override(text)
        # Convenience: DataConfig keys may drop the "data." prefix.
        flags.append((f"data.{key}" if key.split(".")[0] in data_fields else key, value))
    source = str(args.config) if args.config is not None else "<command line>"
    config = from_dict(ExperimentConfig, apply_overrides(raw, flags), source)
    validate(config, source)
    return config


def main(argv: list[str] | None = None) -> int:
    """``python -m cadc_ray.prepare``; prints the prepared folder. Exit 0 ok, 1 data error,
    2 config error."""
    args = _parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.DEBUG if args.verbose else logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
    try:
        config = build_config(args)
        output_root = Path(args.output_root or config.output_root)
        prepared = prepare_dataset(config.data, output_root, force=args.force)
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return 2
    except DataError as error:
        print(f"data error: {error}", file=sys.stderr)
        return 1
    manifest = Manifest.load(prepared)
    print(prepared)
    if not manifest.has_timestamp:
        print(f"note: {manifest.dataset}: {manifest.time_order}", file=sys.stderr)
    return 0
