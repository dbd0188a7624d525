"""Compressed id tables (models/id_tables.py): index maps, sizes, learning, config errors."""

from __future__ import annotations

import typing
from pathlib import Path

import numpy as np
import pytest
import torch

from cadc_ray.config import (
    ConfigError,
    IdTableConfig,
    IdTableKind,
    IntegrationName,
    ModelConfig,
    load_config,
    to_dict,
)
from cadc_ray.data.features import EntityFeatures
from cadc_ray.models.build import build_two_tower
from cadc_ray.models.embeddings import count_parameters
from cadc_ray.models.id_tables import (
    HASH_PRIME,
    ID_TABLE_KINDS,
    DoubleHashIdTable,
    FrozenClusterIdTable,
    HashedIdTable,
    LearnedHashIdTable,
    QRIdTable,
    RobeArray,
    RobeIdTable,
    TableContext,
    build_compressed_id_embedding,
    id_table_compression,
    model_bytes,
    qr_collisions,
    universal_hash,
)
from cadc_ray.models.pretrained import PretrainedTables
from cadc_ray.models.two_tower import TwoTower
from cadc_ray.training.loops import train_two_tower_epoch
from cadc_ray.training.optim import make_optimizer
from cadc_ray.training.samplers import build_negative_sampler

COMPRESSED: list[IdTableKind] = ["hashing", "qr", "double_hash", "robe", "learned_hash"]


def test_registry_agrees_with_the_config_literal() -> None:
    assert set(ID_TABLE_KINDS) == set(typing.get_args(IdTableKind))


def test_universal_hash_by_hand_and_without_overflow() -> None:
    a, b = torch.tensor([3]), torch.tensor([1])
    assert universal_hash(torch.tensor([2, 7]), a, b, 5).tolist() == [(3 * 2 + 1) % 5, 22 % 5]
    # The largest coefficients and a huge id: python's exact integers agree.
    big_a, big_b, key = HASH_PRIME - 1, HASH_PRIME - 2, 2**40 + 12345
    expected = ((big_a * (key % HASH_PRIME) + big_b) % HASH_PRIME) % 1000
    got = universal_hash(torch.tensor([key]), torch.tensor([big_a]), torch.tensor([big_b]), 1000)
    assert got.item() == expected


def test_hashing_reads_row_h_of_id() -> None:
    table = HashedIdTable(embedding_dim=3, rows=5, seed=0)
    table.hash_a.fill_(3)
    table.hash_b.fill_(1)
    with torch.no_grad():
        table.table.weight.copy_(torch.arange(15, dtype=torch.float32).view(5, 3))
    out = table(torch.tensor([2, 4]))  # rows (3*2+1) % 5 = 2 and 13 % 5 = 3
    assert out.tolist() == [[6.0, 7.0, 8.0], [9.0, 10.0, 11.0]]


@pytest.mark.parametrize("operation", ["mult", "add", "concat"])
def test_qr_reads_quotient_and_remainder_rows(operation: str) -> None:
    table = QRIdTable(num_ids=10, embedding_dim=4, collisions=3, operation=operation)
    assert table.quotient.weight.shape[0] == 4 and table.remainder.weight.shape[0] == 3
    ids = torch.tensor([0, 5, 9])
    quotient = table.quotient.weight[torch.tensor([0, 1, 3])]  # id // 3
    remainder = table.remainder.weight[torch.tensor([0, 2, 0])]  # id % 3
    expected = {
        "mult": quotient * remainder,
        "add": quotient + remainder,
        "concat": torch.cat([quotient, remainder], dim=1),
    }[operation]
    torch.testing.assert_close(table(ids), expected)
    assert table(ids).shape == (3, 4)


def test_qr_collisions_fit_the_budget() -> None:
    # c + ceil(n / c) <= budget, and c = ceil(sqrt(n)) when the budget is below 2 sqrt(n).
    c = qr_collisions(1000, 100)
    assert c + -(-1000 // c) <= 101 and c == 88
    assert qr_collisions(1000, 10) == 32


def test_robe_reads_element_j_at_hash_of_chunk_plus_offset() -> None:
    array = RobeArray(10)
    with torch.no_grad():
        array.weight.copy_(torch.arange(10, dtype=torch.float32))
    table = RobeIdTable(embedding_dim=4, array=array, chunk=2, seed=0)
    table.hash_a.fill_(1)
    table.hash_b.fill_(0)  # h(x, c) = (2x + c) mod (10 - 2 + 1)
    # id 3: chunks start at 6, 7 -> elements 6, 7, 7, 8; id 4: 8, 0 -> 8, 9, 0, 1.
    assert table(torch.tensor([3, 4])).tolist() == [[6, 7, 7, 8], [8, 9, 0, 1]]
    assert table.element_index(torch.arange(50)).max().item() <= 9


def test_double_hash_gives_the_most_frequent_ids_private_rows() -> None:
    counts = np.array([5, 0, 9, 1, 0, 0])
    table = DoubleHashIdTable(embedding_dim=2, rows=5, private_rows=2, counts=counts, seed=0)
    assert table.private_row_lookup.tolist() == [1, -1, 0, -1, -1, -1]
    weight = table.table.weight
    out = table(torch.tensor([2, 0, 1]))
    torch.testing.assert_close(out[0], weight[0])
    torch.testing.assert_close(out[1], weight[1])
    hashed = 2 + universal_hash(torch.tensor([1]), table.hash_a, table.hash_b, 3)  # (2,)
    torch.testing.assert_close(out[2], weight[hashed].sum(dim=0))


def _context(
    kind: IdTableKind, num_ids: int = 200, dim: int = 8, **extra: typing.Any
) -> TableContext:
    rng = np.random.default_rng(0)
    config = IdTableConfig(kind=kind, fraction=0.1, **extra)
    robe = RobeArray(round(0.1 * num_ids) * dim) if kind == "robe" else None
    return TableContext(
        config=config,
        num_ids=num_ids,
        embedding_dim=dim,
        seed=0,
        counts=rng.integers(0, 50, size=num_ids),
        teacher=rng.normal(size=(num_ids, dim)).astype(np.float32),
        robe_array=robe,
    )


@pytest.mark.parametrize("kind", COMPRESSED)
def test_every_kind_has_shape_and_fits_the_budget(kind: IdTableKind) -> None:
    context = _context(kind)
    module = ID_TABLE_KINDS[kind](context)
    assert module(torch.tensor([0, 5, 199])).shape == (3, 8)
    assert module.embedding_dim == 8
    floats = sum(p.numel() for p in module.parameters())
    budget = 0.1 * 200 * 8  # 160 floats
    exact = {"hashing": budget, "double_hash": budget, "robe": budget, "learned_hash": budget}
    if kind in exact:
        assert floats == exact[kind]
    else:  # qr: c=16 remainder rows + 13 quotient rows of 8 = 232 floats (its minimum ~ 2 sqrt n)
        assert floats == (16 + 13) * 8


def test_learned_hash_concat_splits_the_width() -> None:
    module = ID_TABLE_KINDS["learned_hash"](
        _context("learned_hash", teacher_dim=2, combine="concat")
    )
    assert isinstance(module, LearnedHashIdTable)
    assert [p.shape for p in module.tables.parameters()] == [(20, 4), (20, 4)]
    assert module(torch.arange(7)).shape == (7, 8)


def test_init_fits_the_compressed_table_to_the_pretrained_rows() -> None:
    context = _context("learned_hash")
    rows = torch.from_numpy(context.teacher)
    torch.manual_seed(0)
    fresh = build_compressed_id_embedding("none", context, None)
    torch.manual_seed(0)
    fitted = build_compressed_id_embedding("init", context, rows)  # 200 Adam steps
    ids = torch.arange(200)
    with torch.no_grad():
        assert (fitted(ids) - rows).pow(2).mean() < 0.8 * (fresh(ids) - rows).pow(2).mean()
    with pytest.raises(ValueError, match="integration must be 'none' or 'init'"):
        build_compressed_id_embedding("hybrid", context, rows)


# --- in the two-tower network -------------------------------------------------------------

NUM_USERS, NUM_ITEMS, DIM = 60, 40, 8


def _model_config(kind: IdTableKind, **extra: typing.Any) -> ModelConfig:
    raw = to_dict(ModelConfig(embedding_dim=DIM, tower_hidden=(16,), output_dim=8))
    raw["id_table"] = {"default": {"kind": kind, "fraction": 0.25} | extra}
    from cadc_ray.config import from_dict

    return from_dict(ModelConfig, raw)


def _pretrained() -> PretrainedTables:
    rng = np.random.default_rng(3)
    return PretrainedTables(
        user=rng.normal(0, 0.1, size=(NUM_USERS, DIM)).astype(np.float32),
        item=rng.normal(0, 0.1, size=(NUM_ITEMS, DIM)).astype(np.float32),
        pretrainer="mf",
    )


def _interactions() -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(4)
    users = rng.integers(0, NUM_USERS, size=600)
    items = (users % 4) * 10 + rng.integers(0, 10, size=600)  # user group -> item block
    return torch.from_numpy(users), torch.from_numpy(items)


def _counts() -> dict[str, np.ndarray]:
    users, items = _interactions()
    return {
        "user": np.bincount(users.numpy(), minlength=NUM_USERS),
        "item": np.bincount(items.numpy(), minlength=NUM_ITEMS),
    }


def _build(
    config: ModelConfig,
    pretrained: PretrainedTables | None = None,
    integration: IntegrationName = "none",
    id_counts: dict[str, np.ndarray] | None = None,
) -> TwoTower:
    """The two-tower on NUM_USERS x NUM_ITEMS ids, without features."""
    return build_two_tower(
        config, NUM_USERS, NUM_ITEMS, None, None, pretrained, integration, id_counts=id_counts
    )


@pytest.mark.parametrize(
    ("kind", "integration"),
    [(kind, "none") for kind in COMPRESSED if kind != "learned_hash"]
    + [("learned_hash", "init"), ("learned_hash", "init_frz")],
)
def test_every_kind_learns_in_the_two_tower(kind: IdTableKind, integration: str) -> None:
    torch.manual_seed(0)
    extra: dict[str, typing.Any] = {"init_steps": 20}
    if integration == "init_frz":
        extra = {"residual_fraction": 0.25}  # the only trainable id rows
    model = build_two_tower(
        _model_config(kind, **extra),
        NUM_USERS,
        NUM_ITEMS,
        EntityFeatures.empty(NUM_USERS),
        EntityFeatures.empty(NUM_ITEMS),
        None if integration == "none" else _pretrained(),
        typing.cast(typing.Any, integration),
        id_counts=_counts(),
    )
    users, items = _interactions()
    id_tables = [model.user_tower.id_embedding, model.item_tower.id_embedding]
    before = [p.detach().clone() for table in id_tables for p in table.parameters()]
    optimizer = make_optimizer(model, 0.05, 0.0)
    sampler = build_negative_sampler("uniform", NUM_ITEMS)
    losses = []
    for epoch in range(8):
        generator = torch.Generator().manual_seed(epoch)
        batches = [(users[i : i + 100], items[i : i + 100]) for i in range(0, 600, 100)]
        losses.append(train_two_tower_epoch(model, batches, optimizer, sampler, 2, generator))
    assert losses[-1] < losses[0] - 0.015, losses
    after = [p.detach() for table in id_tables for p in table.parameters()]
    assert all(not torch.equal(b, a) for b, a in zip(before, after, strict=True))


def test_robe_array_is_shared_and_counted_once() -> None:
    model = _build(_model_config("robe", robe_chunk=4))
    user_array = model.user_tower.id_embedding.array
    assert user_array is model.item_tower.id_embedding.array
    assert user_array.size == (15 + 10) * DIM  # 25% of 60 and of 40 rows of 8
    size = model_bytes(model)
    towers = sum(p.numel() for name, p in model.named_parameters() if "id_embedding" not in name)
    assert size["trainable"] == (user_array.size + towers) * 4
    assert size["lookup"] == 0 and size["total"] == size["trainable"]
    assert id_table_compression(model) == pytest.approx(4.0)


def test_model_bytes_counts_lookup_maps() -> None:
    model = _build(_model_config("double_hash"), id_counts=_counts())
    assert model_bytes(model)["lookup"] == (NUM_USERS + NUM_ITEMS) * 4  # int32 maps
    # 25% of the floats, plus one int32 per id for the private-row map.
    full = (NUM_USERS + NUM_ITEMS) * DIM * 4
    actual = (15 + 10) * DIM * 4 + (NUM_USERS + NUM_ITEMS) * 4
    assert id_table_compression(model) == pytest.approx(full / actual)


def test_min_rows_keeps_small_tables_full() -> None:
    model = _build(_model_config("hashing", min_rows=50))
    assert type(model.user_tower.id_embedding).__name__ == "HashedIdTable"  # 60 >= 50
    assert type(model.item_tower.id_embedding).__name__ == "TrainableIdEmbedding"  # 40 < 50


# --- config --------------------------------------------------------------------------------


def _load(*overrides: str) -> None:
    load_config(None, list(overrides))


def test_config_per_entity_tables() -> None:
    config = load_config(
        None,
        [
            "method=random",
            "model.id_table.default.kind=hashing",
            "model.id_table.default.fraction=0.1",
            "model.id_table.item={kind: qr, qr_op: concat}",
        ],
    )
    assert config.model.id_table.for_entity("user").kind == "hashing"
    assert config.model.id_table.for_entity("item").qr_op == "concat"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["method=cadc", "model.id_table.default.kind=hashing"],
            "model.id_table.default.kind: a compressed id table ('hashing') replaces a "
            "trainable table; integration 'init_frz'",
        ),
        (
            ["method=random", "model.id_table.user={kind: learned_hash}"],
            "model.id_table.user.kind: learned_hash clusters ids by the pretrained MF",
        ),
        (
            ["method=random", "model.id_table.default={kind: hashing, fraction: 0}"],
            "model.id_table.default.fraction: must lie in (0, 1]",
        ),
        (
            ["method=random", "model.id_table.default={kind: robe, robe_chunk: 500}"],
            "model.id_table.default.robe_chunk: must lie in [1, model.embedding_dim=96]",
        ),
        (
            ["method=random", "model.id_table.default.kind=bloom"],
            "model.id_table.default.kind: 'bloom' is not one of",
        ),
    ],
)
def test_impossible_combinations_fail_at_load(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        _load(*overrides)
    assert message in str(error.value)


def test_compressed_table_composes_with_init() -> None:
    config = load_config(
        None,
        ["method=cadc", "model.integration=init", "model.id_table.default.kind=learned_hash"],
    )
    assert config.model.id_table.default.kind == "learned_hash"


# --- end to end ----------------------------------------------------------------------------


@pytest.mark.ray
def test_run_reports_model_bytes_and_compression(ray_session: None, tmp_path: Path) -> None:
    """CADC + init with a learned-hash user table and a ROBE item table, through run.py."""
    import json

    from cadc_ray import run

    rng = np.random.default_rng(5)
    lines = ["user,item"] + [
        f"u{user},i{item}"
        for user in range(80)
        for item in rng.choice(10, size=8, replace=False) + 10 * (user % 3)
    ]
    (tmp_path / "interactions.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = tmp_path / "tiny.yaml"
    config.write_text(
        f"""
name: tiny-compression
method: cadc
output_root: runs
data:
  dataset: generic
  path: {tmp_path / "interactions.csv"}
  filter_ratio: 2
  generic: {{user: user, item: item, timestamp: null}}
pretrain: {{embedding_dim: 7, epochs: 2, batch_size: 256}}
model:
  embedding_dim: 8
  integration: init
  tower_hidden: [16]
  output_dim: 8
  id_table:
    user: {{kind: learned_hash, fraction: 0.25, init_steps: 10}}
    item: {{kind: robe, fraction: 0.5, robe_chunk: 4, init_steps: 10}}
train: {{epochs: 2, batch_size: 128}}
resources: {{num_workers: 0, use_gpu: "no"}}
""",
        encoding="utf-8",
    )
    run_dir = tmp_path / "out"
    assert run.main([str(config), "--output", str(run_dir)]) == 0
    results = json.loads((run_dir / run.RESULTS_FILE).read_text(encoding="utf-8"))
    size = results["model_bytes"]
    assert size["total"] == size["trainable"] + size["frozen"] + size["lookup"]
    assert size["lookup"] == 2 * 80 * 4  # the learned hash's two int32 cluster maps
    # Users: 2 tables of 10 rows of 8 + lookups; items: ROBE array of 0.5 * 30 * 8 floats.
    full = (80 + 30) * 8 * 4
    actual = (2 * 10 * 8 + 15 * 8) * 4 + 2 * 80 * 4
    assert results["id_table_compression"] == pytest.approx(full / actual)


# --- init_frz compressed: frozen per-cluster means (issue #11, part 5) ----------------------


def test_frozen_cluster_table_serves_cluster_means() -> None:
    rows = torch.tensor([[0.0, 2.0], [2.0, 4.0], [10.0, 0.0], [20.0, 2.0]])
    table = FrozenClusterIdTable(rows, np.array([[0, 0, 1, 1]]), "sum")
    assert table(torch.tensor([1, 2])).tolist() == [[1.0, 3.0], [15.0, 1.0]]
    assert count_parameters(table) == (0, 4)  # 2 clusters x 2 frozen elements
    # Two clusterings, sum: the mean of the two cluster means.
    two = FrozenClusterIdTable(rows, np.array([[0, 0, 1, 1], [0, 1, 1, 1]]), "sum")
    expected = (torch.tensor([1.0, 3.0]) + torch.tensor([0.0, 2.0])) / 2
    torch.testing.assert_close(two(torch.tensor([0]))[0], expected)
    # concat: clustering t serves column block t.
    concat = FrozenClusterIdTable(rows, np.array([[0, 0, 1, 1], [0, 1, 1, 1]]), "concat")
    assert concat(torch.tensor([0, 3])).tolist() == [[1.0, 2.0], [15.0, 2.0]]


def test_init_frz_learned_hash_in_the_two_tower_with_a_residual() -> None:
    model = _build(
        _model_config("learned_hash", residual_fraction=0.2),
        _pretrained(),
        "init_frz",
        id_counts=_counts(),
    )
    user = model.user_tower.id_embedding
    assert isinstance(user, FrozenClusterIdTable) and user.residual is not None
    trainable = sum(p.numel() for p in user.parameters() if p.requires_grad)
    assert trainable == 12 * DIM  # 20% of 60 rows of the residual, zero at the start
    teacher = torch.from_numpy(_pretrained().user)
    # Two clusterings of 7 rows (25% of 60 = 15 rows, split in two sums).
    assert [int(b.shape[0]) for b in user.tables.buffers()] == [7, 7]
    with torch.no_grad():
        served = user(torch.arange(NUM_USERS))
    assert (served - teacher).pow(2).mean() < teacher.pow(2).mean()  # closer than zero rows
    size = model_bytes(model)
    # Frozen: users 2 x 7 rows, items 2 x 5 rows (25% of 40 = 10, split in two), of 8 floats.
    assert size["frozen"] == (2 * 7 + 2 * 5) * DIM * 4
    assert size["lookup"] == 2 * (NUM_USERS + NUM_ITEMS) * 4  # two int32 maps per entity


def test_init_frz_config() -> None:
    config = load_config(
        None, ["method=cadc", "model.id_table.default={kind: learned_hash, residual_fraction: 0.1}"]
    )
    assert config.model.id_table.default.residual_fraction == 0.1
    with pytest.raises(ConfigError, match="residual_fraction: is for the frozen"):
        _load(
            "method=cadc",
            "model.integration=init",
            "model.id_table.default={kind: learned_hash, residual_fraction: 0.1}",
        )


def test_init_fits_both_robe_tables_of_the_shared_array_together() -> None:
    torch.manual_seed(0)
    tables = _pretrained()
    model = _build(
        _model_config("robe", fraction=0.5, robe_chunk=4, init_steps=300), tables, "init"
    )
    for tower, rows in ((model.user_tower, tables.user), (model.item_tower, tables.item)):
        target = torch.from_numpy(rows)
        with torch.no_grad():
            served = tower.id_embedding(torch.arange(target.shape[0]))
        # Both well below the error of zero rows. Fitted one after the other instead, the
        # item fit moves the shared array and leaves the users worse than zero rows.
        assert (served - target).pow(2).mean() < 0.8 * target.pow(2).mean()
