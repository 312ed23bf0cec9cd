"""
The plugin package for balancing strategies.

Drop a module that binds ``IPlugin`` + ``IStrategyFactory`` providers into any
``twisted_lb/plugins/`` directory on ``sys.path`` (no ``__init__.py`` there) and
:func:`twisted_lb.strategies.get_strategy` finds it by name.
"""

from twisted.plugin import pluginPackagePaths

__path__.extend(pluginPackagePaths(__name__))
__all__: list[str] = []
