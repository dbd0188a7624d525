"""The methods of the paper's Table 1, one entry each (METHOD 1.3-1.4, docs/method_notes.md).

A method says which pretrainer (if any) feeds the two-tower network, which
training data it sees (the uniform sample ``D_sub`` or all of ``D_full``), how
that data is rebalanced, and whether the loss applies the LogQ correction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from cadc_ray.names import IntegrationName, MethodName, PretrainerName

Rebalance = Literal["none", "over_sampling", "under_sampling"]


@dataclass(frozen=True)
class MethodSpec:
    label: str  # as printed in tables
    pretrainer: PretrainerName | None
    default_integration: IntegrationName
    uses_full_data: bool = False  # GS trains on all of D_full
    rebalance: Rebalance = "none"
    logq_correction: bool = False


METHODS: dict[MethodName, MethodSpec] = {
    "cadc": MethodSpec("CADC", pretrainer="mf", default_integration="init_frz"),
    "cadc_mlp": MethodSpec("CADC-MLP", pretrainer="mf_mlp", default_integration="init_frz"),
    "cadc_als": MethodSpec("CADC-ALS", pretrainer="als", default_integration="init_frz"),
    "random": MethodSpec("Random", pretrainer=None, default_integration="none"),
    "over_sampling": MethodSpec(
        "Over-Sampling", pretrainer=None, default_integration="none", rebalance="over_sampling"
    ),
    "under_sampling": MethodSpec(
        "Under-Sampling", pretrainer=None, default_integration="none", rebalance="under_sampling"
    ),
    "logq": MethodSpec("LogQ", pretrainer=None, default_integration="none", logq_correction=True),
    "gs": MethodSpec("GS", pretrainer=None, default_integration="none", uses_full_data=True),
}

assert set(METHODS) == set(get_args(MethodName))


def resolved_integration(method: MethodName, integration: IntegrationName) -> IntegrationName:
    """``auto`` -> the method's default technique."""
    return METHODS[method].default_integration if integration == "auto" else integration
