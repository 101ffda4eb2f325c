"""``kiln ui``: a read-only web console over the state store and the repository's files (#17).

Layers, top down:

- ``cli``: ``kiln ui``, ``kiln ui token`` and ``kiln tensorboard EXPERIMENT``;
- ``app``: the Starlette application ``kiln ui`` serves (uvicorn), with the access rules: only
  GET and HEAD (anything else is 405), and a token when it listens beyond loopback;
- ``pages``: the pages, one handler per route in ``ROUTES`` (path pattern -> handler), each
  reading what it shows and returning server-rendered HTML or JSON. ``dispatch`` is the one entry
  point, so ``kiln controller`` serves the same pages under ``/ui`` from its own HTTP server;
- ``read``: what the pages show, gathered from the state store, the run folders, the dataset
  version logs, the model registry's files and the deployments' ``/metrics``. Nothing is
  written, nothing a commit carries is executed, secrets are masked (``kiln._util.redact``);
- ``static/``: the one script (SVG line and bar charts from JSON, polling for live curves) and
  the style sheet, shipped in the package: the pages need no network and no build step.
"""
