"""Self-supervised pre-training methods, guided by the rule-based anatomy (seeds 000, 003).

Each method is one module behind the interface of :mod:`cxrssl.ssl.base`; the registry
(:mod:`cxrssl.ssl.registry`) selects them by name. :mod:`cxrssl.tasks.pretraining` runs them
through the one training engine.
"""

from cxrssl.ssl.base import ContrastiveMethod
from cxrssl.ssl.registry import METHODS, create_method, parse_method

__all__ = ["METHODS", "ContrastiveMethod", "create_method", "parse_method"]
