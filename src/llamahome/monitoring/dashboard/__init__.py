"""A live dashboard for a CacheManager: ``serve_dashboard(manager)`` or ``llamahome cache serve``.

    from llamahome.monitoring import serve_dashboard
    dashboard = serve_dashboard(manager, port=8765)     # http://127.0.0.1:8765/
    print(dashboard.url)
    dashboard.close()

One port serves the page (``/``), Prometheus (``/metrics``), JSON (``/api/stats``, ``/api/history``) and
``/healthz``. Everything the page needs ships in this package (uPlot is vendored under ``static/vendor``).
"""

from ._server import TOKEN_ENV, DashboardServer, serve_dashboard

__all__ = ["TOKEN_ENV", "DashboardServer", "serve_dashboard"]
