"""Workflow runners: execute an Argo ``Workflow`` manifest.

``local`` runs the manifest's steps as subprocesses on this machine (the embedded default);
``argo`` submits the very same manifest to a cluster. The two are independent of each other.
"""
