"""The read-only web dashboard: a loopback HTTP server over the control socket's operations.

``routing`` decides what a request asks for (pure: method, target and Host in, a
``Plan`` out); ``server`` serves plans over trio sockets with h11, reading every
figure through ``control.ops.NodeOps`` — the same views ``peerd status`` prints;
``static/`` holds the page (plain HTML, CSS and JS, no build step).
"""

from peerd.dashboard.routing import DashboardAddressError, dashboard_address
from peerd.dashboard.server import DashboardServer

__all__ = ["DashboardAddressError", "DashboardServer", "dashboard_address"]
