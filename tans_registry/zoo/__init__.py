"""The model zoo: OFA supernets trained per meta-training group, subnets cut out and measured."""
from .build import GroupResult, ZooBuildRecord, ZooConfig, build_zoo
from .profiles import PROFILES, ZooProfile, get_profile
from .space import SupernetSpec, arch_hash, materialize, sample_archs, topology
from .store import ZooNetwork, list_networks, load_network

__all__ = [
    "GroupResult", "ZooBuildRecord", "ZooConfig", "build_zoo", "PROFILES", "ZooProfile", "get_profile",
    "SupernetSpec", "arch_hash", "materialize", "sample_archs", "topology", "ZooNetwork",
    "list_networks", "load_network",
]
