"""Label Studio integration: projects, pre-annotation, assignment, export -> dataset versions."""
