"""Label Studio integration: projects, pre-annotation, assignment, export -> dataset versions.

``server``: the local Label Studio (own venv, loopback, ``kiln labelstudio start|stop|status|token``);
``configs``: label configs per task; ``client``: ``LabelingClient`` over label-studio-sdk 2.x
(idempotent projects, local-files storage, import of new items with predictions, users, views);
``assignment``: the even/weighted split and progress; ``export``: JSON export -> ``DatasetContent``
and the completion rules.
"""
