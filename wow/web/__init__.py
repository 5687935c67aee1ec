"""
The node's local web status page: a live picture of the overlay.

The page is static HTML + JavaScript that polls a small JSON API; the API
answers with the same handlers as the control socket, so the page, the CLI
and the tests all see one truth.
"""
