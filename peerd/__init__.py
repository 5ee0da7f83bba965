"""peerd: the peer-to-peer compute daemon.

Sub-packages and modules each own one concept; see README.md for the layout.
Importing this package has no side effects and does not import libp2p.
"""

__version__ = "0.1.0"
