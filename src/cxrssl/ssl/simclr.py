"""``simclr``: the seed's baseline, NT-Xent on two views (optionally a reconstruction decoder,
``recon_weight`` > 0, as the seed's baseline had)."""

from __future__ import annotations

from cxrssl.ssl.base import ContrastiveMethod


class SimCLR(ContrastiveMethod):
    """Plain SimCLR (see :class:`~cxrssl.ssl.base.ContrastiveMethod` for the arguments)."""
