"""The network layer: the only package that imports py-libp2p.

Modules: ``guards`` (library-wide workarounds), ``host`` (builds and runs the
libp2p node), ``streams`` (timed streams, guarded handlers), ``dialing``
(connect and open streams under timeouts), ``discovery`` (seeds, DHT,
connections), ``adverts`` (publishing ours, validating theirs), ``sync``
(advert sync on connect), ``events`` (connection notifications) and
``service`` (``P2PService``, the one class the daemon uses).

Import ``peerd.p2p.service`` explicitly: importing libp2p costs ~0.5 s, so
this package's ``__init__`` imports nothing.
"""
