"""The compression layer: a hard-masked network -> a genuinely smaller dense network, and what it costs.

It sits on top of the core (``acosp.masks``, ``acosp.inject``, ``acosp.pruner``, ``acosp.stats``)
and is loaded only when used; ``acosp.compress`` is its public entry. Its parts, bottom up:
``trace`` records a forward pass, ``channels`` follows channels through it, ``layers`` holds the
narrowed convs, ``spec`` describes a compressed network as plain data, ``compressor`` builds it,
``counting`` and ``statistics`` count parameters and MACs, ``coupling`` finds the convs that can
share a mask.
"""
