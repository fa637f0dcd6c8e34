"""Inference-time search for flow models under an exact NFE budget (see accel.search.registry.search).

Strategies (shortcut: config): bon: BestOfNConfig, sop: SearchOverPathsConfig, smc: SMCConfig, epf: EPFConfig,
svdd: SVDDConfig, rbf: RBFConfig, beam: BeamConfig. Each returns the chosen samples and a SearchTrace.
RAISE (raise: RAISEConfig) is a refiner beside them under the same NFE accounting: `refine`, accel.search.raise_.
"""

from accel.search.base import SearchContext, SearchResult, SearchTrace, Shards
from accel.search.beam import BeamConfig
from accel.search.bench import bench_search, plot_search
from accel.search.bon import BestOfNConfig
from accel.search.paths import SearchOverPathsConfig
from accel.search.raise_ import RAISEConfig, RefineInterrupted, refine
from accel.search.rbf import RBFConfig
from accel.search.registry import STRATEGIES, SearchConfig, get_config, search
from accel.search.smc import EPFConfig, SMCConfig
from accel.search.svdd import SVDDConfig

__all__ = [
    "STRATEGIES", "BeamConfig", "BestOfNConfig", "EPFConfig", "RAISEConfig", "RBFConfig", "RefineInterrupted",
    "SMCConfig", "SVDDConfig", "SearchConfig", "SearchContext", "SearchOverPathsConfig", "SearchResult", "SearchTrace",
    "Shards", "bench_search", "get_config", "plot_search", "refine", "search",
]
