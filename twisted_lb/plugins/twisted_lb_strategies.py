"""
The built-in balancing strategies, as ``twisted.plugin`` dropins.

Each module-level name binds one ``IPlugin`` + ``IStrategyFactory`` provider;
:func:`twisted_lb.strategies.get_strategy` finds them by their ``name``.
"""

from twisted_lb.strategies import (
    LeastConnections,
    LeastTime,
    RoundRobin,
    SourceHash,
    StrategyFactory,
    TwoChoices,
    WeightedRandom,
)

round_robin = StrategyFactory("round_robin", RoundRobin)
least_connections = StrategyFactory("least_connections", LeastConnections)
least_time = StrategyFactory("least_time", LeastTime)
random = StrategyFactory("random", WeightedRandom, {"seed": int})
two_choices = StrategyFactory("two_choices", TwoChoices, {"seed": int})
source_hash = StrategyFactory("source_hash", SourceHash)
